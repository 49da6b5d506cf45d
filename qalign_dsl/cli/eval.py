"""`qalc eval RECIPE --model NAME=PATH ...`: the paper's results table from one command.

Writes OUTPUT/results.json, OUTPUT/report.md and OUTPUT/plots/*.png; generations and judge
answers are cached under OUTPUT (or --cache-dir), so a rerun after a kill resumes and a
rerun with another judge or metric regenerates nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from qalign_dsl.cli import validation
from qalign_dsl.cli.common import ExitCode, UsageError, write_atomic
from qalign_dsl.cli.outputs import check_output_dir
from qalign_dsl.cli.ray_executor import (
    RayCluster,
    WorkerError,
    add_executor_arguments,
    as_json,
    describe,
    executor_from_arguments,
    note_cache,
    require_ray,
    task_failure,
)

if TYPE_CHECKING:
    from qalign_dsl.eval.classify import Verdict
    from qalign_dsl.eval.generate import Batch
    from qalign_dsl.eval.recipe import ClassifierSpec, Sampling

MAX_ERRORS = 20


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "eval", help="evaluate models on safety / refusal / capability suites (YAML recipe)",
        description="Generate with every --model on every suite of RECIPE, judge with the "
        "recipe's classifier rubrics or extract answers, and report the metrics with "
        "intervals and paired tests (results.json, report.md, plots).")
    parser.add_argument("recipe", type=Path, metavar="RECIPE", help="eval recipe (YAML)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="a model to evaluate (repeat; the first is the baseline row)")
    parser.add_argument("--judge", action="append", default=[], metavar="NAME=MODEL",
                        help="the model answering judge NAME's rubric (overrides the recipe)")
    parser.add_argument("-o", "--output", type=Path,
                        help="output folder (default: runs/eval/<recipe name>)")
    parser.add_argument("--cache-dir", type=Path, help="generation and answer caches "
                        "(default: the output folder)")
    parser.add_argument("--baseline", help="the model the others are compared with "
                        "(default: the first --model)")
    parser.add_argument("--engine", choices=["auto", "transformers", "vllm"], default="auto",
                        help="generation engine (auto: vLLM when importable on a GPU)")
    parser.add_argument("--device", default="cpu", help="transformers device (default: cpu)")
    parser.add_argument("--judge-batch", type=int, default=16, help="responses judged per call")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--explain", metavar="PROMPT_ID",
                        help="also show this prompt's responses and the classifier's answers")
    add_executor_arguments(parser, recipe=True)
    parser.set_defaults(run=run_eval)


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, target = value.partition("=")
        if not sep or not name or not target:
            raise UsageError(f"{flag} expects NAME=PATH, got `{value}`")
        if name in pairs:
            raise UsageError(f"{flag}: `{name}` given twice")
        pairs[name] = target
    return pairs


def run_eval(arguments: argparse.Namespace, console: Console) -> int:
    from qalign_dsl.eval.generate import ModelRef
    from qalign_dsl.eval.recipe import RecipeError, load_recipe
    from qalign_dsl.eval.sources import SourceError, load_rows, map_rows

    models = _pairs(arguments.model, "--model")
    if not models:
        raise UsageError("give at least one --model NAME=PATH")
    judges = _pairs(arguments.judge, "--judge")
    if arguments.baseline and arguments.baseline not in models:
        raise UsageError(f"--baseline `{arguments.baseline}` is not a --model name")
    for name, path in models.items():
        if path.startswith((".", "/", "~")) and not Path(path).expanduser().exists():
            raise UsageError(f"--model {name}: `{path}` does not exist")
    validation.positive_int("--judge-batch", arguments.judge_batch, 100_000)
    validation.device("--device", arguments.device)
    for option, folder in (("-o", arguments.output), ("--cache-dir", arguments.cache_dir)):
        if folder is not None:
            check_output_dir(folder, [arguments.recipe], option)
    try:
        recipe = load_recipe(arguments.recipe)
    except RecipeError as error:
        console.print(str(error), style="red", markup=False)
        return ExitCode.PROBLEMS
    unknown = sorted(set(judges) - set(recipe.judges))
    if unknown:
        raise UsageError(f"--judge {unknown[0]}: the recipe defines no such judge "
                         f"(defined: {', '.join(recipe.judges) or 'none'})")
    executor = executor_from_arguments(arguments, recipe.executor)
    if executor.kind == "ray":
        require_ray()

    items = {}
    errors: list[str] = []
    for suite in recipe.suites:
        try:
            mapped = map_rows(suite, load_rows(suite.source), recipe.seed)
        except SourceError as error:
            errors.append(f"suite `{suite.name}`: {error}")
            continue
        errors += [f"suite `{suite.name}`: {e}" for e in mapped.errors]
        if not mapped.items and not mapped.errors:
            errors.append(f"suite `{suite.name}`: {suite.source.describe()} has no rows")
        items[suite.name] = mapped.items
    if errors:
        for problem in errors[:MAX_ERRORS]:
            console.print(problem, style="red", markup=False)
        if len(errors) > MAX_ERRORS:
            console.print(f"... and {len(errors) - MAX_ERRORS} more", style="red")
        console.print(f"{len(errors)} problem(s) in the recipe's data; nothing was generated",
                      style="red")
        return ExitCode.PROBLEMS

    output = arguments.output or Path("runs/eval") / recipe.name
    cache_dir = arguments.cache_dir or output
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    refs = [ModelRef(name, path) for name, path in models.items()]
    baseline = arguments.baseline or refs[0].name
    used = {suite.judge for suite in recipe.suites if suite.judge}
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(RayCluster(executor)) if executor.kind == "ray" else None
        if cluster is not None:
            console.print(describe(executor, cluster), style="cyan", markup=False)
        code = _evaluate(arguments, console, recipe, refs, items, judges, used, baseline,
                         cache_dir, output, cluster)
    return code


def _evaluate(arguments: argparse.Namespace, console: Console, recipe: Any, refs: list[Any],
              items: dict[str, Any], judges: dict[str, str], used: set[str], baseline: str,
              cache_dir: Path, output: Path, cluster: RayCluster | None) -> int:
    """Generate, judge and report; on `cluster` when given, else in this process."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )

    from qalign_dsl.eval.generate import GenerationStore, load_generator
    from qalign_dsl.eval.report import build_results, render_markdown, rich_table, write_plots
    from qalign_dsl.eval.run import evaluate
    from qalign_dsl.judge.backend import JudgeError
    from qalign_dsl.judge.labels import LabelTokenError
    from qalign_dsl.training.config import ConfigError

    # Created once the judges load: a failure before that leaves no file behind.
    store: GenerationStore | None = None
    answers = cache_dir / "answers.sqlite"
    try:
        classifiers: dict[str, Any] = {}
        from dataclasses import replace

        from qalign_dsl.eval.classify import build_classifier

        if cluster is not None and not note_cache(console, cluster.spec, True, answers):
            answers_for_actors = None
        else:
            answers_for_actors = answers
        for name in sorted(used):
            spec = recipe.judges[name]
            if name in judges:
                spec = replace(spec, model=judges[name])
            if not spec.model:
                raise UsageError(f"judge `{name}` has no model: give --judge {name}=MODEL "
                                 "or `model:` in the recipe")
            if cluster is None:
                classifiers[name] = build_classifier(spec, answers, arguments.device)
            else:
                classifiers[name] = RayClassifier(cluster, ClassifyWorker(
                    spec, answers_for_actors, arguments.device))
        store = GenerationStore(cache_dir / "generations.sqlite")
        # Ray Data draws its own progress; two bars on one terminal would fight.
        quiet = cluster is not None
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console, transient=True,
                      disable=quiet) as bars:
            tasks: dict[tuple[str, str, str], TaskID] = {}

            def progress(stage: str, suite: str, model: str, advance: int, total: int) -> None:
                key = (stage, suite, model)
                if key not in tasks:
                    tasks[key] = bars.add_task(f"{stage} {model} · {suite}", total=total)
                bars.advance(tasks[key], advance)

            def make_generator(ref: Any) -> Any:
                if cluster is not None:
                    return RayGenerator(cluster, GenerateWorker(
                        ref.path, recipe.sampling, arguments.engine, arguments.device))
                return load_generator(ref.path, recipe.sampling, arguments.engine,
                                      arguments.device)

            run = evaluate(recipe, refs, items, make_generator, store, classifiers, progress,
                           baseline=baseline, judge_batch=arguments.judge_batch)
    except (ConfigError, JudgeError, LabelTokenError, ValueError, OSError,
            WorkerError) as error:
        console.print(f"qalc eval: {error}", style="red", markup=False)
        return ExitCode.PROBLEMS
    except sqlite3.Error as error:  # a generations or answers cache qalc did not write
        console.print(f"qalc eval: {cache_dir}: a cache file is not a usable SQLite "
                      f"database ({error}); remove it or choose another --cache-dir",
                      style="red", markup=False)
        return ExitCode.PROBLEMS
    except Exception as error:
        message = task_failure(error)
        if message is None:
            raise
        console.print(f"qalc eval: {message}; finished generations are cached — rerun to "
                      "resume", style="red", markup=False)
        return ExitCode.PROBLEMS
    finally:
        if store is not None:
            store.close()

    results = build_results(run, {name: c.identity for name, c in classifiers.items()},
                            baseline)
    write_atomic(output / "results.json",
                 (json.dumps(results, indent=2, ensure_ascii=False) + "\n").encode())
    write_atomic(output / "report.md", render_markdown(results).encode())
    plots = [] if arguments.no_plots else write_plots(results, output / "plots")
    table_console = Console(highlight=False, soft_wrap=False, width=max(100, console.width))
    table_console.print(rich_table(results))
    generation = results["generation"]
    console.print(f"{generation['generated']} generated, {generation['cached']} from the cache; "
                  f"wrote {output / 'results.json'}, {output / 'report.md'}"
                  + (f", {len(plots)} plot(s) in {output / 'plots'}" if plots else ""),
                  markup=False)
    if arguments.explain:
        return _explain(table_console, run, arguments.explain)
    return ExitCode.OK


