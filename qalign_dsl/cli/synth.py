"""`qalc synth`: synthesize SFT rows (draft → rubric → reflection → revision → keep), or
with `--pairs` rubric-ranked preference pairs for DPO (training/pairs.py).

Kept rows go to OUT (a TRL conversational dataset: `messages` + provenance); dropped rows
to OUT with `.dropped.jsonl`, so a rerun skips every prompt already decided — kept or not —
and a row cut off by a kill is redone.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from qalign_dsl.cli import validation
from qalign_dsl.cli.common import ExitCode, UsageError
from qalign_dsl.cli.datasource import add_source_arguments, read_source, source_from_arguments
from qalign_dsl.cli.inputs import check_id, prompt_problem
from qalign_dsl.cli.judge_options import add_backend_arguments, make_judge
from qalign_dsl.cli.outputs import OutputLock, check_output
from qalign_dsl.cli.ray_executor import (
    RayCluster,
    WorkerError,
    add_executor_arguments,
    as_json,
    describe,
    executor_from_arguments,
    require_ray,
    task_failure,
)
from qalign_dsl.cli.rubric import add_compiled_argument, load_rubric
from qalign_dsl.cli.tables import ResumableOutput, is_parquet


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "synth", help="synthesize SFT data: draft, rubric-guided reflection, revision",
        description="For each prompt: the policy drafts, the judge applies the rubric, a "
        "reflection is written from the failed or low questions, the reviser revises; rows "
        "whose revision improves by --margin are kept.")
    add_compiled_argument(parser)
    parser.add_argument("prompts", type=Path, metavar="PROMPTS",
                        help="rows with `prompt` (string or chat messages) and optional `id`: "
                        "JSONL, CSV, parquet, a datasets folder or a Hub dataset")
    add_source_arguments(parser, ("prompt", "id"))
    parser.add_argument("--policy", required=True, help="model that writes the drafts")
    parser.add_argument("--reviser", help="model that writes revisions (default: --policy)")
    parser.add_argument("--critic", help="model that writes reflections (default: a template "
                        "from the rubric's findings)")
    add_backend_arguments(parser, "--judge", "the judge", default_backend="transformers",
                          command="synth")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="tokens generated for each draft, reflection and revision")
    parser.add_argument("--engine", choices=["auto", "transformers", "vllm"], default="auto",
                        help="generation engine for the policy, reviser and critic (vllm: "
                        "every conversation of a batch in one call; auto: vLLM when importable "
                        "on a GPU, else transformers)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature of the policy and reviser (0: greedy; "
                        "--pairs samples at 1.0 when this is 0)")
    parser.add_argument("--margin", default=0.0, type=validation.number_type(
                            float, 0.0, "a row is kept only when its revision improves on its "
                            "draft (use --margin 0 to keep every improvement)"),
                        help="keep a row when revision reward - draft reward > MARGIN (>= 0: "
                        "a revision that scores lower than its draft is never kept)")
    parser.add_argument("--batch-size", type=int, default=4,
                        help="prompts generated and judged together")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="kept rows, .jsonl or .parquet (dropped rows go beside it, "
                        "OUT.dropped.jsonl or OUT.dropped.parquet)")
    pairs = parser.add_argument_group(
        "preference pairs (--pairs)", "for DPO: sample several responses per prompt and pair "
        "the best with the worst by rubric reward (TRL's preference format)")
    pairs.add_argument("--pairs", action="store_true",
                       help="write preference pairs instead of SFT rows")
    pairs.add_argument("--samples", type=int, default=4, help="responses sampled per prompt")
    pairs.add_argument("--pairs-per-prompt", type=int, default=1,
                       help="pair the i-th best with the i-th worst for i < N")
    pairs.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_executor_arguments(parser)
    parser.set_defaults(run=run_synth)


def _read_prompts(path: Path, console: Console, arguments: argparse.Namespace
                  ) -> list[tuple[str, Any]] | None:
    def report(where: str, problem: str) -> None:
        console.print(f"{where}: {problem}", style="red", markup=False)

    spec, columns = source_from_arguments(arguments, path, "PROMPTS")
    records, bad = read_source(spec, columns, _prompt_row_problem, report, required=("prompt",))
    if bad:
        noun = "line" if spec.kind == "jsonl" else "row"
        console.print(f"{bad} bad {noun}(s) in {spec.describe()}", style="red")
        return None
    return [(key, record["prompt"]) for key, record in records]


def _prompt_row_problem(record: Any) -> str | None:
    if not isinstance(record, dict) or "prompt" not in record:
        return "missing `prompt` (a string or chat messages)"
    if "id" in record:
        check_id(record["id"])
    return prompt_problem(record["prompt"])


def run_synth(arguments: argparse.Namespace, console: Console) -> int:
    validation.positive_int("--batch-size", arguments.batch_size, 100_000)
    validation.positive_int("--max-new-tokens", arguments.max_new_tokens, 1_000_000)
    validation.finite_float("--temperature", arguments.temperature, minimum=0.0, maximum=100.0)
    validation.backend_options(arguments)
    validation.device("--device", arguments.device)  # the policy runs on it whatever the judge
    validation.positive_int("--samples", arguments.samples, 1024)
    validation.positive_int("--pairs-per-prompt", arguments.pairs_per_prompt, 1024)
    validation.non_negative_int("--seed", arguments.seed, 2**32 - 1)
    if executor_from_arguments(arguments).kind == "ray":
        require_ray()
    dropped_path = dropped_output(arguments.output)
    inputs = [arguments.compiled, arguments.prompts]
    source_from_arguments(arguments, arguments.prompts, "PROMPTS")  # usage errors first
    check_output(arguments.output, inputs)
    check_output(dropped_path, inputs,
                 "-o (its .dropped" + (".parquet)" if is_parquet(dropped_path) else ".jsonl)"))
    if is_parquet(arguments.output):
        for path in (arguments.output, dropped_path):
            check_output(ResumableOutput(path).journal, inputs,
                         "-o (its .partial.jsonl journal)")
    with OutputLock(arguments.output):
        return _synth(arguments, console, dropped_path)


def _synth(arguments: argparse.Namespace, console: Console, dropped_path: Path) -> int:
    from qalign_dsl.judge.backend import JudgeError
    from qalign_dsl.judge.labels import LabelTokenError

    if arguments.pairs and (arguments.samples < 2 or arguments.pairs_per_prompt < 1):
        raise UsageError("--pairs needs --samples of at least 2 and --pairs-per-prompt of at "
                         "least 1")
    if arguments.pairs and arguments.samples < 2 * arguments.pairs_per_prompt:
        raise UsageError(f"--pairs-per-prompt {arguments.pairs_per_prompt} needs --samples of "
                         f"at least {2 * arguments.pairs_per_prompt}")
    rubric = load_rubric(arguments.compiled, console)
    items = _read_prompts(arguments.prompts, console, arguments) if rubric is not None else None
    if rubric is None or items is None:
        return ExitCode.PROBLEMS
    outputs = ResumableOutput(arguments.output), ResumableOutput(dropped_path)
    if arguments.pairs:
        done = decided_prompts(arguments.output) | decided_prompts(dropped_path)
    else:
        done = outputs[0].finished() | outputs[1].finished()
    todo = [item for item in items if item[0] not in done]
    if done:
        console.print(f"resuming: {len(done)} prompt(s) already decided, {len(todo)} to go",
                      style="cyan")
    text = PAIRS_TEXT if arguments.pairs else SFT_TEXT
    executor = executor_from_arguments(arguments)
    if executor.kind == "ray" and todo:
        with RayCluster(executor) as cluster:  # connected and checked before any output
            console.print(describe(executor, cluster), style="cyan", markup=False)
            worker = SynthWorker(rubric.document, _plain(arguments))
            units = [as_json(todo[start:start + arguments.batch_size])
                     for start in range(0, len(todo), arguments.batch_size)]
            batches = (_decoded(result) for result in
                       cluster.run("synth", worker, units, arguments.batch_size))
            return _write_decided(console, todo, outputs, text, batches, progress_bar=False)
    try:
        mode = _build_mode(arguments, rubric.document)
    except (JudgeError, LabelTokenError, OSError, ValueError) as error:
        console.print(f"synth: {error}", style="red", markup=False)
        return ExitCode.PROBLEMS
    batches = (mode(todo[start:start + arguments.batch_size])
               for start in range(0, len(todo), arguments.batch_size))
    return _write_decided(console, todo, outputs, text, batches)


def _build_mode(arguments: argparse.Namespace, document: Mapping[str, Any]) -> Decide:
    """The judge and the generators of the mode, loaded; what decides one batch."""
    judge = make_judge(arguments, document)  # a student judge with its cascade, too
    return (_pairs_mode if arguments.pairs else _sft_mode)(arguments, document, judge)


def _plain(arguments: argparse.Namespace) -> argparse.Namespace:
    """The options without the command's `run` function: what a Ray actor is sent."""
    return argparse.Namespace(**{k: v for k, v in vars(arguments).items() if k != "run"})


