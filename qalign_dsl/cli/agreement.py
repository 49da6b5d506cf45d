"""The student-vs-teacher agreement report (evaluate/agreement.py) on the terminal: shown
at the end of `qalc distill` and by `qalc validate --backend student`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

_SUMMARY = (
    ("agreement", "answers with the teacher's top label"),
    ("failed_gate_recall", "failed gates the student also fails"),
    ("reward_pearson", "reward Pearson"),
    ("reward_spearman", "reward Spearman"),
    ("group_rank_agreement", "pairs in a group ordered as the teacher orders them"),
    ("advantage_sign_agreement", "GRPO advantages with the teacher's sign"),
)


def _value(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}"


def print_agreement(console: Console, report: dict[str, Any], title: str,
                    worst: int = 12) -> None:
    samples = report.get("samples", 0)
    if not samples:
        console.print("no held-out rows: no agreement report (raise --heldout)", style="yellow")
        return
    table = Table(title=f"{title} ({samples} samples, {report.get('groups', 0)} prompts; "
                  f"95% bootstrap intervals)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("interval", justify="right")
    for key, label in _SUMMARY:
        interval = report.get(key + "_ci")
        table.add_row(label, _value(report.get(key)),
                      "—" if not interval else f"{interval[0]:.3f} – {interval[1]:.3f}")
    table.add_row("mean per-question agreement", _value(report.get("mean_question_agreement")),
                  "")
    console.print(table)
    questions = report.get("questions") or {}
    ranked = sorted(questions.items(), key=lambda item: (
        item[1]["agreement"] if item[1]["agreement"] is not None else 2.0))
    shown = Table(title=f"questions, least agreement first (of {len(questions)})")
    for column in ("question", "n", "agreement", "kappa", "ECE", "failed-gate recall", ""):
        shown.add_column(column, justify="left" if column in ("question", "") else "right")
    for question_id, entry in ranked[:worst]:
        shown.add_row(question_id, str(entry["n"]), _value(entry["agreement"]),
                      _value(entry["kappa"]), _value(entry["ece"]),
                      _value(entry.get("failed_gate_recall")),
                      "" if entry["learned"] else "not learned")
    console.print(shown)
    unlearned = report.get("unlearned") or []
    if unlearned:
        console.print(f"{len(unlearned)} question(s) the student has not learned (agreement "
                      f"< 0.8 or kappa < 0.4): {', '.join(unlearned[:10])}"
                      + (" …" if len(unlearned) > 10 else "")
                      + " — more teacher answers, or a cascade to the teacher for them",
                      style="yellow", markup=False)