def _explain(console: Console, run: Any, item_id: str) -> int:
    from rich.panel import Panel
    from rich.text import Text

    from qalign_dsl.eval.report import explain_item

    entries = explain_item(run, item_id)
    if not entries:
        raise UsageError(f"--explain: no prompt with id `{item_id}` in any suite")
    first = entries[0]
    prompt = "\n".join(f"{m['role']}: {m['content']}" for m in first["prompt"])
    console.print(Panel(Text(prompt), title=Text(f"{item_id} ({first['where']})")))
    for entry in entries:
        title = f"{entry['suite']} · {entry['model']} · sample {entry['sample']}"
        lines = [entry["response"] or "(empty response)", ""]
        if "answers" in entry:
            verdict = {True: "FLAGGED", False: "not flagged", None: "NA"}[entry["flagged"]]
            reward = "NA" if entry["reward"] is None else f"{entry['reward']:+.3f}"
            lines.append(f"{entry['metric'].upper()} classifier: {verdict} (reward {reward})")
            for answer in entry["answers"]:
                labels = ("no answer" if answer["labels"] is None else ", ".join(
                    f"{k} {v:.2f}" for k, v in answer["labels"].items()))
                lines.append(f"  {answer['question']}  →  {labels}")
        else:
            lines.append(f"extracted {entry['extracted']!r}, reference {entry['reference']!r}")
        console.print(Panel(Text("\n".join(lines)), title=Text(title)))
    return ExitCode.OK


