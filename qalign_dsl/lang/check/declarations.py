"""Declarations: the version header, imports, scales, templates and the `defaults` block.

Fills `ctx.scales`/`ctx.templates` (what the entry file can see, with imported names) and
`ctx.defaults`; marks the file a library when it only declares things to be imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qalign_dsl.lang import model, nodes
from qalign_dsl.lang.check.context import (
    PER_QUESTION_SLOTS,
    REQUIRED_SLOTS,
    SCORING_MODES,
    TEMPLATE_MODES,
    TEMPLATE_SLOTS,
    Context,
    Declared,
    Table,
    did_you_mean,
    misspelt,
)
from qalign_dsl.lang.diagnostics import Span
from qalign_dsl.lang.modules import SourceFile
from qalign_dsl.lang.parser import LANGUAGE_VERSION


def declarations(ctx: Context) -> None:
    items = ctx.items
    if not items:
        ctx.error("QAL008", Span(1, 1, 1, 1),
                  help="the file is empty; a constitution starts with `qal 1`")
        ctx.stop = True
        return
    _check_header(ctx, items)
    ctx.library = any(isinstance(i, (nodes.ScaleDecl, nodes.TemplateDecl,
                                     nodes.DefaultsDecl)) for i in items) and not any(
        isinstance(i, (nodes.Principle, nodes.RewardDecl, nodes.ConstitutionDecl,
                       nodes.RevisionDecl, nodes.OutputDecl)) for i in items)
    ctx.scales, ctx.templates = _visible_in(ctx, ctx.entry, mark_local=True)
    ctx.defaults = _defaults(ctx, items)


def _check_header(ctx: Context, items: tuple[nodes.Item, ...]) -> None:
    headers = [item for item in items if isinstance(item, nodes.Header)]
    if not headers:
        first = items[0].span if items else Span(1, 1, 1, 1)
        ctx.error("QAL008", Span(first.line, first.column, first.line, first.column + 1),
                   help="add `qal 1` as the first line")
        return
    if items[0] is not headers[0]:
        ctx.error("QAL010", headers[0].span, help="move `qal 1` to the top of the file")
    for extra in headers[1:]:
        ctx.error("QAL109", extra.span, what="the version header", first=(headers[0].span, None))
    if headers[0].version != LANGUAGE_VERSION:
        ctx.error("QAL009", headers[0].span, version=headers[0].version)


def _imports_post_order(ctx: Context, file: SourceFile) -> list[SourceFile]:
    """Files `file` imports, directly or not, each after its own imports (iterative)."""
    order: list[SourceFile] = []
    seen = {file.path}
    stack: list[tuple[SourceFile, int]] = [(file, 0)]
    while stack:
        current, index = stack.pop()
        targets = [t for _, t in ctx.program.imports.get(current.path, []) if t is not None]
        if index < len(targets):
            stack.append((current, index + 1))
            target = targets[index]
            if target.path not in seen and target.path not in ctx.visible:
                seen.add(target.path)
                stack.append((target, 0))
        elif current is not file:
            order.append(current)
    return order


def _visible_in(
    ctx: Context, file: SourceFile, mark_local: bool = False
) -> tuple[Table, Table]:
    if file.path in ctx.visible:
        return ctx.visible[file.path]
    # Deepest imports first, so that the recursion below always hits the cache: a chain
    # of 1200 imports needs no deep Python recursion. (Import edges form no cycle: the
    # loader resolves a cyclic import to None.)
    for deeper in _imports_post_order(ctx, file):
        if deeper.path not in ctx.visible:
            _visible_in(ctx, deeper)
    scales: Table = {}
    templates: Table = {}
    ctx.visible[file.path] = (scales, templates)  # guards against cycles
    for item, target in ctx.program.imports.get(file.path, []):
        if target is None:
            continue
        their_scales, their_templates = _visible_in(ctx, target)
        if item.names is None:
            for name, declared in their_scales.items():
                scales.setdefault(name, Declared(declared.value, declared.file,
                                                  declared.span, False))
            for name, declared in their_templates.items():
                templates.setdefault(name, Declared(declared.value, declared.file,
                                                     declared.span, False))
            continue
        for imported in item.names:
            if imported.value in their_scales:
                table, theirs = scales, their_scales[imported.value]
            elif imported.value in their_templates:
                table, theirs = templates, their_templates[imported.value]
            else:
                ctx.error("QAL108", imported.span, file, name=imported.value,
                           target=item.path.value,
                           help=did_you_mean(imported.value,
                                              [*their_scales, *their_templates]))
                continue
            if imported.value in table:
                ctx.error("QAL102", imported.span, file, kind="import", name=imported.value,
                          first=(table[imported.value].span, table[imported.value].file))
                continue
            table[imported.value] = Declared(theirs.value, theirs.file, imported.span,
                                              mark_local)
    for declaration in file.module.items:
        if isinstance(declaration, nodes.ScaleDecl):
            _declare(ctx, scales, declaration.name, _scale(ctx, declaration, file), file,
                          "scale", mark_local)
        elif isinstance(declaration, nodes.TemplateDecl):
            _declare(ctx, templates, declaration.name, _template(ctx, declaration, file),
                          file, "template", mark_local)
    return scales, templates


def _declare(ctx: Context, table: Table, name: nodes.Name,
             value: model.Scale | model.Template | None, file: SourceFile, kind: str,
             local: bool) -> None:
    if name.value in table:
        first = table[name.value]
        where = "imported" if first.file is not file else f"defined at line {first.span.line}"
        ctx.error("QAL102", name.span, file, kind=kind, name=name.value,
                  help=f"`{name.value}` is already {where}; rename one of them",
                  first=(first.span, first.file))
        return
    table[name.value] = Declared(value, file, name.span, local)


def _scale(ctx: Context, decl: nodes.ScaleDecl, file: SourceFile) -> model.Scale | None:
    labels: list[str] = []
    values: list[float | None] = []
    na_label: str | None = None
    fail_labels: list[str] = []
    scoring: str | None = None
    first_score: Span | None = None
    label_spans: dict[str, Span] = {}
    ok = True
    for member in decl.members:
        if isinstance(member, nodes.ScaleScore):
            if first_score is not None:
                ctx.error("QAL109", member.span, file, what="`score`", first=(first_score, file))
                continue
            first_score = member.span
            scoring = member.mode.value
            if scoring not in SCORING_MODES:
                ctx.error("QAL403", member.mode.span, file,
                           detail=f"unknown scoring `{scoring}` in scale `{decl.name.value}`",
                           help="use `score = argmax` or `score = expected`")
                ok = False
            continue
        label = member.label.value
        if label in labels:
            ctx.error("QAL401", member.label.span, file, label=label, scale=decl.name.value,
                      first=(label_spans[label], file))
            ok = False
            continue
        label_spans[label] = member.label.span
        if member.value is None:
            if na_label is not None:
                ctx.error("QAL403", member.span, file,
                           detail=f"scale `{decl.name.value}` has more than one `n/a` label",
                           help=f"`{na_label}` is already its not-applicable label")
                ok = False
                continue
            if member.fails:
                ctx.error("QAL403", member.span, file,
                           detail="the `n/a` label cannot also be `fails`",
                           help="a not-applicable answer never fails a gate")
                ok = False
                continue
            na_label = label
        if member.fails:
            fail_labels.append(label)
        labels.append(label)
        values.append(None if member.value is None else member.value.value)
    scored = [v for v in values if v is not None]
    if len(scored) < 2 and ok:
        ctx.error("QAL403", decl.name.span, file,
                   detail=f"scale `{decl.name.value}` needs at least two labels with values",
                   help="e.g. `Yes = 1.0`, `No = -1.0 fails`")
        ok = False
    if not ok:
        return None
    fail_label = fail_labels[0] if len(fail_labels) == 1 else None
    scale = model.Scale(decl.name.value, tuple(labels), tuple(values), na_label,
                        fail_label, scoring or "argmax")
    # Remember how many `fails` labels there are for the gate check.
    ctx.fail_counts[decl.name.value, file.path] = len(fail_labels)
    return scale


def _template(ctx: Context, decl: nodes.TemplateDecl, file: SourceFile) -> model.Template | None:
    schema = {"system": "string", "user": "string", "mode": "name", "answer_prefix": "string"}
    values = ctx.settings(decl.settings, f"template `{decl.name.value}`", schema, file)
    by_name = {s.name.value: s for s in decl.settings}
    ok = True
    system = str(values.get("system", ""))
    if "system" in values:
        text = by_name["system"].value
        assert isinstance(text, nodes.Text)
        system_parts, problems = split_template(system)
        slot = next((p for p in problems if p.kind == "unknown"), None)
        if slot is None and any(isinstance(p, model.Slot) for p in system_parts):
            # At the slot itself, also inside `"""…"""` text.
            first = next(m for m in _SLOT.finditer(system) if m.group(1) in TEMPLATE_SLOTS)
            ctx.error("QAL304", text_span(file, text, first.start(), len(first.group())), file,
                      help="move slots into `user`; write `{{`/`}}` for literal braces")
            ok = False
        elif slot is not None:
            ctx.error("QAL304", text_span(file, text, slot.offset, slot.length), file,
                      help="move slots into `user`; write `{{`/`}}` for literal braces")
            ok = False
        elif problems:
            brace = problems[0]
            ctx.error("QAL305", text_span(file, text, brace.offset, 1), file, brace=brace.detail,
                      help=f"write `{brace.detail * 2}` for a literal `{brace.detail}`")
            ok = False
        else:
            # `{{`/`}}` stand for single braces here as they do in `user`.
            system = "".join(p for p in system_parts if isinstance(p, str))
    mode = str(values.get("mode", "direct"))
    if mode not in TEMPLATE_MODES:
        ctx.error("QAL111", by_name["mode"].value.span, file,
                  detail=f"unknown template mode `{mode}`",
                  help="use `mode = direct` (answer at once) or `mode = reason` "
                  "(reason first, then answer)")
        ok = False
    if "user" not in values:
        if "user" not in by_name and not misspelt(decl.settings, "user", schema):
            ctx.error("QAL111", decl.name.span, file,
                      detail=f"template `{decl.name.value}` has no `user` text",
                      help='add `user = """…{prompt}…{response}…{question}…{labels}…"""`')
        return None
    user = by_name["user"].value
    assert isinstance(user, nodes.Text)
    parts, problems = split_template(str(values["user"]))
    for problem in problems[:1]:  # one mistake, one error: the rest are often its echo
        if problem.kind == "unknown":
            ctx.error("QAL301", text_span(file, user, problem.offset, problem.length), file,
                      slot=problem.detail,
                      help=did_you_mean(problem.detail, TEMPLATE_SLOTS) or
                      "slots: " + ", ".join("{" + s + "}" for s in TEMPLATE_SLOTS))
        else:
            ctx.error("QAL305", text_span(file, user, problem.offset, 1), file,
                      brace=problem.detail,
                      help=f"write `{problem.detail * 2}` for a literal `{problem.detail}`")
        ok = False
    slots = [p.name for p in parts if isinstance(p, model.Slot)]
    absent = [r for r in REQUIRED_SLOTS if r not in slots]
    if absent and not problems:
        # One error for the template, however many slots it lacks.
        others = ", ".join("`{" + r + "}`" for r in absent[1:])
        ctx.error("QAL302", user.span, file, name=decl.name.value, slot=absent[0],
                  help=f"it also lacks {others}" if others else None)
        ok = False
    if "response" in slots:
        first_response = slots.index("response")
        early = [s for s in slots[:first_response] if s in PER_QUESTION_SLOTS]
        if early:
            # Point at the early slot itself (inside `"""…"""` text too), not the string.
            where = next((m for m in _SLOT.finditer(str(values["user"]))
                          if m.group(1) == early[0]), None)
            span = (user.span if where is None
                    else text_span(file, user, where.start(), len(where.group())))
            ctx.error("QAL303", span, file, slot=early[0],
                      help="move `{response}` above the per-question slots")
    if not ok:
        return None
    return model.Template(decl.name.value, mode, system,
                          str(values.get("answer_prefix", "")), tuple(parts))


def _span_of(item: nodes.Node) -> Span:
    span: Span = item.span
    return span


def _defaults(ctx: Context, items: tuple[nodes.Item, ...]) -> dict[str, nodes.Node]:
    decl = ctx.single(items, nodes.DefaultsDecl, "`defaults`")
    table: dict[str, nodes.Node] = {}
    if not isinstance(decl, nodes.DefaultsDecl):
        return table
    for item in decl.items:
        if isinstance(item, nodes.DefaultScale):
            key, what = f"scale:{item.kind}", f"`scale {item.kind}`"
        elif isinstance(item, nodes.DefaultTemplate):
            key, what = "template", "`template`"
        else:
            key, what = item.level, f"`pool {item.level}`"
        if key in table:
            ctx.error("QAL109", item.span, what=what, first=(_span_of(table[key]), None))
            continue
        table[key] = item
    return table


# A slot is `{name}`; any other `{`/`}` that is not doubled is a lone brace (QAL305).
_SLOT = re.compile(r"\{\{|\}\}|\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}|[{}]")


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    kind: str  # unknown (a slot qalc does not know) | brace (a lone `{` or `}`)
    detail: str  # the slot's name, or the brace
    offset: int  # where in the (unescaped) text
    length: int


def split_template(text: str) -> tuple[list[model.TemplatePart], list[TemplateProblem]]:
    """Split template text into literal parts and slots; report unknown slots and lone braces."""
    parts: list[model.TemplatePart] = []
    problems: list[TemplateProblem] = []
    buffer: list[str] = []
    position = 0
    for match in _SLOT.finditer(text):
        buffer.append(text[position:match.start()])
        position = match.end()
        token = match.group()
        if token in ("{{", "}}"):
            buffer.append(token[0])
        elif token in ("{", "}"):
            problems.append(TemplateProblem("brace", token, match.start(), 1))
        else:
            slot = match.group(1)
            if slot not in TEMPLATE_SLOTS:
                problems.append(TemplateProblem("unknown", slot, match.start(), len(token)))
                continue
            if buffer:
                literal = "".join(buffer)
                if literal:
                    parts.append(literal)
                buffer = []
            parts.append(model.Slot(slot))
    buffer.append(text[position:])
    literal = "".join(buffer)
    if literal:
        parts.append(literal)
    return parts, problems


def text_span(file: SourceFile, text: nodes.Text, offset: int, length: int) -> Span:
    """Where character `offset` of a string's value is in the source (escapes and the
    opening quotes of triple-quoted strings accounted for); the string's span if unknown."""
    lines = file.text.split("\n")
    span = text.span
    if not 1 <= span.line <= len(lines):
        return span
    start = sum(len(line) + 1 for line in lines[: span.line - 1]) + span.column - 1
    raw = file.text[start:]
    if raw.startswith('"""'):
        body = 3 + (1 if raw[3:4] == "\n" else 0)
    elif raw.startswith('"'):
        body = 1
    else:
        return span
    index, produced = body, 0
    while produced < offset and index < len(raw):
        index += 2 if raw[index] == "\\" else 1
        produced += 1
    absolute = start + index
    line = file.text.count("\n", 0, absolute) + 1
    column = absolute - (file.text.rfind("\n", 0, absolute) + 1) + 1
    return Span(line, column, line, column + max(length, 1))
