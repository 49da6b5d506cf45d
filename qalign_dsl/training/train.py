"""Run SFT, GRPO or DPO from a validated `TrainingConfig` with TRL's trainers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qalign_dsl.sources import (
    SourceError,
    apply_columns,
    hub_access,
    load_rows,
    missing_column,
)
from qalign_dsl.training.config import (
    STAGE_FIELDS,
    ConfigError,
    DataSource,
    TrainingConfig,
    trl_config_class,
)


def load_constitution(path: Path) -> dict[str, Any]:
    from qalign_dsl import ir
    from qalign_dsl.lang.compiler import compile_file

    if path.suffix == ".qal":
        result = compile_file(path)
        if result.document is None:
            errors = [d for d in result.diagnostics if d.is_error]
            raise ConfigError(f"constitution: {path} does not compile ({len(errors)} error(s); "
                              f"run `qalc check {path}`)")
        return result.document
    from qalign_dsl.safe_io import MAX_IR_BYTES, BadInput, read_regular

    try:  # a FIFO or /dev/zero is refused before a byte is read
        return ir.loads(read_regular(path, MAX_IR_BYTES), where=str(path))
    except BadInput as error:
        raise ConfigError(f"constitution: {error}") from None
    except ir.InvalidIR as error:
        raise ConfigError(f"constitution: {error}") from None


COLUMNS = STAGE_FIELDS


def read_rows(path: Path | DataSource, column: str | tuple[str, ...],
              key: str = "data") -> list[dict[str, Any]]:
    """Rows of the stage's columns (GRPO: `prompt`, a string or chat messages; SFT:
    `messages`; DPO: `prompt`, `chosen`, `rejected`), each checked here so that Arrow never
    sees mixed types, NaN or unknown chat roles. A plain path is JSONL; a `DataSource` may
    be any source kind with a column mapping (qalign_dsl/sources.py)."""
    columns = (column,) if isinstance(column, str) else column
    if isinstance(path, DataSource):
        if path.spec.kind != "jsonl" or path.columns:
            return _source_rows(path, columns)
        assert path.spec.path is not None
        key, path = path.key, path.spec.path
    from qalign_dsl.safe_io import MAX_DATA_BYTES, BadInput, iter_lines, parse_json

    try:  # type and size first: a FIFO or /dev/zero is never read
        lines = iter_lines(path, MAX_DATA_BYTES)
    except BadInput as error:
        raise ConfigError(f"{key}: {error}") from None
    rows = []
    first_kind: dict[str, tuple[str, int]] = {}
    for number, line in lines:
        try:  # strict JSON: NaN, huge integers, deep nesting, lone surrogates are refused
            if isinstance(line, BadInput):
                raise line
            row = parse_json(line)
        except BadInput as error:
            raise ConfigError(f"{key}: {path}:{number}: "
                              f"{str(error).removeprefix(f'{path}:{number}: ')}") from None
        missing = [c for c in columns if not isinstance(row, dict) or c not in row]
        if missing:
            raise ConfigError(f"{key}: {path}:{number}: missing `{missing[0]}`")
        for name in columns:
            value = row[name]
            problem = _column_problem(name, value)
            if problem:
                raise ConfigError(f"{key}: {path}:{number}: {problem}")
            kind = "a string" if isinstance(value, str) else "chat messages"
            seen = first_kind.setdefault(name, (kind, number))
            if kind != seen[0]:
                raise ConfigError(f"{key}: {path}:{number}: `{name}` is {kind} here but "
                                  f"{seen[0]} on line {seen[1]}; use one kind")
        rows.append({c: row[c] for c in columns})
    if not rows:
        raise ConfigError(f"{key}: {path} has no rows")
    return rows


def _source_rows(source: DataSource, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """The stage's columns from a CSV, parquet, datasets or Hub source (or JSONL with a
    column mapping); the first bad row is a ConfigError naming the row and the column.
    `messages` given as JSON text (a CSV cell) is decoded."""
    rows = []
    first_kind: dict[str, tuple[str, str]] = {}
    key = source.key
    try:
        for row in load_rows(source.spec):
            if row.record is None:
                raise ConfigError(f"{key}: {row.where}: {row.error}")
            try:
                record = apply_columns(row.record, source.columns)
            except KeyError as error:
                raise ConfigError(f"{key}: {row.where}: "
                                  f"{missing_column(row.record, str(error.args[0]))}") from None
            picked = {}
            for name in columns:
                column = source.columns.get(name, name)
                if name not in record:
                    hint = "" if name in source.columns else \
                        f"; map it with `columns: {{{name}: COLUMN}}` under {key}"
                    raise ConfigError(f"{key}: {row.where}: "
                                      f"{missing_column(row.record, column)}{hint}")
                value = record[name]
                if name == "messages" and isinstance(value, str):
                    from qalign_dsl.safe_io import parse_json

                    try:  # ValueError: BadInput (NaN, deep nesting, lone surrogates)
                        value = parse_json(value)
                    except ValueError:
                        raise ConfigError(f"{key}: {row.where}: column `{column}`: not chat "
                                          "messages (JSON text of [{role, content}, …])"
                                          ) from None
                problem = _column_problem(name, value)
                if problem:
                    named = "" if column == name else f" (column `{column}`)"
                    raise ConfigError(f"{key}: {row.where}: {problem}{named}")
                kind = "a string" if isinstance(value, str) else "chat messages"
                seen = first_kind.setdefault(name, (kind, row.where))
                if kind != seen[0]:
                    raise ConfigError(f"{key}: {row.where}: `{name}` is {kind} here but "
                                      f"{seen[0]} at {seen[1]}; use one kind")
                picked[name] = value
            rows.append(picked)
    except SourceError as error:
        raise ConfigError(f"{key}: {error}") from None
    if not rows:
        raise ConfigError(f"{key}: {source.describe()} has no rows")
    return rows


def _column_problem(column: str, value: Any) -> str | None:
    from qalign_dsl.judge.prompts import ROLES

    if column != "messages" and isinstance(value, str):
        return None
    if not isinstance(value, list) or not value:
        return (f"`{column}` must be " + ("a string or " if column != "messages" else "")
                + "a non-empty list of chat messages {role, content}")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f"`{column}[{index}]` must be a chat message {{role, content}} with text"
        if message.get("role") not in ROLES:
            return (f"`{column}[{index}].role` must be one of {', '.join(ROLES)}, got "
                    f"{str(message.get('role'))[:40]!r}")
    return None


# Reporting integrations (`trainer.report_to`) -> the modules any of which makes them work,
# and the package to install: checked before any model loads. Others are caught when the
# trainer is built, from transformers' own error.
_INTEGRATION_PACKAGES = {"tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
                         "wandb": (("wandb",), "wandb"), "mlflow": (("mlflow",), "mlflow"),
                         "comet_ml": (("comet_ml",), "comet-ml"),
                         "trackio": (("trackio",), "trackio"),
                         "codecarbon": (("codecarbon",), "codecarbon"),
                         "clearml": (("clearml",), "clearml"),
                         "dvclive": (("dvclive",), "dvclive"),
                         "swanlab": (("swanlab",), "swanlab"),
                         "neptune": (("neptune",), "neptune"),
                         "flyte": (("flytekit",), "flytekit")}


def _missing_integration(key: str, package: str) -> ConfigError:
    return ConfigError(
        f"trainer.report_to: `{key}` needs the `{package}` package, which is not installed: "
        f"pip install {package} (or remove `{key}` from trainer.report_to)")


def check_integrations(report_to: Any) -> None:
    """Fail before any model loads when a reporting integration's package is missing."""
    import importlib.util

    for key in [report_to] if isinstance(report_to, str) else list(report_to or []):
        modules, package = _INTEGRATION_PACKAGES.get(str(key), ((), ""))
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise _missing_integration(str(key), package)


