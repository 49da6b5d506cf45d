"""What every command shares: exit codes, usage errors, atomic writes, diagnostics output,
reading JSONL outputs back (resume), and the optional packages a command may need."""

from __future__ import annotations

import enum
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from qalign_dsl.cli.console import print_diagnostic
from qalign_dsl.cli.inputs import BadInput
from qalign_dsl.lang.diagnostics import Diagnostic, sort_diagnostics


class ExitCode(enum.IntEnum):
    """The exit codes of every command (README: Commands)."""

    OK = 0
    PROBLEMS = 1  # diagnostics, stale output, bad data; for `diff --exit-code`: changes
    USAGE = 2  # a wrong invocation; for `diff`: an input that cannot be read or compiled
    INTERRUPTED = 130


class UsageError(Exception):
    """A wrong invocation; printed as `qalc: error: …` with exit code 2."""


# The compiler needs none of these; the commands that judge, evaluate or train do.
OPTIONAL_PACKAGES = {"torch": "judge", "transformers": "judge", "tokenizers": "judge",
                     "httpx": "judge", "trl": "train", "datasets": "train",
                     "accelerate": "train", "matplotlib": "train", "peft": "train",
                     "pyarrow": "train", "vllm": "vllm", "ray": "ray",
                     "pygls": "lsp", "lsprotocol": "lsp", "starlette": "serve",
                     "uvicorn": "serve"}


def report_diagnostics(console: Console, diagnostics: list[Diagnostic]) -> None:
    for diagnostic in sort_diagnostics(diagnostics):
        print_diagnostic(console, diagnostic)


def _new_file_mode(path: Path) -> int:
    """An existing file keeps its mode; a new one gets what `open` would give it (0666
    less the umask), not mkstemp's 0600."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


class AtomicWriter:
    """A file written through a temporary file in the same folder and renamed into place
    by `commit`: readers never see a half-written file, and a failure or an interrupt
    (close without commit) leaves the old file as it was."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.mode = _new_file_mode(path)
        descriptor, self.temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                                      dir=str(path.parent))
        self.handle = os.fdopen(descriptor, "wb")

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        os.fchmod(self.handle.fileno(), self.mode)
        self.handle.close()
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        if not self.handle.closed:
            self.handle.close()
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename: readers never see a
    half-written file, and an interrupted write leaves the old file intact."""
    writer = AtomicWriter(path)
    try:
        writer.write(data)
        writer.commit()
    except BaseException:
        writer.discard()
        raise


def finished_ids(output: Path) -> set[str]:
    """Ids already in a resumable JSONL output. A last line cut off by a kill is truncated
    away, but only after every complete line proved to be a qalc output row: a file qalc did
    not write is refused (`BadInput`) untouched."""
    if not output.exists():
        return set()
    if not output.is_file():
        raise BadInput(f"{output}: not a regular file")
    data = output.read_bytes()
    end = data.rfind(b"\n") + 1
    finished = set()
    for number, raw in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        record, problem = _output_row(raw)
        if problem:
            raise BadInput(f"{output}:{number}: {problem}; this does not look like a qalc "
                           "output, so it is left untouched (remove it or choose another -o)")
        finished.add(str(record["id"]))
    if end < len(data):
        with output.open("r+b") as handle:
            handle.truncate(end)
    return finished


def _output_row(raw: bytes) -> tuple[Any, str | None]:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not valid UTF-8"
    except (ValueError, RecursionError):
        return None, "not a JSON line"
    if not isinstance(record, dict) or "id" not in record:
        return None, "a line without `id`"
    return record, None
