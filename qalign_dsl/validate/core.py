"""Judge answers vs human labels: per-question and per-output agreement, calibration,
coverage, and the flags a rubric author acts on. Pure: plain lists in, a `Validation` out.

Per question, the judge's label is the argmax of its distribution (NA is a label like any
other); a question the judge gave no answer for counts against coverage only. Agreement
(accuracy, Cohen's kappa, the confusion matrix) is over labelled samples the judge
answered; Krippendorff's ordinal alpha (graded questions) over those where neither side
said NA; calibration over the judge's full distributions. Degeneracy and redundancy look
at the judge's answers on every sample, labelled for that question or not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qalign_dsl.evaluate.metrics import (
    Calibration,
    accuracy,
    calibration,
    cohen_kappa,
    confusion_matrix,
    kappa_z,
    krippendorff_alpha_ordinal,
    majority_share,
    redundant_pairs,
)
from qalign_dsl.validate.labels import BAND_ORDER, DEFAULT_THRESHOLD, LabelledItem, band

Z_95 = 1.645  # one-sided 5%: kappa must be this many null standard errors above 0
NO_ANSWER = "—"  # the judge produced no answer (not the question's NA label)


@dataclass(frozen=True, slots=True)
class Settings:
    threshold: float = DEFAULT_THRESHOLD  # output bands: low < threshold <= high
    chance_kappa: float = 0.2  # kappa below this (or not significantly above 0): chance
    degenerate_share: float = 0.95  # the same label on at least this share: degenerate
    redundant_r: float = 0.95  # score correlation at least this: redundant
    min_items: int = 5  # fewer labelled / answered samples: too few to flag
    bins: int = 10  # calibration bins


@dataclass(frozen=True)
class QuestionReport:
    id: str
    kind: str
    labels: tuple[str, ...]
    labelled: int  # samples with a human label for this question
    agreed_on: int  # of those, answered by the judge
    accuracy: float | None
    kappa: float | None
    alpha: float | None  # Krippendorff's ordinal alpha (graded questions)
    confusion: list[list[int]]  # human rows x judge columns, in `labels` order
    calibration: Calibration | None
    answered: int  # samples (all rows) the judge answered
    na_rate: float | None  # share of all rows answered NA or not answered
    majority: str | None  # the judge's most frequent label over all rows
    majority_share: float | None
    flags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OutputReport:
    id: str
    level: str  # reward | principle | dimension
    labelled: int
    accuracy: float | None
    kappa: float | None
    confusion: list[list[int]]  # human band rows x judge band columns, BAND_ORDER
    na_rate: float | None  # share of labelled samples whose output is NA
    misses: list[str]  # ids of samples where the band disagrees


@dataclass(frozen=True)
class Validation:
    samples: int
    questions: list[QuestionReport]  # every question; `labelled` 0 for unlabelled ones
    outputs: list[OutputReport]  # labelled outputs only
    calibration: Calibration  # pooled over every labelled question answer
    redundant: list[tuple[str, str, float]]
    settings: Settings
    label_token_problems: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[QuestionReport]:
        return [q for q in self.questions if q.flags]


def analyse(document: Mapping[str, Any], items: list[LabelledItem],
            distributions: list[list[list[float] | None]],
            question_scores: list[list[float | None]],
            output_values: list[dict[str, float | None]],
            settings: Settings = Settings()) -> Validation:
    """`distributions[b][q]`: the judge's label distribution for item b and question q (None
    where it gave no answer); `question_scores[b][q]`: the pooled question score;
    `output_values[b]`: reward, principle and dimension values by id."""
    questions = document["questions"]
    redundant = redundant_pairs(
        {q["id"]: [row[i] for row in question_scores] for i, q in enumerate(questions)},
        settings.redundant_r, settings.min_items)
    partners: dict[str, list[str]] = {}
    for first, second, _ in redundant:
        partners.setdefault(first, []).append(second)
        partners.setdefault(second, []).append(first)
    pooled_distributions: list[list[float]] = []
    pooled_truth: list[int] = []
    reports = []
    for q, question in enumerate(questions):
        labels = list(question["labels"])
        predicted = [_argmax_label(row[q], labels) for row in distributions]
        answered = [p for p in predicted if p != NO_ANSWER]
        na = question["na_label"]
        na_rate = (sum(1 for p in predicted if p in (NO_ANSWER, na)) / len(predicted)
                   if predicted else None)
        human: list[str] = []
        judge: list[str] = []
        dists: list[list[float]] = []
        truth: list[int] = []
        labelled = 0
        for b, item in enumerate(items):
            if q not in item.questions:
                continue
            labelled += 1
            if predicted[b] == NO_ANSWER:
                continue
            human.append(item.questions[q])
            judge.append(predicted[b])
            distribution = distributions[b][q]
            assert distribution is not None
            dists.append(list(distribution[:len(labels)]))
            truth.append(labels.index(item.questions[q]))
        kappa = cohen_kappa(human, judge)
        alpha = None
        if question["kind"] == "graded":
            ordinal = [(labels.index(h), labels.index(j)) for h, j in zip(human, judge)
                       if h != na and j != na]
            alpha = krippendorff_alpha_ordinal([h for h, _ in ordinal], [j for _, j in ordinal])
        counts = Counter(answered)
        majority = counts.most_common(1)[0][0] if counts else None
        share = majority_share(answered)
        flags = []
        z = kappa_z(human, judge)
        if len(human) >= settings.min_items and len(set(human)) > 1 and (
                kappa is None or kappa < settings.chance_kappa or z is None or z < Z_95):
            flags.append("chance")
        if len(answered) >= settings.min_items and share is not None and \
                share >= settings.degenerate_share:
            flags.append("degenerate")
        for other in partners.get(question["id"], []):
            flags.append(f"redundant:{other}")
        pooled_distributions.extend(dists)
        pooled_truth.extend(truth)
        reports.append(QuestionReport(
            id=question["id"], kind=question["kind"], labels=tuple(labels), labelled=labelled,
            agreed_on=len(human), accuracy=accuracy(human, judge), kappa=kappa, alpha=alpha,
            confusion=confusion_matrix(human, judge, labels),
            calibration=calibration(dists, truth, settings.bins) if dists else None,
            answered=len(answered), na_rate=na_rate, majority=majority, majority_share=share,
            flags=flags))
    return Validation(
        samples=len(items), questions=reports,
        outputs=_outputs(document, items, output_values, settings),
        calibration=calibration(pooled_distributions, pooled_truth, settings.bins),
        redundant=redundant, settings=settings)


def _argmax_label(distribution: list[float] | None, labels: list[str]) -> str:
    if distribution is None:
        return NO_ANSWER
    values = list(distribution[:len(labels)])
    return labels[max(range(len(values)), key=lambda i: (values[i], -i))]


def _outputs(document: Mapping[str, Any], items: list[LabelledItem],
             output_values: list[dict[str, float | None]], settings: Settings
             ) -> list[OutputReport]:
    levels = {"reward": "reward"}
    levels.update({p["id"]: "principle" for p in document["principles"]})
    levels.update({d["id"]: "dimension" for d in document["dimensions"]})
    names = [name for name in levels if any(name in item.outputs for item in items)]
    reports = []
    for name in names:
        human, judge, misses = [], [], []
        for b, item in enumerate(items):
            if name not in item.outputs:
                continue
            got = band(output_values[b].get(name), settings.threshold)
            human.append(item.outputs[name])
            judge.append(got)
            if got != item.outputs[name]:
                misses.append(item.key)
        reports.append(OutputReport(
            id=name, level=levels[name], labelled=len(human), accuracy=accuracy(human, judge),
            kappa=cohen_kappa(human, judge),
            confusion=confusion_matrix(human, judge, BAND_ORDER),
            na_rate=sum(1 for j in judge if j == "na") / len(judge), misses=misses))
    return reports
