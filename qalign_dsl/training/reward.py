"""The constitution as a reward function for TRL's GRPOTrainer.

    reward = QalignReward(rubric, judge)
    GRPOTrainer(model=…, reward_funcs=[reward], …)

Each completion is split into draft / reflection / revision by the constitution's output
format; drafts and revisions of the whole batch are judged in one batched judge call and
pooled by the compiled graph; the revision reward (alpha, beta) is returned. A constitution
without an output format scores the whole completion with the base reward. Completions that
break the format get `format_penalty` (or None, which TRL ignores, if the penalty is None);
None is also returned where nothing could be scored. Per-principle and per-dimension means
(draft and revision) go to TRL's `log_metric`, the worst questions of each completion to
`log_extra`, so the training log shows why rewards move.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from qalign_dsl.evaluate.aggregate import CompiledRubric, Evaluation, Masked
from qalign_dsl.ir import Rubric
from qalign_dsl.judge.runtime import Judge, JudgeResult, Sample
from qalign_dsl.training.completions import FormatError, completion_text, split_completion

if TYPE_CHECKING:
    from qalign_dsl.training.audit import RewardAudit


class QalignReward:
    __name__ = "qalign"  # TRL names reward columns and metrics after this

    def __init__(self, rubric: Rubric | Mapping[str, Any], judge: Judge,
                 format_penalty: float | None = -1.0, worst_questions: int = 3,
                 audit: RewardAudit | None = None) -> None:
        typed = Rubric.of(rubric)
        self.document = typed.document
        self.judge = judge
        self.rubric = CompiledRubric(typed)
        self.tags = typed.output_format
        self.format_penalty = format_penalty
        self.worst_questions = worst_questions
        self.last_normalized: list[int] = []  # per judged text of the last call
        # A student judge audited by its teacher (training/audit.py), or None.
        self.audit = audit

    def __call__(self, prompts: list[Any], completions: list[Any],
                 completion_ids: list[list[int]] | None = None,
                 log_metric: Callable[[str, float], None] | None = None,
                 log_extra: Callable[[str, list[Any]], None] | None = None,
                 **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"QalignReward got {len(prompts)} prompts for {len(completions)} "
                             "completions; pass one prompt per completion")
        rewards: list[float | None] = [None] * len(completions)
        drafts: list[tuple[int, Sample]] = []
        revisions: list[tuple[int, Sample]] = []
        errors: list[str] = [""] * len(completions)
        for index, (prompt, completion) in enumerate(zip(prompts, completions)):
            text = completion_text(completion)
            if self.tags is None:
                revisions.append((index, Sample(prompt, text)))
                continue
            try:
                parts = split_completion(text, self.tags)
            except FormatError as error:
                rewards[index] = self.format_penalty
                errors[index] = str(error)
                continue
            drafts.append((index, Sample(prompt, parts.draft)))
            revisions.append((index, Sample(prompt, parts.revision)))
        if log_metric is not None and self.tags is not None:
            log_metric(
                "qalign/format_errors", sum(1 for e in errors if e) / max(len(completions), 1)
            )
        if not revisions:
            if log_extra is not None:
                log_extra("qalign_why", [e or "" for e in errors])
            return rewards
        # One batched judge call for every draft and revision of the batch.
        result = self.judge.score([s for _, s in drafts] + [s for _, s in revisions])
        # Invisible or look-alike characters the judge's normalisation took out, per
        # completion: a policy learning to hide text from the judge shows up here.
        self.last_normalized = result.normalized
        if log_metric is not None and result.normalized:
            log_metric("qalign/normalized_chars",
                       sum(result.normalized) / len(result.normalized))
        if log_metric is not None and result.escalated + result.student_answers:
            log_metric("qalign/escalated",
                       result.escalated / (result.escalated + result.student_answers))
        split = len(drafts)
        final, drafted, revised = self._pool(result, split)
        if drafted is not None:
            self._log(log_metric, "draft", drafted)
        self._log(log_metric, "revision" if drafts else "response", revised)
        if self.audit is not None:
            def judge_units(judge: Judge, chosen: list[int]) -> tuple[JudgeResult, Masked]:
                texts = [revisions[i][1] for i in chosen]
                if drafts:
                    texts = [drafts[i][1] for i in chosen] + texts
                taught = judge.score(texts)
                pooled = self._pool(taught, len(chosen) if drafts else 0)[0]
                return _rows(taught, len(chosen) if drafts else 0), pooled

            self.audit([s for _, s in revisions], _rows(result, split), final, judge_units,
                       log_metric)
        values = final.to_list()
        for (index, _), value in zip(revisions, values):
            rewards[index] = value
        if log_extra is not None:
            worst = self._worst(revised)
            why = [errors[i] for i in range(len(completions))]
            for (index, _), text in zip(revisions, worst):
                why[index] = text
            log_extra("qalign_why", why)
        return rewards

    def _pool(self, result: JudgeResult, split: int
              ) -> tuple[Masked, Evaluation | None, Evaluation]:
        """(final reward, draft evaluation or None, revision evaluation) of a judge result
        whose first `split` rows are drafts and the rest their revisions."""
        evaluation = self.rubric.evaluate(result.probabilities, result.answered)
        revised = _slice(evaluation, split, None)
        if not split:
            return revised.reward, None, revised
        drafted = _slice(evaluation, 0, split)
        final = revised.reward
        if self.rubric.revision is not None:
            final = self.rubric.revision_reward(drafted.reward, revised.reward)
        return final, drafted, revised

    def _log(self, log_metric: Callable[[str, float], None] | None, stage: str,
             evaluation: Evaluation) -> None:
        if log_metric is None:
            return
        reward = _masked_mean(evaluation.reward)
        if reward is not None:
            log_metric(f"qalign/{stage}/reward", reward)
        for column, principle in enumerate(self.rubric.principle_ids):
            mean = _masked_mean(Masked(evaluation.principles.value[:, column],
                                       evaluation.principles.defined[:, column]))
            if mean is not None:
                log_metric(f"qalign/{stage}/{principle}", mean)
        for column, dimension in enumerate(self.rubric.dimension_ids):
            mean = _masked_mean(Masked(evaluation.dimensions.value[:, column],
                                       evaluation.dimensions.defined[:, column]))
            if mean is not None:
                log_metric(f"qalign/{stage}/dimension/{dimension}", mean)

    def _worst(self, evaluation: Evaluation) -> list[str]:
        """The lowest-scoring questions of each response, for the completions table."""
        scores = evaluation.questions.value.masked_fill(~evaluation.questions.defined, float("inf"))
        k = min(self.worst_questions, scores.shape[1])
        values, indices = scores.topk(k, dim=1, largest=False)
        lines = []
        for row_values, row_indices in zip(values.tolist(), indices.tolist()):
            parts = [f"{self.rubric.question_ids[i]} ({v:+.2f})"
                     for v, i in zip(row_values, row_indices) if v != float("inf")]
            lines.append("; ".join(parts))
        return lines


def _rows(result: JudgeResult, start: int) -> JudgeResult:
    """The rows from `start` on (the revisions) of a judge result: its answers only."""
    return JudgeResult(result.probabilities[start:], result.answered[start:])


def _slice(evaluation: Evaluation, start: int, stop: int | None) -> Evaluation:
    def cut(masked: Masked) -> Masked:
        return Masked(masked.value[start:stop], masked.defined[start:stop])

    return Evaluation(cut(evaluation.reward), cut(evaluation.principles),
                      cut(evaluation.dimensions), cut(evaluation.questions),
                      evaluation.failed[start:stop])


def _masked_mean(masked: Masked) -> float | None:
    if not bool(masked.defined.any()):
        return None
    return float(masked.value[masked.defined].mean())

