"""`JudgeSpec`: every judge option, documented once.

The command-line options of `score`, `synth` and `expand`, the `judge:` section of `qalc
train` recipes (its JSON Schema) and backend construction are all generated from the fields
below, so they cannot drift apart again. A field's `metadata` says how it is shown:
`help` (one line), `backends` (which backends read it), `choices`, `minimum`,
`exclusive_minimum`, `flag` when the command-line name differs from the field name, and
`commands` when only some commands offer the option (the others judge with the default).

Secrets never live in a spec (recipes are committed): the API key is read from the
environment variable named by `api_key_env`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("transformers", "vllm", "openai", "student")
TEACHER_BACKENDS = ("transformers", "vllm", "openai")  # what a cascade or audit teacher runs on
CASCADE_THRESHOLDS = ("global", "learned")
SHORT_CIRCUIT_MODES = ("off", "reward")  # judge.short_circuit.MODES
DTYPES = ("auto", "float32", "float16", "bfloat16")


class JudgeSpecError(ValueError):
    """An invalid judge option; `key` names the field (`timeout`, `base_url`, …)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _option(default: Any, help: str, backends: tuple[str, ...] = BACKENDS,
            **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "backends": backends, **extra})


@dataclass(frozen=True)
class JudgeSpec:
    """Which judge answers the rubric's questions, and how it is run."""

    backend: str = _option("transformers", "where the judge runs: in process "
                           "(transformers, vllm), behind an OpenAI-compatible server (openai), "
                           "or a distilled student of a judge (`qalc distill`)",
                           choices=BACKENDS)
    model: str = _option("", "the judge model: a local path or Hub id (transformers, vllm), "
                         "the model name the server serves (openai), or the folder `qalc "
                         "distill` wrote (student)", required=True)
    tokenizer: str | None = _option(None, "the judge's tokenizer, for the label-token check "
                                    "(default: the model)", ("openai",), metavar="PATH")
    device: str = _option("cpu", "torch device of the judge (cpu, cuda, cuda:1, mps)",
                          ("transformers", "student"), metavar="DEVICE")
    dtype: str = _option("auto", "weights dtype", ("transformers", "vllm", "student"),
                         choices=DTYPES)
    chunk_tokens: int = _option(1024, "tokens in one forward pass: a whole sample, or a long "
                                "sample's questions after its cached head",
                                ("transformers",), minimum=1)
    pack_tokens: int = _option(0, "pack several short samples into one forward pass of up to "
                               "this many tokens (0: each sample alone, so scores do not depend "
                               "on which samples share a batch)", ("transformers",), minimum=0)
    base_url: str | None = _option(
        None,
        "the server's OpenAI-compatible base URL, e.g. "
        "http://127.0.0.1:8000/v1; several, comma-separated, spread "
        "requests over servers (least outstanding requests)",
        ("openai",),
        metavar="URL",
    )
    api_key_env: str = _option("OPENAI_API_KEY", "name of the environment variable that holds "
                               "the server's API key (unset: no key)", ("openai",), metavar="VAR")
    timeout: float = _option(
        60.0, "seconds per request", ("openai",), metavar="SECONDS", exclusive_minimum=0
    )
    retries: int = _option(3, "retries per failed request (with backoff)", ("openai",),
                           minimum=0)
    concurrency: int = _option(16, "requests in flight", ("openai",), minimum=1)
    top_logprobs: int = _option(20, "logprobs requested per answer (servers allow up to 20 by "
                                "default)", ("openai",), minimum=1)
    tensor_parallel_size: int = _option(1, "GPUs the vLLM engine shards the judge over",
                                        ("vllm",), minimum=1)
    gpu_memory_utilization: float = _option(0.9, "share of GPU memory the vLLM engine may "
                                            "take", ("vllm",), exclusive_minimum=0, maximum=1)
    max_model_len: int | None = _option(None, "the vLLM engine's context length (default: "
                                        "the model's)", ("vllm",), minimum=1)
    short_circuit: str = _option(
        "off", "judge in rounds and skip the questions that provably cannot change the "
        "reward (NA, reason `cannot change the reward`; the reward is unchanged, dimensions "
        "and principles may be NA); `off` judges every question",
        choices=SHORT_CIRCUIT_MODES, commands=("score", "serve", "train"))
    # Nested sections (recipes: mappings; the CLI: the --cascade-* options). Not in
    # `spec_fields()`, which lists the scalar options every command line is generated from.
    cascade: CascadeSpec | None = field(default=None, metadata={
        "nested": True, "help": "student only: send the questions the student is unsure of "
        "to a teacher judge (docs/distill.md)"})
    audit: AuditSpec | None = field(default=None, metadata={
        "nested": True, "help": "GRPO with a student: judge a random share of completions "
        "with the teacher too, and watch the gap (reward hacking; docs/distill.md)"})

    def __post_init__(self) -> None:
        for spec_field in spec_fields():
            _check_value(spec_field, getattr(self, spec_field.name))
        if not self.model:
            raise JudgeSpecError("model", "the judge model is required")
        if self.backend == "openai" and not self.base_url:
            raise JudgeSpecError("base_url", "the openai backend needs the server's base URL")
        if self.cascade is not None and self.backend != "student":
            raise JudgeSpecError("cascade", "a cascade needs `backend: student` (the student "
                                 f"answers first), not `{self.backend}`")

    @staticmethod
    def from_mapping(values: Mapping[str, Any]) -> JudgeSpec:
        """A spec from YAML/JSON settings; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(JudgeSpec)}
        for key in values:
            if key not in known:
                raise JudgeSpecError(str(key), "unknown judge option")
        settings = dict(values)
        if settings.get("cascade") is not None:
            settings["cascade"] = CascadeSpec.from_mapping(settings["cascade"])
        if settings.get("audit") is not None:
            settings["audit"] = AuditSpec.from_mapping(settings["audit"])
        return JudgeSpec(**settings)

    def to_mapping(self) -> dict[str, Any]:
        """The settings that differ from the defaults (what a recipe would write)."""
        mapping: dict[str, Any] = {}
        for spec_field in dataclasses.fields(self):
            value = getattr(self, spec_field.name)
            if value != spec_field.default:
                mapping[spec_field.name] = value.to_mapping() \
                    if isinstance(value, (CascadeSpec, AuditSpec)) else value
        return mapping

    def api_key(self) -> str:
        return os.environ.get(self.api_key_env, "") or "EMPTY"

    @property
    def engine_args(self) -> dict[str, Any]:
        """Arguments for vLLM's `LLM(...)` beyond the model and dtype: those set away from
        their defaults, so that vLLM's own defaults (and its CPU build's) apply otherwise."""
        names = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {n: getattr(self, n) for n in names if getattr(self, n) != defaults[n]}


def _teacher(section: str, value: Any) -> JudgeSpec:
    """A nested `teacher:` judge spec; its errors are keyed `section.teacher.option`."""
    if not isinstance(value, Mapping):
        raise JudgeSpecError(f"{section}.teacher", "expected a judge section (backend, model, …)")
    try:
        teacher = value if isinstance(value, JudgeSpec) else JudgeSpec.from_mapping(value)
    except JudgeSpecError as error:
        raise JudgeSpecError(f"{section}.teacher.{error.key}", error.message) from None
    if teacher.backend not in TEACHER_BACKENDS:
        raise JudgeSpecError(f"{section}.teacher.backend", "the teacher is a full judge: one of "
                             f"{', '.join(TEACHER_BACKENDS)}, got `{teacher.backend}`")
    return teacher


def _section(section: str, cls: type, values: Any) -> Any:
    if not isinstance(values, Mapping):
        raise JudgeSpecError(section, f"expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise JudgeSpecError(f"{section}.{key}", f"unknown {section} option; use "
                                 f"{', '.join(sorted(known))}")
    if "teacher" not in values:
        raise JudgeSpecError(f"{section}.teacher", "the teacher judge is required")
    settings = dict(values)
    settings["teacher"] = _teacher(section, settings["teacher"])
    return cls(**settings)


def _check_section(section: str, spec: Any) -> None:
    for spec_field in dataclasses.fields(spec):
        if spec_field.name == "teacher":
            if not isinstance(spec.teacher, JudgeSpec):
                raise JudgeSpecError(f"{section}.teacher", "expected a judge section")
            continue
        try:
            _check_value(spec_field, getattr(spec, spec_field.name))
        except JudgeSpecError as error:
            raise JudgeSpecError(f"{section}.{error.key}", error.message) from None


@dataclass(frozen=True)
class CascadeSpec:
    """The student answers every question; those it is unsure of go to `teacher`."""

    teacher: JudgeSpec
    below_confidence: float = field(default=0.8, metadata={
        "help": "escalate an answer whose top label probability is below this (1.0: the "
        "teacher answers everything, 0: the student does)", "minimum": 0, "maximum": 1})
    thresholds: str = field(default="global", metadata={
        "help": "`global`: below_confidence for every question; `learned`: each question's "
        "threshold from the student's held-out split (never below below_confidence's "
        "agreement target)", "choices": CASCADE_THRESHOLDS})

    def __post_init__(self) -> None:
        _check_section("cascade", self)

    @staticmethod
    def from_mapping(values: Any) -> CascadeSpec:
        spec: CascadeSpec = _section("cascade", CascadeSpec, values)
        return spec

    def to_mapping(self) -> dict[str, Any]:
        return {"teacher": self.teacher.to_mapping(), "below_confidence": self.below_confidence,
                "thresholds": self.thresholds}


@dataclass(frozen=True)
class AuditSpec:
    """GRPO with a student reward: a random share of each step's completions is judged by
    the teacher too; a growing gap between the two rewards is reward hacking."""

    teacher: JudgeSpec
    fraction: float = field(default=0.05, metadata={
        "help": "share of a step's completions the teacher judges too", "exclusive_minimum": 0,
        "maximum": 1})
    every: int = field(default=1, metadata={"help": "audit every N-th step", "minimum": 1})
    max_gap: float = field(default=0.2, metadata={
        "help": "warn when student − teacher mean reward exceeds this over the window",
        "exclusive_minimum": 0})
    window: int = field(default=5, metadata={"help": "audited steps the gap is averaged over",
                                             "minimum": 1})
    stop_on_gap: str = field(default="false", metadata={
        "help": "stop training cleanly (model saved) when the gap is exceeded",
        "choices": ("true", "false")})
    answers: str | None = field(default=None, metadata={
        "help": "where the teacher's audit answers are appended (JSONL; default "
        "OUTPUT_DIR/audit_answers.jsonl), for `qalc distill --more-answers`"})

    def __post_init__(self) -> None:
        if isinstance(self.stop_on_gap, bool):  # YAML's true/false
            object.__setattr__(self, "stop_on_gap", "true" if self.stop_on_gap else "false")
        _check_section("audit", self)

    @property
    def stops(self) -> bool:
        return self.stop_on_gap == "true"

    @staticmethod
    def from_mapping(values: Any) -> AuditSpec:
        spec: AuditSpec = _section("audit", AuditSpec, values)
        return spec

    def to_mapping(self) -> dict[str, Any]:
        mapping = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        mapping["teacher"] = self.teacher.to_mapping()
        mapping["stop_on_gap"] = self.stops
        return mapping


def spec_fields() -> tuple[dataclasses.Field[Any], ...]:
    """The scalar options (what command lines and environment variables set)."""
    return tuple(f for f in dataclasses.fields(JudgeSpec) if not f.metadata.get("nested"))


def value_type(spec_field: dataclasses.Field[Any]) -> type:
    """int, float or str: the type a field's values have (None aside)."""
    annotation = str(spec_field.type)
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    return str


