"""The paper's baselines in `qalc train`: GRPO with a scalar reward model or a weighted sum
of reward functions, and DPO on preference pairs ranked by the rubric (`qalc synth --pairs`).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
from conftest import ROOT

from qalign_dsl.cli import main
from qalign_dsl.training.config import ConfigError, load_config

pytest.importorskip("trl")


def length_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """A Python reward function for the recipes below: shorter is better."""
    return [-len(str(c)) / 100 for c in completions]


@pytest.fixture
def workspace(tiny_model: Path, tmp_path: Path) -> Path:
    from qalign_dsl.training.tiny import build_reward_model

    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"prompt": [{"role": "user", "content": q}]}) + "\n"
        for q in ["How do I bake bread?", "Hi!", "Tea?", "Why?"]))
    (tmp_path / "model").symlink_to(tiny_model)
    build_reward_model(tmp_path / "rm", tiny_model)
    return tmp_path


RECIPE = """model: ./model
constitution: {root}/compiled/tutorial.json
data: prompts.jsonl
output_dir: {out}
{judge}reward:
  functions:
{functions}
trainer:
  max_steps: {steps}
  per_device_train_batch_size: 4
  num_generations: 4
  generation_batch_size: 4
  max_completion_length: 8
  logging_steps: 1
  save_strategy: "no"
  seed: 0
