"""`qalc eval` recipes: YAML, validated by a JSON Schema, errors with the file and key path.

A recipe names the judges (classifier rubrics + the model that answers them), the sampling
settings and the suites. Each suite has a source, a column mapping, an optional sample cap
and a metric: `asr` and `frr` are decided by a judge, `accuracy` by extracting the answer.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema

from qalign_dsl.executor import EXECUTORS, ExecutorError, ExecutorSpec, executor_from_mapping
from qalign_dsl.judge.spec import BACKENDS
from qalign_dsl.recipe_files import MAX_RECIPE_BYTES, read_yaml, validate_recipe
from qalign_dsl.sources import KINDS, SourceSpec

METRICS = ("asr", "frr", "accuracy")
LOWER_IS_BETTER = {"asr": True, "frr": True, "accuracy": False}
SOURCE_KINDS = KINDS

_SOURCE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": list(SOURCE_KINDS)},
        "path": {"type": "string", "minLength": 1},
        "dataset": {"type": "string", "minLength": 1},
        "config": {"type": ["string", "null"]},
        "split": {"type": "string", "minLength": 1},
        "revision": {"type": "string", "minLength": 1},
    },
}
_COLUMNS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "minLength": 1},
        "prompt": {"type": "string", "minLength": 1},
        "messages": {"type": "string", "minLength": 1},
        "answer": {"type": "string", "minLength": 1},
        "choices": {"type": "string", "minLength": 1},
        "category": {"type": "string", "minLength": 1},
    },
}
_SUITE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "source", "metric"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
        "source": _SOURCE,
        "columns": _COLUMNS,
        "metric": {"enum": list(METRICS)},
        "judge": {"type": "string", "minLength": 1},
        "extract": {"enum": ["number", "choice", "exact"]},
        "limit": {"type": "integer", "minimum": 1},
        "where": {"type": "object",
                  "additionalProperties": {"type": ["string", "number", "boolean"]}},
        "template": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
    },
}
_JUDGE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["rubric"],
    "properties": {
        "rubric": {"type": "string", "minLength": 1},
        "backend": {"enum": list(BACKENDS)},  # a distilled `student` classifies too
        "model": {"type": "string", "minLength": 1},
        "base_url": {"type": "string"},
        "flag": {"enum": ["reward_below", "reward_above"]},
        "threshold": {"type": "number"},
    },
}
SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "additionalProperties": False,
    "required": ["suites"],
    "properties": {
        # The default output folder is runs/eval/<name>: no path separators, no `..`.
        "name": {"type": "string", "minLength": 1, "pattern": "^[^/\\\\.][^/\\\\]*$",
                 "description": "a folder name: no `/` or backslash, not starting with `.`"},
        "description": {"type": "string"},
        "seed": {"type": "integer", "minimum": 0, "maximum": 4294967295},
        "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "bootstrap": {"type": "integer", "minimum": 100, "maximum": 1000000},
        "sampling": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "samples": {"type": "integer", "minimum": 1, "maximum": 1000},
                "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 1000000},
                "temperature": {"type": "number", "minimum": 0},
                "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "top_k": {"type": "integer", "minimum": 0},
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 100000},
                "system": {"type": "string"},
            },
        },
        "judges": {"type": "object", "additionalProperties": _JUDGE},
        # Where generation and judging run (qalign_dsl/executor.py; the command line's
        # --executor, --ray-address, ... override each key).
        "executor": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "kind": {"enum": list(EXECUTORS)},
                "address": {"type": "string", "minLength": 1},
                "actors": {"type": "integer", "minimum": 1},
                "gpus_per_actor": {"type": "number", "minimum": 0},
                "cpus_per_actor": {"type": "number", "minimum": 0},
                "batch_rows": {"type": "integer", "minimum": 1},
            },
        },
        "suites": {"type": "array", "minItems": 1, "items": _SUITE},
    },
}
_validate = fastjsonschema.compile(SCHEMA)


class RecipeError(ValueError):
    """A recipe problem; the message names the file and the key path."""


@dataclass(frozen=True, slots=True)
class Sampling:
    samples: int = 1
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 16
    system: str | None = None

    def key(self) -> dict[str, Any]:
        """What a generation depends on besides the model and the prompt (batch size is
        left out: it changes speed, not the distribution)."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": self.top_k, "system": self.system}


@dataclass(frozen=True, slots=True)
class ClassifierSpec:
    name: str
    rubric: Path
    backend: str = "transformers"
    model: str | None = None  # `--judge NAME=MODEL` may supply or override it
    base_url: str | None = None
    flag: str = "reward_below"  # flagged when the classifier's reward is below threshold
    threshold: float = 0.0


@dataclass(frozen=True, slots=True)
class Columns:
    prompt: str | None = None
    messages: str | None = None
    answer: str | None = None
    choices: str | None = None
    category: str | None = None
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    source: SourceSpec
    metric: str
    columns: Columns = field(default_factory=Columns)
    judge: str | None = None
    extract: str | None = None
    limit: int | None = None
    template: str | None = None
    description: str = ""
    where: tuple[tuple[str, Any], ...] = ()  # keep rows whose columns equal these values

    @property
    def lower_is_better(self) -> bool:
        return LOWER_IS_BETTER[self.metric]


