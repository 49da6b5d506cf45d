"""`qalc diff OLD NEW`, `qalc git-diff` (git's external diff driver) and `qalc textconv`.

OLD and NEW are `.qal` sources, compiled IR files, or git revisions written `REV:PATH`
(`qalc diff main:constitutions/qalign.qal constitutions/qalign.qal`); sources are compiled
first (imports of a revision are read from the same revision), so only meaning is compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape as escape_markup

from qalign_dsl import ir
from qalign_dsl.cli.common import ExitCode
from qalign_dsl.cli.console import escape_controls, print_diagnostic
from qalign_dsl.cli.inputs import MAX_DATA_BYTES, MAX_IR_BYTES, BadInput, read_regular, read_text
from qalign_dsl.lang.compiler import compile_file, compile_text
from qalign_dsl.lang.modules import SourceUnavailable, read_file_bytes
from qalign_dsl.review.diff import Diff, diff_documents
from qalign_dsl.review.outline import outline
from qalign_dsl.review.render import (
    SYMBOLS,
    describe_affects,
    format_score,
    headline,
    render_markdown,
    sorted_changes,
    value_lines,
)
from qalign_dsl.review.shift import ShiftError, answer_shift


class InputError(Exception):
    """An input that cannot be read or compiled; already reported."""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    diff = commands.add_parser(
        "diff", help="semantic diff of two rubrics (.qal, compiled .json, or REV:PATH)",
        description="Compare two rubrics by meaning: matched by id, then by text similarity. "
                    "Exit 0 (or 1 with --exit-code when there are changes); 2 when an input "
                    "cannot be read or compiled.")
    diff.add_argument("old", metavar="OLD",
                      help="the old rubric: a .qal file, a compiled .json, or REV:PATH in git")
    diff.add_argument("new", metavar="NEW", help="the new rubric (the same forms as OLD)")
    diff.add_argument("--format", choices=["terminal", "markdown", "json"], default="terminal",
                      help="terminal (coloured), markdown (for a pull request) or json")
    diff.add_argument("--exit-code", action="store_true", help="exit 1 when there are changes")
    diff.add_argument("--answers", type=Path, metavar="ANSWERS.jsonl",
                      help="cached judge answers (as read by `qalc aggregate`): report how "
                           "the reward distribution shifts from OLD to NEW, without a judge")
    diff.add_argument("--top", type=int, default=5, metavar="N",
                      help="samples that move most to list with --answers (default 5)")
    diff.set_defaults(run=run_diff)

    driver = commands.add_parser(
        "git-diff", help="git external diff driver (see docs/review.md)",
        description="Called by git as `diff.qal.command`: PATH OLD-FILE OLD-HEX OLD-MODE "
                    "NEW-FILE NEW-HEX NEW-MODE.")
    driver.add_argument("git_arguments", nargs="+", metavar="ARG",
                        help="the seven arguments git passes an external diff driver")
    driver.set_defaults(run=run_git_diff)

    textconv = commands.add_parser(
        "textconv", help="a rubric as normalized text, for git's textconv",
        description="Print a .qal source formatted, or a compiled rubric as a readable "
                    "outline, so that plain `git diff` shows changes of content only.")
    textconv.add_argument("file", type=Path, metavar="FILE",
                          help="a .qal or compiled .json file to print as a review outline")
    textconv.set_defaults(run=run_textconv)


# ---------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Side:
    label: str
    document: dict[str, Any]


def load_side(spec: str, console: Console, shown_as: str | None = None) -> Side:
    path = Path(spec)
    if path.exists():
        return Side(shown_as or spec, _load_path(path, console, shown_as))
    if ":" in spec:
        revision, _, inside = spec.partition(":")
        if revision.startswith("-"):  # never an option of git, whatever git would accept
            console.print(f"qalc diff: {spec}: a revision cannot start with `-`", style="red",
                          markup=False)
            raise InputError(spec)
        if revision and inside:
            return Side(spec, _load_revision(revision, inside, console))
    console.print(f"qalc diff: {spec}: no such file (and not a REV:PATH git revision)",
                  style="red", markup=False)
    raise InputError(spec)


def _load_path(path: Path, console: Console, shown_as: str | None = None) -> dict[str, Any]:
    if path.suffix == ".qal" or (shown_as or "").endswith(".qal"):
        if shown_as:  # a temporary copy from git: compile it as if it lived at its real path
            try:
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError) as error:
                console.print(f"{shown_as}: cannot read: {error}", style="red", markup=False)
                raise InputError(shown_as) from None
            return _compiled(compile_text(text, shown_as), shown_as, console)
        return _compiled(compile_file(path), str(path), console)
    try:
        data = read_regular(path, MAX_IR_BYTES)
        return ir.loads(data, where=shown_as or str(path))
    except BadInput as error:
        console.print(str(error), style="red", markup=False)
    except ir.InvalidIR as error:
        console.print(str(error), style="red", markup=False)
    raise InputError(str(path))


def _compiled(result: Any, label: str, console: Console) -> dict[str, Any]:
    if result.document is None:
        for diagnostic in result.diagnostics:
            if diagnostic.is_error:
                print_diagnostic(console, diagnostic)
        console.print(f"qalc diff: {label} does not compile", style="red", markup=False)
        raise InputError(label)
    return dict(result.document)


def escape(text: str) -> str:
    """User text for rich markup on a terminal: control characters shown as escapes, and
    `[` not read as markup."""
    return escape_markup(escape_controls(text))


def _git(arguments: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *arguments], capture_output=True, check=False)


def _load_revision(revision: str, inside: str, console: Console) -> dict[str, Any]:
    top = _git(["rev-parse", "--show-toplevel"])
    if top.returncode != 0:
        console.print(f"qalc diff: {revision}:{inside}: not inside a git repository",
                      style="red", markup=False)
        raise InputError(inside)
    root = Path(top.stdout.decode().strip()).resolve()
    # As in `git show`, REV:PATH is relative to the repository root; a PATH that names a
    # file relative to the working directory is taken that way, which is what users mean.
    here = (Path.cwd() / inside).resolve()
    relative = (here.relative_to(root) if here.exists() and here.is_relative_to(root)
                else Path(inside))
    label = f"{revision}:{relative.as_posix()}"

    def read_bytes(path: Path) -> bytes:
        """Read a file (the entry or an import, absolute below root) from the revision."""
        absolute = path if path.is_absolute() else root / path
        try:
            name = absolute.resolve().relative_to(root).as_posix()
        except ValueError:
            raise SourceUnavailable(f"outside the repository ({revision})") from None
        shown = _git(["show", "--end-of-options", f"{revision}:{name}"])
        if shown.returncode != 0:
            raise SourceUnavailable(f"not in revision {revision}")
        return shown.stdout

    try:
        data = read_bytes(relative)
    except SourceUnavailable:
        message = _git(["show", "--end-of-options", f"{revision}:{relative.as_posix()}"]
                       ).stderr.decode("utf-8", "replace").strip()
        console.print(f"qalc diff: {label}: {message or 'not found'}", style="red", markup=False)
        raise InputError(label) from None
    if relative.suffix == ".qal":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            console.print(f"{label}: not valid UTF-8", style="red", markup=False)
            raise InputError(label) from None
        return _compiled(compile_text(text, str(root / relative), read_bytes), label, console)
    try:
        return ir.loads(data, where=label)
    except ir.InvalidIR as error:
        console.print(str(error), style="red", markup=False)
        raise InputError(label) from None


# ---------------------------------------------------------------------------------------
# Commands


def run_diff(arguments: argparse.Namespace, console: Console) -> int:
    try:
        old = load_side(arguments.old, console)
        new = load_side(arguments.new, console)
    except InputError:
        return ExitCode.USAGE
    result = diff_documents(old.document, new.document)
    shift = None
    if arguments.answers is not None:
        path = arguments.answers
        try:
            lines = read_text(path, MAX_DATA_BYTES).split("\n")
        except BadInput as error:
            console.print(str(error), style="red", markup=False)
            return ExitCode.USAGE

        def skipped_line(number: int, reason: str) -> None:
            console.print(f"{path}:{number}: {reason}", style="yellow", markup=False)

        try:
            shift = answer_shift(old.document, new.document, result, lines, arguments.top,
                                 skipped_line)
        except ShiftError as error:
            console.print(f"{path}: {error}", style="red", markup=False)
            return ExitCode.USAGE
    if arguments.format == "json":
        record = result.to_json()
        record.update({"old": old.label, "new": new.label})
        if shift is not None:
            record["answers"] = shift
        print(json.dumps(record, indent=2, ensure_ascii=False))
    elif arguments.format == "markdown":
        print(escape_controls(render_markdown(old.label, new.label, result, shift)), end="")
    else:
        render_terminal(Console(highlight=False, soft_wrap=True), old.label, new.label, result,
                        shift)
    return ExitCode.PROBLEMS if arguments.exit_code and result.changed else ExitCode.OK


def run_git_diff(arguments: argparse.Namespace, console: Console) -> int:
    """git's external diff interface: path old-file old-hex old-mode new-file new-hex
    new-mode [new-path similarity]. Added or deleted files come as /dev/null."""
    args = arguments.git_arguments
    if len(args) < 7:
        console.print("qalc git-diff: expected the 7 arguments git passes to a diff driver "
                      "(set it up with `git config diff.qal.command 'qalc git-diff'`)",
                      style="red", markup=False)
        return ExitCode.USAGE
    path, old_file, new_file = args[0], args[1], args[4]
    new_path = args[7] if len(args) >= 9 else path
    out = Console(highlight=False, soft_wrap=True)
    try:
        old = _git_side(path, old_file, console, "a/")
        new = _git_side(new_path, new_file, console, "b/")
    except InputError:
        return ExitCode.USAGE
    if old is None or new is None:
        out.print(f"qalc diff {path}: {'added' if old is None else 'deleted'}", markup=False)
        return ExitCode.OK
    render_terminal(out, old.label, new.label, diff_documents(old.document, new.document), None)
    return ExitCode.OK  # git stops the whole diff on a non-zero exit


def _git_side(path: str, file: str, console: Console, prefix: str) -> Side | None:
    if file == "/dev/null":
        return None
    return Side(prefix + path, _load_path(Path(file), console, path))


def run_textconv(arguments: argparse.Namespace, console: Console) -> int:
    from qalign_dsl.lang.fmt import format_module
    from qalign_dsl.lang.parser import decode_source, parse

    path: Path = arguments.file
    try:
        data = read_file_bytes(path)
    except OSError as error:
        console.print(f"{path}: cannot read: {error.strerror or error}", style="red", markup=False)
        return ExitCode.USAGE
    if path.suffix == ".qal":
        text, problems = decode_source(data, str(path))
        parsed = parse(text, str(path)) if text is not None and not problems else None
        if parsed is not None and parsed.module is not None:
            print(format_module(parsed.module), end="")
        else:  # unparseable: show it as it is, git still needs text
            print(data.decode("utf-8", errors="replace"), end="")
        return ExitCode.OK
    try:
        document = ir.loads(data, where=str(path))
    except ir.InvalidIR:
        print(data.decode("utf-8", errors="replace"), end="")
        return ExitCode.OK
    print(outline(document), end="")
    return ExitCode.OK


# ---------------------------------------------------------------------------------------
# Rendering

def render_terminal(console: Console, old_label: str, new_label: str, result: Diff,
                    shift: dict[str, Any] | None) -> None:
    if not result.changed:
        console.print(f"qalc diff {escape(old_label)} → {escape(new_label)}: no changes "
                      "in meaning", style="green")
    else:
        count = len(result.changes)
        console.print(f"[bold]qalc diff {escape(old_label)} → {escape(new_label)}[/bold]: "
                      f"{count} change{'s' * (count != 1)}")
    for change in sorted_changes(result.changes):
        symbol = SYMBOLS.get(change.kind, "~")
        style = {"+": "green", "-": "red"}.get(symbol, "yellow")
        console.print(f"[{style}]{symbol}[/{style}] {escape(headline(change))}")
        if change.words is not None:
            console.print("    " + _terminal_words(change.words))
        elif change.kind not in ("added", "removed", "moved", "renamed"):
            for prefix, line in value_lines(change.old, change.new):
                colour = {"-": "red", "+": "green"}.get(prefix, "dim")
                console.print(f"    [{colour}]{prefix} {escape(line)}[/{colour}]")
        if change.affects:
            console.print(f"    [dim]affects: {escape(describe_affects(change.affects))}[/dim]")
    if shift is not None:
        _terminal_shift(console, shift)


def _terminal_shift(console: Console, shift: dict[str, Any]) -> None:
    console.print(f"\n[bold]reward on {shift['samples']} cached answer rows[/bold] "
                  f"({shift['carried_questions']} questions carried over"
                  + (f", {len(shift['stale_questions'])} reworded/rescaled left unanswered"
                     if shift["stale_questions"] else "") + ")")
    for key in ("mean", "p10", "p25", "p50", "p75", "p90", "min", "max", "na"):
        a, b = shift["old"].get(key), shift["new"].get(key)
        if key == "na":
            console.print(f"  {key:>4}  {a:>7}  → {b:>7}")
        else:
            delta = "" if a is None or b is None else f"  ({b - a:+.3f})"
            console.print(f"  {key:>4}  {format_score(a):>7}  → {format_score(b):>7}{delta}")
    console.print(f"  {shift['changed_samples']} of {shift['samples']} rows change reward")
    for move in shift["top_moves"]:
        old, new = format_score(move["old"]), format_score(move["new"])
        console.print(f"    {escape(str(move['id']))}: {old} → {new}")


def _terminal_words(words: list[tuple[str, str]]) -> str:
    parts = []
    for op, text in words:
        if op == "=":
            parts.append(escape(text))
        elif op == "-":
            parts.append(f"[red strike][-{escape(text)}-][/red strike]")
        else:
            parts.append(f"[green]{{+{escape(text)}+}}[/green]")
    return " ".join(parts)
