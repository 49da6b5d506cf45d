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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from qalign_dsl.cli import validation
from qalign_dsl.cli.common import ExitCode, UsageError
from qalign_dsl.cli.datasource import add_source_arguments, read_source, source_from_arguments
from qalign_dsl.cli.inputs import check_id, prompt_problem
from qalign_dsl.cli.judge_options import add_backend_arguments, make_backend
from qalign_dsl.cli.outputs import OutputLock, check_output
from qalign_dsl.cli.rubric import load_rubric
from qalign_dsl.cli.tables import ResumableOutput, is_parquet


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "synth", help="synthesize SFT data: draft, rubric-guided reflection, revision",
        description="For each prompt: the policy drafts, the judge applies the rubric, a "
        "reflection is written from the failed or low questions, the reviser revises; rows "
        "whose revision improves by --margin are kept.")
    parser.add_argument("compiled", type=Path, metavar="COMPILED")
    parser.add_argument("prompts", type=Path, metavar="PROMPTS",
                        help="rows with `prompt` (string or chat messages) and optional `id`: "
                        "JSONL, CSV, parquet, a datasets folder or a Hub dataset")
    add_source_arguments(parser, ("prompt", "id"))
    parser.add_argument("--policy", required=True, help="model that writes the drafts")
    parser.add_argument("--reviser", help="model that writes revisions (default: --policy)")
    parser.add_argument("--critic", help="model that writes reflections (default: a template "
                        "from the rubric's findings)")
    add_backend_arguments(parser, "--judge", "the judge", default_backend="transformers")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--engine", choices=["auto", "transformers", "vllm"], default="auto",
                        help="generation engine for the policy, reviser and critic (vllm: "
                        "every conversation of a batch in one call; auto: vLLM when importable "
                        "on a GPU, else transformers)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--margin", type=_margin, default=0.0,
                        help="keep a row when revision reward - draft reward > MARGIN (>= 0: "
                        "a revision that scores lower than its draft is never kept)")
    parser.add_argument("--batch-size", type=int, default=4)
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
    parser.set_defaults(run=run_synth)


