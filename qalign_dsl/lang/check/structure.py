"""The principle -> dimension -> question tree: ids, weights, duplicates, and inheritance.

`structure` drafts the tree (ids given with `as` or derived from titles, weights, one-per-
block settings); `inheritance` resolves each question's scale and template from the question,
its dimension, its principle or `defaults`.
"""

from __future__ import annotations

import difflib

from qalign_dsl.lang import model, nodes
from qalign_dsl.lang.check.context import (
    COLLECTIONS,
    RESERVED,
    Context,
    DimensionDraft,
    PrincipleDraft,
    QuestionDraft,
    Table,
    did_you_mean,
)
from qalign_dsl.lang.diagnostics import Span
from qalign_dsl.lang.ids import derive_block_id, derive_question_id


def structure(ctx: Context) -> None:
    ctx.principles = _structure(ctx, ctx.items)
    if ctx.library:
        ctx.stop = True  # shared declarations, checked as they are declared
        return
    if not ctx.principles:
        end = ctx.entry.text.count("\n") + 1
        ctx.error("QAL105", Span(end, 1, end, 1), kind="constitution", name=ctx.title,
                  children="principles",
                  help='add one, e.g. `principle "Helpfulness" { dimension "Clarity" { … } }`')


def inheritance(ctx: Context) -> None:
    gate_problems: dict[str, list[tuple[Span, int]]] = {}
    graded_scales: set[str] = set()
    missing: dict[tuple[str, str], list[QuestionDraft]] = {}
    for principle in ctx.principles:
        for dimension in principle.dimensions:
            for question in dimension.questions:
                resolved = _question(
                    ctx, question, dimension, principle, ctx.defaults, ctx.scales,
                    ctx.templates, gate_problems, missing,
                )
                if resolved is None:
                    continue
                if resolved.kind == "graded":
                    graded_scales.add(resolved.scale)
                ctx.questions.append(resolved)
                if resolved.scale not in ctx.used_scales:
                    ctx.used_scales.append(resolved.scale)
                if resolved.template not in ctx.used_templates:
                    ctx.used_templates.append(resolved.template)
    _report_missing(ctx, missing)
    _report_gate_scales(ctx, gate_problems, graded_scales)


def _report_gate_scales(ctx: Context, problems: dict[str, list[tuple[Span, int]]],
                        graded_scales: set[str]) -> None:
    """A scale used by binary questions without exactly one `fails` label. When only binary
    questions use it, the scale is what is wrong: report once, at the label that should (or
    should not) be `fails`. A scale graded questions use too was the wrong pick: report
    where binary questions name it."""
    for name, uses in problems.items():
        count = uses[0][1]
        declared = ctx.scales[name]
        label = None
        if name not in graded_scales and declared.file.path == ctx.entry.path:
            label = _culprit_label(ctx.entry.module.items, name, count)
        if label is not None:
            fix = (f"mark the failing answer: `{label.label.value} = "
                   f"{label.value.text if label.value else ''} fails`" if count == 0
                   else "keep `fails` on one label only")
            ctx.error("QAL402", label.span, scale=name, count=count, help=fix,
                      first=(uses[0][0], None, "binary questions use it here"))
            continue
        gates = [n for n, d in ctx.scales.items()
                 if isinstance(d.value, model.Scale) and d.value.fail_label is not None]
        fix = (f"use a scale with a `fails` label (`{'`, `'.join(gates)}`), or mark the "
               f"failing answer of `{name}` with `fails`") if gates else \
            "mark the failing answer, e.g. `False = -1.0 fails`"
        ctx.unknown_uses.add("scale")  # the gate scale left unused is this mistake's echo
        for span in dict.fromkeys(span for span, _ in uses):
            ctx.error("QAL402", span, scale=name, count=count, help=fix)