def optional(spec_field: dataclasses.Field[Any]) -> bool:
    return "None" in str(spec_field.type)


def _check_value(spec_field: dataclasses.Field[Any], value: Any) -> None:
    name, meta = spec_field.name, spec_field.metadata
    if value is None:
        if not optional(spec_field):
            raise JudgeSpecError(name, "must be set")
        return
    kind = value_type(spec_field)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise JudgeSpecError(name, f"expected {'a number' if kind is float else kind.__name__}"
                                   f", got {type(value).__name__} {value!r}")
    if kind in (int, float):
        if isinstance(value, float) and not math.isfinite(value):
            raise JudgeSpecError(name, f"must be a finite number, got {value}")
        if "minimum" in meta and value < meta["minimum"]:
            raise JudgeSpecError(name, f"must be at least {meta['minimum']}, got {value}")
        if "exclusive_minimum" in meta and value <= meta["exclusive_minimum"]:
            raise JudgeSpecError(name, f"must be greater than {meta['exclusive_minimum']}, "
                                       f"got {value}")
        if "maximum" in meta and value > meta["maximum"]:
            raise JudgeSpecError(name, f"must be at most {meta['maximum']}, got {value}")
    if "choices" in meta and value not in meta["choices"]:
        raise JudgeSpecError(name, f"must be one of {', '.join(meta['choices'])}, got "
                                   f"`{value}`")


