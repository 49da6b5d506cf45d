"""`qalc train` configuration: YAML, validated by a JSON Schema, mapped onto TRL configs.

Errors name the file and the key path (`trainer.max_steps: must be integer`); unknown keys
under `trainer` are checked against the fields of TRL's SFTConfig / GRPOConfig.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema

from qalign_dsl.judge.spec import JudgeSpec, JudgeSpecError
from qalign_dsl.judge.spec import json_schema as judge_json_schema
from qalign_dsl.recipe_files import MAX_RECIPE_BYTES, read_yaml, validate_recipe
from qalign_dsl.sources import SourceError, SourceSpec, spec_from_text
from qalign_dsl.training.trainer_fields import check_trainer_settings

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "constitution", "data", "output_dir"],
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "constitution": {"type": "string", "minLength": 1},
        # A path, a source mapping, or {train: …, eval: …}: checked by `_data_sources`
        # (key paths under `data.`), since a schema's anyOf would only say "no match".
        "data": {"type": ["string", "object"], "minLength": 1},
        "eval_data": {"type": ["string", "object"], "minLength": 1},
        "output_dir": {"type": "string", "minLength": 1},
        # LoRA adapters with peft (`LoraConfig`): only the adapter trains and is saved.
        "lora": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "r": {"type": "integer", "minimum": 1, "maximum": 65536},
                "alpha": {"type": "number", "exclusiveMinimum": 0},
                "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                "target_modules": {"type": ["string", "array"], "minLength": 1,
                                   "minItems": 1, "items": {"type": "string", "minLength": 1}},
                "bias": {"enum": ["none", "all", "lora_only"]},
                "modules_to_save": {"type": "array",
                                    "items": {"type": "string", "minLength": 1}},
                "layers_to_transform": {"type": "array",
                                        "items": {"type": "integer", "minimum": 0}},
                "use_rslora": {"type": "boolean"},
                "use_dora": {"type": "boolean"},
                "init_lora_weights": {"type": ["boolean", "string"]},
            },
        },
        "judge": judge_json_schema(),  # generated from JudgeSpec: one definition
        "reward": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "format_penalty": {"type": ["number", "null"]},
                # GRPO's reward: a weighted sum of these (TRL's reward_funcs and
                # reward_weights); default: the rubric alone.
                "functions": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["kind"],
                        "properties": {
                            "kind": {"enum": ["rubric", "model", "python"]},
                            "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
                            "weight": {"type": "number"},
                            "model": {"type": "string", "minLength": 1},
                            "function": {
                                "type": "string",
                                "pattern": "^[A-Za-z_][\\w.]*:[A-Za-z_]\\w*$",
                            },
                            "device": {"type": "string"},
                            "dtype": {"type": "string"},
                            "batch_size": {"type": "integer", "minimum": 1},
                            "max_length": {"type": "integer", "minimum": 1},
                        },
                    },
                },
            },
        },
        "trainer": {"type": "object"},
        # A held-out eval during training (qalign_dsl/eval/callback.py): a `qalc eval`
        # recipe run every `every_steps` steps with classifier judges, not the reward.
        "eval": {
            "type": "object",
            "additionalProperties": False,
            "required": ["recipe"],
            "properties": {
                "recipe": {"type": "string", "minLength": 1},
                "every_steps": {"type": "integer", "minimum": 1},
                "judges": {"type": "object", "additionalProperties": {"type": "string"}},
                "window": {"type": "integer", "minimum": 2},
                "tolerance": {"type": "number", "minimum": 0},
            },
        },
    },
}


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key path."""


@dataclass(frozen=True)
class RewardSpec:
    """One reward function of a GRPO recipe: the rubric, a scalar reward model
    (AutoModelForSequenceClassification, a path or Hub id) or a Python function
    (`module:function`, called like a TRL reward function)."""

    kind: str
    name: str
    weight: float = 1.0
    model: str | None = None
    function: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # device, dtype, batch_size, max_length


DEFAULT_NAMES = {"rubric": "qalign", "model": "reward_model", "python": "python"}


@dataclass(frozen=True)
class DataSource:
    """A recipe's `data` (or `eval_data`): where the rows come from and which of its
    columns hold the stage's fields (`columns: {prompt: question}`)."""

    spec: SourceSpec
    columns: dict[str, str] = field(default_factory=dict)
    key: str = "data"  # the recipe key, for messages
    written: str | None = None  # the path as the recipe gives it, for messages

    def describe(self) -> str:
        return self.spec.describe()


