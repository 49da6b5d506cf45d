"""`qalc validate`: the judge against human labels, with the micro-judge.

The micro-judge (conftest) was trained to answer micro.qal's harmlessness questions by
whether a response carries harm words. The labelled set gives those questions their true
labels (learnable) and `relevance.gate` coin-flip labels (random: nothing to learn), and
labels the harmlessness principle's band. Numbers are checked against independent
computations written here.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from judge_fixtures import MICRO_PROMPTS

from qalign_dsl.cli import main
from qalign_dsl.evaluate.metrics import (
    calibration,
    cohen_kappa,
    krippendorff_alpha_ordinal,
    redundant_pairs,
)
from qalign_dsl.training.tiny import synthetic_responses

pytest.importorskip("transformers")
MICRO = ROOT / "tests" / "data" / "judge" / "micro.json"


def qalc(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (no interpreter start per call): (exit code, out, err)."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- metrics against hand-computed values ---------------------------------------------


def test_kappa_by_hand() -> None:
    human = ["y", "y", "y", "n", "n", "y", "n", "y", "y", "n"]
    judge = ["y", "n", "y", "n", "y", "y", "n", "y", "y", "n"]
    # p_o = 8/10; marginals human 6y/4n, judge 6y/4n: p_e = .36 + .16 = .52.
    assert cohen_kappa(human, judge) == pytest.approx((0.8 - 0.52) / 0.48)
    assert cohen_kappa(["a"] * 4, ["a"] * 4) is None  # nothing to agree about
    assert cohen_kappa(["a", "b", "a", "b"], ["a"] * 4) == pytest.approx(0.0)


def test_ordinal_alpha_against_a_direct_pairwise_formula() -> None:
    """Krippendorff's alpha as 1 - D_o / D_e computed over all pairs of pairable values
    (a second formula), for random two-coder data."""
    rng = random.Random(3)
    for _ in range(20):
        human = [rng.randrange(5) for _ in range(30)]
        judge = [min(4, max(0, h + rng.choice([-1, 0, 0, 1]))) for h in human]
        values = human + judge
        counts = [values.count(c) for c in range(5)]

        def delta(c: int, k: int, counts: list[int] = counts) -> float:
            low, high = min(c, k), max(c, k)
            return (sum(counts[low:high + 1]) - (counts[c] + counts[k]) / 2) ** 2

        n = len(values)
        d_o = sum(2 * delta(h, j) for h, j in zip(human, judge)) / n
        d_e = sum(delta(a, b) for i, a in enumerate(values) for k, b in enumerate(values)
                  if i != k) / (n * (n - 1))
        assert krippendorff_alpha_ordinal(human, judge) == pytest.approx(1 - d_o / d_e)
    assert krippendorff_alpha_ordinal([0, 1, 2, 3], [0, 1, 2, 3]) == pytest.approx(1.0)


def manual_ece(distributions: list[list[float]], truth: list[int], bins: int = 10) -> float:
    """ECE as (1/N) sum_b |sum_{i in b} (confidence_i - correct_i)|: the same quantity
    through a different formula."""
    sums = [0.0] * bins
    for distribution, label in zip(distributions, truth):
        top = distribution.index(max(distribution))
        confidence = max(distribution)
        sums[min(bins - 1, math.floor(confidence * bins))] += confidence - (top == label)
    return sum(abs(s) for s in sums) / len(truth)


def test_ece_matches_manual_computation() -> None:
    rng = random.Random(7)
    distributions, truth = [], []
    for _ in range(200):
        raw = [rng.random() ** 3 for _ in range(3)]
        distributions.append([r / sum(raw) for r in raw])
        truth.append(rng.randrange(3))
    result = calibration(distributions, truth)
    assert result.ece == pytest.approx(manual_ece(distributions, truth))
    assert sum(b.count for b in result.bins) == 200
    brier = sum(sum((p - (i == t)) ** 2 for i, p in enumerate(d))
                for d, t in zip(distributions, truth)) / 200
    assert result.brier == pytest.approx(brier)


def test_redundant_pairs() -> None:
    scores: dict[str, list[float | None]] = {
        "a": [1.0, -1.0, 0.5, 0.0, 1.0, None], "b": [0.9, -1.0, 0.5, 0.1, 1.0, 0.3],
        "c": [1.0, 1.0, -1.0, 0.0, -0.5, 1.0], "constant": [1.0] * 6}
    pairs = redundant_pairs(scores, threshold=0.95, min_overlap=5)
    assert [(a, b) for a, b, _ in pairs] == [("a", "b")]


# --- the command, end to end with the micro-judge -------------------------------------


def labelled_set(path: Path) -> list[dict[str, Any]]:
    coin = random.Random(5)
    rows = []
    for harmful, seed in ((True, 31), (False, 32)):
        for n, response in enumerate(synthetic_responses(40, harmful, seed)):
            rows.append({"id": f"{'h' if harmful else 'b'}{n}", "prompt": MICRO_PROMPTS[n % 3],
                         "response": response,
                         "labels": {"physical_harm.gate": "False" if harmful else "True",
                                    "physical_harm.grade": "F" if harmful else "A",
                                    "relevance.gate": coin.choice(["True", "False"]),
                                    "harmlessness": "harmful" if harmful else "safe"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.mark.slow
def test_validate_with_the_micro_judge(micro_judge: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    rows = labelled_set(tmp_path / "labels.jsonl")
    cache = str(tmp_path / "cache.sqlite")
    code, out, err = qalc(capsys, "validate", str(MICRO), str(tmp_path / "labels.jsonl"), "--model",
                  str(micro_judge), "--cache", cache, "--json", "--min-kappa", "0.5",
                  "--report", str(tmp_path / "report"))
    assert code == 1, err  # relevance.gate falls below 0.5
    assert "--min-kappa 0.5: 1 question(s) below: relevance.gate" in err
    result = json.loads(out)
    questions = {q["id"]: q for q in result["questions"]}
    for learnable in ("physical_harm.gate", "physical_harm.grade"):
        assert questions[learnable]["kappa"] > 0.9, questions[learnable]
        assert "chance" not in questions[learnable]["flags"]
    assert questions["physical_harm.grade"]["alpha"] > 0.9
    random_question = questions["relevance.gate"]
    assert abs(random_question["kappa"]) < 0.35 and "chance" in random_question["flags"]
    assert result["below_min_kappa"] == ["relevance.gate"]
    # The two harmlessness questions answer the same thing: redundant.
    assert "redundant:physical_harm.grade" in questions["physical_harm.gate"]["flags"]
    (output,) = result["outputs"]
    assert output["id"] == "harmlessness" and output["accuracy"] > 0.9
    report = (tmp_path / "report" / "report.md").read_text()
    assert "![reliability diagram](reliability.png)" in report and "relevance.gate" in report
    assert (tmp_path / "report" / "reliability.png").read_bytes()[:4] == b"\x89PNG"

    # The same answers through `qalc score` (served from the cache), then validated from the
    # answers file alone: no judge. A question made constant there is flagged degenerate.
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({k: r[k] for k in ("id", "prompt", "response")}) + "\n"
                            for r in rows))
    code, out, err = qalc(capsys, "score", str(MICRO), str(data), "--model", str(micro_judge),
                          "--cache", cache, "-o", str(tmp_path / "answers.jsonl"))
    assert code == 0, err
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    for record in answers:
        record["answers"]["relevance.grade"] = {"A": 0.8, "C": 0.2}
    (tmp_path / "cached.jsonl").write_text("".join(json.dumps(r) + "\n" for r in answers))
    code, out, err = qalc(capsys, "validate", str(MICRO), str(tmp_path / "labels.jsonl"),
                          "--answers", str(tmp_path / "cached.jsonl"), "--json", "--min-kappa",
                          "-1")
    assert code == 0, err
    again = json.loads(out)
    assert {q["id"]: q["kappa"] for q in again["questions"]} == \
        {q: v["kappa"] for q, v in questions.items()}
    flagged = {q["id"]: q["flags"] for q in again["unlabelled_flagged"]}
    assert "degenerate" in flagged["relevance.grade"]

    # Independent computation from the answers file: kappa and pooled ECE.
    by_id = {str(r["id"]): r["answers"] for r in answers}
    labels = {
        "physical_harm.gate": ["True", "False", "NA"],
        "physical_harm.grade": ["A", "C", "F", "NA"],
        "relevance.gate": ["True", "False", "NA"],
    }
    distributions, truth = [], []
    for question, scale in labels.items():
        human, judge = [], []
        for row in rows:
            answer = by_id[row["id"]][question]
            distribution = [answer.get(label, 0.0) for label in scale]
            distributions.append(distribution)
            truth.append(scale.index(row["labels"][question]))
            human.append(row["labels"][question])
            judge.append(scale[distribution.index(max(distribution))])
        agree = sum(h == j for h, j in zip(human, judge)) / len(human)
        chance = sum(human.count(label) * judge.count(label) for label in scale) / len(human) ** 2
        assert questions[question]["kappa"] == pytest.approx((agree - chance) / (1 - chance),
                                                             abs=1e-4)
    assert again["calibration"]["ece"] == pytest.approx(manual_ece(distributions, truth),
                                                        abs=1e-4)


def test_bad_labels_are_reported_with_their_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "labels.jsonl").write_text(
        '{"prompt": "p", "response": "r", "labels": {"physical_harm.gate": "Maybe"}}\n'
        'not json\n'
        '{"prompt": "p", "response": "r", "labels": {"nope": "True"}}\n'
        '{"prompt": "p", "response": "r", "labels": {"reward": "terrible"}}\n')
    code, _, err = qalc(capsys, "validate", str(MICRO), str(tmp_path / "labels.jsonl"),
                        "--answers", str(tmp_path / "none.jsonl"))
    assert code == 1
    for line in (":1: labels.physical_harm.gate: `Maybe` is not a label", ":2: invalid JSON",
                 ":3: labels: `nope` is neither", ":4: labels.reward: `terrible` is not a band"):
        assert line in err, err
    assert "Traceback" not in err
    code, _, err = qalc(capsys, "validate", str(MICRO), str(tmp_path / "labels.jsonl"))
    assert code == 2 and "--model" in err

    # Answers that do not cover every labelled sample are an error that names them.
    (tmp_path / "labels.jsonl").write_text(
        '{"id": "a", "prompt": "p", "response": "r", "labels": {"physical_harm.gate": "True"}}\n')
    (tmp_path / "answers.jsonl").write_text('{"id": "b", "answers": {}}\n')
    code, _, err = qalc(capsys, "validate", str(MICRO), str(tmp_path / "labels.jsonl"),
                        "--answers", str(tmp_path / "answers.jsonl"))
    assert code == 1 and "no answers for 1 labelled sample(s): `a`" in err, err


def test_label_token_problems_name_every_clashing_scale(tiny_model: Path) -> None:
    """Labels that begin with the same judge token are reported per (template, scale) with
    the questions they affect, all at once (the judge itself stops at the first)."""
    import copy

    from judge_fixtures import micro

    from qalign_dsl.judge.backends.transformers import TransformersBackend
    from qalign_dsl.validate.tokens import label_token_problems

    backend = TransformersBackend(str(tiny_model))
    document = micro()
    assert label_token_problems(document, backend) == []
    clashing = copy.deepcopy(document)
    for question in clashing["questions"]:
        if question["scale"] == "verdict":
            question["labels"] = ["False", "Falsehood", "NA"]
    (problem,) = label_token_problems(clashing, backend)
    assert "`False` and `Falsehood` of scale `verdict`" in problem and "2 question(s)" in problem


def test_shipped_probe_set_matches_the_constitution() -> None:
    """probes/qalign/probes.jsonl labels only questions and outputs that exist in
    compiled/qalign.json, with labels of their scales, and covers the adversarial themes
    its datasheet promises."""
    from qalign_dsl.validate.labels import parse_labels

    document = json.loads((ROOT / "compiled" / "qalign.json").read_bytes())
    path = ROOT / "probes" / "qalign" / "probes.jsonl"
    items, problems = parse_labels(path.read_text(encoding="utf-8"), str(path), document)
    assert problems == []
    assert 30 <= len(items) <= 60
    tags = {tag for item in items for tag in item.tags}
    assert {"injection", "leaky-refusal", "off-topic", "empty", "very-long"} <= tags
    assert all(item.questions for item in items)
    assert sum(1 for item in items if "reward" in item.outputs) >= 25
    assert max(len(item.response) for item in items) > 10_000
    assert any(item.response.strip() == "" for item in items)
