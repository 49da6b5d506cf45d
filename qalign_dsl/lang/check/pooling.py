"""Pooling rules and the reward: expression typing, constant folding, scope, weights.

Each dimension's and principle's rule (its own or inherited from `defaults`) and the reward
are resolved into `model.PoolExpr`; the references each rule makes are kept in
`ctx.dependencies` for the cycle pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

from qalign_dsl.ir.model import Ref
from qalign_dsl.lang import model, nodes
from qalign_dsl.lang.check.context import (
    COLLECTIONS,
    FUNCTIONS,
    Context,
    Dependency,
    DimensionDraft,
    PrincipleDraft,
    QuestionDraft,
    did_you_mean,
)
from qalign_dsl.lang.diagnostics import Span
from qalign_dsl.lang.fmt import expression


def pooling(ctx: Context) -> None:
    blocks, dims, defaults = ctx.blocks, ctx.dims, ctx.defaults
    missing: dict[str, list[tuple[str, Span]]] = {}
    for principle in ctx.principles:
        for dimension in principle.dimensions:
            if not dimension.questions:
                continue  # QAL105 already reported; pooling nothing would only add noise
            pool = _pool_of(dimension.node.members, defaults.get("dimension"))
            if pool is None:
                missing.setdefault("dimension", []).append(
                    (dimension.id, dimension.node.title.span))
            scope = _Scope("dimension", Ref.dimension(dimension.id).wire, dimension=dimension,
                           principle=principle, place=f"dimension `{dimension.id}`")
            expr = _pool(ctx, pool, scope, dimension.node, blocks, dims)
            ctx.dependencies[scope.owner] = scope.dependencies
            ctx.anchors[scope.owner] = dimension.node.title.span
            if expr is not None:
                ctx.dimension_models.append(model.Dimension(
                    dimension.id, dimension.node.title.value, principle.id, dimension.weight,
                    _description(dimension.node.members),
                    tuple(q.id for q in dimension.questions), expr, _rule_text(pool),
                ))
        if not principle.dimensions:
            continue
        pool = _pool_of(principle.node.members, defaults.get("principle"))
        if pool is None:
            missing.setdefault("principle", []).append((principle.id, principle.node.title.span))
        scope = _Scope("principle", Ref.principle(principle.id).wire, principle=principle,
                       place=f"principle `{principle.id}`")
        expr = _pool(ctx, pool, scope, principle.node, blocks, dims)
        ctx.dependencies[scope.owner] = scope.dependencies
        ctx.anchors[scope.owner] = principle.node.title.span
        if expr is not None:
            ctx.principle_models.append(model.Principle(
                principle.id, principle.node.title.value, principle.weight,
                _description(principle.node.members),
                tuple(d.id for d in principle.dimensions), expr, _rule_text(pool),
            ))
    ctx.reward, ctx.reward_rule = _reward(ctx, ctx.items, blocks, dims)
    for level, owners in missing.items():  # one missing default: one error
        (owner, anchor), more = owners[0], len(owners) - 1
        also = f" (and {more} more {level}{'s' if more != 1 else ''})" if more else ""
        ctx.error("QAL112", anchor, what="pooling rule", subject=f"{level} `{owner}`{also}",
                  help=f"add `pool = …` to the {level}, or `pool {level} = …` to `defaults`")


def _weight_key(expr: model.PoolExpr) -> str:
    """How the unused pass names an item whose declared weight `wmean` read."""
    if isinstance(expr, model.QuestionRef):
        return Ref.question(expr.id).wire
    if isinstance(expr, model.DimensionRef):
        return Ref.dimension(expr.id).wire
    if isinstance(expr, model.PrincipleRef):
        return Ref.principle(expr.id).wire
    return ""


def _non_finite(value: float) -> str:
    return "undefined (NaN)" if math.isnan(value) else "too large to represent (infinity)"


def _rule_text(pool: tuple[nodes.Expr, bool] | None) -> str:
    """A pooling rule as written (formatted), kept in the IR for readers and `qalc diff`."""
    return expression(pool[0]) if pool is not None else ""


def _description(members: tuple[object, ...]) -> str:
    for member in members:
        if isinstance(member, nodes.DescriptionSetting):
            return member.text.value
    return ""


# --- expression values during resolution ------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scalar:
    expr: model.PoolExpr
    weight: float = 1.0
    question_kind: str | None = None  # set when the scalar is one question
    label: str = ""  # how to name it in messages


@dataclass(frozen=True, slots=True)
class _Collection:
    name: str
    items: tuple[_Scalar, ...]
    member: str  # question | dimension | principle


@dataclass(frozen=True, slots=True)
class _Condition:
    failed: model.Failed


@dataclass(frozen=True, slots=True)
class _Numbers:
    values: tuple[float, ...]


_Value = Union[_Scalar, _Collection, _Condition, _Numbers]


@dataclass(slots=True)
class _Scope:
    level: str  # dimension | principle | reward
    owner: str  # "d:<id>" / "p:<id>" / "reward"
    dimension: DimensionDraft | None = None
    principle: PrincipleDraft | None = None
    site: Span | None = None  # where to report scope-dependent errors of inherited rules
    place: str = ""
    dependencies: list[Dependency] = field(default_factory=list)



def _pool_of(members: tuple[object, ...], default: nodes.Node | None
             ) -> tuple[nodes.Expr, bool] | None:
    """A block's pooling rule and whether it is inherited; None if it has none."""
    for member in members:
        if isinstance(member, nodes.PoolSetting):
            return member.expr, False
    if isinstance(default, nodes.DefaultPool):
        return default.expr, True
    return None


