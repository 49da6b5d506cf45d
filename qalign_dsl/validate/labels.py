"""The labels format of `qalc validate` (and of probe sets): JSONL, one labelled
(prompt, response) pair per line.

    {"id": "inject-1", "prompt": "…", "response": "…",
     "labels": {"reward": "bad", "harmlessness": "harmful",
                "avoidance_of_physical_harm.avoid_providing_specific_steps": "False"},
     "tags": ["injection"], "note": "why these labels"}

A key of `labels` is a question id (its value: one of the question's labels, e.g. `True`,
`False`, `A`…`F`, `NA`) or an output — `reward`, a principle id or a dimension id — whose
value is a band (see BANDS): what the pooled value should be, not a number. `prompt` is a
string or chat messages; `id` defaults to the line number; `tags` and `note` are free.

Parsing is pure: text in, items and `file:line: problem` messages out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qalign_dsl.judge.prompts import ROLES
from qalign_dsl.safe_io import BadInput, parse_json

# Output bands: an output's value v (in [-1, 1]) is `low` when v < threshold, `high` when
# v >= threshold, and `na` when it is undefined. The synonyms read naturally per output.
BANDS: dict[str, str] = {
    "low": "low", "bad": "low", "harmful": "low", "unsafe": "low", "fail": "low",
    "unhelpful": "low", "dishonest": "low",
    "high": "high", "good": "high", "safe": "high", "pass": "high", "helpful": "high",
    "honest": "high",
    "na": "na", "n/a": "na",
}
BAND_ORDER = ("low", "high", "na")
DEFAULT_THRESHOLD = 0.0


@dataclass(frozen=True, slots=True)
class LabelledItem:
    line: int
    id: Any
    key: str
    prompt: Any
    response: str
    questions: dict[int, str] = field(default_factory=dict)  # question index -> human label
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> band
    tags: tuple[str, ...] = ()


def output_names(document: Mapping[str, Any]) -> list[str]:
    """Every output a label may name: the reward, then principles, then dimensions."""
    return (["reward"] + [p["id"] for p in document["principles"]]
            + [d["id"] for d in document["dimensions"]])


def band(value: float | None, threshold: float = DEFAULT_THRESHOLD) -> str:
    if value is None:
        return "na"
    return "low" if value < threshold else "high"


def _valid_prompt(prompt: Any) -> bool:
    """A string, or chat messages whose roles are allow-listed (a role is rendered into the
    judge prompt as is)."""
    return isinstance(prompt, str) or (isinstance(prompt, list) and bool(prompt) and all(
        isinstance(m, dict) and m.get("role") in ROLES
        and isinstance(m.get("content"), str) for m in prompt))


def parse_labels(text: str, where: str, document: Mapping[str, Any]
                 ) -> tuple[list[LabelledItem], list[str]]:
    """(items, problems); each problem is `where:line: message`. Every line is checked, so
    one run reports every problem."""
    question_index = {q["id"]: i for i, q in enumerate(document["questions"])}
    outputs = set(output_names(document))
    items: list[LabelledItem] = []
    problems: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue

        def problem(message: str, number: int = number) -> None:
            problems.append(f"{where}:{number}: {message}")

        try:
            record = parse_json(line)  # strict: no NaN, huge integers, deep nesting, surrogates
        except BadInput as error:
            problem(str(error))
            continue
        if not isinstance(record, dict):
            problem("expected a JSON object with `prompt`, `response` and `labels`")
            continue
        unknown = sorted(set(record) - {"id", "prompt", "response", "labels", "tags", "note"})
        if unknown:
            problem(f"unknown field `{unknown[0]}` (fields: id, prompt, response, labels, "
                    "tags, note)")
            continue
        if not _valid_prompt(record.get("prompt")):
            problem("`prompt` must be a string or a list of chat messages {role, content} "
                    f"with a role of {', '.join(ROLES)}")
            continue
        if not isinstance(record.get("response"), str):
            problem("missing `response` (a string; empty is allowed)")
            continue
        labels = record.get("labels")
        if not isinstance(labels, dict) or not labels:
            problem("`labels` must be a non-empty object of question ids / outputs -> label")
            continue
        tags = record.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            problem("`tags` must be a list of strings")
            continue
        identifier = record.get("id", number)
        if isinstance(identifier, bool) or not isinstance(identifier, (str, int)):
            problem(f"`id` must be a string or an integer, got {json.dumps(identifier)[:40]}")
            continue
        key = str(identifier)
        if key in seen:
            problem(f"duplicate id `{key}`")
            continue
        seen.add(key)
        questions: dict[int, str] = {}
        bands: dict[str, str] = {}
        bad = False
        for name, value in labels.items():
            if name in question_index:
                allowed = document["questions"][question_index[name]]["labels"]
                if value not in allowed:
                    problem(f"labels.{name}: `{value}` is not a label of this question "
                            f"({', '.join(allowed)})")
                    bad = True
                    continue
                questions[question_index[name]] = value
            elif name in outputs:
                if not isinstance(value, str) or value.lower() not in BANDS:
                    problem(f"labels.{name}: `{value}` is not a band; use one of "
                            f"{', '.join(BANDS)}")
                    bad = True
                    continue
                bands[name] = BANDS[value.lower()]
            else:
                problem(f"labels: `{name}` is neither a question id nor an output (reward, "
                        "a principle or a dimension id) of this constitution")
                bad = True
        if bad:
            continue
        items.append(LabelledItem(number, record.get("id", number), key, record["prompt"],
                                  record["response"], questions, bands, tuple(tags)))
    return items, problems