def _field_schema(spec_field: dataclasses.Field[Any]) -> dict[str, Any]:
    meta, kind = spec_field.metadata, value_type(spec_field)
    schema: dict[str, Any] = {"type": {int: "integer", float: "number", str: "string"}[kind],
                              "description": meta["help"]}
    if optional(spec_field):
        schema["type"] = [schema["type"], "null"]
    if "choices" in meta:
        schema["enum"] = list(meta["choices"])
    for key, keyword in (("minimum", "minimum"), ("exclusive_minimum", "exclusiveMinimum"),
                         ("maximum", "maximum")):
        if key in meta:
            schema[keyword] = meta[key]
    if kind is str and not optional(spec_field):
        schema["minLength"] = 1
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe's `judge:` section, from the fields."""
    properties: dict[str, Any] = {f.name: _field_schema(f) for f in spec_fields()}
    base = {"type": "object", "additionalProperties": False, "required": ["model"],
            "properties": dict(properties)}
    for name, cls in (("cascade", CascadeSpec), ("audit", AuditSpec)):
        section = {"type": "object", "additionalProperties": False, "required": ["teacher"],
                   "description": JudgeSpec.__dataclass_fields__[name].metadata["help"],
                   "properties": {"teacher": {**base, "description": "the teacher judge"}}}
        for spec_field in dataclasses.fields(cls):
            if spec_field.name != "teacher":
                section["properties"][spec_field.name] = _field_schema(spec_field)
        properties[name] = {"type": ["object", "null"], **{k: v for k, v in section.items()
                                                           if k != "type"}}
    if "stop_on_gap" in properties["audit"]["properties"]:
        properties["audit"]["properties"]["stop_on_gap"] = {
            "type": ["boolean", "string"], "enum": [True, False, "true", "false"],
            "description": AuditSpec.__dataclass_fields__["stop_on_gap"].metadata["help"]}
    return {"type": "object", "additionalProperties": False, "required": ["model"],
            "properties": properties}