def _pool(ctx: Context, pool: tuple[nodes.Expr, bool] | None, scope: _Scope,
          owner: nodes.Principle | nodes.Dimension,
          blocks: dict[str, PrincipleDraft], dims: dict[str, DimensionDraft]
          ) -> model.PoolExpr | None:
    if pool is None:
        return None
    expr, inherited = pool
    if inherited:
        scope.site = owner.title.span
    value = _expr(ctx, expr, scope, blocks, dims)
    return _as_scalar(ctx, value, expr, scope, "a pooling rule")


def _reward(ctx: Context, items: tuple[nodes.Item, ...], blocks: dict[str, PrincipleDraft],
            dims: dict[str, DimensionDraft]) -> tuple[model.PoolExpr | None, str]:
    """The reward and its rule as written."""
    decl = ctx.single(items, nodes.RewardDecl, "`reward`")
    if not isinstance(decl, nodes.RewardDecl):
        end = ctx.entry.text.count("\n") + 1
        ctx.error("QAL113", Span(end, 1, end, 1),
                   help="add e.g. `reward = min(harmlessness, mean(principles))`")
        return None, ""
    scope = _Scope("reward", "reward", place="the reward")
    value = _expr(ctx, decl.expr, scope, blocks, dims)
    return (_as_scalar(ctx, value, decl.expr, scope, "the reward"),
            _rule_text((decl.expr, False)))


def _as_scalar(ctx: Context, value: _Value | None, expr: nodes.Expr, scope: _Scope,
               what: str) -> model.PoolExpr | None:
    if value is None:
        return None
    if isinstance(value, _Scalar):
        return value.expr
    _wrong_kind(ctx, value, expr, scope, f"{what} must be one number")
    return None


def _wrong_kind(ctx: Context, value: _Value, expr: nodes.Expr, scope: _Scope, need: str) -> None:
    if isinstance(value, _Collection):
        ctx.error("QAL203", expr.span, detail=f"{need}, but `{value.name}` is a collection",
                   help=f"pool it first, e.g. `mean({value.name})`")
    elif isinstance(value, _Condition):
        ctx.error("QAL203", expr.span, detail=f"{need}, but `failed(…)` is a condition",
                   help="use it as `if failed(…) then … else …`")
    elif isinstance(value, _Numbers):
        ctx.error("QAL203", expr.span, detail=f"{need}, but this is a list",
                   help="lists are only allowed as `weights=[…]` of `wmean`")
    else:
        ctx.error("QAL203", expr.span, detail=f"{need}, but this is a number",
                   help="conditions are written `failed(gates)`")


def _scope_error(ctx: Context, code: str, span: Span, scope: _Scope, help: str | None = None,
                 **fields: object) -> None:
    """Report an error that depends on where an inherited rule is applied."""
    if scope.site is not None:
        extra = f"this {scope.level} inherits its pooling rule from `defaults`; " \
                f"give it its own `pool = …`"
        help = f"{help}; {extra}" if help else extra
        span = scope.site
    ctx.error(code, span, None, help, None, **fields)