def _culprit_label(items: tuple[nodes.Item, ...], name: str, count: int
                   ) -> nodes.ScaleLabel | None:
    """With no `fails` label, the lowest-valued one (the likely failing answer); with
    several, the second."""
    decl = next((i for i in items if isinstance(i, nodes.ScaleDecl) and i.name.value == name),
                None)
    if decl is None:
        return None
    labels = [m for m in decl.members if isinstance(m, nodes.ScaleLabel)]
    if count == 0:
        valued = [m for m in labels if m.value is not None]
        return min(valued, key=lambda m: m.value.value if m.value else 0.0) if valued else None
    failing = [m for m in labels if m.fails]
    return failing[1] if len(failing) > 1 else None


def _report_missing(ctx: Context, missing: dict[tuple[str, str], list[QuestionDraft]]) -> None:
    """One missing default is one mistake: report it once, at its first question."""
    for (what, kind), questions in missing.items():
        first, more = questions[0], len(questions) - 1
        also = f" (and {more} more question{'s' if more != 1 else ''})" if more else ""
        if what == "scale":
            ctx.error("QAL112", first.node.text.span, what="scale",
                      subject=f"{kind} question `{first.id}`{also}",
                      help=f"add `scale {kind} = NAME` to `defaults`, "
                      "or `scale NAME` after the text")
        else:
            ctx.error("QAL112", first.node.text.span, what="template",
                      subject=f"question `{first.id}`{also}",
                      help="add `template = NAME` to `defaults`")
        # Which scale or template was meant is unknown: do not call any of them unused.
        ctx.unknown_uses.add(what)


def _undefined(ctx: Context, name: nodes.Name, kind: str, table: Table, other: Table,
               other_kind: str) -> None:
    """An undefined scale or template: say if the name is of the other kind, and count the
    name it is probably a misspelling of as used (so it is not also reported unused)."""
    close = difflib.get_close_matches(name.value, list(table), n=1, cutoff=0.7)
    if close:
        table[close[0]].used = True
    else:
        ctx.unknown_uses.add(kind)  # which one was meant is unknown
    if name.value in other:
        article = "an" if other_kind[0] in "aeiou" else "a"
        help = f"`{name.value}` is {article} {other_kind}, not a {kind}"
        if table:
            help += f"; {kind}s: " + ", ".join(f"`{n}`" for n in table)
    else:
        help = did_you_mean(name.value, table) or ""
    ctx.error("QAL101", name.span, kind=kind, name=name.value, help=help or None)


def _structure(ctx: Context, items: tuple[nodes.Item, ...]) -> list[PrincipleDraft]:
    principles: list[PrincipleDraft] = []
    block_ids: dict[str, tuple[str, Span]] = {}
    texts: dict[str, tuple[str, Span]] = {}
    for item in items:
        if not isinstance(item, nodes.Principle):
            continue
        pid, pweight = _header_clauses(ctx, item.title, item.clauses, "principle", block_ids)
        principle = PrincipleDraft(item, pid, pweight)
        principles.append(principle)
        _block_settings(ctx, item.members)
        for member in item.members:
            if not isinstance(member, nodes.Dimension):
                continue
            did, dweight = _header_clauses(ctx, member.title, member.clauses, "dimension",
                                                block_ids)
            dimension = DimensionDraft(member, did, pid, dweight)
            principle.dimensions.append(dimension)
            _block_settings(ctx, member.members)
            local_ids: dict[str, Span] = {}
            for question in member.members:
                if isinstance(question, nodes.Question):
                    drafted = _question_draft(ctx, question, did, local_ids, texts)
                    if drafted is not None:
                        dimension.questions.append(drafted)
            if not any(isinstance(q, nodes.Question) for q in member.members):
                ctx.error("QAL105", member.title.span, kind="dimension", name=did,
                           children="questions",
                           help='add a question, e.g. `binary "Is the response …?"`')
        if not principle.dimensions:
            ctx.error("QAL105", item.title.span, kind="principle", name=pid,
                       children="dimensions",
                       help='add a dimension, e.g. `dimension "Clarity" { … }`')
    return principles


