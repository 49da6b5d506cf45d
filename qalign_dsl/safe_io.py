"""Reading untrusted files, for every layer (it imports no other qalign_dsl module):
type and size are checked before a byte is read, JSONL is read line by line with a
bound on each line, and JSON values that Python accepts but JSON does not (NaN,
Infinity, 1e999, lone surrogates, absurd integers, deep nesting) become a located
`BadInput` instead of a traceback or an invalid output line. `qalign_dsl.cli.inputs`
re-exports these for the commands."""


from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# Whole-file readers (compiled IR, score/synth data, recipes) refuse bigger files; streaming
# readers (aggregate) have no file limit, only the per-line one.
MAX_IR_BYTES = 64 * 1024 * 1024
MAX_DATA_BYTES = 1024 * 1024 * 1024
MAX_RECIPE_BYTES = 1024 * 1024
# One JSONL line: a hard limit on one sample (prompt + response, or one answer row).
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_INT_DIGITS = 19  # ids and numbers beyond int64 are not data but an attack or a bug

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class BadInput(ValueError):
    """A user file that cannot be used; the message starts with `file:` or `file:line:`."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "it is a directory"
    if stat.S_ISFIFO(mode):
        return "it is a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "it is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "it is a socket, not a regular file"
    return "not a regular file"


def open_regular(path: Path, limit: int | None) -> IO[bytes]:
    """Open `path` for reading in binary, refusing directories, FIFOs, devices and files over
    `limit` bytes. O_NONBLOCK keeps a FIFO from blocking the open itself; the check runs on
    the opened descriptor, so a file swapped after a check cannot slip through."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise BadInput(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise BadInput(f"{path}: cannot read: {_kind(info.st_mode)}")
        if limit is not None and info.st_size > limit:
            raise BadInput(f"{path}: cannot read: the file is {_size(info.st_size)}; the limit "
                           f"is {_size(limit)}")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: Path, limit: int) -> bytes:
    """A whole regular file of at most `limit` bytes (also when it grows while read)."""
    with open_regular(path, limit) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BadInput(f"{path}: cannot read: the file is larger than {_size(limit)}")
    return data


def read_text(path: Path, limit: int) -> str:
    data = read_regular(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise BadInput(f"{path}:{line}: not valid UTF-8 (byte 0x{data[error.start]:02x} at "
                       f"offset {error.start})") from None


def _size(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MiB" if count >= 1024 * 1024 else f"{count} bytes"


def iter_lines(path: Path, limit: int | None = None,
               line_limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str | BadInput]]:
    """(line number, text) for each non-blank line of a UTF-8 file, read with bounded memory;
    a line that is too long or not UTF-8 comes as a `BadInput` in place of its text. The file
    is checked (type, size) now, before the first line is asked for; that failure is raised,
    not yielded."""
    return _lines(open_regular(path, limit), path, line_limit)


def _lines(handle: IO[bytes], path: Path, line_limit: int
           ) -> Iterator[tuple[int, str | BadInput]]:
    with handle:
        number = 0
        while True:
            raw = handle.readline(line_limit + 1)
            if not raw:
                return
            number += 1
            if len(raw) > line_limit and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line
                    raw = handle.readline(line_limit)
                yield number, BadInput(f"{path}:{number}: line is longer than "
                                       f"{_size(line_limit)} (the limit for one line)")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, BadInput(f"{path}:{number}: not valid UTF-8 (byte "
                                       f"0x{raw[error.start]:02x} at column {error.start + 1})")
                continue
            if text.strip():
                yield number, text


def _constant(name: str) -> Any:
    raise BadInput(f"`{name}` is not a JSON number (non-finite numbers are not allowed)")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadInput(f"integer with {len(text.lstrip('-'))} digits is out of range "
                       f"(at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise BadInput(f"number `{text[:30]}` is out of range for a float")
    return value


# Strict numbers everywhere but in `aggregate`'s hot path, whose answer validation checks
# the range of every probability anyway (a Python hook per float would cost ~2x there).
_STRICT = json.JSONDecoder(parse_constant=_constant, parse_int=_integer, parse_float=_float)
_FAST = json.JSONDecoder(parse_constant=_constant, parse_int=_integer)


def parse_json(text: str, strict_numbers: bool = True) -> Any:
    """One JSON value; a `BadInput` (without location) for anything a JSON reader elsewhere
    would reject or that cannot be written back as UTF-8."""
    try:
        value = (_STRICT if strict_numbers else _FAST).decode(text)
    except BadInput:
        raise
    except json.JSONDecodeError as error:
        raise BadInput(f"invalid JSON: {error.msg} at column {error.colno}") from None
    except RecursionError:
        raise BadInput("invalid JSON: nested too deeply") from None
    except ValueError as error:  # e.g. Python's integer digit limit
        raise BadInput(f"invalid JSON: {error}") from None
    if _SURROGATE_ESCAPE.search(text):
        _check_surrogates(value)
    return value


def _check_surrogates(value: Any) -> None:
    """Iterative: a value that parsed is at most the JSON nesting limit deep, but iterate
    anyway so no depth can reach Python's recursion limit here."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                raise BadInput(f"lone surrogate \\u{ord(item[error.start]):04x} in a string "
                               "(not valid Unicode)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
