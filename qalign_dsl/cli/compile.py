"""`qalc compile`: write each constitution's compiled IR (or check that it is up to date)."""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from rich.console import Console

from qalign_dsl import ir
from qalign_dsl.cli.common import ExitCode, UsageError, report_diagnostics, write_atomic
from qalign_dsl.lang.compiler import compile_file
from qalign_dsl.lang.diagnostics import summarize


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    compile_ = commands.add_parser("compile", help="compile a .qal file to its JSON IR")
    compile_.add_argument("files", nargs="+", type=Path, metavar="FILE",
                          help=".qal files to compile (each to compiled/NAME.json unless -o)")
    compile_.add_argument("-o", "--output", type=Path,
                          help="output path (default: compiled/<stem>.json); one FILE only")
    compile_.add_argument("--check", action="store_true",
                          help="write nothing; exit 1 and show a diff if the output is stale")
    compile_.add_argument("--strict", action="store_true", help="fail on warnings too")
    compile_.set_defaults(run=run_compile)


def run_compile(arguments: argparse.Namespace, console: Console) -> int:
    if arguments.output is not None and len(arguments.files) > 1:
        raise UsageError("-o/--output takes one FILE; omit it to write compiled/<stem>.json each")
    status: int = ExitCode.OK
    for path in arguments.files:
        target = arguments.output or Path("compiled") / f"{path.stem}.json"
        result = compile_file(path)
        report_diagnostics(console, result.diagnostics)
        if result.library:
            console.print(f"{path}: a library (no principles or reward): checked, nothing to "
                          "compile", style="green", markup=False)
            continue
        if result.document is None or (arguments.strict and result.diagnostics):
            console.print(f"{path}: not compiled ({summarize(result.diagnostics)})", style="red")
            status = ExitCode.PROBLEMS
            continue
        data = ir.canonical_bytes(result.document)  # validated by finalize
        if arguments.check:
            status = max(status, _check_compiled(console, path, target, data))
            continue
        write_atomic(target, data)
        questions = len(result.document["questions"])
        console.print(f"{path} -> {target} ({questions} questions, "
                      f"{result.document['hash'][:19]})", style="green")
    return status


def _check_compiled(console: Console, source: Path, target: Path, data: bytes) -> int:
    try:
        current = target.read_bytes()
    except OSError:
        console.print(f"{target}: missing; run `qalc compile {source}`", style="red")
        return ExitCode.PROBLEMS
    if current == data:
        console.print(f"{target}: up to date", style="green")
        return ExitCode.OK
    diff = difflib.unified_diff(
        current.decode("utf-8", "replace").splitlines(keepends=True),
        data.decode("utf-8").splitlines(keepends=True),
        fromfile=f"{target} (committed)", tofile=f"{target} (from {source})",
    )
    console.print("".join(diff), markup=False, highlight=False, end="")
    console.print(f"{target}: stale; run `qalc compile {source}`", style="red")
    return ExitCode.PROBLEMS
