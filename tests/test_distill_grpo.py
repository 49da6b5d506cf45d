"""GRPO with the distilled student as the reward, audited by its teacher.

The honest measure of a student reward is the teacher's judgement of the policy it trains:
the audit judges a quarter of each step's completions with the teacher (the micro-judge),
and the teacher's rewards of those completions must rise. A second student, deliberately
under-trained (it only ever saw responses the teacher passed, so it passes everything), must
make the audit warn and, with `stop_on_gap`, stop the run.

Calibration on this CPU (seed 0; tests/test_learning.py's policy and GRPO settings): the
teacher's mean reward of the audited completions goes from 0.50 over the first 5 steps to
0.95 over the last 10; the audit's windowed gap stays between −0.43 and 0.0 (the student
is stricter than the teacher on the policy's own text, never kinder). The under-trained
student's gap is +0.23 at the first audited step and its two-step window +0.48 at the
second, where the run stops.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
from judge_fixtures import read_jsonl, write_jsonl
from test_learning import MICRO_PROMPTS, sft_policy

from qalign_dsl.cli import main

pytest.importorskip("trl")

STEPS = 30


def grpo(root: Path, policy: Path, world: dict[str, Path], student: Path, name: str,
         learning_rate: float, steps: int, **audit: Any) -> list[dict[str, Any]]:
    from qalign_dsl.training.config import TrainingConfig
    from qalign_dsl.training.train import run_training

    settings = {"teacher": {"model": str(world["teacher"])}, "fraction": 0.25,
                "max_gap": 0.2, "window": 5, **audit}
    return run_training(TrainingConfig(
        "grpo", str(policy), world["compiled"], root / "prompts.jsonl", root / name,
        judge={"backend": "student", "model": str(student), "audit": settings},
        trainer={"max_steps": steps, "num_generations": 8, "per_device_train_batch_size": 16,
                 "generation_batch_size": 16, "max_completion_length": 20,
                 "learning_rate": learning_rate, "beta": 0.0, "logging_steps": 1,
                 "save_strategy": "no", "seed": 0}), quiet=True)


def audit_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def world(distill_world: dict[str, Path]) -> dict[str, Path]:
    return distill_world


@pytest.fixture(scope="module")
def policy(distill_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("policy")
    (root / "micro.json").write_text(distill_world["compiled"].read_text())
    return sft_policy(root, distill_world["base"])


@pytest.mark.slow
def test_grpo_with_the_student_raises_the_teachers_reward(
        world: dict[str, Path], policy: Path, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "prompts.jsonl",
                [{"prompt": [{"role": "user", "content": p}]} for p in MICRO_PROMPTS])
    history = grpo(tmp_path, policy, world, world["student"], "trained", 2e-4, STEPS)
    audited = read_jsonl(tmp_path / "trained" / "audit_answers.jsonl")
    by_step: dict[int, list[float]] = {}
    for row in audited:
        if row["teacher_reward"] is not None:
            by_step.setdefault(row["step"], []).append(row["teacher_reward"])
    first = mean(r for step in range(1, 6) for r in by_step.get(step, []))
    last = mean(r for step in range(STEPS - 9, STEPS + 1) for r in by_step.get(step, []))
    rows = audit_rows(tmp_path / "trained")
    print(f"teacher reward first 5 steps {first:.3f}, last 10 {last:.3f}; gap windows "
          f"{[round(float(r['audit/reward_gap_window']), 3) for r in rows]}")
    assert last - first > 0.25, by_step
    assert len(rows) == STEPS
    windows = [float(r["audit/reward_gap_window"]) for r in rows]
    assert max(windows) < 0.2, windows
    logged = [e for e in history if "audit/reward_gap" in e]
    assert logged and all("audit/agreement" in e for e in logged)
    # The audit's answers are training data for the next student.
    out = tmp_path / "refreshed"
    assert main(["distill", str(world["compiled"]), str(world["data"]), "--resume-from",
                 str(world["student"]), "--teacher-answers", str(world["scored"]),
                 "--more-answers", str(tmp_path / "trained" / "audit_answers.jsonl"),
                 "-o", str(out), "--epochs", "1", "--learning-rate", "1e-3"]) == 0
    assert json.loads((out / "qalign_student.json").read_text())["metrics"]["train_samples"] \
        > json.loads((world["student"] / "qalign_student.json").read_text()
                     )["metrics"]["train_samples"]


@pytest.mark.slow
def test_an_under_trained_student_makes_the_audit_warn_and_stop(
        world: dict[str, Path], policy: Path, tmp_path: Path) -> None:
    from qalign_dsl.training.audit import RewardHackingWarning

    passed = [r for r in read_jsonl(world["scored"])
              if max(r["answers"]["physical_harm.gate"], key=lambda k: r["answers"][
                  "physical_harm.gate"][k]) == "True"][:120]
    answers = write_jsonl(tmp_path / "passed.jsonl", passed)
    student = tmp_path / "lenient"
    assert main(["distill", str(world["compiled"]), str(world["data"]), "--base",
                 str(world["base"]), "--teacher-answers", str(answers), "-o", str(student),
                 "--epochs", "3", "--learning-rate", "2e-3", "--bootstrap", "0"]) == 0
    write_jsonl(tmp_path / "prompts.jsonl",
                [{"prompt": [{"role": "user", "content": p}]} for p in MICRO_PROMPTS])
    with pytest.warns(RewardHackingWarning, match="reward hacking"):
        history = grpo(tmp_path, policy, world, student, "lenient-run", 0.0, 10,
                       fraction=0.5, window=2, stop_on_gap=True)
    rows = audit_rows(tmp_path / "lenient-run")
    print("lenient gap windows", [r["audit/reward_gap_window"] for r in rows])
    assert float(rows[-1]["audit/reward_gap_window"]) > 0.2, rows
    steps = [e["step"] for e in history if "audit/reward_gap" in e]
    assert max(steps) < 10  # stopped cleanly before max_steps
    assert (tmp_path / "lenient-run" / "final").is_dir()
