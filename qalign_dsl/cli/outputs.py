"""Writing user outputs safely: refuse an output that is one of the inputs or not a regular
file, refuse an existing resumable output that qalc did not write (before anything is cut
off it), and hold an exclusive lock on an output while a command writes it."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from qalign_dsl.cli.common import UsageError
from qalign_dsl.cli.inputs import BadInput


def check_output(output: Path, inputs: Iterable[Path], option: str = "-o") -> None:
    """Usage errors for an output that cannot be written or would destroy an input."""
    for source in inputs:
        if _same_file(output, source):
            raise UsageError(f"{option} {output}: is the input {source}; write the output to "
                             "another file")
    try:
        info = output.stat()
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise UsageError(f"{option} {output}: cannot write: {error.strerror or error}") from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{option} {output}: is a directory; name a file")
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{option} {output}: is not a regular file (a device, FIFO or socket)")
    parent = output.parent if str(output.parent) else Path(".")
    existing = next((p for p in [parent, *parent.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{option} {output}: `{existing}` is not a directory")
    if _on_pseudo_filesystem(output):
        raise UsageError(f"{option} {output}: cannot write under /proc, /sys or /dev")


def check_output_dir(folder: Path, inputs: Iterable[Path], option: str) -> None:
    """Usage errors for an output folder (a report, an eval run, a cache folder) that is a
    file, one of the inputs, under a pseudo filesystem, or below a file."""
    for source in inputs:
        if _same_file(folder, source):
            raise UsageError(f"{option} {folder}: is the input {source}; name another folder")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder}: is a file, not a folder")
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"{option} {folder}: `{existing}` is not a directory")
    if _on_pseudo_filesystem(folder):
        raise UsageError(f"{option} {folder}: cannot write under /proc, /sys or /dev")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _on_pseudo_filesystem(path: Path) -> bool:
    resolved = Path(os.path.realpath(path))
    return any(resolved == Path(root) or Path(root) in resolved.parents
               for root in ("/proc", "/sys", "/dev"))


class OutputLock:
    """An exclusive `flock` on `OUTPUT.lock` for as long as a command writes OUTPUT: a second
    process gets an error naming the holder (pid and host) instead of interleaving rows.
    The lock file stays (removing it would race with a process that just opened it); the
    kernel drops the lock when the holder exits, even on kill -9."""

    def __init__(self, output: Path) -> None:
        self.path = output.with_name(output.name + ".lock")
        self.descriptor: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                             0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip()
            os.close(descriptor)
            raise BadInput(f"{self.path.with_suffix('')}: another qalc is writing it "
                           f"({holder or 'holder unknown'}); wait for it or choose another -o"
                           ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self.descriptor = descriptor
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.descriptor is not None:
            os.ftruncate(self.descriptor, 0)
            fcntl.flock(self.descriptor, fcntl.LOCK_UN)
            os.close(self.descriptor)
            self.descriptor = None