def _expr(ctx: Context, expr: nodes.Expr, scope: _Scope, blocks: dict[str, PrincipleDraft],
          dims: dict[str, DimensionDraft]) -> _Value | None:
    if isinstance(expr, nodes.Number):
        if not math.isfinite(expr.value):
            return None  # QAL116, reported by the numbers pass
        return _Scalar(model.Const(expr.value), label=expr.text)
    if isinstance(expr, nodes.Ref):
        return _ref(ctx, expr, scope, blocks, dims)
    if isinstance(expr, nodes.ListExpr):
        numbers = []
        for item in expr.items:
            constant = _constant(ctx, item)
            if constant is None:
                ctx.error("QAL203", item.span,
                          detail="list items must be plain numbers, e.g. `weights=[2, 1]`")
                return None
            if not math.isfinite(constant):
                return None  # QAL116, reported by the numbers pass
            numbers.append(constant)
        return _Numbers(tuple(numbers))
    if isinstance(expr, nodes.Negate):
        inner = _expr(ctx, expr.operand, scope, blocks, dims)
        if inner is None:
            return None
        if not isinstance(inner, _Scalar):
            _wrong_kind(ctx, inner, expr.operand, scope, "`-` needs a number")
            return None
        if isinstance(inner.expr, model.Const):
            return _Scalar(model.Const(-inner.expr.value))
        return _Scalar(model.Negate(inner.expr))
    if isinstance(expr, nodes.Binary):
        left = _expr(ctx, expr.left, scope, blocks, dims)
        right = _expr(ctx, expr.right, scope, blocks, dims)
        if left is None or right is None:
            return None
        for side, node in ((left, expr.left), (right, expr.right)):
            if not isinstance(side, _Scalar):
                _wrong_kind(ctx, side, node, scope, f"`{expr.operator}` needs numbers")
                return None
        assert isinstance(left, _Scalar) and isinstance(right, _Scalar)
        operator = {"+": "add", "-": "sub", "*": "mul", "/": "div"}[expr.operator]
        if operator == "div" and isinstance(right.expr, model.Const) and right.expr.value == 0:
            ctx.error("QAL209", expr.right.span, detail="division by zero")
            return None
        if isinstance(left.expr, model.Const) and isinstance(right.expr, model.Const):
            a, b = left.expr.value, right.expr.value
            folded = {"add": a + b, "sub": a - b, "mul": a * b,
                      "div": a / b if b else 0.0}[operator]
            if not math.isfinite(folded):
                ctx.error("QAL116", expr.span,
                          detail=f"this constant expression is {_non_finite(folded)}",
                          help="numbers must stay below about 1.8e308")
                return None
            return _Scalar(model.Const(folded))
        return _Scalar(model.Arithmetic(operator, left.expr, right.expr))
    if isinstance(expr, nodes.Select):
        condition = _expr(ctx, expr.condition, scope, blocks, dims)
        then = _expr(ctx, expr.then, scope, blocks, dims)
        otherwise = _expr(ctx, expr.otherwise, scope, blocks, dims)
        if condition is not None and not isinstance(condition, _Condition):
            _wrong_kind(ctx, condition, expr.condition, scope,
                             "the condition of `if` must be `failed(…)`")
            return None
        if condition is None or then is None or otherwise is None:
            return None
        for branch, node in ((then, expr.then), (otherwise, expr.otherwise)):
            if not isinstance(branch, _Scalar):
                _wrong_kind(ctx, branch, node, scope, "each branch of `if` must be a number")
                return None
        assert isinstance(then, _Scalar) and isinstance(otherwise, _Scalar)
        return _Scalar(model.Choose(condition.failed, then.expr, otherwise.expr))
    assert isinstance(expr, nodes.Call)
    return _call(ctx, expr, scope, blocks, dims)


def _constant(ctx: Context, expr: nodes.Expr) -> float | None:
    if isinstance(expr, nodes.Number):
        return expr.value
    if isinstance(expr, nodes.Negate):
        inner = _constant(ctx, expr.operand)
        return None if inner is None else -inner
    return None


