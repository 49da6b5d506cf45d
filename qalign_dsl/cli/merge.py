"""`qalc merge`: join the outputs of `qalc score --shard I/N` runs into the output an
unsharded run would have written (rows in DATA's order, each exactly once).

Parts may be JSONL or parquet (`qalc score -o part.parquet`), mixed; the output is JSONL, or
parquet when `-o` ends in .parquet. JSONL parts merged to JSONL are copied line for line (so
the merge is byte-identical to an unsharded run); a parquet part's rows carry every column of
its table (a key a row lacked is null)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from qalign_dsl.cli.common import ExitCode, write_atomic
from qalign_dsl.cli.inputs import BadInput, check_id, iter_lines, open_regular, parse_json
from qalign_dsl.cli.outputs import OutputLock, check_output
from qalign_dsl.cli.score import _read_data
from qalign_dsl.cli.tables import is_parquet, read_parquet, write_parquet


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "merge", help="join `qalc score --shard` outputs in DATA's order",
        description="Join the outputs of `qalc score --shard I/N` runs: every row of DATA "
        "exactly once, in DATA's order (the output of an unsharded run).")
    parser.add_argument("data", type=Path, metavar="DATA", help="the DATA the shards scored")
    parser.add_argument("parts", type=Path, nargs="+", metavar="PART",
                        help="the shards' outputs, .jsonl or .parquet")
    parser.add_argument("-o", "--output", type=Path,
                        help="merged .jsonl or .parquet (default: JSONL on stdout)")
    parser.set_defaults(run=run_merge)


def run_merge(arguments: argparse.Namespace, console: Console) -> int:
    if arguments.output is not None:
        check_output(arguments.output, [arguments.data, *arguments.parts])
        with OutputLock(arguments.output):
            return _merge(arguments, console)
    return _merge(arguments, console)


def _merge(arguments: argparse.Namespace, console: Console) -> int:
    rows = _read_data(arguments.data, console)
    if rows is None:
        return ExitCode.PROBLEMS
    wanted = {row["key"] for row in rows}
    lines: dict[str, str | dict[str, Any]] = {}  # a JSONL line, or a parquet row
    where: dict[str, str] = {}
    reference: tuple[tuple[str, ...], str] | None = None  # the first row's outputs, and where
    problems = 0
    seen_parts: dict[str, Path] = {}
    for part in arguments.parts:
        identity = _identity(part)
        if identity in seen_parts:
            console.print(f"{part}: given twice (also as {seen_parts[identity]}); shards must "
                          "not overlap", style="red", markup=False)
            return ExitCode.PROBLEMS
        seen_parts[identity] = part
        try:
            entries = _part_entries(part)
        except BadInput as error:
            # read_parquet's advice is about -o; a part only needs to be named
            console.print(str(error).split(";")[0], style="red", markup=False)
            return ExitCode.PROBLEMS
        for here, line in entries:
            try:
                if isinstance(line, BadInput):
                    raise line
                record = parse_json(line) if isinstance(line, str) else line
                if not isinstance(record, dict) or "id" not in record:
                    raise BadInput("not a `qalc score` output line (JSON with `id`)")
                key = check_id(record["id"])
            except BadInput as error:
                console.print(f"{here}: {str(error).removeprefix(here + ': ')}", style="red",
                              markup=False)
                problems += 1
                continue
            shape = _shape(record)
            if reference is None:
                reference = (shape, here)
            elif shape != reference[0]:
                console.print(f"{here}: scored with another rubric than {reference[1]} (its "
                              "principles and dimensions differ); merge the parts of one "
                              "rubric", style="red", markup=False)
                problems += 1
                continue
            if key not in wanted:
                console.print(f"{here}: id `{key}` is not in {arguments.data}", style="red",
                              markup=False)
                problems += 1
            elif key in lines:
                console.print(f"{here}: id `{key}` again (first in {where[key]}); shards "
                              "must not overlap", style="red", markup=False)
                problems += 1
            else:
                lines[key], where[key] = line, here
    missing = [row["key"] for row in rows if row["key"] not in lines]
    if missing:
        shown = ", ".join(f"`{k}`" for k in missing[:5]) + (" …" if len(missing) > 5 else "")
        console.print(f"{len(missing)} row(s) of {arguments.data} are in no part: {shown} "
                      "(a shard not run, or not finished: rerun it to resume)", style="red",
                      markup=False)
        problems += 1
    if problems:
        return ExitCode.PROBLEMS
    ordered = [lines[row["key"]] for row in rows]
    if is_parquet(arguments.output):
        write_parquet(arguments.output, [json.loads(e) if isinstance(e, str) else e
                                         for e in ordered])
        console.print(f"merged {len(rows)} rows from {len(arguments.parts)} part(s) into "
                      f"{arguments.output}", markup=False)
        return ExitCode.OK
    merged = "".join((e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)) + "\n"
                     for e in ordered)
    if arguments.output:
        write_atomic(arguments.output, merged.encode("utf-8"))
        console.print(f"merged {len(rows)} rows from {len(arguments.parts)} part(s) into "
                      f"{arguments.output}", markup=False)
    else:
        sys.stdout.write(merged)
    return ExitCode.OK


def _identity(path: Path) -> str:
    try:
        info = path.stat()
    except OSError:
        return os.path.abspath(path)
    return f"{info.st_dev}:{info.st_ino}"


def _shape(record: dict[str, Any]) -> tuple[str, ...]:
    """The output ids a row carries: rows of one rubric share them."""
    keys: list[str] = []
    for field in ("principles", "dimensions"):
        value = record.get(field)
        if isinstance(value, str):  # a parquet part's JSON-text column
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if isinstance(value, dict):
            keys += sorted(f"{field}.{key}" for key in value)
    return tuple(keys)


def _part_entries(part: Path) -> Iterator[tuple[str, str | BadInput | dict[str, Any]]]:
    """(where, JSONL line or parquet row) for every row of one part; the part's type and
    size are checked first (a FIFO or /dev/zero is refused before a byte is read)."""
    if is_parquet(part):
        open_regular(part, None).close()
        return iter([(f"{part}: row {number}", row)
                      for number, row in enumerate(read_parquet(part), start=1)])
    return ((f"{part}:{number}", line.removesuffix("\n") if isinstance(line, str) else line)
            for number, line in iter_lines(part))
