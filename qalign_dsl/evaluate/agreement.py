"""How closely a student judge follows its teacher, measured the way it matters for GRPO.

Per question: agreement of the top labels, Cohen's kappa and the student's calibration
(ECE) against the teacher's top label. For safety: the recall of failed gates (a gate the
teacher fails and the student passes is the costly error). For the reward: Pearson and
Spearman correlation of the pooled rewards and, within groups of completions of one prompt
(GRPO's groups), how often the student orders two completions as the teacher does and
whether the GRPO advantages (reward minus the group mean) have the same sign. Intervals are
percentile bootstraps that resample whole groups, so completions of one prompt stay
together.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from qalign_dsl.evaluate.aggregate import CompiledRubric
from qalign_dsl.evaluate.metrics import calibration, cohen_kappa, pearson


@dataclass(frozen=True)
class Paired:
    """Teacher and student answers to the same samples ([N, Q, L] and [N, Q])."""

    teacher: torch.Tensor
    teacher_answered: torch.Tensor
    student: torch.Tensor
    student_answered: torch.Tensor
    groups: Sequence[str]  # per sample: its prompt (GRPO group)


def _top(probabilities: torch.Tensor, labels: int) -> torch.Tensor:
    return probabilities[..., :labels].argmax(dim=-1)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    return pearson(_ranks(x), _ranks(y))


def _group_metrics(teacher: list[float | None], student: list[float | None],
                   members: list[list[int]]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(concordant, compared) pairs and (same-sign, compared) advantages over the groups."""
    concordant = pairs = same_sign = signs = 0
    for group in members:
        scored = [i for i in group if teacher[i] is not None and student[i] is not None]
        if len(scored) < 2:
            continue
        t = [float(teacher[i]) for i in scored]  # type: ignore[arg-type]
        s = [float(student[i]) for i in scored]  # type: ignore[arg-type]
        for a in range(len(scored)):
            for b in range(a + 1, len(scored)):
                if abs(t[a] - t[b]) > 1e-6:
                    pairs += 1
                    concordant += (t[a] - t[b]) * (s[a] - s[b]) > 0
        t_mean, s_mean = sum(t) / len(t), sum(s) / len(s)
        for a in range(len(scored)):
            if abs(t[a] - t_mean) > 1e-6:
                signs += 1
                same_sign += (t[a] - t_mean) * (s[a] - s_mean) > 0
    return (concordant, pairs), (same_sign, signs)


def _ratio(counts: tuple[int, int]) -> float | None:
    return counts[0] / counts[1] if counts[1] else None


