"""Teacher answers as training data and as labels: `qalc score` output matched to DATA by
id, or rows that carry their own prompt and response (a student's heldout.jsonl, a GRPO
audit's audit_answers.jsonl). Every problem is located: `file:line: what`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qalign_dsl.cli.inputs import MAX_DATA_BYTES, BadInput, iter_lines
from qalign_dsl.cli.tables import is_parquet, read_parquet

if TYPE_CHECKING:
    from qalign_dsl.evaluate.aggregate import CompiledRubric
    from qalign_dsl.training.distill import TeacherExample


def group_of(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def read_answer_file(path: Path, rubric: CompiledRubric,
                     data: dict[str, dict[str, Any]] | None = None) -> list[TeacherExample]:
    """Teacher answers, each row located on error: `path:line: problem` (BadInput). Rows
    without their own prompt and response take them from `data` (DATA's rows by id)."""
    data = data or {}
    from qalign_dsl.cli.aggregate import parse_record
    from qalign_dsl.cli.inputs import parse_json, prompt_problem
    from qalign_dsl.evaluate.answers import AnswerError
    from qalign_dsl.training.distill import TeacherExample

    records: list[tuple[str, Any]] = []
    if is_parquet(path):
        records = [(f"{path} row {n}", r) for n, r in enumerate(read_parquet(path), start=1)]
    else:
        for number, line in iter_lines(path, MAX_DATA_BYTES):
            where = f"{path}:{number}"
            if isinstance(line, BadInput):
                raise line
            try:
                records.append((where, parse_json(line, strict_numbers=False)))
            except BadInput as error:
                raise BadInput(f"{where}: {str(error).split(': ', 1)[-1]}") from None
    if not records:
        raise BadInput(f"{path}: no teacher answers (an empty file)")
    examples: list[TeacherExample] = []
    seen: dict[str, str] = {}
    for where, record in records:
        try:
            key, answers, _ = parse_record(rubric, record)
        except AnswerError as error:
            raise BadInput(f"{where}: {error}") from None
        key = str(key)
        if key in seen:
            raise BadInput(f"{where}: duplicate id `{key}` (first at {seen[key]})")
        seen[key] = where
        for q, probabilities in answers.items():
            if probabilities is not None and not all(math.isfinite(p) and p >= 0
                                                     for p in probabilities):
                raise BadInput(f"{where}: `answers.{rubric.question_ids[q]}`: a distribution "
                               "with NaN, infinite or negative probabilities")
        if "prompt" in record and "response" in record:
            prompt, response = record["prompt"], record["response"]
            problem = prompt_problem(prompt) or (
                None if isinstance(response, str) else "`response` must be a string")
            if problem:
                raise BadInput(f"{where}: {problem}")
        elif "prompt" in record or "response" in record:
            raise BadInput(f"{where}: a row with teacher answers needs both `prompt` and "
                           "`response`, or neither (then its id names a row of DATA)")
        elif key in data:
            prompt, response = data[key]["prompt"], data[key]["response"]
        else:
            raise BadInput(f"{where}: id `{key}` is not in DATA, and the row has no `prompt` "
                           "and `response` of its own")
        ordered = tuple(None if answers.get(q) is None else tuple(answers[q])  # type: ignore[arg-type]
                        for q in range(rubric.num_questions))
        examples.append(TeacherExample(key, prompt, response, ordered, group_of(prompt)))
    return examples
