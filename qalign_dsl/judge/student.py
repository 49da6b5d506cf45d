"""A distilled student of the judge (`qalc distill`): what its folder records, how a rubric's
questions bind to its heads, and the text it reads.

The folder is a standard `AutoModelForSequenceClassification` checkpoint whose
`num_labels` is the sum of every question's labels (`id2label`: `question_id=label`), so
plain transformers or vLLM's classify runner can serve it. `qalign_student.json` beside it
says which question each slice of the output layer answers, and how well it learned to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qalign_dsl.ir import Question, Rubric

STUDENT_FILE = "qalign_student.json"
FORMAT_VERSION = 1


class StudentError(ValueError):
    """A folder that is not a student, or a student that cannot answer this rubric."""


def question_fingerprint(question: Question) -> str:
    """What a head's answers mean: the question's text, kind and labels. A reworded question
    (or a changed label set) gets another fingerprint, and the head is not used for it."""
    payload = {"text": question.text, "kind": question.kind, "labels": list(question.labels)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StudentHead:
    """One question's slice of the output layer: columns offset … offset + len(labels)."""

    id: str
    fingerprint: str
    labels: tuple[str, ...]
    offset: int
    answers: int = 0  # teacher answers it was trained on
    reliable: bool = True  # False: too few answers to learn; NA (or escalated) when asked
    threshold: float | None = None  # learned cascade threshold (held-out), if any

    def to_mapping(self) -> dict[str, Any]:
        mapping = asdict(self)
        mapping["labels"] = list(self.labels)
        return mapping


@dataclass(frozen=True)
class StudentMeta:
    rubric_hash: str
    heads: tuple[StudentHead, ...]
    teacher: str  # the teacher judge's identity
    data_hash: str  # the training rows and teacher answers
    base: str  # the backbone it was trained from
    max_length: int  # tokens the student reads (longer conversations are NA, never cut)
    input_format: str = "chat"  # chat: the tokenizer's chat template; plain: a transcript
    metrics: dict[str, Any] = field(default_factory=dict)  # held-out agreement (distill)
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def num_labels(self) -> int:
        return sum(len(h.labels) for h in self.heads)

    def id2label(self) -> dict[int, str]:
        return {head.offset + i: f"{head.id}={label}" for head in self.heads
                for i, label in enumerate(head.labels)}

    def to_mapping(self) -> dict[str, Any]:
        mapping = asdict(self)
        mapping["heads"] = [h.to_mapping() for h in self.heads]
        return mapping

    @staticmethod
    def from_mapping(values: Mapping[str, Any], where: str) -> StudentMeta:
        try:
            if int(values.get("format_version", 0)) != FORMAT_VERSION:
                raise StudentError(f"{where}: format_version {values.get('format_version')!r} "
                                   f"is not {FORMAT_VERSION} (written by another qalc)")
            heads = tuple(StudentHead(
                id=str(h["id"]), fingerprint=str(h["fingerprint"]),
                labels=tuple(str(label) for label in h["labels"]), offset=int(h["offset"]),
                answers=int(h.get("answers", 0)), reliable=bool(h.get("reliable", True)),
                threshold=None if h.get("threshold") is None else float(h["threshold"]))
                for h in values["heads"])
            return StudentMeta(
                rubric_hash=str(values["rubric_hash"]), heads=heads,
                teacher=str(values["teacher"]), data_hash=str(values["data_hash"]),
                base=str(values["base"]), max_length=int(values["max_length"]),
                input_format=str(values.get("input_format", "chat")),
                metrics=dict(values.get("metrics") or {}),
                weights_sha256=str(values.get("weights_sha256", "")))
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, StudentError):
                raise
            raise StudentError(f"{where}: not a valid student description ({error!r})") from None


def read_meta(folder: Path) -> StudentMeta:
    path = Path(folder) / STUDENT_FILE
    if not Path(folder).is_dir():
        raise StudentError(f"{folder}: not a student folder (no such directory; `qalc distill "
                           "-o DIR` writes one)")
    if not path.is_file():
        raise StudentError(f"{folder}: not a student folder: no {STUDENT_FILE} (`qalc distill` "
                           "writes it beside the model)")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StudentError(f"{path}: cannot read it ({error})") from None
    if not isinstance(values, dict):
        raise StudentError(f"{path}: expected a JSON object")
    return StudentMeta.from_mapping(values, str(path))


def heads_for(rubric: Rubric) -> tuple[StudentHead, ...]:
    """A fresh student's heads: every question, in the rubric's order."""
    heads, offset = [], 0
    for question in rubric.questions:
        heads.append(StudentHead(question.id, question_fingerprint(question), question.labels,
                                 offset))
        offset += len(question.labels)
    return tuple(heads)


@dataclass(frozen=True)
class StudentBinding:
    """Per rubric question, the head that answers it (None: not in the student)."""

    heads: tuple[StudentHead | None, ...]
    added: tuple[str, ...]  # rubric questions the student has no head for
    removed: tuple[str, ...]  # heads the rubric no longer asks


def bind(meta: StudentMeta, rubric: Rubric, where: str) -> StudentBinding:
    """The heads that answer `rubric`'s questions. A student for another rubric is refused,
    naming the questions that differ; a reworded question never reuses its old head."""
    by_id = {h.id: h for h in meta.heads}
    asked = {q.id for q in rubric.questions}
    reworded = [q.id for q in rubric.questions
                if q.id in by_id and by_id[q.id].fingerprint != question_fingerprint(q)]
    added = tuple(q.id for q in rubric.questions if q.id not in by_id)
    removed = tuple(h.id for h in meta.heads if h.id not in asked)
    if reworded or len(added) == len(rubric.questions):
        parts = []
        for name, ids in (("reworded (text, kind or labels changed)", reworded),
                          ("added", added), ("removed", removed)):
            if ids:
                parts.append(f"{name}: {_names(ids)}")
        raise StudentError(
            f"{where}: this student was trained for another rubric (hash "
            f"{meta.rubric_hash[:12]}, this one {rubric.hash[:12]}); questions that differ — "
            + "; ".join(parts) + ". Distill it again for this rubric (qalc distill).")
    heads = tuple(by_id.get(q.id) for q in rubric.questions)
    return StudentBinding(heads, added, removed)


def _names(ids: Sequence[str], shown: int = 8) -> str:
    listed = ", ".join(f"`{i}`" for i in ids[:shown])
    return listed + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def conversation_messages(prompt: Any, response: str) -> list[dict[str, str]]:
    """The conversation the student reads: the prompt's messages, then the response."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))}
                    for m in prompt]
    return messages + [{"role": "assistant", "content": response}]


def conversation_text(tokenizer: Any, prompt: Any, response: str, input_format: str) -> str:
    """What the student reads, rendered the same way when it is trained and when it judges."""
    messages = conversation_messages(prompt, response)
    if input_format == "chat" and getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    return "\n".join(f"### {m['role'].capitalize()}\n{m['content']}\n" for m in messages)


def input_format_of(tokenizer: Any) -> str:
    return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