@dataclass(frozen=True)
class SynthWorker:
    """What a Ray actor needs to decide prompts as `qalc synth` does (picklable); called
    once per actor, it loads the judge and the generators and returns the function that
    decides one unit (a batch of (id, prompt))."""

    document: Mapping[str, Any]
    arguments: argparse.Namespace

    def __call__(self) -> Callable[[str], str]:
        from qalign_dsl.judge.backend import JudgeError
        from qalign_dsl.judge.labels import LabelTokenError

        try:
            decide = _build_mode(self.arguments, self.document)
        except (JudgeError, LabelTokenError, OSError, ValueError) as error:
            raise WorkerError(str(error)) from None

        def work(unit: str) -> str:
            batch = [(key, prompt) for key, prompt in json.loads(unit)]
            try:
                decided = decide(batch)
            except JudgeError as error:
                raise WorkerError(str(error)) from None
            return as_json([[row.record, row.kept, row.gain] for row in decided])

        return work


def _decoded(result: str) -> list[_Decided]:
    return [_Decided(record, kept, gain) for record, kept, gain in json.loads(result)]


@dataclass(frozen=True)
class _Decided:
    """One output row: kept (OUT) or dropped (the sidecar), and what the summary averages."""

    record: dict[str, Any]
    kept: bool
    gain: float | None = None