def _header_clauses(ctx: Context, title: nodes.Text, clauses: tuple[nodes.Clause, ...], kind: str,
                    block_ids: dict[str, tuple[str, Span]]) -> tuple[str, float]:
    given: dict[str, nodes.Clause] = {}
    for clause in clauses:
        if clause.keyword in given:
            ctx.error("QAL109", clause.span, what=f"`{clause.keyword}`",
                      first=(given[clause.keyword].span, None))
            continue
        if clause.keyword in ("scale", "template"):
            setting = "scale binary = NAME` or `scale graded = NAME" \
                if clause.keyword == "scale" else "template = NAME"
            ctx.error("QAL111", clause.span,
                       detail=f"`{clause.keyword}` clauses belong on questions, not on a {kind}",
                       help=f"inside the {kind}'s block write `{setting}`")
            continue
        given[clause.keyword] = clause
    weight = _weight(ctx, given.get("weight"))
    if "as" in given:
        name = given["as"].value
        assert isinstance(name, nodes.Name)
        block_id, span = name.value, name.span
    else:
        block_id, span = derive_block_id(title.value), title.span
        if not block_id or block_id[0].isdigit():
            ctx.error("QAL114", title.span, title=f"`\"{title.value}\"`",
                       help=f'give it an id: `{kind} "{title.value}" as NAME`')
            return block_id or f"_{kind}_{title.span.line}", weight
    if block_id in RESERVED:
        ctx.error("QAL115", span, name=block_id, kind=kind,
                   help=f'give it another id: `{kind} "{title.value}" as NAME`')
    elif block_id in block_ids:
        first_kind, first_span = block_ids[block_id]
        ctx.error("QAL102", span, kind=kind, name=block_id,
                  help=f"a {first_kind} with this id is defined at line {first_span.line}; "
                  f"give one of them another id with `as`", first=(first_span, None))
    else:
        block_ids[block_id] = (kind, span)
    return block_id, weight


def _weight(ctx: Context, clause: nodes.Clause | None) -> float:
    if clause is None:
        return 1.0
    assert isinstance(clause.value, nodes.Number)
    if clause.value.value < 0:
        ctx.error("QAL111", clause.value.span, detail="a weight must be a number >= 0")
        return 1.0
    return clause.value.value


def _block_settings(ctx: Context, members: tuple[object, ...]) -> None:
    seen: dict[str, Span] = {}
    for member in members:
        if not isinstance(member, (nodes.PoolSetting, nodes.TemplateSetting,
                                   nodes.ScaleSetting, nodes.DescriptionSetting)):
            continue
        key: str
        if isinstance(member, nodes.PoolSetting):
            key = "pool"
        elif isinstance(member, nodes.TemplateSetting):
            key = "template"
        elif isinstance(member, nodes.ScaleSetting):
            key = f"scale {member.kind}"
        else:
            key = "description"
        if key in seen:
            ctx.error("QAL109", member.span, what=f"`{key}`", first=(seen[key], None))
        else:
            seen[key] = member.span


