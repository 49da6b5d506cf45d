"""GRPO with a student reward, audited against reward hacking.

A policy trained on a cheap judge learns to please it; the real judge's score can fall
while the student's rises. Each audited step, a random share of the completions is judged
by the teacher as well, and the step logs how far the two agree:

- `audit/agreement`: share of the audited answers with the teacher's top label;
- `audit/reward_corr`: Pearson correlation of the two rewards on the audited completions;
- `audit/reward_gap`: student − teacher mean reward (positive: the student is too kind);
- `audit/reward_gap_window`: the gap's mean over the last `window` audited steps.

When the window's gap exceeds `max_gap` the audit warns (once per crossing) and, with
`stop_on_gap`, asks the trainer to stop cleanly (the model is saved as usual). The teacher's
answers, with the prompt and completion, are appended to `audit_answers.jsonl`, the input
`qalc distill --resume-from STUDENT --more-answers` refreshes the student on. Each audited
step is also a row of OUTPUT_DIR/metrics.csv.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qalign_dsl.evaluate.aggregate import CompiledRubric, Masked
from qalign_dsl.evaluate.metrics import pearson
from qalign_dsl.ir import Rubric
from qalign_dsl.judge.runtime import Judge, JudgeResult, Sample, judge_from_spec
from qalign_dsl.judge.spec import AuditSpec

logger = logging.getLogger("qalign_dsl.audit")
METRICS = ("audit/agreement", "audit/reward_corr", "audit/reward_gap",
           "audit/reward_gap_window", "audit/samples")


class RewardHackingWarning(Warning):
    """The student's reward runs ahead of the teacher's on the policy's own completions (not a
    UserWarning: `qalc train` silences those, and this one must be seen)."""


@dataclass
class AuditStep:
    step: int
    values: dict[str, float] = field(default_factory=dict)


class RewardAudit:
    """Called by `QalignReward` after each batch is scored with the student."""

    def __init__(self, rubric: Rubric | Mapping[str, Any], spec: AuditSpec, output_dir: Path,
                 seed: int = 0, teacher: Judge | None = None) -> None:
        self.rubric = Rubric.of(rubric)
        self.compiled = CompiledRubric(self.rubric)
        self.spec = spec
        self.output_dir = Path(output_dir)
        self.answers_path = Path(spec.answers) if spec.answers else \
            self.output_dir / "audit_answers.jsonl"
        self.metrics_path = self.output_dir / "metrics.csv"
        self._teacher = teacher
        self.rng = random.Random(seed)
        self.calls = 0
        self.gaps: deque[float] = deque(maxlen=spec.window)
        self.over = False  # the window's gap is above max_gap
        self.should_stop = False
        self.history: list[AuditStep] = []
        self.warnings: list[str] = []

    @property
    def teacher(self) -> Judge:
        if self._teacher is None:  # built on the first audited step, not at import
            self._teacher = judge_from_spec(self.rubric, self.spec.teacher)
        return self._teacher

    def __call__(self, samples: Sequence[Sample], student: JudgeResult, student_reward: Masked,
                 judge_units: Callable[[Judge, list[int]], tuple[JudgeResult, Masked]],
                 log_metric: Callable[[str, float], None] | None) -> AuditStep | None:
        """Audit one scored batch: `samples` are the completions as judged (revisions),
        `student` the student's answers to them and `student_reward` their rewards;
        `judge_units(judge, indices)` judges completions[indices] with another judge and
        pools them as the student's were (drafts and revisions alike)."""
        self.calls += 1
        if (self.calls - 1) % self.spec.every:
            return None
        candidates = [i for i in range(len(samples)) if bool(student_reward.defined[i])]
        if not candidates:
            return None
        count = min(len(candidates), max(1, round(self.spec.fraction * len(candidates))))
        chosen = sorted(self.rng.sample(candidates, count))
        taught, teacher_reward = judge_units(self.teacher, chosen)
        pairs = [(float(student_reward.value[i]), float(teacher_reward.value[k]))
                 for k, i in enumerate(chosen) if bool(teacher_reward.defined[k])]
        step = AuditStep(self.calls)
        agreement = _agreement(self.rubric, student, taught, chosen)
        if agreement is not None:
            step.values["audit/agreement"] = agreement
        if pairs:
            gap = sum(s - t for s, t in pairs) / len(pairs)
            self.gaps.append(gap)
            step.values["audit/reward_gap"] = gap
            step.values["audit/reward_gap_window"] = sum(self.gaps) / len(self.gaps)
            correlation = pearson([s for s, _ in pairs], [t for _, t in pairs])
            if correlation is not None:
                step.values["audit/reward_corr"] = correlation
        step.values["audit/samples"] = float(len(chosen))
        if log_metric is not None:
            for name, value in step.values.items():
                log_metric(name, value)
        self._write(step, [samples[i] for i in chosen], taught, teacher_reward,
                    [float(student_reward.value[i]) for i in chosen])
        self._check(step)
        self.history.append(step)
        return step

    def _check(self, step: AuditStep) -> None:
        window = step.values.get("audit/reward_gap_window")
        if window is None:
            return
        full = len(self.gaps) >= min(self.spec.window, 2)  # one noisy step is not a trend
        if full and window > self.spec.max_gap:
            if not self.over:
                message = (f"reward hacking? over the last {len(self.gaps)} audited step(s) the "
                           f"student's reward exceeds the teacher's by {window:+.3f} on average "
                           f"(max_gap {self.spec.max_gap}); refresh the student with `qalc "
                           f"distill --resume-from STUDENT --more-answers {self.answers_path}`"
                           + ("; stopping (stop_on_gap)" if self.spec.stops else ""))
                self.warnings.append(message)
                logger.warning(message)
                warnings.warn(message, RewardHackingWarning, stacklevel=2)
            self.over = True
            self.should_stop = self.should_stop or self.spec.stops
        else:
            self.over = False

    def _write(self, step: AuditStep, samples: Sequence[Sample], taught: JudgeResult,
               teacher_reward: Masked, student_reward: list[float]) -> None:
        """Append the teacher's answers (audit_answers.jsonl) and the step's metrics
        (metrics.csv); each line is flushed and fsynced, so a kill loses at most one."""
        self.answers_path.parent.mkdir(parents=True, exist_ok=True)
        probabilities, answered = taught.probabilities.tolist(), taught.answered.tolist()
        with self.answers_path.open("a", encoding="utf-8") as sink:
            for k, sample in enumerate(samples):
                answers = {q.id: dict(zip(q.labels, probabilities[k][i][: len(q.labels)]))
                           for i, q in enumerate(self.rubric.questions) if answered[k][i]}
                reward = float(teacher_reward.value[k]) if bool(teacher_reward.defined[k]) \
                    else None
                sink.write(json.dumps({
                    "id": f"audit-{step.step}-{k}", "step": step.step, "prompt": sample.prompt,
                    "response": sample.response, "answers": answers, "teacher_reward": reward,
                    "student_reward": student_reward[k]}, ensure_ascii=False) + "\n")
            sink.flush()
            os.fsync(sink.fileno())
        new = not self.metrics_path.exists()
        with self.metrics_path.open("a", newline="", encoding="utf-8") as sink:
            writer = csv.writer(sink)
            if new:
                writer.writerow(("step", *METRICS))
            writer.writerow((step.step, *(_cell(step.values.get(name)) for name in METRICS)))
            sink.flush()
            os.fsync(sink.fileno())


def _cell(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def _agreement(rubric: Rubric, student: JudgeResult, teacher: JudgeResult,
               chosen: list[int]) -> float | None:
    agree = total = 0
    for k, i in enumerate(chosen):
        for q, question in enumerate(rubric.questions):
            if bool(student.answered[i, q]) and bool(teacher.answered[k, q]):
                labels = len(question.labels)
                total += 1
                agree += int(torch.argmax(student.probabilities[i, q, :labels])
                             == torch.argmax(teacher.probabilities[k, q, :labels]))
    return agree / total if total else None


class AuditStopCallback:
    """Stops training cleanly when an audit asks to (`stop_on_gap`); attached by
    `run_training` to the trainer of every audited reward."""

    def __init__(self, audits: Sequence[RewardAudit]) -> None:
        from transformers import TrainerCallback

        audits_ = list(audits)

        class _Callback(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                if any(a.should_stop for a in audits_):
                    control.should_training_stop = True
                return control

        self.callback = _Callback()
