"""`qalc score`: judge (prompt, response) pairs with a compiled constitution.

Output lines are those of `qalc aggregate` plus the answer distributions. The output file
is also the checkpoint: every finished row is appended and flushed, and a rerun with the
same output skips the ids already there (a row cut off by a kill is dropped and redone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text
from rich.tree import Tree

from qalign_dsl.cli import validation
from qalign_dsl.cli.common import ExitCode, UsageError
from qalign_dsl.cli.datasource import add_source_arguments, read_source, source_from_arguments
from qalign_dsl.cli.inputs import BadInput, check_id, prompt_problem
from qalign_dsl.cli.judge_options import (
    add_backend_arguments,
    add_cache_arguments,
    build_judge,
    judge_spec,
)
from qalign_dsl.cli.outputs import OutputLock, check_output
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
from qalign_dsl.cli.rubric import (
    add_compiled_argument,
    evaluation_lists,
    load_rubric,
    print_summary,
)
from qalign_dsl.cli.tables import ResumableOutput, is_parquet
from qalign_dsl.executor import ExecutorSpec
from qalign_dsl.judge.normalize import DEFAULT_RULE, RULES
from qalign_dsl.judge.spec import JudgeSpec

if TYPE_CHECKING:
    from qalign_dsl.evaluate.aggregate import CompiledRubric
    from qalign_dsl.judge.runtime import Judge


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "score", help="judge (prompt, response) pairs and pool the answers into rewards",
        description="Judge every question of a compiled constitution for each row of DATA "
        "(`prompt`, `response` and optional `id`; JSONL, CSV, parquet, a datasets folder or "
        "a Hub dataset).")
    add_compiled_argument(parser)
    parser.add_argument("data", type=Path, metavar="DATA",
                        help="the (prompt, response) rows to judge (see --format)")
    add_source_arguments(parser, ("prompt", "response", "id"))
    add_backend_arguments(parser, ("--judge", "--model"), "the judge",
                          default_backend="transformers", command="score")
    parser.add_argument("--batch-size", type=int, default=8, help="samples judged per step")
    add_cache_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, help="output .jsonl or .parquet (default: "
                        "JSONL on stdout)")
    parser.add_argument("--explain", metavar="ID", help="print one sample's full breakdown")
    parser.add_argument("--normalize", choices=RULES, default=DEFAULT_RULE,
                        help="Unicode normalisation of what the judge sees (docs/judge.md); "
                        "the count of changed characters is `normalized_chars`")
    parser.add_argument("--shard", type=parse_shard, metavar="I/N",
                        help="judge only rows I, I+N, I+2N, … (0-based) of DATA, e.g. one "
                        "machine of N; join the outputs with `qalc merge`")
    add_executor_arguments(parser)
    parser.set_defaults(run=run_score)


def parse_shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/4, got `{text}`") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected 0 <= I < N, got `{text}`")
    return i, n


def _read_data(path: Path, console: Console, arguments: argparse.Namespace | None = None
               ) -> list[dict[str, Any]] | None:
    def report(where: str, problem: str) -> None:
        console.print(f"{where}: {problem}", style="red", markup=False)

    if arguments is None:  # JSONL, as `qalc merge` reads DATA
        arguments = argparse.Namespace()
    spec, columns = source_from_arguments(arguments, path)
    records, problems = read_source(spec, columns, _row_problem, report,
                                    required=("prompt", "response"))
    if problems:
        noun = "line" if spec.kind == "jsonl" else "row"
        console.print(f"{problems} bad {noun}(s) in {spec.describe()}; fix them and rerun "
                      "(finished rows are kept)", style="red")
        return None
    return [{"id": record["id"], "key": key, "prompt": record["prompt"],
             "response": record["response"]} for key, record in records]


def _row_problem(record: Any) -> str | None:
    """What is wrong with one data row, or None."""
    if not isinstance(record, dict):
        return "expected a JSON object with `prompt` and `response`"
    if "id" in record:
        check_id(record["id"])
    prompt, response = record.get("prompt"), record.get("response")
    if prompt is None:
        return "missing `prompt`"
    problem = prompt_problem(prompt)
    if problem:
        return problem
    if not isinstance(response, str):
        return "missing `response` (a string)"
    return None


def run_score(arguments: argparse.Namespace, console: Console) -> int:

    validation.positive_int("--batch-size", arguments.batch_size, 100_000)
    validation.backend_options(arguments)
    executor = executor_from_arguments(arguments)
    if executor.kind == "ray":
        if arguments.explain is not None:
            raise UsageError("--explain judges one row on this machine; leave out "
                             "--executor ray")
        require_ray()
    inputs = [arguments.compiled, arguments.data]
    source_from_arguments(arguments, arguments.data)  # usage errors before anything loads
    writes_output = arguments.output is not None and arguments.explain is None
    if writes_output:
        check_output(arguments.output, inputs)
        if is_parquet(arguments.output):
            check_output(ResumableOutput(arguments.output).journal, inputs,
                         "-o (its .partial.jsonl journal)")
    if not arguments.no_cache:
        check_output(arguments.cache, inputs + ([arguments.output] if writes_output else []),
                     "--cache")
    with contextlib.ExitStack() as stack:
        if writes_output:
            stack.enter_context(OutputLock(arguments.output))
        return _score(arguments, console)


def _score(arguments: argparse.Namespace, console: Console) -> int:
    rubric = load_rubric(arguments.compiled, console)
    if rubric is None:
        return ExitCode.PROBLEMS
    rows = _read_data(arguments.data, console, arguments)
    if rows is None:
        return ExitCode.PROBLEMS
    if arguments.shard is not None:
        index, count = arguments.shard
        rows = rows[index::count]
    if arguments.explain is not None and not any(r["key"] == arguments.explain for r in rows):
        console.print(f"--explain: no row with id `{arguments.explain}` in {arguments.data}",
                      style="red", markup=False)
        return ExitCode.USAGE
    output = ResumableOutput(arguments.output) if arguments.output else None
    finished = output.finished() if output is not None else set()
    todo = [r for r in rows if r["key"] not in finished]
    if arguments.explain is not None:
        todo = [r for r in rows if r["key"] == arguments.explain]
    elif not todo:  # the judge is loaded only when something is left to judge
        if output is not None:
            output.finish()
        console.print(f"nothing to do: all {len(rows)} row(s) are already in "
                      f"{arguments.output}; the judge was not loaded", style="cyan",
                      markup=False)
        return ExitCode.OK
    executor = executor_from_arguments(arguments)
    if executor.kind == "ray":
        with RayCluster(executor) as cluster:  # connected and checked before any output
            console.print(describe(executor, cluster), style="cyan", markup=False)
            cache = arguments.cache if note_cache(console, executor, not arguments.no_cache,
                                                  arguments.cache) else None
            worker = ScoreWorker(rubric.document, judge_spec(arguments), arguments.api_key,
                                 cache, arguments.normalize)
            units = [as_json(todo[start:start + arguments.batch_size])
                     for start in range(0, len(todo), arguments.batch_size)]
            batches = (ScoredBatch(**json.loads(text))
                       for text in cluster.run("score", worker, units, arguments.batch_size))
            return _write_scored(arguments, console, rubric, output, finished, todo, batches,
                                 executor)
    judge = build_judge(arguments, rubric.document, console,
                        None if arguments.no_cache else arguments.cache,
                        normalization=arguments.normalize,
                        short_circuit=judge_spec(arguments).short_circuit)
    if judge is None:
        return ExitCode.PROBLEMS
    try:
        return _write_scored(arguments, console, rubric, output, finished, todo,
                             _score_locally(judge, rubric, todo, arguments.batch_size),
                             executor)
    finally:
        if judge.cache is not None:
            judge.cache.close()


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """One judged batch: its output rows and the counts the summary reports."""

    records: list[dict[str, Any]]
    failures: int  # answers NA because the judge gave none
    skipped: int  # questions not judged (--short-circuit reward)
    escalated: int = 0  # a student's answers its cascade sent to the teacher
    student_answers: int = 0  # answers the student gave itself


def score_batch(judge: Judge, rubric: CompiledRubric, batch: list[dict[str, Any]],
                label_logprobs: Any = None) -> ScoredBatch:
    """Judge one batch of data rows and pool it: the rows `qalc score` writes."""
    from qalign_dsl.judge.runtime import Sample

    result = judge.score([Sample(r["prompt"], r["response"]) for r in batch])
    evaluation = rubric.evaluate(result.probabilities, result.answered)
    lists = evaluation_lists(evaluation)  # tensors -> Python once per batch, not per row
    answered = result.answered.tolist()
    probabilities = result.probabilities.tolist()
    records = []
    for b, row in enumerate(batch):
        record = _record(rubric, row, lists, b, answered[b], probabilities[b], result.failures)
        record["normalized_chars"] = result.normalized[b]
        if label_logprobs is not None:  # a server backend: exact or top-k
            record["label_logprobs"] = label_logprobs
        records.append(record)
    return ScoredBatch(records, len(result.failures) - result.skipped, result.skipped,
                       result.escalated, result.student_answers)


def _score_locally(judge: Judge, rubric: CompiledRubric, todo: list[dict[str, Any]],
                   batch_size: int) -> Iterator[ScoredBatch]:
    label_logprobs = getattr(judge.backend, "label_logprobs", None)
    for start in range(0, len(todo), batch_size):
        yield score_batch(judge, rubric, todo[start:start + batch_size], label_logprobs)


@dataclass(frozen=True, slots=True)
class ScoreWorker:
    """What a Ray actor needs to judge as `qalc score` does (picklable); called once per
    actor, it builds the judge and returns the function that scores one unit."""

    document: Mapping[str, Any]
    spec: JudgeSpec
    api_key: str | None
    cache: Path | None
    normalization: str

    def __call__(self) -> Any:
        from qalign_dsl.cli.judge_options import open_answer_cache
        from qalign_dsl.evaluate.aggregate import CompiledRubric
        from qalign_dsl.judge.backend import JudgeError
        from qalign_dsl.judge.labels import LabelTokenError
        from qalign_dsl.judge.runtime import judge_from_spec

        try:
            judge = judge_from_spec(self.document, self.spec, open_answer_cache(self.cache),
                                    api_key=self.api_key, normalization=self.normalization,
                                    short_circuit=self.spec.short_circuit)
            judge.load()  # once per actor, before its first task
        except (JudgeError, LabelTokenError, BadInput) as error:
            raise WorkerError(str(error)) from None
        rubric = CompiledRubric(self.document)
        label_logprobs = getattr(judge.backend, "label_logprobs", None)

        def work(unit: str) -> str:
            try:
                scored = score_batch(judge, rubric, json.loads(unit), label_logprobs)
            except JudgeError as error:
                raise WorkerError(str(error)) from None
            return as_json(asdict(scored))

        return work


def _write_scored(arguments: argparse.Namespace, console: Console, rubric: CompiledRubric,
                  output: ResumableOutput | None, finished: set[str],
                  todo: list[dict[str, Any]], batches: Iterator[ScoredBatch],
                  executor: ExecutorSpec) -> int:
    """Write each batch's rows as it comes (the output is the checkpoint), then the summary:
    the same for a local run and a Ray run."""
    import time

    from qalign_dsl.judge.backend import JudgeError

    if finished and arguments.explain is None:
        console.print(f"resuming: {len(finished)} row(s) already in {arguments.output}, "
                      f"{len(todo)} to go", style="cyan")
    sink: IO[str] = sys.stdout
    if output is not None and arguments.explain is None:
        sink = output.open()
    records: list[dict[str, Any]] = []
    failures = skipped = escalated = student_answers = 0
    # Ray Data draws its own progress; two bars on one terminal would fight.
    progress = Progress(TextColumn("judging"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                        console=console, transient=True,
                        disable=arguments.explain is not None or executor.kind == "ray")
    started = time.perf_counter()
    try:
        with progress:
            task = progress.add_task("judging", total=len(todo), rate="")
            for scored in batches:
                failures += scored.failures
                skipped += scored.skipped
                escalated += scored.escalated
                student_answers += scored.student_answers
                for record in scored.records:
                    records.append(record)
                    if arguments.explain is None:
                        sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                        sink.flush()
                done = len(records)
                elapsed = time.perf_counter() - started
                answers_per_s = done * rubric.num_questions / elapsed
                rate = f"{done / elapsed:.2f} samples/s, {answers_per_s:.0f} answers/s"
                progress.update(task, completed=done, rate=rate)
    except (JudgeError, WorkerError) as error:
        console.print(f"judge: {error}", style="red", markup=False)
        console.print("finished rows are saved; rerun the same command to resume", style="cyan")
        return ExitCode.PROBLEMS
    except KeyboardInterrupt:
        console.print("interrupted; finished rows are saved — rerun to resume", style="yellow")
        return 130
    except Exception as error:
        message = task_failure(error)
        if message is None:
            raise
        console.print(message, style="red", markup=False)
        console.print("finished rows are saved; rerun the same command to resume", style="cyan")
        return ExitCode.PROBLEMS
    finally:
        if sink is not sys.stdout:
            sink.close()
    if arguments.explain is not None:
        print_explanation(console, rubric, records[0])
        return ExitCode.OK
    if output is not None:
        output.finish()
    if failures:
        console.print(f"{failures} answer(s) are NA because the judge gave no answer; see "
                      "`failures` in the output", style="yellow")
    if skipped:
        console.print(f"{skipped} question(s) not judged: they cannot change the reward "
                      "(--short-circuit reward)", style="cyan")
    if judge_spec(arguments).cascade is not None:
        total = escalated + student_answers
        share = f" ({escalated / total:.1%})" if total else ""
        console.print(f"cascade: {escalated} of {total} fresh answer(s){share} went to the "
                      "teacher; the student gave the rest", style="cyan")
    print_summary(console, rubric, records, 0, len(records))
    return ExitCode.OK


def _record(rubric: CompiledRubric, row: dict[str, Any], lists: dict[str, list[Any]], b: int,
            answered: list[bool], probabilities: list[list[float]],
            failures: dict[tuple[int, int], str]) -> dict[str, Any]:
    answers = {}
    for q, qid in enumerate(rubric.question_ids):
        if answered[q]:
            labels = rubric.labels[q]
            answers[qid] = {label: round(p, 6) for label, p in zip(labels, probabilities[q])}
    record: dict[str, Any] = {
        "id": row["id"],
        "reward": lists["reward"][b],
        "principles": dict(zip(rubric.principle_ids, lists["principles"][b])),
        "dimensions": dict(zip(rubric.dimension_ids, lists["dimensions"][b])),
        "answers": answers,
        "question_scores": dict(zip(rubric.question_ids, lists["questions"][b])),
    }
    failures_here = {rubric.question_ids[q]: reason for (bb, q), reason in failures.items()
                     if bb == b}
    if failures_here:
        record["failures"] = failures_here
    return record


def _fmt(value: float | None) -> str:
    return "NA" if value is None else f"{value:+.3f}"


def print_explanation(console: Console, rubric: CompiledRubric, record: dict[str, Any]) -> None:
    """One sample as a tree: reward > principles > dimensions > questions."""
    typed = rubric.rubric
    tree = Tree(Text.assemble((str(record["id"]), "bold"), f"  reward {_fmt(record['reward'])}"))
    for principle in typed.principles:
        branch = tree.add(Text.assemble(
            (principle.title, "bold"), f" {_fmt(record['principles'][principle.id])}"))
        for dimension_id in principle.dimensions:
            dimension = typed.dimension(dimension_id)
            leaf = branch.add(Text(f"{dimension.title} {_fmt(record['dimensions'][dimension_id])}"))
            for question_id in dimension.questions:
                question = typed.question(question_id)
                answer = record["answers"].get(question_id)
                if answer:
                    best = max(answer, key=lambda k: answer[k])
                    shown = f"{best} (p={answer[best]:.2f})"
                else:
                    shown = "no answer: " + record.get("failures", {}).get(question_id, "NA")
                kind = "gate" if question.kind == "binary" else "graded"
                line = Text.from_markup(f"[dim]{kind}[/dim] ", overflow="fold")
                line.append(f"{question.text} → {shown}, score "
                            f"{_fmt(record['question_scores'][question_id])}")
                leaf.add(line)
    console.print(tree, soft_wrap=False)