@dataclass(frozen=True, slots=True)
class Recipe:
    path: Path
    name: str
    suites: tuple[Suite, ...]
    judges: dict[str, ClassifierSpec]
    sampling: Sampling
    seed: int = 0
    alpha: float = 0.01
    bootstrap: int = 2000
    hash: str = ""
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)


def load_recipe(path: Path) -> Recipe:
    """Read and validate a recipe; raises RecipeError naming `path` and the key."""
    raw, data = read_yaml(path, RecipeError, MAX_RECIPE_BYTES)
    return parse_recipe(raw, path, hashlib.sha256(data).hexdigest())


def parse_recipe(raw: Any, path: Path, digest: str = "") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping with `suites`")
    validate_recipe(path, raw, SCHEMA, _validate, RecipeError)
    base = path.parent
    judges = {}
    for name, spec in (raw.get("judges") or {}).items():
        rubric = _resolve(base, spec["rubric"])
        if not rubric.exists():
            raise RecipeError(f"{path}: judges.{name}.rubric: `{spec['rubric']}` does not exist")
        model = spec.get("model")
        if model and model.startswith((".", "/", "~")):
            model = str(_resolve(base, model))
        judges[name] = ClassifierSpec(name, rubric, spec.get("backend", "transformers"), model,
                                 spec.get("base_url"), spec.get("flag", "reward_below"),
                                 float(spec.get("threshold", 0.0)))
    suites = []
    seen: set[str] = set()
    for index, spec in enumerate(raw["suites"]):
        where = f"suites[{index}]"
        name = spec["name"]
        if name in seen:
            raise RecipeError(f"{path}: {where}.name: duplicate suite name `{name}`")
        seen.add(name)
        suites.append(_suite(path, where, spec, judges))
    sampling = Sampling(**(raw.get("sampling") or {}))
    try:
        executor = executor_from_mapping(raw.get("executor") or {})
    except ExecutorError as error:
        raise RecipeError(f"{path}: executor.{error.key}: {error.message}") from None
    return Recipe(path=path, name=raw.get("name", path.stem), suites=tuple(suites),
                  judges=judges, sampling=sampling, seed=int(raw.get("seed", 0)),
                  alpha=float(raw.get("alpha", 0.01)), bootstrap=int(raw.get("bootstrap", 2000)),
                  hash="sha256:" + digest if digest else "", executor=executor)


def _suite(
    path: Path, where: str, spec: dict[str, Any], judges: dict[str, ClassifierSpec]
) -> Suite:
    source = spec["source"]
    kind = source.get("kind") or _infer_kind(source)
    if kind is None:
        raise RecipeError(f"{path}: {where}.source: give `kind` ({', '.join(SOURCE_KINDS)}), "
                          "or a `path` ending in .jsonl/.csv/.parquet, or a hub `dataset`")
    if kind == "hub":
        if not source.get("dataset"):
            raise RecipeError(f"{path}: {where}.source.dataset: a hub source needs a dataset id")
        source_spec = SourceSpec("hub", None, source["dataset"], source.get("config"),
                                 source.get("split", "test"), source.get("revision"))
    else:
        if not source.get("path"):
            raise RecipeError(f"{path}: {where}.source.path: a {kind} source needs a path")
        source_spec = SourceSpec(kind, _resolve(path.parent, source["path"]),
                                 split=source.get("split", "test"))
    columns = Columns(**(spec.get("columns") or {}))
    if (columns.prompt is None) == (columns.messages is None):
        raise RecipeError(f"{path}: {where}.columns: map exactly one of `prompt` or `messages`")
    metric = spec["metric"]
    judge = spec.get("judge")
    extract = spec.get("extract")
    if metric in ("asr", "frr"):
        if judge is None:
            raise RecipeError(f"{path}: {where}.judge: a `{metric}` suite needs a judge "
                              f"(one of: {', '.join(judges) or 'none defined under `judges`'})")
        if judge not in judges:
            hint = difflib.get_close_matches(judge, list(judges), n=1)
            raise RecipeError(f"{path}: {where}.judge: unknown judge `{judge}`" + (
                f" (did you mean `{hint[0]}`?)" if hint else
                f"; defined: {', '.join(judges) or 'none'}"))
        if extract is not None:
            raise RecipeError(f"{path}: {where}.extract: only `accuracy` suites extract answers")
    else:
        if columns.answer is None:
            raise RecipeError(f"{path}: {where}.columns.answer: an accuracy suite needs the "
                              "reference answer's column")
        if extract is None:
            extract = "choice" if columns.choices else "number"
        if judge is not None:
            raise RecipeError(f"{path}: {where}.judge: accuracy is scored by extraction, "
                              "without a judge")
    return Suite(name=spec["name"], source=source_spec, metric=metric, columns=columns,
                 judge=judge, extract=extract, limit=spec.get("limit"),
                 template=spec.get("template"), description=spec.get("description", ""),
                 where=tuple((spec.get("where") or {}).items()))


def _infer_kind(source: dict[str, Any]) -> str | None:
    if source.get("dataset"):
        return "hub"
    suffix = Path(str(source.get("path", ""))).suffix.lower()
    return {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}.get(suffix)


def _resolve(base: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else (base / candidate).resolve()
