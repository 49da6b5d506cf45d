"""`qalc fmt`: canonical formatting that keeps comments."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from rich.console import Console

from qalign_dsl.cli.common import ExitCode, report_diagnostics, write_atomic
from qalign_dsl.lang import codes
from qalign_dsl.lang.diagnostics import Span
from qalign_dsl.lang.fmt import format_module
from qalign_dsl.lang.modules import SourceUnavailable, read_file_bytes
from qalign_dsl.lang.parser import MAX_SOURCE_BYTES, decode_source, parse


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    fmt = commands.add_parser("fmt", help="format .qal files canonically, keeping comments")
    fmt.add_argument("files", nargs="+", type=Path, metavar="FILE", help="files, or - for stdin")
    fmt.add_argument("--check", action="store_true",
                     help="write nothing; exit 1 and show a diff if a file is not formatted")
    fmt.set_defaults(run=run_fmt)


def run_fmt(arguments: argparse.Namespace, console: Console) -> int:
    status: int = ExitCode.OK
    for path in arguments.files:
        from_stdin = str(path) == "-"
        shown = "<stdin>" if from_stdin else str(path)
        try:
            # stdin: at most one byte past the source limit (decode_source reports the size;
            # `< /dev/zero` must not read forever)
            data = (sys.stdin.buffer.read(MAX_SOURCE_BYTES + 1) if from_stdin
                    else read_file_bytes(path))
        except SourceUnavailable as error:
            report_diagnostics(
                console,
                [
                    codes.make(
                        "QAL005", shown, Span(1, 1, 1, 1), what=f"`{shown}`", reason=str(error)
                    )
                ],
            )
            status = ExitCode.PROBLEMS
            continue
        text, problems = decode_source(data, shown)
        parsed = parse(text, shown) if text is not None else None
        if parsed is None or parsed.module is None:
            report_diagnostics(console, problems + (parsed.diagnostics if parsed else []))
            status = ExitCode.PROBLEMS
            continue
        assert text is not None
        formatted = format_module(parsed.module)
        if from_stdin:
            sys.stdout.write(formatted)
            continue
        if formatted == text:
            continue
        if arguments.check:
            diff = difflib.unified_diff(text.splitlines(keepends=True),
                                        formatted.splitlines(keepends=True),
                                        fromfile=shown, tofile=f"{shown} (formatted)")
            console.print("".join(diff), markup=False, highlight=False, end="")
            console.print(f"{shown}: would reformat", style="red")
            status = ExitCode.PROBLEMS
            continue
        write_atomic(path, formatted.encode("utf-8"))
        console.print(f"formatted {shown}", style="green")
    return status
