"""Reading untrusted user files: type and size are checked before a byte is read, JSONL is
read line by line with a bound on each line, and JSON values that Python accepts but JSON
does not (NaN, Infinity, 1e999, lone surrogates, absurd integers, deep nesting) become a
located `BadInput` instead of a traceback or an invalid output line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qalign_dsl.safe_io import (
    MAX_DATA_BYTES,
    MAX_INT_DIGITS,
    MAX_IR_BYTES,
    MAX_LINE_BYTES,
    MAX_RECIPE_BYTES,
    BadInput,
    iter_lines,
    open_regular,
    parse_json,
    read_regular,
    read_text,
)

__all__ = ["MAX_DATA_BYTES", "MAX_INT_DIGITS", "MAX_IR_BYTES", "MAX_LINE_BYTES",
           "MAX_RECIPE_BYTES", "BadInput", "check_id", "iter_lines", "open_regular",
           "parse_json", "prompt_problem", "read_records", "read_regular", "read_text"]


def check_id(value: Any) -> str:
    """A row id is a string or an integer; the key it is matched by is its string."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadInput(f"`id` must be a string or an integer, got {json.dumps(value)[:40]}")
    return str(value)


def prompt_problem(prompt: Any) -> str | None:
    """A prompt is a string or a non-empty list of chat messages {role, content} whose roles
    are allow-listed (a role is rendered into the judge prompt as is)."""
    from qalign_dsl.judge.prompts import ROLES

    if isinstance(prompt, str):
        return None
    if not isinstance(prompt, list) or not prompt:
        return "`prompt` must be a string or a list of chat messages {role, content}"
    for index, message in enumerate(prompt):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f"`prompt[{index}]` must be a chat message {{role, content}} with text content"
        if "role" not in message:
            return f"`prompt[{index}]`: missing `role` ({', '.join(ROLES)})"
        if message["role"] not in ROLES:
            return (f"`prompt[{index}].role`: unknown role {str(message['role'])[:40]!r}; "
                    f"allowed: {', '.join(ROLES)}")
    return None


def read_records(path: Path, row_problem: Callable[[Any], str | None],
                 report: Callable[[int, str], None],
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                 ) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """The rows of a JSONL data file (score's pairs, synth's prompts): each line a JSON
    object that `row_problem` accepts (it may raise BadInput) and whose id — `id`, or the
    line number — is not taken yet. Returns (id, record) for the good lines and the number
    of bad ones; each bad line goes to `report(line number, problem)`. `transform` (a
    column mapping; it may raise BadInput) rewrites each JSON object before the check."""
    rows: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    bad = 0
    for number, line in iter_lines(path, MAX_DATA_BYTES):
        problem = None
        record: Any = None
        try:
            if isinstance(line, BadInput):
                raise line
            record = parse_json(line)
            if transform is not None and isinstance(record, dict):
                record = transform(record)
            problem = row_problem(record)
        except BadInput as error:
            problem = str(error).removeprefix(f"{path}:{number}: ")
        if problem is None:
            identifier = str(record.get("id", number))
            if identifier in seen:
                problem = f"duplicate id `{identifier}` (first at line {seen[identifier]})"
            else:
                seen[identifier] = number
        if problem is not None:
            report(number, problem)
            bad += 1
            continue
        if "id" not in record:
            record = {**record, "id": number}
        rows.append((identifier, record))
    return rows, bad
