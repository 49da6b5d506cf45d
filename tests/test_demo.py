"""`qalc demo`, the README's main job: the whole pipeline on tiny local models."""

from __future__ import annotations

from pathlib import Path

import pytest

from qalign_dsl.cli import main

pytest.importorskip("trl")


@pytest.mark.slow
def test_demo_runs_the_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--output", str(tmp_path / "demo"), "--sft-steps", "2",
                 "--grpo-steps", "2"]) == 0
    err = capsys.readouterr().err
    for step in ("1/5 compiled tutorial.qal", "2/5 built", "3/5 synthesized 8 SFT rows",
                 "4/5 SFT 2 steps", "5/5 GRPO 2 steps"):
        assert step in err, err
    assert "GRPO with the tutorial constitution as reward" in err
    for artifact in ("sft.jsonl", "sft/final/config.json", "grpo/final/config.json",
                     "judge/config.json", "tokenizer/tokenizer.json"):
        assert (tmp_path / "demo" / artifact).exists(), artifact