@dataclass(frozen=True)
class _ModeText:
    """What the terminal says, by mode (SFT synthesis or pair ranking)."""

    verb: str                    # the progress bar's: "synthesizing" / "ranking pairs"
    done: str                    # the summary's: "synthesized" / "ranked"
    columns: tuple[str, str, str]  # kept, dropped, mean gain


SFT_TEXT = _ModeText("synthesizing", "synthesized", ("kept", "dropped", "mean improvement (kept)"))
PAIRS_TEXT = _ModeText("ranking pairs", "ranked",
                       ("pairs", "prompts without a pair", "mean reward gap"))
Decide = Callable[[list[tuple[str, Any]]], list[_Decided]]


def _sft_mode(arguments: argparse.Namespace, document: Mapping[str, Any], judge: Any) -> Decide:
    from qalign_dsl.training.synth import synthesize
    from qalign_dsl.training.vllm_generate import load_synth_generator

    def load(model: str, temperature: float) -> Any:
        return load_synth_generator(model, arguments.engine, arguments.device,
                                    arguments.max_new_tokens, temperature)

    policy = load(arguments.policy, arguments.temperature)
    reviser = policy if not arguments.reviser or arguments.reviser == arguments.policy else \
        load(arguments.reviser, arguments.temperature)
    critic = load(arguments.critic, 0.0) if arguments.critic else None

    def decide(batch: list[tuple[str, Any]]) -> list[_Decided]:
        decided = []
        for row in synthesize(document, judge, policy, reviser, batch, arguments.margin, critic):
            provenance = row.record["provenance"]
            gain = provenance["revision_reward"] - provenance["draft_reward"]
            decided.append(_Decided(row.record, row.kept, gain if row.kept else None))
        return decided

    return decide


