"""A student's answers, and the cascade to the full judge for the ones it is unsure of.

The student answers every wanted question of every sample in one pass. An answer goes to
the teacher instead when the student's top label probability is below the question's
threshold (`below_confidence`, or the threshold learned on the held-out split), when its
head is unreliable (too few teacher answers to learn from) or missing (a question added
after distillation), or when the conversation is longer than the student reads. All
escalated questions of a batch go to the teacher in one batched call. With a threshold of
1.0 every answer is the teacher's; with 0 every answer the student has is its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from qalign_dsl.ir import Rubric
from qalign_dsl.judge.prompts import conversation_key

if TYPE_CHECKING:
    from qalign_dsl.judge.runtime import Judge, JudgeResult

THRESHOLD_MODES = ("global", "learned")
Answer = list[float] | str


class Cascade:
    MEMO_SIZE = 4096  # samples whose student outputs are kept between rounds
    def __init__(self, rubric: Rubric, student: Any, teacher: Judge | None,
                 below_confidence: float = 0.8, thresholds: str = "global") -> None:
        if thresholds not in THRESHOLD_MODES:
            raise ValueError(f"unknown cascade thresholds `{thresholds}`; use "
                             f"{', '.join(THRESHOLD_MODES)}")
        if not 0.0 <= below_confidence <= 1.0:
            raise ValueError(f"below_confidence must be within [0, 1], got {below_confidence}")
        self.rubric = rubric
        self.student = student
        self.binding = student.bind(rubric)
        self.teacher = teacher
        self.below_confidence = below_confidence
        self.thresholds = [self._threshold(head, thresholds) for head in self.binding.heads]
        self._memo: dict[tuple[str, str], tuple[list[float], str | None]] = {}
        # Part of every cache key: cascaded answers differ from the student's alone.
        self.identity = "" if teacher is None else (
            f"+cascade({teacher.backend.identity},{below_confidence},{thresholds},"
            + ",".join(f"{t:.4f}" for t in self.thresholds) + ")")

    def _threshold(self, head: Any, mode: str) -> float:
        if mode == "learned" and head is not None and head.threshold is not None:
            return float(head.threshold)
        return self.below_confidence

    def answer(self, samples: Sequence[Any], wanted: Sequence[set[int]], result: JudgeResult
               ) -> dict[tuple[int, int], Answer]:
        """The answer (or the reason there is none) to each wanted (sample, question)."""
        order = [b for b in range(len(samples)) if wanted[b]]
        answers: dict[tuple[int, int], Answer] = {}
        if not order:
            return answers
        rows, problems = self._student_rows([samples[b] for b in order], result)
        escalate: dict[int, set[int]] = {}
        for row, b in enumerate(order):
            for q in sorted(wanted[b]):
                answer = self._student_answer(rows[row], problems[row], q)
                threshold = self.thresholds[q]  # 1.0: always the teacher, even at p = 1
                confident = not isinstance(answer, str) and threshold < 1.0 and (
                    threshold <= 0.0 or max(answer) >= threshold)
                if self.teacher is not None and not confident:
                    escalate.setdefault(b, set()).add(q)
                    continue
                answers[(b, q)] = answer
                result.student_answers += not isinstance(answer, str)
        if escalate and self.teacher is not None:
            batch = sorted(escalate)
            taught = self.teacher.score([samples[b] for b in batch],
                                        wanted=[escalate[b] for b in batch])
            result.tokens += taught.tokens
            result.cached += taught.cached
            for i, b in enumerate(batch):
                for q in escalate[b]:
                    result.escalated += 1
                    if bool(taught.answered[i, q]):
                        labels = len(self.rubric.questions[q].labels)
                        answers[(b, q)] = taught.probabilities[i, q, :labels].tolist()
                    else:
                        answers[(b, q)] = "teacher: " + taught.failures.get(
                            (i, q), "no answer")
        return answers

    def _student_rows(self, samples: Sequence[Any], result: JudgeResult
                      ) -> tuple[list[list[float]], list[str | None]]:
        """The student's outputs for each sample. One pass answers every head, so rounds of
        a short-circuit run reuse the pass of the first round (the last batch is kept)."""
        keys = [(conversation_key(s.prompt), s.response) for s in samples]
        missing = [i for i, key in enumerate(keys) if key not in self._memo]
        if missing:
            probabilities, problems = self.student.score_samples(
                [(samples[i].prompt, samples[i].response) for i in missing])
            result.tokens += int(getattr(self.student, "tokens_processed", 0))
            if len(self._memo) + len(missing) > self.MEMO_SIZE:
                self._memo.clear()
            for i, row, problem in zip(missing, probabilities.tolist(), problems):
                self._memo[keys[i]] = (row, problem)
        outputs = [self._memo[key] for key in keys]
        return [row for row, _ in outputs], [problem for _, problem in outputs]

    def _student_answer(self, row: list[float], problem: str | None, q: int) -> Answer:
        head = self.binding.heads[q]
        if problem is not None:
            return problem
        if head is None:
            return "not in the student (distilled before this question was added)"
        if not head.reliable:
            return (f"the student's head is unreliable: it learned from only {head.answers} "
                    "teacher answer(s)")
        return row[head.offset: head.offset + len(head.labels)]