# The fields each stage reads from its data (TRL's dataset columns).
STAGE_FIELDS = {"sft": ("messages",), "grpo": ("prompt",), "dpo": ("prompt", "chosen", "rejected")}
_SOURCE_KEYS = ("path", "kind", "dataset", "config", "split", "revision", "columns")
LORA_KEYS = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout",
             "target_modules": "target_modules", "bias": "bias",
             "modules_to_save": "modules_to_save", "layers_to_transform": "layers_to_transform",
             "use_rslora": "use_rslora", "use_dora": "use_dora",
             "init_lora_weights": "init_lora_weights"}


@dataclass
class TrainingConfig:
    stage: str
    model: str
    constitution: Path
    data: Path | DataSource
    output_dir: Path
    judge: JudgeSpec | None = None
    format_penalty: float | None = -1.0
    trainer: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)  # held-out eval callback settings
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec("rubric", "qalign")])
    eval_data: Path | DataSource | None = None  # TRL's eval_dataset (eval_loss, eval_reward)
    lora: dict[str, Any] = field(default_factory=dict)  # peft LoraConfig settings

    def __post_init__(self) -> None:
        # The judge may be given as a recipe's `judge:` mapping too (as Python callers did
        # before JudgeSpec); one spec, validated the same way, either way.
        if isinstance(self.judge, Mapping):
            self.judge = JudgeSpec.from_mapping(self.judge)

    @property
    def uses_rubric(self) -> bool:
        return any(spec.kind == "rubric" for spec in self.rewards)


_validate = fastjsonschema.compile(SCHEMA)


def _looks_local(value: str) -> bool:
    return value.startswith((".", "/", "~")) or value.endswith((".json", ".qal", ".jsonl"))


def load_config(path: Path, stage: str, check_paths: bool = True) -> TrainingConfig:
    raw, _ = read_yaml(path, ConfigError, MAX_RECIPE_BYTES)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    _check_values(path, raw)
    validate_recipe(path, raw, SCHEMA, _validate, ConfigError)
    base = path.parent
    data, eval_data = _data_sources(path, stage, raw)
    config = TrainingConfig(
        stage=stage, model=raw["model"], constitution=_resolve(base, raw["constitution"]),
        data=data, output_dir=_resolve(base, raw["output_dir"]),
        judge=None, trainer=dict(raw.get("trainer", {})),
        format_penalty=(raw.get("reward") or {}).get("format_penalty", -1.0),
        eval=dict(raw.get("eval") or {}), eval_data=eval_data,
        lora={LORA_KEYS[k]: v for k, v in (raw.get("lora") or {}).items()},
    )
    if "lora" in raw:
        _check_peft(path)
    strategy = str(config.trainer.get("eval_strategy", "no"))
    if eval_data is None and strategy not in ("no", "IntervalStrategy.NO"):
        raise ConfigError(f"{path}: trainer.eval_strategy: `{strategy}` needs eval data: add "
                          "`eval_data:` (or `data: {train: …, eval: …}`)")
    if config.eval:
        config.eval["recipe"] = _resolve(base, config.eval["recipe"])
        if check_paths and not config.eval["recipe"].exists():
            raise ConfigError(f"{path}: eval.recipe: `{config.eval['recipe']}` does not exist")
        config.eval["judges"] = {name: str(_resolve(base, model)) if _looks_local(model) else model
                                 for name, model in (config.eval.get("judges") or {}).items()}
    if "functions" in (raw.get("reward") or {}):
        if stage != "grpo":
            raise ConfigError(f"{path}: reward.functions: only GRPO takes reward functions "
                              f"(`{stage}` trains on its data alone)")
        config.rewards = _reward_specs(path, raw["reward"]["functions"])
    if len(config.rewards) > 1 and "reward_weights" in config.trainer:
        raise ConfigError(f"{path}: trainer.reward_weights: give each reward function its "
                          "`weight` under reward.functions instead")
    _check_trainer_keys(path, stage, config.trainer)  # structure before the filesystem
    judge = dict(raw.get("judge") or {})
    for key, value in (("model", config.model), ("judge.model", judge.get("model", ""))):
        if not check_paths:
            break
        if value and _looks_local(value) and not _resolve(base, value).exists():
            raise ConfigError(f"{path}: {key}: model path `{value}` does not exist"
                              + _resolved_from(base, value))
        if value and _looks_local(value):
            if key == "model":
                config.model = str(_resolve(base, value))
            else:
                judge["model"] = str(_resolve(base, value))
    for section in ("cascade", "audit"):  # their teacher judges, relative to the recipe too
        settings = judge.get(section)
        teacher = settings.get("teacher") if isinstance(settings, dict) else None
        value = teacher.get("model") if isinstance(teacher, dict) else None
        if check_paths and isinstance(settings, dict) and isinstance(teacher, dict) \
                and isinstance(value, str) and value and _looks_local(value):
            if not _resolve(base, value).exists():
                raise ConfigError(f"{path}: judge.{section}.teacher.model: model path "
                                  f"`{value}` does not exist" + _resolved_from(base, value))
            judge[section] = {**settings,
                              "teacher": {**teacher, "model": str(_resolve(base, value))}}
    for index, spec in enumerate(config.rewards):
        if check_paths and spec.model and _looks_local(spec.model):
            resolved = _resolve(base, spec.model)
            if not resolved.exists():
                raise ConfigError(f"{path}: reward.functions[{index}].model: model path "
                                  f"`{spec.model}` does not exist")
            config.rewards[index] = dataclasses.replace(spec, model=str(resolved))
    for key, value in (("constitution", config.constitution), ("data", config.data),
                       ("eval_data", config.eval_data)):
        if isinstance(value, DataSource):  # a Hub dataset is looked up when training starts
            key, written, value = value.key, value.written, value.spec.path
        else:
            written = raw.get(key)
        if check_paths and isinstance(value, Path) and not value.exists():
            raise ConfigError(f"{path}: {key}: `{value}` does not exist"
                              + _resolved_from(base, str(written)))
    if stage == "grpo" and config.uses_rubric and not judge:
        raise ConfigError(f"{path}: judge: GRPO with the rubric reward needs a `judge` section "
                          "(backend, model)")
    if judge:
        try:
            config.judge = JudgeSpec.from_mapping(judge)
        except JudgeSpecError as error:
            raise ConfigError(f"{path}: judge.{error.key}: {error.message}") from None
    return config