def integration_error(error: Exception, report_to: Any) -> ConfigError | None:
    """A reporting integration (`trainer.report_to`) that cannot start because its package is
    missing or broken: transformers raises RuntimeError ("XCallback requires …") or lets an
    ImportError through while the trainer is built. Name the recipe key and the package;
    None for errors of any other kind."""
    if not report_to:
        return None
    match = re.search(r"(\w+)Callback requires", str(error))
    name = match.group(1) if match else None
    frame = error.__traceback__
    while name is None and frame is not None:  # an ImportError inside a callback's __init__
        code = frame.tb_frame.f_code
        found = re.match(r"(\w+)Callback\.", getattr(code, "co_qualname", ""))
        if found and "integrations" in code.co_filename:
            name = found.group(1)
        frame = frame.tb_next
    if name is None:
        return None
    wanted = [str(r) for r in ([report_to] if isinstance(report_to, str) else report_to)]
    key = next((r for r in wanted if r.lower().replace("_", "") == name.lower()), name.lower())
    pip = re.search(r"pip install ([\w.\-\[\]<>=]+)", str(error))
    package = pip.group(1) if pip else _INTEGRATION_PACKAGES.get(key, ((), key))[1]
    if isinstance(error, ImportError) and not match:
        return ConfigError(f"trainer.report_to: `{key}` could not start: {error} "
                           f"(reinstall it: pip install --force-reinstall {package}; "
                           f"or remove `{key}` from trainer.report_to)")
    return _missing_integration(key, package)


