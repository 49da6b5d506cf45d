"""`qalc`: the command line — the only layer that reads user files and prints.

One module per command, each with `register(commands)` adding its subparser and a `run`
function; `common` holds what they share (exit codes, usage errors, atomic writes).
Commands that judge, evaluate or train import torch lazily, inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from qalign_dsl import __version__
from qalign_dsl.cli.common import OPTIONAL_PACKAGES, ExitCode, UsageError
from qalign_dsl.cli.console import make_console
from qalign_dsl.cli.inputs import BadInput

__all__ = ["COMMANDS", "ExitCode", "UsageError", "build_parser", "main", "main_entry"]

# The order of `qalc --help`. Each name is a module of this package with `register`.
COMMANDS = ("check", "compile", "fmt", "explain", "aggregate", "diff", "expand", "score",
            "merge", "synth", "train", "distill", "serve", "demo", "lsp", "eval", "validate")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    console = make_console()
    try:
        result: int = arguments.run(arguments, console)
        return result
    except UsageError as error:
        console.print(f"qalc: error: {_printable(error)}", style="red", markup=False)
        return ExitCode.USAGE
    except BadInput as error:  # a located problem with a user file
        console.print(_printable(error), style="red", markup=False)
        return ExitCode.PROBLEMS
    except KeyboardInterrupt:
        console.print("qalc: interrupted", style="red")
        return ExitCode.INTERRUPTED
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]
        if package not in OPTIONAL_PACKAGES:
            raise
        console.print(f"qalc {arguments.command}: needs `{package}`, which is not installed: "
                      f"pip install 'qalign-dsl[{OPTIONAL_PACKAGES[package]}]'", style="red",
                      markup=False)
        return ExitCode.USAGE
    except BrokenPipeError:
        return ExitCode.OK
    except OSError as error:  # writing: read-only or full filesystem, permissions
        where = f"{error.filename}: " if error.filename else ""
        console.print(_printable(f"qalc {arguments.command}: {where}{error.strerror or error}"),
                      style="red", markup=False)
        return ExitCode.PROBLEMS


def _printable(error: object) -> str:
    """A message that quotes user text: a lone surrogate (from a command-line argument or
    a file name that is not UTF-8) is shown escaped instead of failing the print."""
    return str(error).encode("utf-8", "backslashreplace").decode("utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qalc",
        description="Compile and check QA-LIGN constitutions written in the .qal language.",
    )
    parser.add_argument("--version", action="version", version=f"qalc {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"qalign_dsl.cli.{name}").register(commands)
    _show_defaults(parser)
    return parser


class _DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None
                or default is False or default == [] or default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _show_defaults(sub)


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
