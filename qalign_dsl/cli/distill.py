"""`qalc distill`: a student of the judge — one pass over the conversation, a head per
question — trained on the teacher's answers (docs/distill.md).

    qalc distill compiled/x.json data.jsonl --base MODEL --teacher-answers scored.jsonl -o student/
    qalc distill compiled/x.json data.jsonl --base MODEL --judge JUDGE -o student/

Teacher answers are `qalc score`'s output (matched to DATA by id; rows that carry their own
`prompt` and `response`, as `heldout.jsonl` and GRPO audit answers do, need no DATA row), or
are judged here with --judge (through the answer cache, as `qalc score` judges).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from qalign_dsl.cli import validation
from qalign_dsl.cli.agreement import print_agreement
from qalign_dsl.cli.common import ExitCode, UsageError
from qalign_dsl.cli.datasource import add_source_arguments, source_from_arguments
from qalign_dsl.cli.inputs import BadInput
from qalign_dsl.cli.judge_options import (
    add_backend_arguments,
    add_cache_arguments,
    build_judge,
)
from qalign_dsl.cli.outputs import OutputLock, check_output_dir
from qalign_dsl.cli.rubric import add_compiled_argument, load_rubric
from qalign_dsl.cli.teacher_answers import group_of, read_answer_file

if TYPE_CHECKING:
    from qalign_dsl.evaluate.aggregate import CompiledRubric
    from qalign_dsl.training.distill import TeacherExample


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "distill", help="train a student of the judge: one pass, a head per question",
        description="Train a student judge (a sequence classifier with one head per "
        "question) on the teacher judge's label distributions, with a held-out split, early "
        "stopping and an agreement report; `qalc score --backend student --judge DIR` then "
        "scores with it at the cost of a scalar reward model.")
    add_compiled_argument(parser)
    parser.add_argument("data", type=Path, metavar="DATA",
                        help="the (prompt, response, id) rows the teacher judged (see --format)")
    add_source_arguments(parser, ("prompt", "response", "id"))
    parser.add_argument("--base", help="the student's backbone: any model AutoModel loads (a "
                        "causal LM reads the last token, an encoder its pooled output); "
                        "default with --resume-from: that student")
    teacher = parser.add_argument_group("teacher answers (one of)")
    teacher.add_argument("--teacher-answers", type=Path, metavar="ANSWERS",
                         help="the teacher's answers: `qalc score` output (JSONL or parquet) "
                         "matched to DATA by id")
    teacher.add_argument("--more-answers", type=Path, action="append", default=[],
                         metavar="ANSWERS", help="more teacher answers, e.g. a GRPO audit's "
                         "audit_answers.jsonl (rows with prompt and response); repeatable")
    add_backend_arguments(parser, "--judge", "the teacher judge, to judge DATA here (instead "
                          "of --teacher-answers)", default_backend="transformers",
                          title="teacher judge")
    next(a for a in parser._actions if a.dest == "model").required = False
    parser.add_argument("--judge-batch-size", type=int, default=8,
                        help="samples the teacher judges per step (default: %(default)s)")
    add_cache_arguments(parser)
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="the student folder (a standard sequence-classification "
                        "checkpoint plus qalign_student.json)")
    parser.add_argument("--resume-from", type=Path, metavar="DIR",
                        help="start from this student instead of --base (refresh it on "
                        "--more-answers, e.g. on-policy answers from a GRPO audit)")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=8, help="at most (default: %(default)s)")
    training.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    training.add_argument("--learning-rate", type=float, default=2e-5,
                          help="(default: %(default)s; tiny models want ~1e-3)")
    training.add_argument("--weight-decay", type=float, default=0.0)
    training.add_argument("--heldout", type=float, default=0.2, metavar="SHARE",
                          help="share of prompts held out for early stopping and the agreement "
                          "report (default: %(default)s)")
    training.add_argument("--patience", type=int, default=2,
                          help="epochs without a better held-out loss before stopping "
                          "(default: %(default)s)")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--max-length", type=int, metavar="TOKENS",
                          help="tokens the student reads (default: the base's context); longer "
                          "rows are an error when training and NA when judging, never cut")
    training.add_argument("--min-answers", type=int, default=20,
                          help="teacher answers a question needs for its head to be trusted "
                          "(default: %(default)s)")
    training.add_argument("--agreement-target", type=float, default=0.95,
                          help="held-out agreement each question's learned cascade threshold "
                          "aims for (default: %(default)s)")
    training.add_argument("--temperature", type=float, default=1.0,
                          help="distillation temperature: >1 teaches the order of the "
                          "teacher's confident answers, not only their top label (default: "
                          "%(default)s)")
    training.add_argument("--lora-r", type=int, metavar="R",
                          help="train LoRA adapters of rank R (peft) instead of every weight; "
                          "merged into the saved student")
    training.add_argument("--lora-alpha", type=int, default=16)
    training.add_argument("--lora-target", action="append", default=[], metavar="MODULE",
                          help="LoRA target modules (default: peft's for the architecture)")
    training.add_argument("--checkpoint-every", type=int, default=50, metavar="STEPS",
                          help="steps between resumable checkpoints (default: %(default)s)")
    training.add_argument("--student-device", default="cpu",
                          help="torch device the student trains on (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=200,
                        help="bootstrap draws for the agreement intervals (default: "
                        "%(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run_distill)


def run_distill(arguments: argparse.Namespace, console: Console) -> int:
    from qalign_dsl.training.distill import DistillError, DistillSettings, distill

    _check_arguments(arguments)
    rubric = load_rubric(arguments.compiled, console)
    if rubric is None:
        return ExitCode.PROBLEMS
    base = arguments.base
    if arguments.resume_from is not None:
        from qalign_dsl.judge.student import StudentError, read_meta

        try:
            previous = read_meta(arguments.resume_from)
        except StudentError as error:
            raise BadInput(f"--resume-from {error}") from None
        base = base or previous.base
    with OutputLock(arguments.output):  # DIR.lock: one distillation writes DIR at a time
        examples, teacher = _teacher_examples(arguments, rubric, console)
        if examples is None:
            return ExitCode.PROBLEMS
        if not examples:
            raise BadInput(f"{arguments.data}: no rows with teacher answers to learn from")
        settings = DistillSettings(
            base=base, epochs=arguments.epochs, batch_size=arguments.batch_size,
            learning_rate=arguments.learning_rate, weight_decay=arguments.weight_decay,
            heldout=arguments.heldout, patience=arguments.patience, seed=arguments.seed,
            max_length=arguments.max_length, min_answers=arguments.min_answers,
            agreement_target=arguments.agreement_target,
            checkpoint_every=arguments.checkpoint_every, device=arguments.student_device,
            lora=_lora(arguments), bootstrap=arguments.bootstrap,
            temperature=arguments.temperature)
        state = arguments.output.with_name(f".{arguments.output.name}.distill-state")
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                            console=console, transient=True)
        tasks: dict[str, Any] = {}

        def report(phase: str, done: int, total: int, values: dict[str, float]) -> None:
            if phase not in tasks:
                label = "training" if phase == "train" else "epochs"
                tasks[phase] = progress.add_task(label, total=total, info="")
            info = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
            progress.update(tasks[phase], completed=done, info=info)

        def warn(message: str) -> None:
            console.print(message, style="yellow", markup=False)

        console.print(f"distilling {rubric.num_questions} question(s) from {len(examples)} "
                      f"teacher-judged row(s) into {base}", style="cyan", markup=False)
        try:
            with progress:
                result = distill(rubric.rubric, examples, settings, arguments.output, state,
                                 teacher, progress=report, init_from=arguments.resume_from,
                                 warn=warn)
        except DistillError as error:
            console.print(f"distill: {error}", style="red", markup=False)
            return ExitCode.PROBLEMS
    if result.resumed_from_step:
        console.print(f"resumed from step {result.resumed_from_step} of an interrupted run",
                      style="cyan")
    if arguments.json:
        print(json.dumps(result.report, indent=2))
    else:
        print_agreement(console, result.report, "held-out agreement with the teacher")
        console.print(f"student written to {arguments.output} (score with: qalc score "
                      f"{arguments.compiled} DATA --backend student --judge {arguments.output})",
                      style="green", markup=False)
    return ExitCode.OK


def _check_arguments(arguments: argparse.Namespace) -> None:
    if not arguments.base and arguments.resume_from is None:
        raise UsageError("--base MODEL is required (the student's backbone), or --resume-from "
                         "a student to refresh")
    sources = [arguments.teacher_answers is not None, bool(arguments.model)]
    if not any(sources) and not arguments.more_answers:
        raise UsageError("give the teacher's answers: --teacher-answers ANSWERS (qalc score's "
                         "output) or --judge MODEL to judge DATA here")
    if all(sources):
        raise UsageError("give --teacher-answers or --judge, not both")
    for name in ("epochs", "batch_size", "patience", "min_answers", "checkpoint_every",
                 "judge_batch_size"):
        validation.positive_int("--" + name.replace("_", "-"), getattr(arguments, name),
                                10_000_000)
    if arguments.max_length is not None:
        validation.positive_int("--max-length", arguments.max_length, 10_000_000)
    if arguments.lora_r is not None:
        validation.positive_int("--lora-r", arguments.lora_r, 100_000)
    validation.finite_float("--learning-rate", arguments.learning_rate, minimum=0.0)
    validation.finite_float("--weight-decay", arguments.weight_decay, minimum=0.0)
    validation.finite_float("--temperature", arguments.temperature, minimum=0.0,
                            exclusive_minimum=True, maximum=100.0)
    if not 0.0 <= arguments.heldout < 1.0:
        raise UsageError(f"--heldout must be within [0, 1), got {arguments.heldout}")
    if not 0.0 < arguments.agreement_target <= 1.0:
        raise UsageError(f"--agreement-target must be within (0, 1], got "
                         f"{arguments.agreement_target}")
    if arguments.bootstrap < 0:
        raise UsageError("--bootstrap must be 0 or more")
    validation.device("--student-device", arguments.student_device)
    inputs = [arguments.compiled, arguments.data, *arguments.more_answers] + (
        [arguments.teacher_answers] if arguments.teacher_answers else [])
    check_output_dir(arguments.output, inputs, "-o")
    if arguments.output.is_dir() and any(arguments.output.iterdir()):
        from qalign_dsl.judge.student import STUDENT_FILE

        if not (arguments.output / STUDENT_FILE).is_file():
            raise UsageError(f"-o {arguments.output}: a folder that is not a student; name a "
                             "new folder (a student folder is replaced when it is done)")
    for path in inputs:
        if not Path(path).exists() and path is not arguments.data:
            raise UsageError(f"{path}: no such file")
    source_from_arguments(arguments, arguments.data)
    if arguments.model:
        validation.backend_options(arguments)


def _lora(arguments: argparse.Namespace) -> dict[str, Any] | None:
    if arguments.lora_r is None:
        return None
    settings: dict[str, Any] = {"r": arguments.lora_r, "lora_alpha": arguments.lora_alpha}
    if arguments.lora_target:
        settings["target_modules"] = list(arguments.lora_target)
    return settings


def _teacher_examples(arguments: argparse.Namespace, rubric: CompiledRubric, console: Console
                      ) -> tuple[list[TeacherExample] | None, str]:
    """The training rows with the teacher's answers, and the teacher's identity."""
    from qalign_dsl.cli.score import _read_data

    rows = _read_data(arguments.data, console, arguments)
    if rows is None:
        return None, ""
    by_id = {r["key"]: r for r in rows}
    examples: list[TeacherExample] = []
    teacher = ""
    if arguments.model:
        judged = _judge_rows(arguments, rubric, rows, console)
        if judged is None:
            return None, ""
        examples, teacher = judged
    elif arguments.teacher_answers is not None:
        answers = read_answer_file(arguments.teacher_answers, rubric, by_id)
        examples = answers
        unmatched = len(rows) - len(examples)
        if unmatched:
            console.print(f"{unmatched} row(s) of {arguments.data} have no teacher answers in "
                          f"{arguments.teacher_answers}; they are not used", style="yellow",
                          markup=False)
        teacher = f"answers:{arguments.teacher_answers.name}"
    seen = {e.id for e in examples}
    for path in arguments.more_answers:
        for example in read_answer_file(path, rubric, by_id):
            if example.id in seen:  # an on-policy audit row may repeat an id: keep both
                example = _renamed(example, f"{path.stem}:{example.id}")
            seen.add(example.id)
            examples.append(example)
        teacher = teacher or f"answers:{path.name}"
    return examples, teacher


def _renamed(example: TeacherExample, new_id: str) -> TeacherExample:
    from dataclasses import replace

    return replace(example, id=new_id)


def _judge_rows(arguments: argparse.Namespace, rubric: CompiledRubric,
                rows: list[dict[str, Any]], console: Console
                ) -> tuple[list[TeacherExample], str] | None:
    """Judge DATA with the teacher (--judge), through the answer cache: a rerun after an
    interrupt judges only what the cache does not hold."""
    from qalign_dsl.judge.backend import JudgeError
    from qalign_dsl.judge.runtime import Sample
    from qalign_dsl.training.distill import TeacherExample

    judge = build_judge(arguments, rubric.document, console,
                        None if arguments.no_cache else arguments.cache)
    if judge is None:
        return None
    examples: list[TeacherExample] = []
    progress = Progress(TextColumn("teacher judging"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    try:
        with progress:
            task = progress.add_task("judging", total=len(rows))
            for start in range(0, len(rows), arguments.judge_batch_size):
                batch = rows[start:start + arguments.judge_batch_size]
                result = judge.score([Sample(r["prompt"], r["response"]) for r in batch])
                answered, probabilities = result.answered.tolist(), result.probabilities.tolist()
                for b, row in enumerate(batch):
                    ordered = tuple(
                        tuple(probabilities[b][q][: len(rubric.labels[q])])
                        if answered[b][q] else None for q in range(rubric.num_questions))
                    examples.append(TeacherExample(row["key"], row["prompt"], row["response"],
                                                   ordered, group_of(row["prompt"])))
                progress.update(task, completed=start + len(batch))
    except JudgeError as error:
        console.print(f"judge: {error} (answers judged so far are cached; rerun to resume)",
                      style="red", markup=False)
        return None
    finally:
        if judge.cache is not None:
            judge.cache.close()
    return examples, judge.backend.identity