def run_training(config: TrainingConfig, resume: bool = False, quiet: bool = False,
                 callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Train; returns TRL's log history. The final model is saved to OUTPUT_DIR/final and
    the trainer state (every logged step) to OUTPUT_DIR/trainer_state.json. `quiet`
    silences the libraries' progress bars, log dicts and deprecation warnings. `callbacks`
    are attached to the trainer (those with `attach(trainer)` attach themselves; `qalc
    train` passes the held-out eval callback of the recipe's `eval` section here)."""
    import warnings

    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quiet:
        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)

    document = load_constitution(config.constitution)
    dataset = _dataset(config.data, config.stage)
    eval_dataset = None if config.eval_data is None else _dataset(config.eval_data, config.stage)
    settings = dict(config.trainer)
    if eval_dataset is not None:
        settings.setdefault("eval_strategy", "steps")  # every logging_steps, unless set
    peft_config = _peft_config(config.lora) if config.lora else None
    if config.stage == "grpo" and (len(config.rewards) > 1
                                   or any(spec.weight != 1.0 for spec in config.rewards)):
        settings["reward_weights"] = [spec.weight for spec in config.rewards]
    if not torch.cuda.is_available():
        settings.setdefault("use_cpu", True)
        settings.setdefault("bf16", False)
    settings.setdefault("report_to", [])
    try:
        args = trl_config_class(config.stage)(output_dir=str(config.output_dir), **settings)
    except (ValueError, TypeError) as error:  # TRL's consistency checks (batch sizes, …)
        raise ConfigError(f"trainer: {error}") from None
    check_integrations(settings.get("report_to"))
    with hub_access(config.model) as offline:
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.model)
            model = AutoModelForCausalLM.from_pretrained(config.model)
        except (OSError, ValueError) as error:  # missing path, a Hub id offline, bad files
            hint = f" ({offline}, and it is not in the local cache)" if offline else ""
            raise ConfigError(f"model: cannot load `{config.model}`: "
                              f"{str(error).splitlines()[0] if str(error) else error}{hint}"
                              ) from None
    if config.stage == "grpo":
        from qalign_dsl.training.reward_model import build_reward_functions

        functions, _ = build_reward_functions(config, document)
    try:
        if config.stage == "grpo":
            trainer: Any = trl.GRPOTrainer(model=model, reward_funcs=functions, args=args,
                                           train_dataset=dataset, eval_dataset=eval_dataset,
                                           processing_class=tokenizer, peft_config=peft_config)
        elif config.stage == "dpo":
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            trainer = trl.DPOTrainer(model=model, args=args, train_dataset=dataset,
                                     eval_dataset=eval_dataset, processing_class=tokenizer,
                                     peft_config=peft_config)
        else:
            trainer = trl.SFTTrainer(model=model, args=args, train_dataset=dataset,
                                     eval_dataset=eval_dataset, processing_class=tokenizer,
                                     peft_config=peft_config)
    except ValueError as error:  # peft: target modules the model does not have
        if peft_config is None or "target" not in str(error).lower():
            raise
        raise ConfigError(f"lora.target_modules: {str(error).splitlines()[0]}") from None
    except (RuntimeError, ImportError) as error:
        problem = integration_error(error, settings.get("report_to"))
        if problem is None:
            raise
        raise problem from None
    for callback in callbacks:
        if hasattr(callback, "attach"):
            callback.attach(trainer)
        else:
            trainer.add_callback(callback)
    audits = [f.audit for f in functions if getattr(f, "audit", None) is not None] \
        if config.stage == "grpo" else []
    if audits:  # `stop_on_gap`: the trainer stops at the step's end, and saves as usual
        from qalign_dsl.training.audit import AuditStopCallback

        trainer.add_callback(AuditStopCallback(audits).callback)
    if quiet:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    checkpoints = (
        sorted(config.output_dir.glob("checkpoint-*")) if config.output_dir.exists() else []
    )
    trainer.train(resume_from_checkpoint=bool(resume and checkpoints) or None)
    trainer.save_model(str(config.output_dir / "final"))
    if trainer.is_world_process_zero():  # under torchrun / accelerate every rank gets here
        tokenizer.save_pretrained(str(config.output_dir / "final"))
        trainer.state.save_to_json(str(config.output_dir / "trainer_state.json"))
    if _leave_process_group():
        _KEPT_ALIVE.append(trainer)
    return list(trainer.state.log_history)


def _dataset(source: Path | DataSource, stage: str) -> Any:
    import datasets

    key = source.key if isinstance(source, DataSource) else "data"
    where = source.describe() if isinstance(source, DataSource) else source
    try:
        return datasets.Dataset.from_list(read_rows(source, COLUMNS[stage]))
    except (ValueError, TypeError) as error:  # Arrow's own type checks (ArrowInvalid)
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{key}: {where}: {error}") from None


def _peft_config(settings: dict[str, Any]) -> Any:
    """The recipe's `lora` section as peft's LoraConfig for a causal LM."""
    try:
        import peft
    except ImportError:
        raise ConfigError("lora: LoRA needs the `peft` package, which is not installed: "
                          "pip install peft (or pip install 'qalign-dsl[train]')") from None
    try:
        return peft.LoraConfig(task_type="CAUSAL_LM", **settings)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"lora: {str(error).splitlines()[0]}") from None


# Trainers of a multi-process launch, never freed: freeing DDP's reducer destroys its gloo
# process group, which joins a worker thread that may be waiting for the GIL the freeing
# thread holds — a deadlock after training succeeded (seen as a hung rank in CI). `qalc
# train` ends such a process with os._exit once everything is saved and printed.
_KEPT_ALIVE: list[Any] = []


def _leave_process_group() -> bool:
    """Under torchrun every rank must leave the process group together: a rank that exits
    while gloo's worker threads are alive aborts (`terminate called without an active
    exception`, SIGABRT) and fails the whole launch after training succeeded. True when
    this was a multi-process launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        return True
    return False