def _margin(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got `{text}`") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be >= 0 and finite, got {text}: a row is kept only when its revision "
            "improves on its draft (use --margin 0 to keep every improvement)")
    return value


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
    from qalign_dsl.judge.runtime import Judge
    from qalign_dsl.training.synth import synthesize
    from qalign_dsl.training.vllm_generate import load_synth_generator

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
    if arguments.pairs:
        return _run_pairs(arguments, console, rubric.document, items)
    outputs = ResumableOutput(arguments.output), ResumableOutput(dropped_path)
    done = outputs[0].finished() | outputs[1].finished()
    todo = [item for item in items if item[0] not in done]
    if done:
        console.print(f"resuming: {len(done)} prompt(s) already decided, {len(todo)} to go",
                      style="cyan")
    try:
        judge = Judge(rubric.document, make_backend(arguments))
        def load(model: str, temperature: float) -> Any:
            return load_synth_generator(model, arguments.engine, arguments.device,
                                        arguments.max_new_tokens, temperature)

        policy = load(arguments.policy, arguments.temperature)
        reviser = policy if not arguments.reviser or arguments.reviser == arguments.policy else \
            load(arguments.reviser, arguments.temperature)
        critic = load(arguments.critic, 0.0) if arguments.critic else None
    except (JudgeError, LabelTokenError, OSError, ValueError) as error:
        console.print(f"synth: {error}", style="red", markup=False)
        return ExitCode.PROBLEMS
    kept = dropped = 0
    gains: list[float] = []
    progress = Progress(TextColumn("synthesizing"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    started = time.perf_counter()
    with progress, outputs[0].open() as out, outputs[1].open() as rejected:
        task = progress.add_task("synth", total=len(todo))
        for start in range(0, len(todo), arguments.batch_size):
            batch = todo[start:start + arguments.batch_size]
            try:
                rows = synthesize(rubric.document, judge, policy, reviser, batch,
                                  arguments.margin, critic)
            except JudgeError as error:
                console.print(f"judge: {error}; decided rows are saved — rerun to resume",
                              style="red", markup=False)
                return ExitCode.PROBLEMS
            for row in rows:
                sink = out if row.kept else rejected
                sink.write(json.dumps(row.record, ensure_ascii=False) + "\n")
                sink.flush()
                provenance = row.record["provenance"]
                if row.kept:
                    kept += 1
                    gains.append(provenance["revision_reward"] - provenance["draft_reward"])
                else:
                    dropped += 1
            progress.update(task, completed=start + len(batch))
    for output in outputs:
        output.finish()
    table = Table(title=f"synthesized {kept + dropped} prompt(s) in "
                  f"{time.perf_counter() - started:.1f} s")
    table.add_column("kept", justify="right")
    table.add_column("dropped", justify="right")
    table.add_column("mean improvement (kept)", justify="right")
    table.add_row(str(kept), str(dropped),
                  f"{sum(gains) / len(gains):+.3f}" if gains else "—")
    console.print(table)
    return ExitCode.OK


def dropped_output(output: Path) -> Path:
    """Where the dropped rows of OUT go: OUT.dropped.jsonl, or OUT.dropped.parquet."""
    suffix = ".parquet" if is_parquet(output) else ".jsonl"
    return output.with_name(output.name.removesuffix(suffix) + ".dropped" + suffix)


def decided_prompts(path: Path) -> set[str]:
    """Prompt ids already decided in a pairs file (each row names its prompt)."""
    return {str(row["provenance"]["prompt_id"]) for row in ResumableOutput(path).records()}


def _run_pairs(arguments: argparse.Namespace, console: Console, document: Mapping[str, Any],
               items: list[tuple[str, Any]]) -> int:
    from qalign_dsl.judge.backend import JudgeError
    from qalign_dsl.judge.labels import LabelTokenError
    from qalign_dsl.judge.runtime import Judge
    from qalign_dsl.training.pairs import rank_pairs
    from qalign_dsl.training.vllm_generate import load_synth_generator

    dropped_path = dropped_output(arguments.output)
    outputs = ResumableOutput(arguments.output), ResumableOutput(dropped_path)
    done = decided_prompts(arguments.output) | decided_prompts(dropped_path)
    todo = [item for item in items if item[0] not in done]
    if done:
        console.print(f"resuming: {len(done)} prompt(s) already decided, {len(todo)} to go",
                      style="cyan")
    try:
        judge = Judge(document, make_backend(arguments))
        policy: Any = load_synth_generator(arguments.policy, arguments.engine, arguments.device,
                                           arguments.max_new_tokens,
                                           arguments.temperature or 1.0, seed=arguments.seed)
    except (JudgeError, LabelTokenError, OSError, ValueError) as error:
        console.print(f"synth: {error}", style="red", markup=False)
        return ExitCode.PROBLEMS
    pairs = dropped = 0
    gaps: list[float] = []
    progress = Progress(TextColumn("ranking pairs"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    started = time.perf_counter()
    with progress, outputs[0].open() as out, outputs[1].open() as rejected:
        task = progress.add_task("pairs", total=len(todo))
        for start in range(0, len(todo), arguments.batch_size):
            batch = todo[start:start + arguments.batch_size]
            try:
                ranked = rank_pairs(document, judge, policy, batch, arguments.samples,
                                    arguments.margin, arguments.pairs_per_prompt)
            except JudgeError as error:
                console.print(f"judge: {error}; decided prompts are saved — rerun to resume",
                              style="red", markup=False)
                return ExitCode.PROBLEMS
            for result in ranked:
                for row in result.rows:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    provenance = row["provenance"]
                    gaps.append(provenance["chosen_reward"] - provenance["rejected_reward"])
                    pairs += 1
                if not result.rows:
                    rejected.write(json.dumps({"id": result.prompt_id, "provenance": {
                        "prompt_id": result.prompt_id, "sample_rewards": result.rewards,
                        "reason": f"no pair differs by more than --margin {arguments.margin}"}},
                        ensure_ascii=False) + "\n")
                    dropped += 1
            out.flush()
            rejected.flush()
            progress.update(task, completed=start + len(batch))
    for output in outputs:
        output.finish()
    table = Table(title=f"ranked {len(todo)} prompt(s) in {time.perf_counter() - started:.1f} s")
    table.add_column("pairs", justify="right")
    table.add_column("prompts without a pair", justify="right")
    table.add_column("mean reward gap", justify="right")
    table.add_row(str(pairs), str(dropped), f"{sum(gaps) / len(gaps):+.3f}" if gaps else "—")
    console.print(table)
    return ExitCode.OK