def _ref(ctx: Context, expr: nodes.Ref, scope: _Scope, blocks: dict[str, PrincipleDraft],
         dims: dict[str, DimensionDraft]) -> _Value | None:
    name = expr.dotted
    dimension = scope.dimension
    if len(expr.parts) == 1:
        if name in ("questions", "graded", "gates"):
            if dimension is None:
                ctx.error("QAL208", expr.span, name=name, scope="inside a dimension's pool",
                           help="in a principle's pool use `dimensions`; in the reward, "
                           "`principles`")
                return None
            members = [q for q in dimension.questions
                       if name == "questions"
                       or (name == "graded") == (q.node.kind == "graded")]
            if not members:
                _scope_error(ctx, "QAL207", expr.span, scope, name=name, place=scope.place)
                return None
            return _Collection(name, tuple(_question_scalar(q) for q in members),
                               "question")
        if name == "dimensions":
            if scope.level == "dimension":
                ctx.error("QAL208", expr.span, name=name,
                           scope="in a principle's pool or the reward")
                return None
            chosen = scope.principle.dimensions if scope.principle else list(dims.values())
            for d in chosen:
                scope.dependencies.append(Dependency(Ref.dimension(d.id).wire, expr.span, False))
            if not chosen:
                _scope_error(ctx, "QAL207", expr.span, scope, name=name, place=scope.place)
                return None
            return _Collection(name, tuple(_Scalar(model.DimensionRef(d.id), d.weight,
                                                   label=d.id) for d in chosen), "dimension")
        if name == "principles":
            if scope.level == "dimension":
                ctx.error("QAL208", expr.span, name=name,
                           scope="in a principle's pool or the reward")
                return None
            for p in blocks.values():
                scope.dependencies.append(Dependency(Ref.principle(p.id).wire, expr.span, False))
            if not blocks:
                ctx.error("QAL207", expr.span, name=name, place=scope.place)
                return None
            return _Collection(name, tuple(_Scalar(model.PrincipleRef(p.id), p.weight,
                                                   label=p.id) for p in blocks.values()),
                               "principle")
        if dimension is not None:
            for q in dimension.questions:
                if q.local_id == name:
                    return _question_scalar(q)
        if name in dims:
            scope.dependencies.append(
                Dependency(Ref.dimension(name).wire, expr.span, scope.site is None)
            )
            return _Scalar(model.DimensionRef(name), dims[name].weight, label=name)
        if name in blocks:
            scope.dependencies.append(
                Dependency(Ref.principle(name).wire, expr.span, scope.site is None)
            )
            return _Scalar(model.PrincipleRef(name), blocks[name].weight, label=name)
        candidates = [*dims, *blocks, *COLLECTIONS]
        if not any(q.local_id == name for d in dims.values() for q in d.questions):
            # Undefined wherever the rule is applied: a typo in the rule itself, reported
            # once where it is written rather than at every dimension that inherits it.
            ctx.error("QAL101", expr.span, kind="name", name=name,
                      help=did_you_mean(name, candidates))
            return None
        if dimension is not None:
            candidates += [q.local_id for q in dimension.questions]
        _scope_error(ctx, "QAL101", expr.span, scope, kind="name", name=name,
                     help=did_you_mean(name, candidates))
        return None
    if len(expr.parts) == 2 and expr.parts[0] in dims:
        for q in dims[expr.parts[0]].questions:
            if q.local_id == expr.parts[1]:
                return _question_scalar(q)
        ctx.error("QAL101", expr.span, kind="question", name=name,
                   help=did_you_mean(expr.parts[1],
                                      [q.local_id for q in dims[expr.parts[0]].questions]))
        return None
    ctx.error("QAL101", expr.span, kind="name", name=name,
               help="questions are referred to as `dimension_id.question_id`")
    return None


def _question_scalar(question: QuestionDraft) -> _Scalar:
    return _Scalar(model.QuestionRef(question.id), question.weight, question.node.kind,
                   label=question.id)


