"""`qalc demo`: the whole pipeline on tiny local models, on CPU (the README's main job).

Progress of every long stage goes to stderr (rich); the pipeline itself is
`qalign_dsl.training.demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import mean

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from qalign_dsl.cli import validation
from qalign_dsl.cli.common import ExitCode, UsageError
from qalign_dsl.cli.train import history_table, sparkline

STAGES = 6
SYNTH_PROMPTS = ["How do I do this?", "Can you help me with my plan?", "What should I do next?",
                 "Can you help me with my garden?", "What should I cook tonight?",
                 "How do I plan a trip?"]


_positive = validation.number_type(int, 1)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from qalign_dsl.training.demo import DemoSettings

    defaults = DemoSettings()
    demo = commands.add_parser(
        "demo", help="the whole pipeline on tiny local models, on CPU (a few minutes)",
        description="Builds a tokenizer, a tiny policy and a toy judge locally (no downloads), "
        "compiles a small constitution, synthesizes SFT rows, and runs GRPO with the "
        "constitution as the reward. "
        "Metrics, the reward curve and the models land in --output.")
    demo.add_argument("--output", type=Path, default=Path("runs/demo"),
                      help="folder for models, data, metrics and the plot (default: runs/demo)")
    demo.add_argument("--judge-steps", type=_positive, default=defaults.judge_steps,
                      help=f"training steps of the toy judge (default: {defaults.judge_steps})")
    demo.add_argument("--sft-steps", type=_positive, default=defaults.sft_steps,
                      help=f"SFT steps of the policy (default: {defaults.sft_steps})")
    demo.add_argument("--grpo-steps", type=_positive, default=defaults.grpo_steps,
                      help=f"GRPO steps (default: {defaults.grpo_steps})")
    demo.add_argument("--seed", type=int, default=defaults.seed,
                      help=f"seed of every model and sampler (default: {defaults.seed})")
    demo.set_defaults(run=run_demo)


@contextmanager
def stage(console: Console, label: str, total: int | None) -> Iterator[Callable[[int, str], None]]:
    """A progress bar (or a spinner when `total` is None) on stderr while a stage runs;
    yields `advance(done, note)`."""
    if not console.is_terminal:  # no live bar in a log: say at least what is running
        console.print(f"   {label}" + (f" ({total} steps) …" if total else " …"))
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total is not None:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn("{task.fields[note]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=total, note="")

        def advance(done: int, note: str) -> None:
            progress.update(task, completed=done, note=note)

        yield advance


def run_demo(arguments: argparse.Namespace, console: Console) -> int:
    """Tiny tokenizer, policy and toy judge built here; the demo constitution; a few
    synthesized SFT rows; SFT, then GRPO with the constitution as the reward; metrics,
    trainer state and a plot of the reward per step."""
    from dataclasses import replace

    from qalign_dsl.judge.backends.transformers import TransformersBackend
    from qalign_dsl.judge.runtime import Judge
    from qalign_dsl.lang.compiler import compile_file
    from qalign_dsl.training import demo
    from qalign_dsl.training.synth import HFGenerator, synthesize

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    settings = replace(demo.DemoSettings(), judge_steps=arguments.judge_steps,
                       sft_steps=arguments.sft_steps, grpo_steps=arguments.grpo_steps,
                       seed=arguments.seed)
    started = time.perf_counter()
    root: Path = arguments.output
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"--output {root}: {error.strerror or error}") from None

    def elapsed() -> str:
        return f"{time.perf_counter() - started:.0f} s"

    def clock() -> str:  # stage lines show the demo's clock, not each stage's own time
        return f"at {elapsed()}"

    source = demo_source()
    result = compile_file(source)
    assert result.document is not None, result.diagnostics  # the shipped demo.qal compiles
    document = result.document
    constitution = root / "demo.json"
    constitution.write_text(json.dumps(document, sort_keys=True), encoding="utf-8")
    rule = document["aggregation"].get("rules", {}).get("reward", "")
    console.print(f"1/{STAGES} compiled {source.name} (the tutorial's rubric in miniature, "
                  f"with a one-line judge prompt): {len(document['questions'])} questions, "
                  f"reward = {rule}")

    with stage(console, "building the toy judge", settings.judge_steps) as advance:
        models = demo.build_models(root, document, [source.read_text(encoding="utf-8")],
                                   settings, advance)
    console.print(f"2/{STAGES} built a tokenizer, a tiny policy and a toy judge in {root} "
                  f"({clock()}); the judge is a toy: trained here to fail the "
                  "harmlessness questions when a response has a harm word (poison, weapon, …), "
                  "and taught nothing else — its helpfulness answers generalize from that "
                  "lesson, so in this toy the two principles move together")

    with stage(console, "SFT: the policy learns everyday sentences", settings.sft_steps) \
            as advance:
        sft_history = demo.sft(root, constitution, models, settings, advance)
    losses = [e["loss"] for e in sft_history if "loss" in e]
    console.print(f"3/{STAGES} SFT {settings.sft_steps} steps on a 50/50 mix of harmless and "
                  f"harmful sentences, loss {sparkline(losses)} ({clock()}): an unaligned "
                  "starting point")

    with stage(console, "synthesizing SFT rows", None) as advance:
        advance(0, "draft → rubric → reflection → revision")
        judge = Judge(document, TransformersBackend(str(models.judge)))
        generator = HFGenerator(str(root / "sft" / "final"), max_new_tokens=16,
                                temperature=1.0, seed=settings.seed)
        rows = synthesize(document, judge, generator, generator,
                          [(f"p{i}", p) for i, p in enumerate(SYNTH_PROMPTS)], margin=0.0)
    kept = [row.record for row in rows if row.kept]
    demo.write_jsonl(root / "synth.jsonl", kept)
    demo.write_jsonl(root / "synth.dropped.jsonl", [row.record for row in rows if not row.kept])
    console.print(f"4/{STAGES} synthesized {len(rows)} rows (draft → rubric → reflection → "
                  f"revision): {len(kept)} kept, where the revision's reward beat the draft's "
                  f"→ {root / 'synth.jsonl'} (the input `qalc train sft` takes)")

    console.print(
        f"   GRPO reward: `{rule}`, per completion "
        "from -1 (a harmlessness gate failed: the judge saw harm) to +1 (every question "
        "passed); a step's reward is the mean over its "
        f"{settings.completions} completions. GRPO moves the policy toward the answers the "
        "judge scores higher: here, answers without harm words.")
    with stage(console, "GRPO with the constitution as reward", settings.grpo_steps) as advance:
        grpo_history = demo.grpo(root, constitution, models, settings, advance)
    rows_per_step = demo.reward_rows(grpo_history)
    rewards = [row["reward"] for row in rows_per_step]
    console.print(history_table("GRPO with the constitution as reward", grpo_history,
                                ["reward", "qalign/response/harmlessness",
                                 "qalign/response/helpfulness"]))
    window = max(1, len(rewards) // 4)
    console.print(f"5/{STAGES} GRPO {settings.grpo_steps} steps, reward {sparkline(rewards)}: "
                  f"mean {mean(rewards[:window]):+.2f} over the first {window} step(s), "
                  f"{mean(rewards[-window:]):+.2f} over the last {window} ({clock()})")

    shutil.copyfile(root / "grpo" / "trainer_state.json", root / "trainer_state.json")
    csv_path = demo.write_metrics_csv(root / "metrics.csv", rows_per_step)
    plot = demo.plot_rewards(root / "reward.png", rows_per_step,
                             "qalc demo: GRPO with the constitution as reward")
    console.print(f"6/{STAGES} saved {root / 'trainer_state.json'}, {csv_path} and {plot} "
                  f"(total {elapsed()}; models in {root}: policy {root / 'grpo' / 'final'}, "
                  f"judge {models.judge})")
    return ExitCode.OK


def demo_source() -> Path:
    """qalign_dsl/data/demo.qal: the tutorial's rubric with a judge prompt a toy can read."""
    return Path(__file__).resolve().parents[1] / "data" / "demo.qal"
