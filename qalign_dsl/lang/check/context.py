"""What the checker passes share: the reporter, the symbol tables and the drafts they build.

Each pass (declarations, structure, inheritance, pooling, cycles, settings, unused) reads
what earlier passes left in the `Context` and adds its own results; every problem goes
through `Context.error`, so the diagnostics list is the only channel for findings.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from qalign_dsl.lang import codes, model, nodes
from qalign_dsl.lang.diagnostics import Diagnostic, Label, Span
from qalign_dsl.lang.modules import Program, SourceFile

COLLECTIONS = ("questions", "graded", "gates", "dimensions", "principles")
REDUCTIONS = ("mean", "min", "max", "sum", "wmean")
FUNCTIONS = (*REDUCTIONS, "clip", "failed")
RESERVED = frozenset((*COLLECTIONS, *FUNCTIONS, "reward"))

TEMPLATE_SLOTS = ("prompt", "response", "question", "labels", "principle", "dimension")
# Slots that vary per question: everything before the first of them is shared.
PER_QUESTION_SLOTS = ("question", "labels", "principle", "dimension")
REQUIRED_SLOTS = ("response", "question", "labels")
TEMPLATE_MODES = ("direct", "reason")
SCORING_MODES = ("argmax", "expected")
METADATA_KEYS = ("description", "version", "authors", "source", "license")
TAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _head(span: Span) -> Span:
    """The first line of a multi-line span: enough to point at a block."""
    if span.end_line == span.line:
        return span
    return Span(span.line, span.column, span.line, span.column + 1)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.7)
    return f"did you mean `{close[0]}`?" if close else None


def misspelt(settings: Iterable[nodes.Setting], key: str, schema: Iterable[str]) -> bool:
    """Whether an unknown setting (already reported, QAL110) looks like a misspelt `key`;
    then `key` is not reported missing too."""
    known = set(schema)
    unknown = [s.name.value for s in settings if s.name.value not in known]
    return bool(difflib.get_close_matches(key, unknown, n=1, cutoff=0.6))


@dataclass(slots=True)
class QuestionDraft:
    node: nodes.Question
    local_id: str
    id: str
    weight: float


@dataclass(slots=True)
class DimensionDraft:
    node: nodes.Dimension
    id: str
    principle_id: str
    weight: float
    questions: list[QuestionDraft] = field(default_factory=list)


@dataclass(slots=True)
class PrincipleDraft:
    node: nodes.Principle
    id: str
    weight: float
    dimensions: list[DimensionDraft] = field(default_factory=list)


@dataclass(slots=True)
class Declared:
    """A scale or template visible in a file, with where its name was given."""

    value: model.Scale | model.Template | None
    file: SourceFile
    span: Span
    local: bool  # declared in (or explicitly imported by) the entry file
    used: bool = False


Table = dict[str, Declared]


@dataclass(frozen=True, slots=True)
class Dependency:
    """A pooling rule's reference to another block's result."""

    target: str  # "d:<id>" | "p:<id>"
    span: Span  # the reference
    # Named in the block's own rule (`mean(harmlessness)`), rather than reached through a
    # collection (`dimensions`) or a rule inherited from `defaults`: the likelier mistake.
    explicit: bool


@dataclass(slots=True)
class Context:
    """The state the passes share. Later fields are filled in by the pass named beside them."""

    program: Program
    entry: SourceFile
    default_title: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # Set by a pass when nothing after it can be meaningful (an empty file, a library).
    stop: bool = False
    # declarations
    library: bool = False
    fail_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    visible: dict[str, tuple[Table, Table]] = field(default_factory=dict)
    scales: Table = field(default_factory=dict)
    templates: Table = field(default_factory=dict)
    defaults: dict[str, nodes.Node] = field(default_factory=dict)
    # settings
    title: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    revision: model.RevisionReward | None = None
    output: model.OutputFormat | None = None
    # structure
    principles: list[PrincipleDraft] = field(default_factory=list)
    # inheritance
    questions: list[model.Question] = field(default_factory=list)
    used_scales: list[str] = field(default_factory=list)
    used_templates: list[str] = field(default_factory=list)
    # "scale"/"template" when some question's one is unknown (a missing default): then no
    # declaration of that kind is reported unused, since it may be the one meant.
    unknown_uses: set[str] = field(default_factory=set)
    # pooling
    dimension_models: list[model.Dimension] = field(default_factory=list)
    principle_models: list[model.Principle] = field(default_factory=list)
    dependencies: dict[str, list[Dependency]] = field(default_factory=dict)
    anchors: dict[str, Span] = field(default_factory=dict)
    weighted: set[str] = field(default_factory=set)  # "q:/d:/p:<id>" whose weight wmean read
    reward: model.PoolExpr | None = None
    reward_rule: str = ""

    @property
    def items(self) -> tuple[nodes.Item, ...]:
        return self.entry.module.items

    @property
    def blocks(self) -> dict[str, PrincipleDraft]:
        return {p.id: p for p in self.principles}

    @property
    def dims(self) -> dict[str, DimensionDraft]:
        return {d.id: d for p in self.principles for d in p.dimensions}

    def error(self, code: str, span: Span, file: SourceFile | None = None,
              help: str | None = None,
              first: tuple[Span, SourceFile | None] | tuple[Span, SourceFile | None, str]
              | None = None, **fields: object) -> None:
        """Report `code` at `span`; `first` is where a duplicate was first defined (or, with a
        third item naming it, another place worth showing)."""
        source = file or self.entry
        related: tuple[Label, ...] = ()
        if first is not None:
            where = first[1] or source
            note = first[2] if len(first) == 3 else "first defined here"
            related = (Label(where.path, first[0], note, where.text),)
        self.diagnostics.append(codes.make(code, source.path, span, help=help,
                                           source=source.text, related=related, **fields))

    def single(self, items: Iterable[nodes.Item], kind: type, what: str) -> nodes.Item | None:
        """The one item of this kind, reporting every further one as a duplicate."""
        found = [item for item in items if isinstance(item, kind)]
        for extra in found[1:]:
            self.error("QAL109", extra.span, what=what, first=(_head(found[0].span), None))
        return found[0] if found else None

    def settings(
        self, settings: tuple[nodes.Setting, ...], block: str, schema: dict[str, str],
        file: SourceFile | None = None,
    ) -> dict[str, str | float]:
        """Validate `name = value` settings against {name: string|number|name}."""
        values: dict[str, str | float] = {}
        spans: dict[str, Span] = {}
        for setting in settings:
            key = setting.name.value
            if key not in schema:
                self.error("QAL110", setting.name.span, file, name=key, block=block,
                           help=did_you_mean(key, schema) or
                           f"known settings: {', '.join(sorted(schema))}")
                continue
            if key in values:
                self.error("QAL109", setting.span, file, what=f"`{key}`",
                           first=(spans[key], file))
                continue
            spans.setdefault(key, setting.span)
            want = schema[key]
            value = setting.value
            if want == "string" and isinstance(value, nodes.Text):
                values[key] = value.value
            elif want == "number" and isinstance(value, nodes.Number):
                values[key] = value.value
            elif want == "name" and isinstance(value, nodes.Name):
                values[key] = value.value
            else:
                article = {"string": "a string in quotes", "number": "a number",
                           "name": "a bare name"}[want]
                self.error("QAL111", setting.value.span, file,
                           detail=f"`{key}` must be {article}")
        return values
