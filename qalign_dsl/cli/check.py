"""`qalc check`: check .qal files and report every problem."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from qalign_dsl.cli.common import ExitCode, report_diagnostics
from qalign_dsl.lang.diagnostics import Diagnostic, summarize


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    check = commands.add_parser("check", help="check .qal files and report every problem")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE",
                       help=".qal files to check")
    check.add_argument("--strict", action="store_true", help="fail on warnings too")
    check.set_defaults(run=run_check)


def run_check(arguments: argparse.Namespace, console: Console) -> int:
    from qalign_dsl.lang.compiler import check_file

    failed = False
    all_diagnostics: list[Diagnostic] = []
    for path in arguments.files:
        result = check_file(path)
        all_diagnostics.extend(result.diagnostics)
        report_diagnostics(console, result.diagnostics)
        errors = any(d.is_error for d in result.diagnostics)
        if errors or (arguments.strict and result.diagnostics):
            failed = True
    files = len(arguments.files)
    console.print(f"checked {files} file{'s' if files != 1 else ''}: {summarize(all_diagnostics)}",
                  style="red" if failed else "green")
    return ExitCode.PROBLEMS if failed else ExitCode.OK