def _pairs_mode(arguments: argparse.Namespace, document: Mapping[str, Any], judge: Any) -> Decide:
    from qalign_dsl.training.pairs import rank_pairs
    from qalign_dsl.training.vllm_generate import load_synth_generator

    policy: Any = load_synth_generator(arguments.policy, arguments.engine, arguments.device,
                                       arguments.max_new_tokens, arguments.temperature or 1.0,
                                       seed=arguments.seed)

    def decide(batch: list[tuple[str, Any]]) -> list[_Decided]:
        decided = []
        for result in rank_pairs(document, judge, policy, batch, arguments.samples,
                                 arguments.margin, arguments.pairs_per_prompt):
            for row in result.rows:
                provenance = row["provenance"]
                gap = provenance["chosen_reward"] - provenance["rejected_reward"]
                decided.append(_Decided(row, True, gap))
            if not result.rows:
                decided.append(_Decided({"id": result.prompt_id, "provenance": {
                    "prompt_id": result.prompt_id, "sample_rewards": result.rewards,
                    "reason": f"no pair differs by more than --margin {arguments.margin}"}},
                    False))
        return decided

    return decide


def _write_decided(console: Console, todo: list[tuple[str, Any]],
                   outputs: tuple[ResumableOutput, ResumableOutput], text: _ModeText,
                   batches: Iterator[list[_Decided]], progress_bar: bool = True) -> int:
    """Write each decided batch as it comes, flushed, so a kill loses at most the batches in
    flight and a rerun resumes after the last flushed row; then the summary. The same for a
    local run (`batches` decided here) and a Ray run (decided by the actors)."""
    from qalign_dsl.judge.backend import JudgeError

    kept = dropped = 0
    gains: list[float] = []
    # Ray Data draws its own progress; two bars on one terminal would fight.
    progress = Progress(TextColumn(text.verb), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, transient=True,
                        disable=not progress_bar)
    started = time.perf_counter()
    with progress, outputs[0].open() as out, outputs[1].open() as rejected:
        task = progress.add_task(text.verb, total=len(todo))
        try:
            for decided in batches:
                for row in decided:
                    (out if row.kept else rejected).write(
                        json.dumps(row.record, ensure_ascii=False) + "\n")
                    kept += row.kept
                    dropped += not row.kept
                    if row.gain is not None:
                        gains.append(row.gain)
                out.flush()
                rejected.flush()
                progress.advance(task, len({_prompt_of(row) for row in decided}))
        except (JudgeError, WorkerError) as error:
            console.print(f"judge: {error}; decided rows are saved — rerun to resume",
                          style="red", markup=False)
            return ExitCode.PROBLEMS
        except Exception as error:
            message = task_failure(error)
            if message is None:
                raise
            console.print(f"{message}; decided rows are saved — rerun to resume", style="red",
                          markup=False)
            return ExitCode.PROBLEMS
    for output in outputs:
        output.finish()
    table = Table(title=f"{text.done} {len(todo)} prompt(s) in "
                  f"{time.perf_counter() - started:.1f} s")
    for column in text.columns:
        table.add_column(column, justify="right")
    table.add_row(str(kept), str(dropped), f"{sum(gains) / len(gains):+.3f}" if gains else "—")
    console.print(table)
    return ExitCode.OK


def _prompt_of(row: _Decided) -> str:
    """The prompt a row decides (a pair row names it in its provenance)."""
    return str(row.record.get("provenance", {}).get("prompt_id", row.record.get("id")))


def dropped_output(output: Path) -> Path:
    """Where the dropped rows of OUT go: OUT.dropped.jsonl, or OUT.dropped.parquet."""
    suffix = ".parquet" if is_parquet(output) else ".jsonl"
    return output.with_name(output.name.removesuffix(suffix) + ".dropped" + suffix)


def decided_prompts(path: Path) -> set[str]:
    """Prompt ids already decided in a pairs file (each row names its prompt)."""
    return {str(row["provenance"]["prompt_id"]) for row in ResumableOutput(path).records()}
