"""Loading a compiled rubric from a user's file and summarizing evaluations on the terminal
(shared by aggregate, score and synth)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from qalign_dsl import ir
from qalign_dsl.cli.inputs import MAX_IR_BYTES, BadInput, read_regular

if TYPE_CHECKING:  # torch is imported only by the commands that evaluate
    from qalign_dsl.evaluate.aggregate import CompiledRubric, Evaluation


def add_compiled_argument(parser: argparse.ArgumentParser) -> None:
    """The COMPILED positional of every command that runs a rubric."""
    parser.add_argument("compiled", type=Path, metavar="COMPILED",
                        help="the compiled constitution (.json written by `qalc compile`)")


def load_rubric(path: Path, console: Console) -> CompiledRubric | None:
    from qalign_dsl.evaluate.aggregate import CompiledRubric

    try:
        data = read_regular(path, MAX_IR_BYTES)
    except BadInput as error:
        console.print(str(error), style="red", markup=False)
        return None
    try:
        document = ir.loads(data, where=str(path))
    except ir.InvalidIR as error:
        console.print(str(error), style="red", markup=False)
        if path.suffix == ".qal":
            console.print(f"hint: compile it first: qalc compile {path}", style="cyan",
                          markup=False)
        return None
    return CompiledRubric(document)


def evaluation_lists(evaluation: Evaluation, questions: bool = True) -> dict[str, list[Any]]:
    """Tensors -> Python lists; the B x Q question scores only when asked for (they are
    most of the conversion work)."""
    return {
        "reward": evaluation.reward.to_list(),
        "principles": evaluation.principles.to_list(),
        "dimensions": evaluation.dimensions.to_list(),
        "questions": evaluation.questions.to_list() if questions else [],
    }


class Summary:
    """Running statistics of output records (sum, count, min per output): memory does not
    grow with the number of rows, so `aggregate` can stream."""

    def __init__(self, rubric: CompiledRubric) -> None:
        self.rubric = rubric
        self.rows = 0
        self.stats: dict[tuple[str, str], list[float]] = {}  # key -> [sum, count, min]

    def add(self, record: dict[str, Any]) -> None:
        self.rows += 1
        self._add(("reward", ""), record["reward"])
        for group in ("principles", "dimensions"):
            for key, value in record[group].items():
                self._add((group, key), value)

    def _add(self, key: tuple[str, str], value: float | None) -> None:
        if value is None:
            return
        entry = self.stats.get(key)
        if entry is None:
            self.stats[key] = [value, 1, value]
        else:
            entry[0] += value
            entry[1] += 1
            entry[2] = min(entry[2], value)

    def row(self, key: tuple[str, str]) -> tuple[str, str, str]:
        entry = self.stats.get(key)
        if entry is None:
            return "—", "—", str(self.rows)
        total, count, low = entry
        mean = total / count
        assert math.isfinite(mean)
        return f"{mean:+.3f}", f"{low:+.3f}", str(self.rows - int(count))

    def print(self, console: Console, bad: int) -> None:
        """Mean per principle, NA counts and the worst dimensions, on stderr."""
        rubric = self.rubric
        # The title is user text: a Text, so `[/]` in it is not read as markup.
        title = Text(f"{rubric.rubric.title}: {self.rows} samples"
                     + (f", {bad} bad lines skipped" if bad else ""))
        table = Table(title=title)
        table.add_column("output")
        table.add_column("mean", justify="right")
        table.add_column("min", justify="right")
        table.add_column("NA", justify="right")
        table.add_row("reward", *self.row(("reward", "")))
        for principle in rubric.principle_ids:
            table.add_row(Text(f"  {principle}"), *self.row(("principles", principle)))
        means = sorted((entry[0] / entry[1], key[1]) for key, entry in self.stats.items()
                       if key[0] == "dimensions")
        if means:
            table.add_section()
            for _, dimension in means[:5]:
                table.add_row(Text(f"worst: {dimension}"), *self.row(("dimensions", dimension)))
        console.print(table)


def print_summary(console: Console, rubric: CompiledRubric, outputs: list[dict[str, Any]],
                  bad: int, good: int) -> None:
    """Mean per principle, NA counts and the worst dimensions, on stderr."""
    summary = Summary(rubric)
    for record in outputs:
        summary.add(record)
    summary.rows = good
    summary.print(console, bad)
