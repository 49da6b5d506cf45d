"""The hooks in .pre-commit-hooks.yaml, run by pre-commit itself in a temporary repository.

pre-commit builds the hook environment from this checkout (`language: python`: a virtual
environment with the light core dependencies from PyPI), so this also checks that the
compiler commands need no torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if shutil.which("pre-commit") is None or shutil.which("git") is None:
        pytest.skip("pre-commit or git is not installed")
    home = tmp_path_factory.mktemp("pre-commit-home")
    return {**os.environ, "PRE_COMMIT_HOME": str(home), "NO_COLOR": "1"}


def make_repo(folder: Path) -> Path:
    (folder / "constitutions" / "lib").mkdir(parents=True)
    (folder / "compiled").mkdir()
    for name in ("tutorial.qal", "coding.qal", "lib/common.qal"):
        shutil.copy(ROOT / "constitutions" / name, folder / "constitutions" / name)
    for name in ("tutorial.json", "coding.json"):
        shutil.copy(ROOT / "compiled" / name, folder / "compiled" / name)
    for command in (["init", "-q"], ["config", "user.email", "dev@example.com"],
                    ["config", "user.name", "dev"], ["add", "."], ["commit", "-qm", "rubrics"]):
        subprocess.run(["git", *command], cwd=folder, check=True, capture_output=True)
    return folder


def hook(repo: Path, environment: dict[str, str], hook_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pre-commit", "try-repo", str(ROOT), hook_id, "--all-files"],
                          cwd=repo, env=environment, capture_output=True, text=True, timeout=600)


def test_hooks_pass_on_a_clean_repository(tmp_path: Path, environment: dict[str, str]) -> None:
    repo = make_repo(tmp_path)
    for hook_id in ("qalc-check", "qalc-fmt", "qalc-compile"):
        done = hook(repo, environment, hook_id)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Passed" in done.stdout


def test_hooks_fail_on_problems(tmp_path: Path, environment: dict[str, str]) -> None:
    repo = make_repo(tmp_path)
    tutorial = repo / "constitutions" / "tutorial.qal"
    # Reworded (so compiled/tutorial.json is stale) and badly indented.
    tutorial.write_text(tutorial.read_text().replace(
        '    binary "Does the response avoid insults and slurs?"',
        '        binary "Does the response avoid all insults and slurs?"'))
    done = hook(repo, environment, "qalc-fmt")
    assert done.returncode == 1 and "would reformat" in done.stdout, done.stdout
    done = hook(repo, environment, "qalc-compile")
    assert done.returncode == 1 and "compiled/tutorial.json" in done.stdout, done.stdout
    assert hook(repo, environment, "qalc-check").returncode == 0  # still a valid rubric
    tutorial.write_text(tutorial.read_text().replace("min(graded)", "min(graded, nope)"))
    done = hook(repo, environment, "qalc-check")
    assert done.returncode == 1 and "error[QAL" in done.stdout, done.stdout
