"""`qalc demo`, the README's main job: the whole pipeline on tiny local models, with a line
per stage, and its metrics, trainer state and reward plot saved."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import ROOT

from qalign_dsl.cli import main

pytest.importorskip("trl")


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_saves_its_metrics(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "demo"
    assert main(["demo", "--output", str(root), "--judge-steps", "4", "--sft-steps", "2",
                 "--grpo-steps", "3"]) == 0
    err = capsys.readouterr().err
    for step in ("1/6 compiled demo.qal", "building the toy judge (4 steps)", "2/6 built",
                 "the judge is a toy", "3/6 SFT 2 steps", "4/6 synthesized 6 rows", "from -1",
                 "5/6 GRPO 3 steps", "6/6 saved"):
        assert step in err, err
    assert "GRPO with the constitution as reward" in err
    for artifact in ("grpo/final/config.json", "sft/final/config.json", "judge/config.json",
                     "tokenizer/tokenizer.json", "synth.jsonl", "synth.dropped.jsonl"):
        assert (root / artifact).exists(), artifact
    # Only rows whose revision beat the draft were kept.
    for line in (root / "synth.jsonl").read_text().splitlines():
        provenance = json.loads(line)["provenance"]
        assert provenance["revision_reward"] > provenance["draft_reward"], provenance

    state = json.loads((root / "trainer_state.json").read_text())
    logged = [e["reward"] for e in state["log_history"] if "reward" in e]
    with (root / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    rewards = [float(r["reward"]) for r in rows]
    assert len(rewards) == len(logged) == state["global_step"] == 3
    assert rewards == pytest.approx(logged, abs=1e-5)
    assert all(-1 <= r <= 1 for r in rewards)
    assert {"harmlessness", "helpfulness"} <= set(rows[0])
    assert (root / "reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_demo_reward_rises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the demo, with its defaults (about a minute or three on 2 cores). Measured
    for seed 0: +0.13 over the first 10 steps, +0.66 over the last 10. Then the README's
    student loop on the demo's outputs, command by command as the README writes them."""
    from statistics import mean

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs" / "demo"
    assert main(["demo", "--output", str(root)]) == 0
    with (root / "metrics.csv").open() as handle:
        rewards = [float(r["reward"]) for r in csv.DictReader(handle)]
    window = len(rewards) // 4
    assert mean(rewards[-window:]) > mean(rewards[:window]) + 0.25, rewards

    (tmp_path / "training").mkdir()
    shutil.copy(ROOT / "training" / "cpu-demo-grpo-student.yaml", tmp_path / "training")
    commands = readme_student_loop()
    assert [c[1] for c in commands] == ["score", "distill", "score", "train"]
    for command in commands:
        assert main(command[1:]) == 0, command
    run = tmp_path / "runs" / "cpu-demo-grpo-student"
    assert (run / "final" / "config.json").exists()
    with (run / "metrics.csv").open() as handle:
        audited = list(csv.DictReader(handle))
    assert audited and all(row["audit/reward_gap"] for row in audited)
    assert (run / "audit_answers.jsonl").read_text().count("\n") >= len(audited)


def readme_student_loop() -> list[list[str]]:
    """The README's `qalc demo` → distill → student GRPO block, as argument lists."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("the whole loop runs on a CPU in about a\nminute:\n\n```bash\n")[1]
    lines = block.split("```")[0].replace("\\\n", " ").splitlines()
    variable, value = lines[0].split("=", 1)
    columns = shlex.split(value)[0]
    return [shlex.split(line.replace("$" + variable, columns), comments=True)
            for line in lines[1:]]