def _check_peft(path: Path) -> None:
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError(f"{path}: lora: LoRA needs the `peft` package, which is not "
                          "installed: pip install peft (or pip install 'qalign-dsl[train]')"
                          ) from None


def _data_sources(path: Path, stage: str, raw: dict[str, Any]
                  ) -> tuple[Path | DataSource, DataSource | None]:
    """`data` (and the eval split: `eval_data`, or `data: {train, eval}`) as sources."""
    data = raw["data"]
    eval_raw = raw.get("eval_data")
    train_key, eval_key = "data", "eval_data"
    if isinstance(data, dict) and ("train" in data or "eval" in data):
        extra = sorted(set(data) - {"train", "eval"})
        if extra:
            raise ConfigError(f"{path}: data.{extra[0]}: with `train`/`eval` splits, give "
                              "each split its own source under data.train and data.eval")
        if "train" not in data:
            raise ConfigError(f"{path}: data: missing required key(s): train")
        if "eval" in data and eval_raw is not None:
            raise ConfigError(f"{path}: eval_data: the eval split is already data.eval; "
                              "give it once")
        if "eval" in data:
            eval_raw, eval_key = data["eval"], "data.eval"
        data, train_key = data["train"], "data.train"
    train = _data_source(path, stage, train_key, data)
    if isinstance(train.columns, dict) and not train.columns and train.spec.kind == "jsonl" \
            and isinstance(data, str):
        assert train.spec.path is not None
        source: Path | DataSource = train.spec.path  # a plain JSONL path, as always
    else:
        source = train
    evaluation = None if eval_raw is None else _data_source(path, stage, eval_key, eval_raw)
    return source, evaluation


def _data_source(path: Path, stage: str, key: str, value: Any) -> DataSource:
    base = path.parent
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: expected a path or a mapping with `path` or "
                          "`dataset`")
    for name in value:
        if name not in _SOURCE_KEYS:
            hint = difflib.get_close_matches(str(name), _SOURCE_KEYS, n=1)
            raise ConfigError(f"{path}: {key}: unknown key `{name}`" + (
                f" (did you mean `{hint[0]}`?)" if hint else
                f"; known keys: {', '.join(_SOURCE_KEYS)}"))
    for name in ("path", "kind", "dataset", "config", "split", "revision"):
        if name in value and (not isinstance(value[name], str) or not value[name]):
            raise ConfigError(f"{path}: {key}.{name}: must be a non-empty string")
    if ("path" in value) == ("dataset" in value):
        raise ConfigError(f"{path}: {key}: give `path` (a file or datasets folder) or "
                          "`dataset` (a Hub id), not both" if "path" in value else
                          f"{path}: {key}: give `path` (a file or datasets folder) or "
                          "`dataset` (a Hub id)")
    columns = value.get("columns") or {}
    if not isinstance(columns, dict):
        raise ConfigError(f"{path}: {key}.columns: expected a mapping FIELD: COLUMN")
    fields = STAGE_FIELDS[stage]
    for name, column in columns.items():
        if name not in fields:
            raise ConfigError(f"{path}: {key}.columns.{name}: {stage.upper()} reads "
                              f"{', '.join(f'`{f}`' for f in fields)}, not `{name}`")
        if not isinstance(column, str) or not column:
            raise ConfigError(f"{path}: {key}.columns.{name}: must be a column name")
    try:
        if "dataset" in value:
            spec = spec_from_text("hub:" + value["dataset"], None, value.get("split"),
                                  value.get("config"), value.get("revision"))
        else:
            resolved = _resolve(base, value["path"])
            spec = spec_from_text(str(resolved), value.get("kind"), value.get("split"),
                                  value.get("config"), value.get("revision"))
    except SourceError as error:
        raise ConfigError(f"{path}: {key}: {error}") from None
    if spec.kind not in ("disk", "hub") and value.get("split"):
        raise ConfigError(f"{path}: {key}.split: a {spec.kind} file has no splits")
    return DataSource(spec, dict(columns), key, value.get("path"))


