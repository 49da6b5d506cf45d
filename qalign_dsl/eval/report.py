"""Reports of an evaluation run: results.json, report.md, PNG plots and a rich table.

Tables follow the paper's layout: models as rows, suites as columns, each cell
`mean ± std` (over seeds) in percent, the best model per column in bold, and a dagger
where the model differs from the baseline row with p < alpha (paired test; see stats.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qalign_dsl import __version__
from qalign_dsl.eval.recipe import LOWER_IS_BETTER
from qalign_dsl.eval.run import EvalRun, describe_models

ARROWS = {"asr": "↓", "frr": "↓", "accuracy": "↑"}


def build_results(run: EvalRun, classifiers: dict[str, dict[str, Any]],
                  baseline: str) -> dict[str, Any]:
    """The machine-readable results with their provenance."""
    recipe = run.recipe
    suites = []
    for suite in recipe.suites:
        entry: dict[str, Any] = {
            "name": suite.name, "metric": suite.metric, "source": suite.source.describe(),
            "items": len(run.items[suite.name]), "judge": suite.judge, "extract": suite.extract,
            "lower_is_better": suite.lower_is_better, "models": {}}
        for model in run.models:
            result = run.results[(suite.name, model.name)]
            summary = result.summary
            assert summary is not None
            row: dict[str, Any] = {
                "metric": summary.metric, "n": summary.n, "outcomes": summary.outcomes,
                "na": summary.na, "mean": summary.mean, "std": summary.std,
                "ci95": list(summary.ci) if summary.ci else None,
                "per_seed": list(summary.per_seed), "categories": {
                    k: {"metric": v, "n": n} for k, (v, n) in result.categories.items()},
                "generation": {"generated": result.generation.generated,
                               "cached": result.generation.cached} if result.generation else None,
            }
            comparison = run.comparisons.get((suite.name, model.name, baseline))
            if comparison is not None:
                row["vs_baseline"] = {
                    "baseline": baseline, "difference": comparison.difference,
                    "ci95": list(comparison.ci), "p_value": comparison.p_value,
                    "test": comparison.test, "n": comparison.n,
                    "significant": comparison.p_value < recipe.alpha}
                if comparison.discordant:
                    row["vs_baseline"]["discordant"] = list(comparison.discordant)
            entry["models"][model.name] = row
        suites.append(entry)
    generated = sum(r.generation.generated for r in run.results.values() if r.generation)
    cached = sum(r.generation.cached for r in run.results.values() if r.generation)
    return {
        "qalc_version": __version__,
        "recipe": {"path": str(recipe.path), "name": recipe.name, "hash": recipe.hash,
                   "seed": recipe.seed, "alpha": recipe.alpha, "bootstrap": recipe.bootstrap,
                   "sampling": {"samples": recipe.sampling.samples, **recipe.sampling.key()}},
        "seeds": [recipe.seed + s for s in range(recipe.sampling.samples)],
        "models": describe_models(run),
        "baseline": baseline,
        "judges": classifiers,
        "generation": {"generated": generated, "cached": cached},
        "suites": suites,
    }


def _percent(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def cells(
    results: dict[str, Any],
) -> tuple[list[str], list[tuple[str, list[tuple[str, bool, bool]]]]]:
    """(column headers, [(model, [(cell text, best, significant)])]) shared by the
    markdown and terminal tables."""
    headers = [f"{s['name']} ({s['metric'].upper()} {ARROWS[s['metric']]})"
               for s in results["suites"]]
    rows: dict[str, list[tuple[str, bool, bool]]] = {m["name"]: [] for m in results["models"]}
    for suite in results["suites"]:
        models = suite["models"]
        values = {name: row["mean"] for name, row in models.items() if row["mean"] is not None}
        pick = min if LOWER_IS_BETTER[suite["metric"]] else max
        best = pick(values.values()) if values else None
        for name, row in models.items():
            text = _percent(row["mean"])
            if row["mean"] is not None and len(row["per_seed"]) > 1:
                text += f" ± {_percent(row['std'])}"
            versus = row.get("vs_baseline")
            rows[name].append((text, best is not None and row["mean"] == best,
                               bool(versus and versus["significant"])))
    return headers, list(rows.items())


def render_markdown(results: dict[str, Any]) -> str:
    headers, rows = cells(results)
    recipe = results["recipe"]
    lines = [f"# {recipe['name']}: evaluation", "",
             f"Values in %, mean ± std over {len(results['seeds'])} sample(s) per prompt "
             f"(seeds {', '.join(map(str, results['seeds']))}). **Bold**: best per column. "
             f"†: differs from `{results['baseline']}` with p < {recipe['alpha']} "
             "(paired test on the same prompts).", "",
             "| model | " + " | ".join(headers) + " |",
             "|---|" + "---:|" * len(headers)]
    for name, row in rows:
        rendered = []
        for text, best, significant in row:
            text = f"**{text}**" if best else text
            rendered.append(text + (" †" if significant else ""))
        lines.append(f"| {name} | " + " | ".join(rendered) + " |")
    lines += ["", "## Details", "",
              "| suite | model | n | NA | metric | 95% CI | vs baseline (Δ, p, test) |",
              "|---|---|---:|---:|---:|---|---|"]
    for suite in results["suites"]:
        for name, row in suite["models"].items():
            ci = row["ci95"]
            versus = row.get("vs_baseline")
            comparison = (f"{100 * versus['difference']:+.1f}, p={versus['p_value']:.3g}, "
                          f"{versus['test']}" if versus else "—")
            lines.append(f"| {suite['name']} | {name} | {row['n']} | {row['na']} | "
                         f"{_percent(row['metric'])} | "
                         + (f"[{_percent(ci[0])}, {_percent(ci[1])}]" if ci else "—")
                         + f" | {comparison} |")
    breakdowns = [(s, n, r) for s in results["suites"] for n, r in s["models"].items()
                  if r["categories"]]
    if breakdowns:
        lines += ["", "## By category", "", "| suite | model | category | n | metric |",
                  "|---|---|---|---:|---:|"]
        for suite, name, row in breakdowns:
            for category, value in row["categories"].items():
                lines.append(f"| {suite['name']} | {name} | {category} | {value['n']} | "
                             f"{_percent(value['metric'])} |")
    lines += ["", "## Provenance", "",
              f"- recipe: `{recipe['path']}` ({recipe['hash']})",
              *[f"- model `{m['name']}`: `{m['path']}` ({m['identity']})"
                for m in results["models"]],
              *[f"- judge `{name}`: {j['judge']} with `{j['rubric']}` ({j['ir_hash']})"
                for name, j in results["judges"].items()],
              f"- generations: {results['generation']['generated']} new, "
              f"{results['generation']['cached']} from the cache", ""]
    return "\n".join(lines)


def rich_table(results: dict[str, Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    # Model, recipe and suite names are user text: escaped, never read as markup.
    headers, rows = cells(results)
    table = Table(title=f"{escape(str(results['recipe']['name']))} (%, best bold, † p < "
                        f"{results['recipe']['alpha']} vs {escape(str(results['baseline']))})")
    table.add_column("model")
    for header in headers:
        table.add_column(escape(header), justify="right")
    for name, row in rows:
        table.add_row(escape(name), *[("[bold]" if best else "") + escape(text)
                                      + ("[/bold]" if best else "")
                              + (" †" if significant else "") for text, best, significant in row])
    return table


def write_plots(results: dict[str, Any], folder: Path) -> list[Path]:
    """Per-suite bars with 95% intervals, and ASR vs FRR per model when both exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    suites = results["suites"]
    models = [m["name"] for m in results["models"]]
    written = []
    columns = min(3, len(suites))
    rows = math.ceil(len(suites) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axis, suite in zip(axes.flat, suites):
        means, low, high = [], [], []
        for name in models:
            row = suite["models"][name]
            value = row["metric"] if row["metric"] is not None else 0.0
            ci = row["ci95"] or [value, value]
            means.append(100 * value)
            low.append(100 * max(0.0, value - ci[0]))
            high.append(100 * max(0.0, ci[1] - value))
        axis.bar(models, means, yerr=[low, high], capsize=4, color="#4c72b0")
        axis.set_title(f"{suite['name']} ({suite['metric'].upper()} {ARROWS[suite['metric']]})")
        axis.set_ylim(0, 100)
        axis.set_ylabel("%")
    for axis in list(axes.flat)[len(suites):]:
        axis.axis("off")
    figure.tight_layout()
    path = folder / "suites.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    written.append(path)

    def average(metric: str, name: str) -> float | None:
        values = [s["models"][name]["metric"] for s in suites
                  if s["metric"] == metric and s["models"][name]["metric"] is not None]
        return sum(values) / len(values) if values else None

    points = [(name, average("asr", name), average("frr", name)) for name in models]
    if all(a is not None and f is not None for _, a, f in points):
        figure, axis = plt.subplots(figsize=(4.5, 4))
        for name, asr, frr in points:
            assert asr is not None and frr is not None
            axis.scatter([100 * frr], [100 * asr], s=60)
            axis.annotate(name, (100 * frr, 100 * asr), textcoords="offset points", xytext=(5, 5))
        axis.set_xlabel("false refusal rate (%) ↓")
        axis.set_ylabel("attack success rate (%) ↓")
        axis.set_title("ASR vs FRR (mean over suites)")
        axis.set_xlim(-5, 105)
        axis.set_ylim(-5, 105)
        figure.tight_layout()
        path = folder / "asr_vs_frr.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def explain_item(run: EvalRun, item_id: str) -> list[dict[str, Any]]:
    """For --explain: every suite holding `item_id`, every model, every sample: the prompt,
    the response, and the classifier's answers (or the extracted answer)."""
    from qalign_dsl.eval.extract import extract_choice, extract_number

    found = []
    for suite in run.recipe.suites:
        item = next((i for i in run.items[suite.name] if i.id == item_id), None)
        if item is None:
            continue
        for model in run.models:
            result = run.results[(suite.name, model.name)]
            for s in range(run.recipe.sampling.samples):
                response = result.responses[(item.id, s)]
                entry: dict[str, Any] = {"suite": suite.name, "metric": suite.metric,
                                         "model": model.name, "sample": s,
                                         "prompt": item.conversation(), "response": response,
                                         "where": item.where}
                verdict = result.verdicts.get((item.id, s))
                if verdict is not None:
                    entry.update(flagged=verdict.flagged, reward=verdict.reward,
                                 answers=[{"id": q, "question": text, "labels": labels}
                                          for q, text, labels in verdict.answers])
                else:
                    extracted: Any = (extract_choice(response, item.choices)
                                      if suite.extract == "choice" else
                                      extract_number(response) if suite.extract == "number"
                                      else response.strip())
                    entry.update(reference=item.answer, extracted=str(extracted)
                                 if extracted is not None else None)
                found.append(entry)
    return found