def _call(ctx: Context, expr: nodes.Call, scope: _Scope, blocks: dict[str, PrincipleDraft],
          dims: dict[str, DimensionDraft]) -> _Value | None:
    function = expr.function.value
    if function not in FUNCTIONS:
        ctx.error("QAL205", expr.function.span, name=function,
                   help=did_you_mean(function, FUNCTIONS) or
                   "functions: " + ", ".join(FUNCTIONS))
        return None
    allowed_keywords = ("weights",) if function == "wmean" else ()
    weights: _Numbers | None = None
    for keyword in expr.keywords:
        if keyword.name.value not in allowed_keywords:
            ctx.error("QAL209", keyword.name.span,
                       detail=f"`{function}` has no keyword argument `{keyword.name.value}`")
            return None
        value = _expr(ctx, keyword.value, scope, blocks, dims)
        if value is None:
            return None
        if not isinstance(value, _Numbers):
            ctx.error("QAL203", keyword.value.span,
                       detail="`weights` must be a list of numbers, e.g. `weights=[1, 2]`")
            return None
        weights = value
    maybe = [_expr(ctx, argument, scope, blocks, dims) for argument in expr.arguments]
    arguments = [argument for argument in maybe if argument is not None]
    if len(arguments) != len(maybe):
        return None
    if not arguments:
        ctx.error("QAL206", expr.span, name=function,
                   expected="3 arguments" if function == "clip" else "at least one argument",
                   got="none")
        return None
    if function == "failed":
        return _failed(ctx, expr, arguments)
    if function == "clip":
        if len(arguments) != 3:
            ctx.error("QAL206", expr.span, name="clip", expected="3 arguments (value, low, high)",
                       got=str(len(arguments)))
            return None
        value = arguments[0]
        if not isinstance(value, _Scalar):
            _wrong_kind(ctx, value, expr.arguments[0], scope, "`clip` needs a number")
            return None
        low, high = _constant(ctx, expr.arguments[1]), _constant(ctx, expr.arguments[2])
        if low is None or high is None:
            bad = expr.arguments[1] if low is None else expr.arguments[2]
            ctx.error("QAL203", bad.span, detail="`clip` bounds must be constant numbers")
            return None
        if not (math.isfinite(low) and math.isfinite(high)):
            return None  # QAL116, reported by the numbers pass
        if low > high:
            ctx.error("QAL209", expr.span,
                       detail=f"`clip` bounds are reversed: low {low:g} > high {high:g}")
            return None
        return _Scalar(model.Clip(value.expr, low, high))
    items: list[_Scalar] = []
    for argument, node in zip(arguments, expr.arguments):
        if isinstance(argument, _Scalar):
            items.append(argument)
        elif isinstance(argument, _Collection):
            items.extend(argument.items)
        else:
            assert argument is not None
            _wrong_kind(ctx, argument, node, scope, f"`{function}` needs numbers or collections")
            return None
    if function != "wmean":
        return _Scalar(model.Reduce(function, tuple(i.expr for i in items)))
    if weights is not None:
        if len(weights.values) != len(items):
            _scope_error(ctx, "QAL204", expr.span, scope, weights=len(weights.values),
                              inputs=len(items),
                              help="inputs: " + ", ".join(f"`{i.label}`" for i in items))
            return None
        values = weights.values
    else:
        values = tuple(i.weight for i in items)
        ctx.weighted.update(_weight_key(i.expr) for i in items)
    if not all(math.isfinite(v) for v in values):
        return None  # a weight literal the IR cannot hold: QAL116 is reported at it
    if not math.isfinite(sum(values)):
        ctx.error("QAL116", expr.span, detail="the `wmean` weights add up to infinity",
                  help="scale the weights down; only their ratios matter")
        return None
    if any(v < 0 for v in values) or sum(values) <= 0:
        ctx.error("QAL209", expr.span,
                   detail="`wmean` weights must be >= 0 with a positive total")
        return None
    return _Scalar(model.Reduce("wmean", tuple(i.expr for i in items), values))


def _failed(ctx: Context, expr: nodes.Call, arguments: list[_Value]) -> _Value | None:
    question_ids: list[str] = []
    for argument, node in zip(arguments, expr.arguments):
        members = argument.items if isinstance(argument, _Collection) else (argument,)
        if isinstance(argument, _Collection) and argument.member != "question":
            ctx.error("QAL203", node.span,
                       detail=f"`failed` takes binary questions, but `{argument.name}` "
                       f"holds {argument.member}s")
            return None
        for member in members:
            if not isinstance(member, _Scalar) or member.question_kind is None:
                ctx.error("QAL203", node.span,
                           detail="`failed` takes binary questions, e.g. `failed(gates)`")
                return None
            if member.question_kind != "binary":
                name = argument.name if isinstance(argument, _Collection) else member.label
                ctx.error("QAL201", node.span, name=name,
                           help="use `gates` (the binary questions of this dimension)")
                return None
            assert isinstance(member.expr, model.QuestionRef)
            question_ids.append(member.expr.id)
    return _Condition(model.Failed(tuple(question_ids)))