def _question_draft(ctx: Context, question: nodes.Question, dimension_id: str,
                    local_ids: dict[str, Span],
                    texts: dict[str, tuple[str, Span]]) -> QuestionDraft | None:
    given: dict[str, nodes.Clause] = {}
    for clause in question.clauses:
        if clause.keyword in given:
            ctx.error("QAL109", clause.span, what=f"`{clause.keyword}`",
                      first=(given[clause.keyword].span, None))
            continue
        given[clause.keyword] = clause
    if not question.text.value.strip():
        ctx.error("QAL111", question.text.span, detail="a question needs text: it is what the "
                  "judge is asked", help=f'write the question: `{question.kind} "Is it …?"`')
        return None
    if "as" in given:
        name = given["as"].value
        assert isinstance(name, nodes.Name)
        local, span = name.value, name.span
    else:
        local, span = derive_question_id(question.text.value), question.text.span
        if not local:
            ctx.error("QAL114", question.text.span, title=f"`\"{question.text.value}\"`",
                       help=f'give it an id: `{question.kind} "…" as NAME`')
            return None
    if local in COLLECTIONS:
        # A pooling rule naming it would get the collection: the question could not be named.
        ctx.error("QAL115", span, name=local, kind="question",
                  help=f'give it another id: `{question.kind} "…" as NAME`')
    qid = f"{dimension_id}.{local}"
    normalized = " ".join(question.text.value.lower().split())
    duplicate_text = normalized in texts
    if duplicate_text:
        other, other_span = texts[normalized]
        ctx.error("QAL104", question.text.span,
                  help=f"the same text is question `{other}` at line {other_span.line}",
                  first=(other_span, None))
    else:
        texts[normalized] = (qid, question.text.span)
    if local in local_ids and not duplicate_text:
        ctx.error("QAL103", span, id=qid,
                  help=f"the first question with this id is at line {local_ids[local].line}; "
                  f"give this one another id with `as NAME`", first=(local_ids[local], None))
    local_ids.setdefault(local, span)
    return QuestionDraft(question, local, qid, _weight(ctx, given.get("weight")))


def _question(
    ctx: Context, question: QuestionDraft, dimension: DimensionDraft, principle: PrincipleDraft,
    defaults: dict[str, nodes.Node], scales: Table,
    templates: Table, gate_problems: dict[str, list[tuple[Span, int]]],
    missing: dict[tuple[str, str], list[QuestionDraft]],
) -> model.Question | None:
    kind = question.node.kind
    scale_name = _inherited(ctx, question, dimension, principle, defaults, "scale", kind)
    template_name = _inherited(ctx, question, dimension, principle, defaults, "template", kind)
    ok = True
    if scale_name is None:
        missing.setdefault(("scale", kind), []).append(question)
        ok = False
    elif scale_name.value not in scales:
        _undefined(ctx, scale_name, "scale", scales, templates, "template")
        ok = False
    else:
        declared = scales[scale_name.value]
        declared.used = True
        scale = declared.value
        if not isinstance(scale, model.Scale):
            ok = False
        elif kind == "binary" and scale.fail_label is None:
            count = ctx.fail_counts.get((scale.name, declared.file.path), 0)
            gate_problems.setdefault(scale_name.value, []).append((scale_name.span, count))
            ok = False
    if template_name is None:
        missing.setdefault(("template", ""), []).append(question)
        ok = False
    elif template_name.value not in templates:
        _undefined(ctx, template_name, "template", templates, scales, "scale")
        ok = False
    else:
        templates[template_name.value].used = True
        if templates[template_name.value].value is None:
            ok = False
    if not ok or scale_name is None or template_name is None:
        return None
    return model.Question(question.id, kind, question.node.text.value, principle.id,
                          dimension.id, scale_name.value, template_name.value,
                          question.weight)


def _inherited(ctx: Context, question: QuestionDraft, dimension: DimensionDraft,
               principle: PrincipleDraft, defaults: dict[str, nodes.Node], what: str,
               kind: str) -> nodes.Name | None:
    for clause in question.node.clauses:
        if clause.keyword == what:
            assert isinstance(clause.value, nodes.Name)
            return clause.value
    for block in (dimension.node.members, principle.node.members):
        for member in block:
            if what == "scale" and isinstance(member, nodes.ScaleSetting) and member.kind == kind:
                return member.scale
            if what == "template" and isinstance(member, nodes.TemplateSetting):
                return member.template
    if what == "scale":
        item = defaults.get(f"scale:{kind}")
        return item.scale if isinstance(item, nodes.DefaultScale) else None
    item = defaults.get("template")
    return item.template if isinstance(item, nodes.DefaultTemplate) else None