# --- --executor ray: the generation and classification stages on a pool of actors ---------


@dataclass(frozen=True)
class GenerateWorker:
    """What a Ray actor needs to generate as `qalc eval` does (picklable): called once per
    actor, it loads the model; each unit is one local batch (conversations, seed)."""

    path: str
    sampling: Sampling
    engine: str
    device: str

    def __call__(self) -> Callable[[str], str]:
        from qalign_dsl.eval.generate import load_generator

        try:
            generator = load_generator(self.path, self.sampling, self.engine, self.device)
        except (OSError, ValueError, ImportError) as error:
            raise WorkerError(f"cannot load `{self.path}`: {error}") from None

        def work(unit: str) -> str:
            conversations, seed = json.loads(unit)
            return as_json(generator.generate(conversations, seed))

        return work


class RayGenerator:
    """A `BatchGenerator` (eval/generate.py) whose batches run on the cluster's actors."""

    def __init__(self, cluster: RayCluster, worker: GenerateWorker) -> None:
        self.cluster = cluster
        self.worker = worker
        self.calls = 0

    def generate_batches(self, batches: Sequence[Batch]) -> Iterator[list[str]]:
        units = [as_json([list(conversations), seed]) for conversations, seed in batches]
        for result in self.cluster.run("generate", self.worker, units,
                                       self.worker.sampling.batch_size):
            self.calls += 1
            yield [str(text) for text in json.loads(result)]

    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]:
        return next(iter(self.generate_batches([(conversations, seed)])))


