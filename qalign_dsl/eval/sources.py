"""Rows from a dataset source, mapped to eval items.

Reading a source (JSONL, CSV, parquet, a `datasets` folder or a Hub dataset) lives in
`qalign_dsl.sources`, shared with the other commands; `load_rows`, `SourceRow`,
`SourceError` are re-exported here. Each row has a location a person can open
(`data.jsonl:7`, `data.csv:12` counting the header as line 1, `x.parquet row 3`,
`org/name/config[test] row 3`) and either the record or the reason it could not be read.

`map_rows` then applies a suite's column mapping and sample cap and turns each row into an
`EvalItem` (prompt as chat messages, reference answer, choices, category), again with
row-level errors rather than one exception for the first bad row.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qalign_dsl.eval.recipe import Columns, Suite
from qalign_dsl.judge.prompts import ROLES
from qalign_dsl.safe_io import parse_json
from qalign_dsl.sources import SourceError, SourceRow, SourceSpec, get_column, load_rows

__all__ = ["EvalItem", "MappedSuite", "SourceError", "SourceRow", "SourceSpec", "load_rows",
           "map_rows"]


@dataclass(frozen=True, slots=True)
class EvalItem:
    id: str
    where: str
    messages: tuple[tuple[str, str], ...]  # (role, content), hashable
    answer: str | None = None
    choices: tuple[tuple[str, str], ...] = ()  # (label, text)
    category: str | None = None

    def conversation(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


# --- column mapping -------------------------------------------------------------------


def _choices(value: Any) -> tuple[tuple[str, str], ...]:
    """ARC / CommonsenseQA's {"label": [...], "text": [...]}, a list of strings (lettered
    A, B, …), or a mapping label -> text."""
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict) and "text" in value:
        labels = value.get("label") or list(string.ascii_uppercase[: len(value["text"])])
        return tuple((str(label), str(text)) for label, text in zip(labels, value["text"]))
    if isinstance(value, dict):
        return tuple((str(k), str(v)) for k, v in value.items())
    if isinstance(value, list):
        return tuple((string.ascii_uppercase[i], str(text)) for i, text in enumerate(value))
    raise ValueError("expected {label: [...], text: [...]}, a list, or a mapping")


def _item(suite: Suite, row: SourceRow, number: int) -> EvalItem | str:
    """An EvalItem, or the reason this row cannot be one."""
    assert row.record is not None
    columns: Columns = suite.columns
    record = row.record
    try:
        if columns.messages:
            raw = get_column(record, columns.messages)
            if isinstance(raw, str):
                raw = parse_json(raw)  # strict: NaN, deep nesting, lone surrogates refused
            if not isinstance(raw, list) or not raw or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in raw):
                return f"column `{columns.messages}` must be a list of {{role, content}} messages"
            unknown = [m["role"] for m in raw if m.get("role", "user") not in ROLES]
            if unknown:  # a role is rendered into the judge prompt as is
                return (f"column `{columns.messages}`: unknown role {str(unknown[0])[:40]!r}; "
                        f"allowed: {', '.join(ROLES)}")
            messages = [(str(m.get("role", "user")), m["content"]) for m in raw]
        else:
            assert columns.prompt is not None
            prompt = get_column(record, columns.prompt)
            if not isinstance(prompt, str) or not prompt.strip():
                return f"column `{columns.prompt}` must be a non-empty string"
            messages = [("user", prompt)]
        choices = _choices(get_column(record, columns.choices)) if columns.choices else ()
        answer = get_column(record, columns.answer) if columns.answer else None
        category = get_column(record, columns.category) if columns.category else None
        identifier = get_column(record, columns.id) if columns.id else None
    except KeyError as error:
        return f"missing column `{error.args[0]}` (has: {', '.join(map(str, record))})"
    except (ValueError, RecursionError) as error:  # BadInput is a ValueError
        return f"bad `{columns.choices or columns.messages}`: {error}"
    if identifier is not None and (isinstance(identifier, bool)
                                   or not isinstance(identifier, (str, int))):
        return (f"column `{columns.id}`: an id must be a string or an integer, got "
                f"{type(identifier).__name__}")
    if columns.answer and (answer is None or str(answer).strip() == ""):
        return f"empty reference answer in column `{columns.answer}`"
    if suite.template or choices:
        role, content = messages[-1]
        options = "\n".join(f"{label}. {text}" for label, text in choices)
        template = suite.template or "{prompt}\n\n{choices}"
        try:
            content = template.format(prompt=content, choices=options)
        except (KeyError, IndexError, ValueError) as error:
            return f"template: cannot fill {error}; use {{prompt}} and {{choices}}"
        messages[-1] = (role, content)
    if identifier is None:
        identifier = f"{suite.name}-{number}"
    return EvalItem(id=str(identifier), where=row.where, messages=tuple(messages),
                    answer=None if answer is None else str(answer), choices=choices,
                    category=None if category is None else str(category))


@dataclass(frozen=True, slots=True)
class MappedSuite:
    items: tuple[EvalItem, ...]
    errors: tuple[str, ...]  # "where: problem"
    total_rows: int


def map_rows(suite: Suite, rows: Iterator[SourceRow], seed: int = 0) -> MappedSuite:
    """Keep the rows matching the suite's `where`, apply the column mapping; then, with
    `limit`, keep a fixed random subset (seeded by
    the recipe's seed and the suite's name, so adding a suite does not reshuffle the others)
    in source order. Duplicate ids are errors."""
    items: list[EvalItem] = []
    errors: list[str] = []
    seen: dict[str, str] = {}
    total = 0
    for number, row in enumerate(rows, start=1):
        total += 1
        if row.record is None:
            errors.append(f"{row.where}: {row.error}")
            continue
        if suite.where and not all(str(row.record.get(column)) == str(value)
                                   for column, value in suite.where):
            continue
        item = _item(suite, row, number)
        if isinstance(item, str):
            errors.append(f"{row.where}: {item}")
            continue
        if item.id in seen:
            errors.append(f"{row.where}: duplicate id `{item.id}` (first at {seen[item.id]})")
            continue
        seen[item.id] = row.where
        items.append(item)
    if suite.limit is not None and len(items) > suite.limit:
        digest = hashlib.sha256(f"{seed}:{suite.name}".encode()).hexdigest()
        keep = set(random.Random(int(digest[:16], 16)).sample(range(len(items)), suite.limit))
        items = [item for index, item in enumerate(items) if index in keep]
    return MappedSuite(tuple(items), tuple(errors), total)