"""


def recipe(folder: Path, name: str, functions: str, steps: int = 2, judge: bool = False) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(RECIPE.format(
        root=ROOT, out=name, steps=steps, functions=functions,
        judge="judge:\n  backend: transformers\n  model: ./model\n" if judge else ""))
    return path


@pytest.mark.parametrize("functions, message", [
    ("    - kind: critic\n", "reward.functions[0].kind: value must be one of"),
    ("    - kind: model\n", "reward.functions[0]: a `model` reward needs `model`"),
    ("    - kind: model\n      model: ./rm\n      function: a:b\n",
     "reward.functions[0].function: not a setting of a `model` reward"),
    ("    - kind: model\n      model: ./rm\n    - kind: model\n      model: ./rm\n",
     "reward.functions[1].name: `reward_model` is already the name"),
    ("    - kind: model\n      modle: ./rm\n",
     "reward.functions[0]: unknown key `modle` (did you mean `model`?)"),
    ("    - kind: model\n      model: ./nope\n",
     "reward.functions[0].model: model path `./nope` does not exist"),
    ("    - kind: rubric\n", "judge: GRPO with the rubric reward needs a `judge` section"),
])
def test_reward_function_errors_name_the_key(workspace: Path, functions: str,
                                              message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(recipe(workspace, "bad", functions), "grpo")
    assert message in str(raised.value), str(raised.value)


def test_reward_functions_are_grpo_only(workspace: Path) -> None:
    path = workspace / "dpo.yaml"
    path.write_text(f"model: ./model\nconstitution: {ROOT}/compiled/tutorial.json\n"
                    "data: prompts.jsonl\noutput_dir: o\nreward:\n  functions:\n"
                    "    - kind: model\n      model: ./rm\n")
    with pytest.raises(ConfigError, match="only GRPO takes reward functions"):
        load_config(path, "dpo")


def test_shipped_baseline_recipes_validate() -> None:
    rm = load_config(ROOT / "training" / "baseline-grpo-rm.yaml", "grpo", check_paths=False)
    assert [spec.kind for spec in rm.rewards] == ["model"] and not rm.uses_rubric
    dpo = load_config(ROOT / "training" / "baseline-dpo.yaml", "dpo", check_paths=False)
    assert dpo.trainer["beta"] > 0


def test_grpo_with_a_scalar_reward_model(workspace: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """(b): a tiny LlamaForSequenceClassification is the only reward, in a real GRPOTrainer;
    no judge section is needed."""
    from qalign_dsl.training.train import run_training

    path = recipe(workspace, "rm-only", "    - kind: model\n      model: ./rm\n      name: rm\n")
    assert main(["train", "grpo", "--config", str(path)]) == 0
    assert (workspace / "rm-only" / "final" / "config.json").exists()
    assert "reward per step" in capsys.readouterr().err

    # (c): the rubric (judged by the tiny model), the reward model and a Python function,
    # weighted; TRL logs each one, and the reward is their weighted sum.
    path = recipe(workspace, "sum", "    - kind: rubric\n      weight: 0.5\n"
                  "    - kind: model\n      model: ./rm\n      name: rm\n      weight: 2.0\n"
                  "    - kind: python\n      function: test_baselines:length_reward\n"
                  "      name: brevity\n      weight: 0.25\n", steps=1, judge=True)
    history = run_training(load_config(path, "grpo"), quiet=True)
    (entry,) = [e for e in history if "reward" in e]
    parts = {name: entry[f"rewards/{name}/mean"] for name in ("qalign", "rm", "brevity")}
    assert entry["reward"] == pytest.approx(
        0.5 * parts["qalign"] + 2.0 * parts["rm"] + 0.25 * parts["brevity"], abs=1e-4)
    assert parts["brevity"] < 0


# --- DPO on rubric-ranked pairs ----------------------------------------------------------

DPO_STEPS = 15


def mean_reward(model: Path, judge: Path, document: dict[str, Any],
                seeds: tuple[int, ...] = (100, 101, 102, 103)) -> float:
    """Mean rubric reward of 48 completions per sampler seed, sampled from the full
    distribution."""
    from judge_fixtures import MICRO_PROMPTS

    from qalign_dsl.evaluate.aggregate import CompiledRubric
    from qalign_dsl.judge.backends.transformers import TransformersBackend
    from qalign_dsl.judge.runtime import Judge, Sample
    from qalign_dsl.training.synth import HFGenerator

    samples = []
    for seed in seeds:
        policy = HFGenerator(str(model), max_new_tokens=20, temperature=1.0, seed=seed)
        texts = policy.sample([[{"role": "user", "content": p}] for p in MICRO_PROMPTS], 16)
        samples += [Sample(p, t) for p, group in zip(MICRO_PROMPTS, texts) for t in group]
    result = Judge(document, TransformersBackend(str(judge))).score(samples)
    rewards = CompiledRubric(document).evaluate(result.probabilities, result.answered)
    return mean(r for r in rewards.reward.to_list() if r is not None)


@pytest.mark.slow
def test_dpo_on_rubric_ranked_pairs_raises_the_rubric_reward(
        tiny_model: Path, micro_judge: Path, tmp_path: Path) -> None:
    """The policy writes harmful and harmless sentences about equally often (SFT as in
    test_learning); `qalc synth --pairs` samples 8 responses per prompt and pairs the best
    with the worst by the micro.qal reward; `qalc train dpo` trains on the pairs; the mean
    rubric reward of fresh samples must rise well beyond sampling noise.

    Calibration on this CPU (tests/test_baselines.py's pipeline, 2026-11-24): the SFT
    policy's mean reward over 48 samples is 0.22 ± 0.10 across five sampler seeds (100-104),
    so a mean over the four seeds used below (192 samples) has sd ≈ 0.05 and a before/after
    difference sd ≈ 0.07. DPO at lr 2e-4 for 15 steps, DPO seeds 0, 1, 2: after-rewards
    0.50, 0.50, 0.52 over sampler seeds 100-101 (gains ≈ 0.30, ~4 sd); at lr 5e-4 the gains
    were larger but spread (0.24-0.51) and at 30 steps smaller (overshoot). The margin,
    0.15, is ~2 sd of the measurement noise and half the measured gain: noise alone rarely
    passes it, the real effect rarely misses it.
    """
    from judge_fixtures import MICRO_PROMPTS, micro
    from test_learning import sft_policy

    document = micro()
    (tmp_path / "micro.json").write_text(json.dumps(document))
    policy = sft_policy(tmp_path, tiny_model)
    (tmp_path / "prompts.jsonl").write_text("".join(
        json.dumps({"id": f"p{i}", "prompt": MICRO_PROMPTS[i % 3]}) + "\n" for i in range(12)))
    pairs = tmp_path / "pairs.jsonl"
    assert main(["synth", str(tmp_path / "micro.json"), str(tmp_path / "prompts.jsonl"),
                 "--pairs", "--policy", str(policy), "--judge", str(micro_judge),
                 "--samples", "8", "--pairs-per-prompt", "3", "--max-new-tokens", "20",
                 "--batch-size", "12", "-o", str(pairs)]) == 0
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert len(rows) >= 20
    for row in rows:  # TRL's conversational preference format, with provenance
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
        provenance = row["provenance"]
        assert provenance["chosen_reward"] > provenance["rejected_reward"]
        assert provenance["ir_hash"] == document["hash"] and len(provenance["sample_rewards"]) == 8
    # A rerun decides nothing again.
    assert main(["synth", str(tmp_path / "micro.json"), str(tmp_path / "prompts.jsonl"),
                 "--pairs", "--policy", str(policy), "--judge", str(micro_judge),
                 "--samples", "8", "--pairs-per-prompt", "3", "-o", str(pairs)]) == 0
    assert len(pairs.read_text().splitlines()) == len(rows)

    config = tmp_path / "dpo.yaml"
    config.write_text(f"""model: {policy}
constitution: micro.json
data: pairs.jsonl
output_dir: dpo
trainer:
  max_steps: {DPO_STEPS}
  per_device_train_batch_size: 8
  learning_rate: 2.0e-4
  beta: 0.1
  logging_steps: 5
  save_strategy: "no"
  seed: 0
""")
    assert main(["train", "dpo", "--config", str(config)]) == 0
    before = mean_reward(policy, micro_judge, document)
    after = mean_reward(tmp_path / "dpo" / "final", micro_judge, document)
    assert after - before > 0.15, (before, after)
