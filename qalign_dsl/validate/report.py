"""Render a `Validation`: a JSON-ready dict, a markdown report, and PNG plots (as bytes;
the CLI writes them)."""

from __future__ import annotations

import io
from typing import Any

from qalign_dsl.evaluate.metrics import Calibration
from qalign_dsl.validate.core import OutputReport, QuestionReport, Validation
from qalign_dsl.validate.labels import BAND_ORDER


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def calibration_json(calibration: Calibration | None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    return {"ece": _round(calibration.ece), "brier": _round(calibration.brier),
            "bins": [{"low": b.low, "high": b.high, "count": b.count,
                      "confidence": _round(b.confidence), "accuracy": _round(b.accuracy)}
                     for b in calibration.bins]}


def question_json(report: QuestionReport) -> dict[str, Any]:
    return {"id": report.id, "kind": report.kind, "labels": list(report.labels),
            "labelled": report.labelled, "agreed_on": report.agreed_on,
            "accuracy": _round(report.accuracy), "kappa": _round(report.kappa),
            "alpha": _round(report.alpha), "confusion": report.confusion,
            "calibration": calibration_json(report.calibration), "answered": report.answered,
            "na_rate": _round(report.na_rate), "majority": report.majority,
            "majority_share": _round(report.majority_share), "flags": report.flags}


def output_json(report: OutputReport) -> dict[str, Any]:
    return {"id": report.id, "level": report.level, "labelled": report.labelled,
            "accuracy": _round(report.accuracy), "kappa": _round(report.kappa),
            "bands": list(BAND_ORDER), "confusion": report.confusion,
            "na_rate": _round(report.na_rate), "misses": report.misses}


def to_json(validation: Validation, min_kappa: float | None = None) -> dict[str, Any]:
    settings = validation.settings
    return {
        "samples": validation.samples,
        "settings": {"band_threshold": settings.threshold, "chance_kappa": settings.chance_kappa,
                     "degenerate_share": settings.degenerate_share,
                     "redundant_r": settings.redundant_r, "min_items": settings.min_items,
                     "bins": settings.bins, "min_kappa": min_kappa},
        "calibration": calibration_json(validation.calibration),
        "questions": [question_json(q) for q in validation.questions if q.labelled],
        "unlabelled_flagged": [question_json(q) for q in validation.questions
                               if not q.labelled and q.flags],
        "outputs": [output_json(o) for o in validation.outputs],
        "redundant": [{"a": a, "b": b, "r": round(r, 4)} for a, b, r in validation.redundant],
        "flagged": {q.id: q.flags for q in validation.flagged},
        "below_min_kappa": below_min_kappa(validation, min_kappa),
        "label_token_problems": validation.label_token_problems,
    }


def below_min_kappa(validation: Validation, min_kappa: float | None) -> list[str]:
    """Labelled questions whose kappa is under `min_kappa` (or undefined although the
    human labels vary: the judge is constant)."""
    if min_kappa is None:
        return []
    return [q.id for q in validation.questions if q.agreed_on and (
        (q.kappa is not None and q.kappa < min_kappa)
        or (q.kappa is None and len({r for r, row in enumerate(q.confusion) if sum(row)}) > 1))]


def _cell(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(validation: Validation, title: str, plots: dict[str, str],
             min_kappa: float | None = None) -> str:
    """The report: summary, flags, per-question and per-output tables, plots (by file name)."""
    settings = validation.settings
    labelled = [q for q in validation.questions if q.labelled]
    lines = [f"# Judge validation: {title}", "",
             f"{validation.samples} labelled samples, {len(labelled)} labelled questions, "
             f"{len(validation.outputs)} labelled outputs. Pooled calibration: ECE "
             f"{_cell(validation.calibration.ece, 3)}, Brier "
             f"{_cell(validation.calibration.brier, 3)}.", ""]
    if validation.label_token_problems:
        lines += ["## Label-token problems", ""]
        lines += [f"- {problem}" for problem in validation.label_token_problems] + [""]
    below = below_min_kappa(validation, min_kappa)
    if min_kappa is not None:
        lines += [f"**--min-kappa {min_kappa}**: " + (
            f"{len(below)} question(s) below: " + ", ".join(f"`{q}`" for q in below)
            if below else "every labelled question passes") + ".", ""]
    lines += ["## Flags", "",
              f"- **chance**: kappa < {settings.chance_kappa}, or not significantly above 0 "
              f"(one-sided 5%), on at least {settings.min_items} labelled answers — the judge "
              "does not answer this question reliably;",
              f"- **degenerate**: the same label on ≥ {settings.degenerate_share:.0%} of "
              "samples — the question never moves the reward;",
              f"- **redundant**: scores correlate at r ≥ {settings.redundant_r} with another "
              "question's.", ""]
    flagged = validation.flagged
    if flagged:
        lines += ["| question | flags |", "|---|---|"]
        lines += [f"| `{q.id}` | {', '.join(q.flags)} |" for q in flagged]
    else:
        lines.append("No question is flagged.")
    lines += ["", "## Questions", "",
              "| question | kind | n | accuracy | kappa | alpha | ECE | NA rate | flags |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for q in labelled:
        ece = q.calibration.ece if q.calibration else None
        lines.append(f"| `{q.id}` | {q.kind} | {q.agreed_on}/{q.labelled} | "
                     f"{_cell(q.accuracy)} | {_cell(q.kappa)} | {_cell(q.alpha)} | "
                     f"{_cell(ece)} | {_cell(q.na_rate)} | {', '.join(q.flags)} |")
    if validation.outputs:
        lines += ["", "## Outputs", "",
                  f"Bands: low < {settings.threshold} ≤ high; na when undefined.", "",
                  "| output | level | n | accuracy | kappa | NA rate | disagreements |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for o in validation.outputs:
            misses = ", ".join(f"`{m}`" for m in o.misses[:8]) + (
                f" … (+{len(o.misses) - 8})" if len(o.misses) > 8 else "")
            lines.append(f"| `{o.id}` | {o.level} | {o.labelled} | {_cell(o.accuracy)} | "
                         f"{_cell(o.kappa)} | {_cell(o.na_rate)} | {misses} |")
    lines += ["", "## Confusion matrices", ""]
    for q in labelled:
        used = [i for i in range(len(q.labels))
                if sum(q.confusion[i]) or sum(row[i] for row in q.confusion)]
        if not used:
            continue
        lines += [f"`{q.id}` (rows: human, columns: judge)", "",
                  "| | " + " | ".join(q.labels[i] for i in used) + " |",
                  "|---|" + "---:|" * len(used)]
        lines += [f"| **{q.labels[i]}** | " + " | ".join(str(q.confusion[i][j]) for j in used)
                  + " |" for i in used]
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({file})" for name, file in plots.items()] + [""]
    return "\n".join(lines)


def reliability_png(calibration: Calibration, title: str) -> bytes:
    """A reliability diagram: accuracy per confidence bin against the diagonal, with the
    share of answers per bin underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    centres = [(b.low + b.high) / 2 for b in calibration.bins]
    width = calibration.bins[0].high - calibration.bins[0].low if calibration.bins else 0.1
    top.bar(centres, [b.accuracy or 0.0 for b in calibration.bins], width=width * 0.9,
            color="#4878cf", edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ece = "—" if calibration.ece is None else f"{calibration.ece:.3f}"
    top.set_title(f"{title} (ECE {ece})")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    total = sum(b.count for b in calibration.bins) or 1
    bottom.bar(centres, [b.count / total for b in calibration.bins], width=width * 0.9,
               color="#6acc65", edgecolor="black")
    bottom.set_xlabel("judge confidence (top-label probability)")
    bottom.set_ylabel("share")
    bottom.set_xlim(0, 1)
    return _png(figure)


def kappa_png(validation: Validation) -> bytes:
    """Cohen's kappa per labelled question, flagged ones in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labelled = [q for q in validation.questions if q.labelled]
    height = max(2.0, 0.28 * len(labelled) + 1)
    figure, axis = plt.subplots(figsize=(7, height))
    names = [q.id for q in labelled]
    values = [q.kappa if q.kappa is not None else 0.0 for q in labelled]
    colours = ["#d65f5f" if q.flags else "#4878cf" for q in labelled]
    axis.barh(range(len(names)), values, color=colours)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.invert_yaxis()
    axis.axvline(validation.settings.chance_kappa, linestyle="--", color="grey")
    axis.set_xlim(-1, 1)
    axis.set_xlabel("Cohen's kappa (red: flagged)")
    figure.tight_layout()
    return _png(figure)


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight",
                   metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
