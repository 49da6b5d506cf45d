"""The public Python API (re-exported by `qalign_dsl`; documented in docs/api.md).

    import qalign_dsl as qal

    rubric = qal.load("constitutions/qalign.qal")          # or compiled/qalign.json
    judge = qal.make_judge(rubric, qal.JudgeSpec(model="path/to/judge"))
    scores = qal.score(rubric, judge, [("How do I bake bread?", "Mix flour and water…")])
    reward = qal.reward_function(rubric, judge)            # a TRL GRPOTrainer reward

Everything that needs torch imports it on first use, so `qal.load` stays light.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qalign_dsl import ir
from qalign_dsl.ir import Rubric
from qalign_dsl.judge.spec import JudgeSpec, JudgeSpecError, spec_fields, value_type
from qalign_dsl.lang.diagnostics import Diagnostic, render_diagnostic, sort_diagnostics

if TYPE_CHECKING:
    from qalign_dsl.judge.cache import AnswerCache
    from qalign_dsl.judge.runtime import Judge
    from qalign_dsl.training.reward import QalignReward

Pair = tuple[Any, str]  # (prompt: str or chat messages, response)


class CompileError(ValueError):
    """A constitution that does not compile. `diagnostics` holds every problem; `str()`
    renders them exactly as `qalc check` prints them."""

    def __init__(self, diagnostics: Sequence[Diagnostic], what: str) -> None:
        self.diagnostics = list(diagnostics)
        rendered = "\n\n".join(render_diagnostic(d) for d in sort_diagnostics(self.diagnostics))
        errors = sum(1 for d in self.diagnostics if d.is_error)
        super().__init__(f"{what} does not compile ({errors} error{'s' * (errors != 1)}):\n\n"
                         f"{rendered}")


def load(path: str | os.PathLike[str]) -> Rubric:
    """A rubric from a `.qal` source (compiled here, imports resolved from its folder) or a
    compiled IR `.json` (validated: schema, references, content hash)."""
    from qalign_dsl.lang.compiler import compile_file

    location = Path(path)
    if location.suffix != ".qal":
        return ir.load(location.read_bytes(), where=str(location))
    result = compile_file(location)
    if result.document is None:
        if result.library:
            raise CompileError([], f"{location} is a library (scales and templates only)")
        raise CompileError(result.diagnostics, str(location))
    return Rubric.from_document(result.document)


def compile_source(text: str, name: str = "<string>") -> Rubric:
    """A rubric from `.qal` source text (imports resolve relative to the working folder)."""
    from qalign_dsl.lang.compiler import compile_text

    result = compile_text(text, name)
    if result.document is None:
        raise CompileError(result.diagnostics, name)
    return Rubric.from_document(result.document)


def aggregate(rubric: Rubric, answers: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pool judge answers without a judge: one map per sample from question id to a label
    (`"B"`) or a distribution over labels (`{"A": 0.7, "B": 0.3}`); unanswered questions
    are NA. Returns per sample the reward and every principle and dimension (None = NA)."""
    from qalign_dsl.evaluate.aggregate import CompiledRubric
    from qalign_dsl.evaluate.answers import encode_batch, validate_answers

    compiled = CompiledRubric(rubric)
    rows = [validate_answers(compiled, dict(sample)) for sample in answers]
    evaluation = compiled.evaluate(*encode_batch(compiled, rows))
    return _records(compiled.principle_ids, compiled.dimension_ids, evaluation)


def make_judge(rubric: Rubric, spec: JudgeSpec | Mapping[str, Any],
               cache: str | os.PathLike[str] | AnswerCache | None = None) -> Judge:
    """A judge for `rubric`: the backend a `JudgeSpec` (or the same settings as a mapping, as
    in a recipe's `judge:` section) describes; `cache` an SQLite path for the answer cache."""
    from qalign_dsl.judge.cache import AnswerCache
    from qalign_dsl.judge.runtime import judge_from_spec

    judge_spec = spec if isinstance(spec, JudgeSpec) else JudgeSpec.from_mapping(spec)
    answer_cache = AnswerCache(Path(cache)) if isinstance(cache, (str, os.PathLike)) else cache
    return judge_from_spec(rubric, judge_spec, answer_cache,
                           short_circuit=judge_spec.short_circuit)


