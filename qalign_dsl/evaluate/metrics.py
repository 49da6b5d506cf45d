"""Agreement and calibration metrics between two raters — a judge and human labels
(`qalc validate`), a student and its teacher (evaluate/agreement.py): pure functions on
plain Python sequences (no torch, no numpy), so they are easy to check by hand.

Conventions: `human` and `judge` are aligned sequences of labels (strings); NA answers are
passed in as labels like any other (the caller decides whether to drop them); a statistic
that is undefined on its input (no items, or no variation to agree about) is None, never
NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


def accuracy(human: Sequence[str], judge: Sequence[str]) -> float | None:
    """Share of items where the judge gave the human label."""
    if not human:
        return None
    return sum(h == j for h, j in zip(human, judge)) / len(human)


def cohen_kappa(human: Sequence[str], judge: Sequence[str]) -> float | None:
    """Cohen's kappa: (p_o - p_e) / (1 - p_e), with p_e from the two label marginals.
    None when there are no items or the chance agreement is 1 (both sides constant and
    equal: nothing to agree about)."""
    n = len(human)
    if n == 0:
        return None
    observed = sum(h == j for h, j in zip(human, judge)) / n
    left, right = Counter(human), Counter(judge)
    expected = sum(left[label] * right[label] for label in left) / (n * n)
    if expected >= 1.0 - 1e-12:
        return None
    return (observed - expected) / (1.0 - expected)


def kappa_z(human: Sequence[str], judge: Sequence[str]) -> float | None:
    """kappa / its standard error under the null of chance agreement,
    se0 = sqrt(p_e / (n (1 - p_e))) (Cohen 1960): about 1.645 or more means better than
    chance at the 5% level."""
    n = len(human)
    kappa = cohen_kappa(human, judge)
    if kappa is None:
        return None
    left, right = Counter(human), Counter(judge)
    expected = sum(left[label] * right[label] for label in left) / (n * n)
    if expected <= 0.0:
        return math.inf if kappa > 0 else 0.0
    return kappa / math.sqrt(expected / (n * (1.0 - expected)))


def krippendorff_alpha_ordinal(human: Sequence[int], judge: Sequence[int]) -> float | None:
    """Krippendorff's alpha with the ordinal metric for two coders and no missing values:
    `human[i]` and `judge[i]` are ranks (0 = best) of unit i on a graded scale.

    alpha = 1 - (n - 1) * sum_ck o_ck d_ck / sum_ck n_c n_k d_ck, where o is the
    coincidence matrix (each unit adds (a, b) and (b, a)), n_c its marginals, n = 2 * units,
    and d_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2) ** 2.
    """
    if len(human) < 2:
        return None
    ranks = sorted(set(human) | set(judge))
    index = {rank: i for i, rank in enumerate(ranks)}
    size = len(ranks)
    coincidence = [[0.0] * size for _ in range(size)]
    for a, b in zip(human, judge):
        coincidence[index[a]][index[b]] += 1.0
        coincidence[index[b]][index[a]] += 1.0
    marginal = [sum(row) for row in coincidence]
    n = sum(marginal)

    def delta(c: int, k: int) -> float:
        low, high = min(c, k), max(c, k)
        return (sum(marginal[low:high + 1]) - (marginal[c] + marginal[k]) / 2.0) ** 2

    observed = sum(coincidence[c][k] * delta(c, k) for c in range(size) for k in range(size))
    expected = sum(marginal[c] * marginal[k] * delta(c, k)
                   for c in range(size) for k in range(size))
    if expected == 0.0:
        return None
    return 1.0 - (n - 1.0) * observed / expected


def confusion_matrix(human: Sequence[str], judge: Sequence[str],
                     labels: Sequence[str]) -> list[list[int]]:
    """counts[i][j]: items the human labelled labels[i] and the judge labels[j]."""
    position = {label: i for i, label in enumerate(labels)}
    counts = [[0] * len(labels) for _ in labels]
    for h, j in zip(human, judge):
        counts[position[h]][position[j]] += 1
    return counts


@dataclass(frozen=True, slots=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    confidence: float | None  # mean top-label probability in the bin
    accuracy: float | None  # share of the bin whose top label was the human label


@dataclass(frozen=True, slots=True)
class Calibration:
    ece: float | None  # expected calibration error (top label, equal-width bins)
    brier: float | None  # multi-class Brier score: mean sum_l (p_l - [l = human])^2
    bins: tuple[CalibrationBin, ...]


def calibration(distributions: Sequence[Sequence[float]], truth: Sequence[int],
                bins: int = 10) -> Calibration:
    """Top-label calibration of label distributions against the human label's index.

    ECE = sum_b (|b| / N) * |accuracy(b) - confidence(b)| over `bins` equal-width bins of
    the top-label probability (a probability of exactly 1 falls in the last bin). Ties for
    the top label go to the first label, as argmax does.
    """
    edges = [b / bins for b in range(bins + 1)]
    members: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    brier = 0.0
    for distribution, label in zip(distributions, truth):
        top = max(range(len(distribution)), key=lambda i: (distribution[i], -i))
        confidence = float(distribution[top])
        members[min(int(confidence * bins), bins - 1)].append((confidence, top == label))
        brier += sum((p - (1.0 if i == label else 0.0)) ** 2 for i, p in enumerate(distribution))
    total = len(truth)
    table = []
    ece = 0.0
    for b, items in enumerate(members):
        if items:
            mean_confidence = sum(c for c, _ in items) / len(items)
            hit_rate = sum(1 for _, hit in items if hit) / len(items)
            ece += len(items) / total * abs(hit_rate - mean_confidence)
            table.append(CalibrationBin(edges[b], edges[b + 1], len(items), mean_confidence,
                                        hit_rate))
        else:
            table.append(CalibrationBin(edges[b], edges[b + 1], 0, None, None))
    if total == 0:
        return Calibration(None, None, tuple(table))
    return Calibration(ece, brier / total, tuple(table))


def majority_share(labels: Sequence[str]) -> float | None:
    """Share of the most frequent label: near 1 means the answers never vary."""
    if not labels:
        return None
    return Counter(labels).most_common(1)[0][1] / len(labels)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when either side is constant or there are < 3 pairs."""
    n = len(x)
    if n < 3:
        return None
    mean_x, mean_y = sum(x) / n, sum(y) / n
    sxx = sum((a - mean_x) ** 2 for a in x)
    syy = sum((b - mean_y) ** 2 for b in y)
    if sxx <= 1e-12 or syy <= 1e-12:
        return None
    sxy = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y))
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def redundant_pairs(scores: dict[str, list[float | None]], threshold: float = 0.95,
                    min_overlap: int = 5) -> list[tuple[str, str, float]]:
    """Pairs of questions whose scores over the same samples correlate at >= `threshold`
    (both answered on at least `min_overlap` samples; constant questions are left to the
    degenerate check). Sorted by correlation, strongest first."""
    names = list(scores)
    found = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs = [(x, y) for x, y in zip(scores[a], scores[b])
                     if x is not None and y is not None]
            if len(pairs) < min_overlap:
                continue
            r = pearson([x for x, _ in pairs], [y for _, y in pairs])
            if r is not None and r >= threshold:
                found.append((a, b, r))
    found.sort(key=lambda item: (-item[2], item[0], item[1]))
    return found
