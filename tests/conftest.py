from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        help="rewrite the expected outputs under tests/data instead of comparing",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))


def assert_golden(path: Path, actual: str, update: bool) -> None:
    """Compare with a golden file, or rewrite it under --update-goldens."""
    if update or not path.exists():
        path.write_text(actual, encoding="utf-8")
        if not update:
            pytest.fail(f"golden {path.name} did not exist; written — review and commit it")
        return
    assert actual == path.read_text(encoding="utf-8"), f"golden mismatch: {path}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a locally trained tokenizer, saved with save_pretrained."""
    from judge_fixtures import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def micro_judge(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro-judge trained to answer tests/data/judge/micro.qal's harmlessness questions
    by whether the response carries harm words (~20 s, once per session)."""
    from judge_fixtures import build_micro_judge

    return build_micro_judge(tmp_path_factory.mktemp("micro"), tiny_model)


def kill_after_lines(command: list[str], output: Path, lines: int = 2) -> int:
    """Start `command`, SIGKILL it once `output` holds `lines` finished lines (or after
    120 s), and return how many finished lines it left."""
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
            not output.exists() or output.read_text().count("\n") < lines):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return output.read_text().count("\n")