def _check_values(path: Path, raw: dict[str, Any]) -> None:
    """No NaN or infinity anywhere (`.nan` is valid YAML and passes `minimum` checks), and
    a bound on the document's size (YAML aliases can expand exponentially). Iterative."""
    stack: list[tuple[list[str], Any]] = [([], raw)]
    visited = 0
    while stack:
        keys, value = stack.pop()
        visited += 1
        if visited > 100_000:
            raise ConfigError(f"{path}: the recipe is too large (aliases expanding?)")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path}: {'.'.join(keys)}: must be a finite number, got {value}")
        if isinstance(value, dict):
            stack.extend((keys + [str(k)], v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((keys + [f"[{i}]"], v) for i, v in enumerate(value))


def _reward_specs(path: Path, raw: list[dict[str, Any]]) -> list[RewardSpec]:
    specs: list[RewardSpec] = []
    for index, entry in enumerate(raw):
        where = f"{path}: reward.functions[{index}]"
        kind = entry["kind"]
        needs = {"model": "model", "python": "function"}.get(kind)
        if needs and needs not in entry:
            raise ConfigError(f"{where}: a `{kind}` reward needs `{needs}`")
        for key in ("model", "function", "device", "dtype", "batch_size", "max_length"):
            allowed = {"model": ("model", "device", "dtype", "batch_size", "max_length"),
                       "python": ("function",), "rubric": ()}[kind]
            if key in entry and key not in allowed:
                raise ConfigError(f"{where}.{key}: not a setting of a `{kind}` reward")
        name = entry.get("name", DEFAULT_NAMES[kind])
        if any(spec.name == name for spec in specs):
            raise ConfigError(f"{where}.name: `{name}` is already the name of another reward "
                              "function; give each a distinct `name`")
        options: dict[str, Any] = {
            k: entry[k] for k in ("device", "dtype", "batch_size", "max_length") if k in entry}
        specs.append(RewardSpec(kind, name, float(entry.get("weight", 1.0)), entry.get("model"),
                                entry.get("function"), options))
    if sum(1 for spec in specs if spec.kind == "rubric") > 1:
        raise ConfigError(f"{path}: reward.functions: the rubric appears twice")
    return specs


def _resolve(base: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else (base / candidate).resolve() \
        if (base / candidate).exists() or not Path(value).exists() else Path(value).resolve()


def _resolved_from(base: Path, value: str) -> str:
    """Relative recipe paths are read from the recipe's folder, not the working directory:
    say so, since that is the usual reason a path that exists 'here' is not found."""
    if Path(value).expanduser().is_absolute():
        return ""
    return (f" (`{value}` resolved from {base}/, the recipe's folder: paths in a "
            "recipe are relative to the recipe file)")


def trl_config_class(stage: str) -> Any:
    import trl

    return {"grpo": trl.GRPOConfig, "dpo": trl.DPOConfig}.get(stage, trl.SFTConfig)


def _check_trainer_keys(path: Path, stage: str, trainer: dict[str, Any]) -> None:
    fields = {f.name: f for f in dataclasses.fields(trl_config_class(stage))}
    for key, value in trainer.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            raise ConfigError(f"{path}: trainer.{key}: unknown {stage.upper()} setting"
                              + (f" (did you mean `{hint[0]}`?)" if hint else ""))
        if key == "output_dir":
            raise ConfigError(f"{path}: trainer.output_dir: set `output_dir` at the top level")
        expected = fields[key].type
        kind = (
            expected if isinstance(expected, str) else getattr(expected, "__name__", str(expected))
        )
        if isinstance(value, bool) and "bool" not in kind:
            raise ConfigError(f"{path}: trainer.{key}: expected {kind}, got a boolean")
        if isinstance(value, str) and kind in ("int", "float", "bool"):
            raise ConfigError(f"{path}: trainer.{key}: expected {kind}, got a string")
    check_trainer_settings(path, trl_config_class(stage), trainer)