def score(rubric: Rubric, judge: Judge, pairs: Sequence[Pair]) -> list[dict[str, Any]]:
    """Judge (prompt, response) pairs and pool the answers: per pair the reward, every
    principle and dimension (None = NA) and the label distribution of every question."""
    import torch

    from qalign_dsl.evaluate.aggregate import CompiledRubric
    from qalign_dsl.judge.runtime import Sample

    compiled = CompiledRubric(rubric)
    result = judge.score([Sample(prompt, response) for prompt, response in pairs])
    with torch.no_grad():
        evaluation = compiled.evaluate(result.probabilities, result.answered)
    records = _records(compiled.principle_ids, compiled.dimension_ids, evaluation)
    probabilities, answered = result.probabilities.tolist(), result.answered.tolist()
    for b, record in enumerate(records):
        record["answers"] = {
            qid: dict(zip(compiled.labels[q], probabilities[b][q]))
            for q, qid in enumerate(compiled.question_ids) if answered[b][q]}
    return records


def reward_function(rubric: Rubric, judge: Judge, format_penalty: float | None = -1.0
                    ) -> QalignReward:
    """The rubric as a reward function for TRL's `GRPOTrainer(reward_funcs=[...])`."""
    from qalign_dsl.training.reward import QalignReward

    return QalignReward(rubric, judge, format_penalty=format_penalty)


class EnvironmentReward:
    """A reward configured by environment variables, for tools that take a dotted path:

        QALC_RUBRIC=compiled/qalign.json QALC_JUDGE_MODEL=path/to/judge \\
            trl grpo … --reward_funcs qalign_dsl.trl_reward

    `QALC_RUBRIC` names a `.qal` or compiled `.json`; every `JudgeSpec` field is read from
    `QALC_JUDGE_<FIELD>` (QALC_JUDGE_BACKEND, QALC_JUDGE_BASE_URL, …). Built on first call,
    so importing it costs nothing."""

    __name__ = "qalign"  # TRL names the reward's metrics after this

    def __init__(self) -> None:
        self._reward: QalignReward | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        if self._reward is None:
            rubric_path = os.environ.get("QALC_RUBRIC")
            if not rubric_path:
                raise RuntimeError("qalign_dsl.trl_reward needs QALC_RUBRIC (a .qal or compiled "
                                   ".json) and QALC_JUDGE_MODEL in the environment")
            rubric = load(rubric_path)
            self._reward = reward_function(rubric, make_judge(rubric, judge_spec_from_env()))
        return self._reward(*args, **kwargs)


def judge_spec_from_env(environ: Mapping[str, str] | None = None,
                        prefix: str = "QALC_JUDGE_") -> JudgeSpec:
    """A `JudgeSpec` from `QALC_JUDGE_<FIELD>` variables (values parsed by field type)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for spec_field in spec_fields():
        raw = environ.get(prefix + spec_field.name.upper())
        if raw is None:
            continue
        kind = value_type(spec_field)
        try:
            values[spec_field.name] = kind(raw)
        except ValueError:
            raise JudgeSpecError(spec_field.name, f"{prefix}{spec_field.name.upper()}={raw!r} "
                                 f"is not {'a number' if kind is float else 'an integer'}"
                                 ) from None
    return JudgeSpec(**values)


def _records(principles: list[str], dimensions: list[str], evaluation: Any
             ) -> list[dict[str, Any]]:
    reward = evaluation.reward.to_list()
    principle_values = evaluation.principles.to_list()
    dimension_values = evaluation.dimensions.to_list()
    return [{"reward": reward[b],
             "principles": dict(zip(principles, principle_values[b])),
             "dimensions": dict(zip(dimensions, dimension_values[b]))}
            for b in range(len(reward))]


# `trl grpo --reward_funcs qalign_dsl.trl_reward`: one shared, lazily built instance.
trl_reward = EnvironmentReward()
