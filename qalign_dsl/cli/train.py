"""`qalc train sft|grpo|dpo --config FILE`: TRL SFT, GRPO or DPO from a validated YAML
recipe."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qalign_dsl.cli.common import ExitCode

SPARKS = "▁▂▃▄▅▆▇█"


# What each stage's recipe holds, for `qalc train STAGE --help` (docs/training.md has more).
_COMMON = ("Recipe keys for every stage: model (a path or Hub id), constitution (a .qal or "
           "compiled .json), data (JSONL, CSV, parquet, a datasets folder, a Hub id, or "
           "{train: …, eval: …}), output_dir, trainer (the TRL config's fields, type-checked), "
           "and optionally eval_data, lora (peft), eval (a held-out eval every N steps). "
           "Paths are relative to the recipe file.")
STAGES = {
    "sft": ("supervised fine-tuning on rows written by `qalc synth`",
            "TRL's SFTTrainer on conversational rows (`messages`) or `prompt`/`completion` "
            "rows, as `qalc synth` writes them; trainer: SFTConfig fields. Example: "
            "training/qalign-paper-sft.yaml."),
    "grpo": ("GRPO with the constitution as the reward",
             "TRL's GRPOTrainer on `prompt` rows; every completion is judged against the "
             "constitution. judge: the judge options (backend, model, base_url, dtype, … — "
             "docs/judge.md); reward: format_penalty and extra reward functions (rubric, "
             "model, python) with weights; trainer: GRPOConfig fields. Examples: "
             "training/qalign-paper-grpo.yaml, training/cpu-demo-grpo.yaml, "
             "training/baseline-grpo-rm.yaml."),
    "dpo": ("DPO on rubric-ranked preference pairs",
            "TRL's DPOTrainer on `prompt`/`chosen`/`rejected` rows, as `qalc synth --pairs` "
            "writes them; trainer: DPOConfig fields. Example: training/baseline-dpo.yaml."),
}


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    train = commands.add_parser(
        "train", help="train with TRL (SFT, GRPO or DPO) from a YAML recipe",
        description="Train with TRL from a validated YAML recipe: `qalc train STAGE --config "
        "FILE`. `qalc train STAGE --help` describes each stage's recipe.")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, (summary, description) in STAGES.items():
        parser = stages.add_parser(stage, help=summary,
                                   description=f"{description} {_COMMON}")
        parser.add_argument("--config", type=Path, required=True, metavar="FILE",
                            help=f"the {stage} recipe (YAML; see training/)")
        parser.add_argument("--resume", action="store_true",
                            help="resume from the last checkpoint in output_dir")
        parser.set_defaults(run=run_train)


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[int((v - low) / span * (len(SPARKS) - 1))] for v in values)


def history_table(title: str, history: list[dict[str, Any]], keys: list[str]) -> Table:
    table = Table(title=title)
    table.add_column("step", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    for entry in history:
        if any(k in entry for k in keys):
            table.add_row(str(entry.get("step", "")), *(
                f"{entry[k]:+.4f}" if isinstance(entry.get(k), (int, float)) else "—"
                for k in keys))
    return table


def heldout_eval_callback(settings: dict[str, Any]) -> Any:
    """The recipe's `eval` section as a HeldOutEvalCallback (qalign_dsl/eval/callback.py);
    its problems are configuration errors."""
    from qalign_dsl.eval.callback import callback_from_recipe
    from qalign_dsl.eval.recipe import RecipeError
    from qalign_dsl.eval.sources import SourceError
    from qalign_dsl.training.config import ConfigError

    options = {k: settings[k] for k in ("window", "tolerance") if k in settings}
    try:
        return callback_from_recipe(Path(settings["recipe"]), settings.get("judges") or {},
                                    every_steps=int(settings.get("every_steps", 50)), **options)
    except (RecipeError, SourceError, ValueError) as error:
        raise ConfigError(f"eval: {error}") from None


def run_train(arguments: argparse.Namespace, console: Console) -> int:
    from qalign_dsl.judge.backend import JudgeError
    from qalign_dsl.judge.labels import LabelTokenError
    from qalign_dsl.training.config import ConfigError, load_config
    from qalign_dsl.training.train import run_training

    try:
        config = load_config(arguments.config, arguments.stage)
    except ConfigError as error:
        console.print(str(error), style="red", markup=False)
        return ExitCode.PROBLEMS
    try:
        callbacks = [heldout_eval_callback(config.eval)] if config.eval else []
        history = run_training(config, resume=arguments.resume, callbacks=callbacks)
    except ConfigError as error:  # a recipe key that only the run itself can check
        console.print(f"{arguments.config}: {error}", style="red", markup=False)
        return ExitCode.PROBLEMS
    except (JudgeError, LabelTokenError) as error:
        console.print(str(error), style="red", markup=False)
        return ExitCode.PROBLEMS
    if int(os.environ.get("RANK", "0")) != 0:
        return _end_launched_process(ExitCode.OK)  # rank 0 reports for all
    key = "reward" if arguments.stage == "grpo" else "loss"
    columns = [key]
    if arguments.stage == "grpo" and len(config.rewards) > 1:  # each reward of the weighted sum
        columns += [f"rewards/{spec.name}/mean" for spec in config.rewards]
    elif arguments.stage == "dpo":
        columns += ["rewards/margins", "rewards/accuracies"]
    console.print(history_table(f"{arguments.stage.upper()} → {config.output_dir / 'final'}",
                                history, columns))
    values = [e[key] for e in history if isinstance(e.get(key), (int, float))]
    console.print(f"{key} per step: {sparkline(values)}")
    return _end_launched_process(ExitCode.OK)


def _end_launched_process(code: int) -> int:
    """Under torchrun, end the process here, everything saved and printed: tearing the
    trainer's gloo process group down can deadlock (training/train.py `_KEPT_ALIVE`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