@dataclass(frozen=True)
class ClassifyWorker:
    """What a Ray actor needs to classify as `qalc eval` does (picklable): called once per
    actor, it builds the classifier (judge, rubric, answer cache where reachable)."""

    spec: ClassifierSpec
    cache: Path | None
    device: str

    def __call__(self) -> Callable[[str], str]:
        from qalign_dsl.eval.classify import build_classifier
        from qalign_dsl.judge.backend import JudgeError
        from qalign_dsl.judge.labels import LabelTokenError

        try:
            classifier = build_classifier(self.spec, self.cache, self.device)
        except (JudgeError, LabelTokenError, OSError, ValueError, sqlite3.Error) as error:
            raise WorkerError(f"judge `{self.spec.name}`: {error}") from None

        def work(unit: str) -> str:
            samples = [(conversation, response) for conversation, response in json.loads(unit)]
            try:
                verdicts = classifier.classify(samples, batch_size=len(samples))
            except JudgeError as error:
                raise WorkerError(f"judge `{self.spec.name}`: {error}") from None
            return as_json({"identity": classifier.identity, "verdicts": [
                [v.flagged, v.reward, [list(answer) for answer in v.answers]]
                for v in verdicts]})

        return work


class RayClassifier:
    """`Classifier.classify` and `.identity` (eval/classify.py) with the judging done by
    the cluster's actors, one local batch (`batch_size` responses) per unit."""

    def __init__(self, cluster: RayCluster, worker: ClassifyWorker) -> None:
        self.cluster = cluster
        self.worker = worker
        self._identity: dict[str, Any] | None = None

    @property
    def identity(self) -> dict[str, Any]:
        if self._identity is None:  # nothing was judged: ask a local build once
            from qalign_dsl.eval.classify import build_classifier

            self._identity = build_classifier(self.worker.spec, None,
                                              self.worker.device).identity
        return self._identity

    def classify(self, samples: Sequence[tuple[Any, str]], batch_size: int = 16,
                 progress: Callable[[int], None] | None = None) -> list[Verdict]:
        from qalign_dsl.eval.classify import Verdict

        units = [as_json([list(sample) for sample in samples[start:start + batch_size]])
                 for start in range(0, len(samples), batch_size)]
        verdicts: list[Verdict] = []
        for result in self.cluster.run("classify", self.worker, units, batch_size):
            decoded = json.loads(result)
            self._identity = decoded["identity"]
            chunk = [Verdict(flagged, reward, tuple(tuple(answer) for answer in answers))
                     for flagged, reward, answers in decoded["verdicts"]]
            verdicts += chunk
            if progress:
                progress(len(chunk))
        return verdicts