def agreement_report(rubric: CompiledRubric, paired: Paired, bootstrap: int = 200,
                     seed: int = 0, min_items: int = 5, min_agreement: float = 0.8,
                     min_kappa: float = 0.4, bins: int = 10) -> dict[str, Any]:
    """The student's agreement with its teacher (see the module doc), as a JSON-ready dict.
    `unlearned` names questions with at least `min_items` paired answers whose agreement is
    below `min_agreement` or kappa below `min_kappa`."""
    typed = rubric.rubric
    n = paired.teacher.shape[0]
    both = paired.teacher_answered & paired.student_answered
    per_question: dict[str, dict[str, Any]] = {}
    tops_t: list[dict[int, int]] = []
    tops_s: list[dict[int, int]] = []
    for q, question in enumerate(typed.questions):
        labels = len(question.labels)
        rows = both[:, q].nonzero().flatten().tolist()
        t = _top(paired.teacher[rows, q], labels).tolist() if rows else []
        s = _top(paired.student[rows, q], labels).tolist() if rows else []
        tops_t.append(dict(zip(rows, t)))
        tops_s.append(dict(zip(rows, s)))
        agreement = sum(a == b for a, b in zip(t, s)) / len(rows) if rows else None
        kappa = cohen_kappa([str(label) for label in t], [str(label) for label in s])
        ece = calibration(paired.student[rows, q, :labels].tolist(), t, bins).ece \
            if rows else None
        entry: dict[str, Any] = {
            "n": len(rows), "agreement": _round(agreement), "kappa": _round(kappa),
            "ece": _round(ece),
        }
        if question.is_gate:
            fail = question.labels.index(str(question.fail_label))
            failed = [i for i, label in zip(rows, t) if label == fail]
            caught = sum(tops_s[q][i] == fail for i in failed)
            entry["teacher_failed"] = len(failed)
            entry["failed_gate_recall"] = _round(caught / len(failed) if failed else None)
        entry["learned"] = not (len(rows) >= min_items and (
            (agreement is not None and agreement < min_agreement)
            or (kappa is not None and kappa < min_kappa)))
        per_question[question.id] = entry

    with torch.no_grad():
        teacher_reward = rubric.evaluate(paired.teacher, paired.teacher_answered).reward.to_list()
        student_reward = rubric.evaluate(paired.student, paired.student_answered).reward.to_list()
    group_index: dict[str, list[int]] = {}
    for i, group in enumerate(paired.groups):
        group_index.setdefault(str(group), []).append(i)
    clusters = list(group_index.values())
    gates = [q for q, question in enumerate(typed.questions) if question.is_gate]

    # Per sample once, so that each bootstrap draw only sums: answers compared and agreed,
    # gates the teacher failed and the student caught.
    compared, agreed, failed_gates, caught_gates = [0] * n, [0] * n, [0] * n, [0] * n
    for q in range(len(typed.questions)):
        for i, label in tops_t[q].items():
            compared[i] += 1
            agreed[i] += label == tops_s[q][i]
    for q in gates:
        fail = typed.questions[q].labels.index(str(typed.questions[q].fail_label))
        for i, label in tops_t[q].items():
            if label == fail:
                failed_gates[i] += 1
                caught_gates[i] += tops_s[q][i] == fail

    def statistics(members: list[list[int]]) -> dict[str, float | None]:
        samples = [i for group in members for i in group]
        total, agree = sum(compared[i] for i in samples), sum(agreed[i] for i in samples)
        failed = sum(failed_gates[i] for i in samples)
        caught = sum(caught_gates[i] for i in samples)
        scored = [i for i in samples if teacher_reward[i] is not None
                  and student_reward[i] is not None]
        x = [float(teacher_reward[i]) for i in scored]
        y = [float(student_reward[i]) for i in scored]
        ranks, signs = _group_metrics(teacher_reward, student_reward, members)
        return {"agreement": agree / total if total else None,
                "failed_gate_recall": caught / failed if failed else None,
                "reward_pearson": pearson(x, y), "reward_spearman": spearman(x, y),
                "group_rank_agreement": _ratio(ranks), "advantage_sign_agreement": _ratio(signs)}

    point = statistics(clusters)
    rng = random.Random(seed)
    draws: dict[str, list[float]] = {key: [] for key in point}
    for _ in range(bootstrap if clusters else 0):
        resampled = [clusters[rng.randrange(len(clusters))] for _ in clusters]
        for key, value in statistics(resampled).items():
            if value is not None:
                draws[key].append(value)
    summary: dict[str, Any] = {"samples": n, "groups": len(clusters),
                               "bootstrap": bootstrap}
    for key, value in point.items():
        summary[key] = _round(value)
        summary[key + "_ci"] = _interval(draws[key]) if value is not None else None
    answered_questions = [e for e in per_question.values() if e["agreement"] is not None]
    summary["mean_question_agreement"] = _round(
        sum(e["agreement"] for e in answered_questions) / len(answered_questions)
        if answered_questions else None)
    summary["unlearned"] = [qid for qid, e in per_question.items() if not e["learned"]]
    summary["questions"] = per_question
    return summary


def learned_thresholds(rubric: CompiledRubric, paired: Paired, target: float = 0.95,
                       min_items: int = 5) -> list[float | None]:
    """Per question, the lowest confidence from which the student's held-out answers agree
    with the teacher's at least `target` of the time (1.0: never confident enough; None: too
    few held-out answers to tell)."""
    thresholds: list[float | None] = []
    both = paired.teacher_answered & paired.student_answered
    for q, question in enumerate(rubric.rubric.questions):
        labels = len(question.labels)
        rows = both[:, q].nonzero().flatten().tolist()
        if len(rows) < min_items:
            thresholds.append(None)
            continue
        confidence = paired.student[rows, q, :labels].max(dim=-1).values.tolist()
        agree = (_top(paired.teacher[rows, q], labels)
                 == _top(paired.student[rows, q], labels)).tolist()
        order = sorted(range(len(rows)), key=lambda i: -confidence[i])
        best = 1.0
        hits = 0
        for count, i in enumerate(order, start=1):  # most confident first
            hits += agree[i]
            if hits / count >= target:
                best = confidence[i]
        thresholds.append(round(best, 6))
    return thresholds


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def _interval(values: list[float]) -> list[float] | None:
    if not values:
        return None
    ordered = sorted(values)
    low = ordered[int(0.025 * (len(ordered) - 1))]
    high = ordered[int(math.ceil(0.975 * (len(ordered) - 1)))]
    return [round(low, 4), round(high, 4)]
