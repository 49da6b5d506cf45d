"""`qalc validate`: does the judge answer a constitution's questions the way people do?

Reads labelled (prompt, response) pairs (docs/validate.md), gets the judge's answers —
from a file of cached answers (`--answers`, `qalc aggregate`'s format, e.g. `qalc score`'s
output) or by judging, through the answer cache — and reports agreement, calibration,
coverage and flags per question and per labelled output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from qalign_dsl.cli import validation as checks
from qalign_dsl.cli.aggregate import parse_line
from qalign_dsl.cli.common import UsageError, write_atomic
from qalign_dsl.cli.console import make_console
from qalign_dsl.cli.inputs import MAX_DATA_BYTES, BadInput, iter_lines, read_text
from qalign_dsl.cli.judge_options import (
    add_backend_arguments,
    add_cache_arguments,
    make_backend,
    make_judge,
    open_answer_cache,
)
from qalign_dsl.cli.outputs import check_output_dir
from qalign_dsl.cli.rubric import add_compiled_argument, load_rubric

if TYPE_CHECKING:
    from qalign_dsl.evaluate.aggregate import CompiledRubric
    from qalign_dsl.validate.core import Validation
    from qalign_dsl.validate.labels import LabelledItem

EXIT_OK, EXIT_PROBLEMS = 0, 1


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "validate", help="measure the judge against human labels (kappa, calibration, flags)",
        description="Compare the judge's answers with human labels per question and per "
        "output: accuracy, Cohen's kappa (Krippendorff's ordinal alpha for graded questions), "
        "confusion, calibration (ECE, reliability diagram), NA rate; flag questions answered "
        "no better than chance, degenerate and redundant questions, label-token problems.")
    add_compiled_argument(parser)
    parser.add_argument("labels", type=Path, metavar="LABELS",
                        help="labelled JSONL: prompt, response, labels (docs/validate.md)")
    parser.add_argument("--answers", type=Path, metavar="ANSWERS",
                        help="cached judge answers (qalc aggregate's format, e.g. qalc score's "
                        "output) matched by id; no judge runs")
    add_backend_arguments(parser, ("--model", "--judge"), "judge model path or name, or a "
                          "student folder with --backend student (not with --answers)",
                          default_backend="transformers", command="validate")
    # --model is needed only when judging; --answers replaces it.
    next(a for a in parser._actions if a.dest == "model").required = False
    parser.add_argument("--batch-size", type=int, default=8, help="samples judged per step")
    add_cache_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="write DIR/report.md with a reliability diagram and a kappa chart")
    parser.add_argument("--min-kappa", type=float, metavar="K",
                        help="exit 1 when a labelled question's kappa is below K")
    parser.add_argument("--band-threshold", type=float, default=0.0, metavar="T",
                        help="output bands: low below T, high from T (default 0)")
    parser.add_argument("--chance-kappa", type=float, default=0.2,
                        help="flag `chance` below this kappa (default 0.2)")
    parser.add_argument("--degenerate-share", type=float, default=0.95,
                        help="flag `degenerate` when one label has this share (default 0.95)")
    parser.add_argument("--redundant-r", type=float, default=0.95,
                        help="flag `redundant` from this score correlation (default 0.95)")
    parser.add_argument("--min-items", type=int, default=5,
                        help="answers needed before a question can be flagged (default 5)")
    parser.add_argument("--bins", type=int, default=10, help="calibration bins (default 10)")
    parser.set_defaults(run=run_validate)


def run_validate(arguments: argparse.Namespace, console: Console) -> int:
    from qalign_dsl.validate.core import Settings, analyse
    from qalign_dsl.validate.labels import parse_labels

    if arguments.backend == "student" and arguments.model and arguments.answers is None:
        return _validate_student(arguments, console)
    if arguments.answers is None and not arguments.model:
        raise UsageError("validate needs --model (to judge) or --answers (cached answers)")
    if arguments.answers is not None and arguments.model:
        raise UsageError("give --model or --answers, not both")
    for name in ("chance_kappa", "degenerate_share", "redundant_r"):
        if not -1.0 <= getattr(arguments, name) <= 1.0:
            raise UsageError(f"--{name.replace('_', '-')} must be within [-1, 1]")
    checks.positive_int("--bins", arguments.bins, 1000)
    checks.positive_int("--min-items", arguments.min_items, 1_000_000)
    checks.positive_int("--batch-size", arguments.batch_size, 100_000)
    checks.finite_float("--band-threshold", arguments.band_threshold)
    if arguments.min_kappa is not None:
        checks.finite_float("--min-kappa", arguments.min_kappa, minimum=-1.0, maximum=1.0)
    if arguments.model:
        checks.backend_options(arguments)
    inputs = [arguments.compiled, arguments.labels] + (
        [arguments.answers] if arguments.answers is not None else [])
    if arguments.report is not None:
        check_output_dir(arguments.report, inputs, "--report")
    rubric = load_rubric(arguments.compiled, console)
    if rubric is None:
        return EXIT_PROBLEMS
    text = read_text(arguments.labels, MAX_DATA_BYTES)  # BadInput: type, size, UTF-8
    items, problems = parse_labels(text, str(arguments.labels), rubric.document)
    if not problems and not items:
        problems = [f"{arguments.labels}: no labelled samples"]
    if problems:
        for problem in problems:
            console.print(problem, style="red", markup=False)
        return EXIT_PROBLEMS
    token_problems: list[str] = []
    if arguments.answers is not None:
        answers = _read_answers(arguments.answers, rubric, items, console)
    else:
        answers, token_problems = _judge(arguments, rubric, items, console)
    if answers is None:
        if token_problems:
            for problem in token_problems:
                console.print(f"label tokens: {problem}", style="red", markup=False)
        return EXIT_PROBLEMS
    distributions, question_scores, outputs = answers
    settings = Settings(threshold=arguments.band_threshold, chance_kappa=arguments.chance_kappa,
                        degenerate_share=arguments.degenerate_share,
                        redundant_r=arguments.redundant_r, min_items=arguments.min_items,
                        bins=arguments.bins)
    validation = analyse(rubric.document, items, distributions, question_scores, outputs,
                         settings)
    return _finish(arguments, console, rubric, validation)


Answers = tuple[list[list[list[float] | None]], list[list[float | None]],
                list[dict[str, float | None]]]


def _lists(rubric: CompiledRubric, probabilities: Any, answered: Any) -> Answers:
    evaluation = rubric.evaluate(probabilities, answered)
    flags = answered.tolist()
    values = probabilities.tolist()
    widths = [len(labels) for labels in rubric.labels]
    distributions = [[values[b][q][:widths[q]] if flags[b][q] else None
                      for q in range(rubric.num_questions)] for b in range(len(flags))]
    reward = evaluation.reward.to_list()
    principles = evaluation.principles.to_list()
    dimensions = evaluation.dimensions.to_list()
    outputs = [{"reward": reward[b], **dict(zip(rubric.principle_ids, principles[b])),
                **dict(zip(rubric.dimension_ids, dimensions[b]))} for b in range(len(flags))]
    return distributions, evaluation.questions.to_list(), outputs


def _read_answers(path: Path, rubric: CompiledRubric, items: list[LabelledItem],
                  console: Console) -> Answers | None:
    from qalign_dsl.evaluate.answers import AnswerError, encode_batch

    by_id: dict[str, dict[int, list[float] | None]] = {}
    first: dict[str, int] = {}
    bad = 0
    for number, line in iter_lines(path, MAX_DATA_BYTES):  # BadInput: type, size
        try:
            if isinstance(line, BadInput):
                raise AnswerError(str(line).removeprefix(f"{path}:{number}: "))
            identifier, draft, _ = parse_line(rubric, line)
            key = str(identifier)
            if key in first:
                raise AnswerError(f"duplicate id `{key}` (first at line {first[key]})")
        except (AnswerError, BadInput) as error:
            console.print(f"{path}:{number}: {error}", style="red", markup=False)
            bad += 1
            continue
        first[key] = number
        by_id[key] = draft
    missing = [item.key for item in items if item.key not in by_id]
    if missing:
        shown = ", ".join(f"`{m}`" for m in missing[:5]) + (" …" if len(missing) > 5 else "")
        console.print(f"{path}: no answers for {len(missing)} labelled sample(s): {shown}",
                      style="red", markup=False)
    if bad or missing:
        return None
    probabilities, answered = encode_batch(rubric, [by_id[item.key] for item in items])
    return _lists(rubric, probabilities, answered)


def _judge(arguments: argparse.Namespace, rubric: CompiledRubric, items: list[LabelledItem],
           console: Console) -> tuple[Answers | None, list[str]]:
    import torch

    from qalign_dsl.judge.backend import JudgeError
    from qalign_dsl.judge.runtime import Sample
    from qalign_dsl.validate.tokens import label_token_problems

    try:
        backend = make_backend(arguments)
    except JudgeError as error:
        console.print(f"judge: {error}", style="red", markup=False)
        return None, []
    if not getattr(backend, "reads_samples", False):  # a student reads no label tokens
        problems = label_token_problems(rubric.document, backend)
        if problems:
            return None, problems
    cache = open_answer_cache(None if arguments.no_cache else arguments.cache)
    try:
        judge = make_judge(arguments, rubric.document, cache)
        probabilities, answered, cached = [], [], 0
        for start in range(0, len(items), arguments.batch_size):
            batch = items[start:start + arguments.batch_size]
            result = judge.score([Sample(item.prompt, item.response) for item in batch])
            probabilities.append(result.probabilities)
            answered.append(result.answered)
            cached += result.cached
    except JudgeError as error:
        console.print(f"judge: {error} (answers judged so far are cached)", style="red",
                      markup=False)
        return None, []
    finally:
        if cache is not None:
            cache.close()
    total = len(items) * rubric.num_questions
    console.print(f"judged {len(items)} sample(s): {cached}/{total} answers from the cache",
                  style="cyan")
    stacked = torch.cat(probabilities).to(rubric.dtype)
    return _lists(rubric, stacked, torch.cat(answered)), []


def _finish(arguments: argparse.Namespace, console: Console, rubric: CompiledRubric,
            validation: Validation) -> int:
    from qalign_dsl.validate.report import (
        below_min_kappa,
        kappa_png,
        markdown,
        reliability_png,
        to_json,
    )

    below = below_min_kappa(validation, arguments.min_kappa)
    if arguments.report is not None:
        folder: Path = arguments.report
        plots = {"reliability diagram": "reliability.png", "kappa per question": "kappa.png"}
        write_atomic(folder / "reliability.png",
                     reliability_png(validation.calibration, "judge vs human labels"))
        write_atomic(folder / "kappa.png", kappa_png(validation))
        title = f"{rubric.document['constitution']['title']} — {arguments.labels.name}"
        write_atomic(folder / "report.md",
                     markdown(validation, title, plots, arguments.min_kappa).encode("utf-8"))
        console.print(f"report: {folder / 'report.md'}", style="green", markup=False)
    if arguments.json:
        sys.stdout.write(json.dumps(to_json(validation, arguments.min_kappa), indent=1,
                                    ensure_ascii=False, allow_nan=False) + "\n")
    else:
        _print_tables(make_console(stderr=False), validation)
    if below:
        console.print(f"--min-kappa {arguments.min_kappa}: {len(below)} question(s) below: "
                      + ", ".join(below), style="red", markup=False)
        return EXIT_PROBLEMS
    return EXIT_OK


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _short_flags(flags: list[str]) -> str:
    redundant = sum(1 for f in flags if f.startswith("redundant:"))
    shown = [f for f in flags if not f.startswith("redundant:")]
    if redundant:
        shown.append(f"redundant({redundant})")
    return ", ".join(shown)


def _print_tables(out: Console, validation: Validation) -> None:
    table = Table(
        caption="flags: chance = kappa not clearly above chance; degenerate = one "
        "label almost always; redundant(n) = scores track n other questions (--json "
        "names them)",
        title=f"judge vs human labels: {validation.samples} samples, pooled ECE "
        f"{_fmt(validation.calibration.ece, 3)}",
    )
    for column, justify in (("question", "left"), ("n", "right"), ("acc", "right"),
                            ("kappa", "right"), ("alpha", "right"), ("ECE", "right"),
                            ("NA", "right"), ("flags", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for q in validation.questions:
        if not q.labelled:
            continue
        ece = q.calibration.ece if q.calibration else None
        style = "red" if q.flags else None
        table.add_row(q.id, f"{q.agreed_on}/{q.labelled}", _fmt(q.accuracy), _fmt(q.kappa),
                      _fmt(q.alpha), _fmt(ece), _fmt(q.na_rate), _short_flags(q.flags),
                      style=style)
    out.print(table)
    if validation.outputs:
        outputs = Table(title="outputs (bands)")
        for column in ("output", "level", "n", "acc", "kappa", "NA", "disagreements"):
            outputs.add_column(column)
        for o in validation.outputs:
            # The misses are labelled samples' ids: user text, never markup.
            outputs.add_row(o.id, o.level, str(o.labelled), _fmt(o.accuracy), _fmt(o.kappa),
                            _fmt(o.na_rate), Text(", ".join(o.misses[:6])
                                                  + (" …" if len(o.misses) > 6 else "")))
        out.print(outputs)
    unlabelled = [q for q in validation.questions if not q.labelled and q.flags]
    if unlabelled:
        out.print(f"{len(unlabelled)} unlabelled question(s) flagged from the judge's answers "
                  "alone:", markup=False)
        for q in unlabelled[:20]:
            out.print(f"  {q.id}: {', '.join(q.flags)}", markup=False)
        if len(unlabelled) > 20:
            out.print(f"  … and {len(unlabelled) - 20} more (see --json)", markup=False)


def _validate_student(arguments: argparse.Namespace, console: Console) -> int:
    """A student against its teacher: the teacher's answers are the labels."""
    import torch

    from qalign_dsl.cli.agreement import print_agreement
    from qalign_dsl.cli.teacher_answers import read_answer_file
    from qalign_dsl.evaluate.agreement import Paired, agreement_report
    from qalign_dsl.judge.backend import JudgeError
    from qalign_dsl.judge.runtime import Sample
    from qalign_dsl.training.distill import answer_tensors

    checks.positive_int("--batch-size", arguments.batch_size, 100_000)
    checks.backend_options(arguments)
    if arguments.min_kappa is not None:
        checks.finite_float("--min-kappa", arguments.min_kappa, minimum=-1.0, maximum=1.0)
    if arguments.report is not None:
        check_output_dir(arguments.report, [arguments.compiled, arguments.labels], "--report")
    rubric = load_rubric(arguments.compiled, console)
    if rubric is None:
        return EXIT_PROBLEMS
    examples = read_answer_file(arguments.labels, rubric)  # BadInput: located
    cache = open_answer_cache(None if arguments.no_cache else arguments.cache)
    try:
        judge = make_judge(arguments, rubric.document, cache)
        probabilities, answered = [], []
        for start in range(0, len(examples), arguments.batch_size):
            batch = examples[start:start + arguments.batch_size]
            result = judge.score([Sample(e.prompt, e.response) for e in batch])
            probabilities.append(result.probabilities)
            answered.append(result.answered)
    except JudgeError as error:
        console.print(f"judge: {error}", style="red", markup=False)
        return EXIT_PROBLEMS
    finally:
        if cache is not None:
            cache.close()
    teacher, teacher_answered = answer_tensors(rubric.rubric, examples)
    width = teacher.shape[-1]
    student = torch.cat(probabilities)[..., :width]
    report = agreement_report(rubric, Paired(teacher, teacher_answered, student,
                                             torch.cat(answered), [e.group for e in examples]),
                              min_items=arguments.min_items, bins=arguments.bins)
    if arguments.report is not None:
        arguments.report.mkdir(parents=True, exist_ok=True)
        write_atomic(arguments.report / "agreement.json",
                     (json.dumps(report, indent=2) + "\n").encode())
    if arguments.json:
        print(json.dumps(report, indent=2))
    else:
        print_agreement(console, report,
                        f"{arguments.model} against the teacher's answers in {arguments.labels}")
    if arguments.min_kappa is not None:
        low = [qid for qid, entry in report["questions"].items()
               if entry["kappa"] is not None and entry["kappa"] < arguments.min_kappa]
        if low:
            console.print(f"--min-kappa {arguments.min_kappa}: {len(low)} question(s) below: "
                          + ", ".join(low[:10]), style="red", markup=False)
            return EXIT_PROBLEMS
    return EXIT_OK
