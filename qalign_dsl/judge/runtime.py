"""The judge: IR + backend -> B×Q×L label distributions, with an answer cache."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from qalign_dsl.ir import Rubric
from qalign_dsl.judge.backend import Backend, ScoringJob
from qalign_dsl.judge.cache import AnswerCache
from qalign_dsl.judge.cascade import Cascade
from qalign_dsl.judge.labels import label_first_tokens
from qalign_dsl.judge.normalize import DEFAULT_RULE, RULES, normalize
from qalign_dsl.judge.prompts import (
    Conversation,
    SamplePlan,
    answer_separator,
    conversation_key,
    frame_template,
    plan_sample,
)
from qalign_dsl.judge.short_circuit import MODES as SHORT_CIRCUIT_MODES
from qalign_dsl.judge.short_circuit import ShortCircuit
from qalign_dsl.judge.spec import JudgeSpec

# A hard limit on one sample's text (prompt + response, in characters), checked before
# anything is tokenized: beyond any judge's context, and a bound on memory and time.
MAX_INPUT_CHARS = 1_000_000


@dataclass(frozen=True, slots=True)
class Sample:
    prompt: Conversation
    response: str


@dataclass
class JudgeResult:
    probabilities: torch.Tensor  # [B, Q, L] label distributions, zero-padded
    answered: torch.Tensor  # [B, Q] False where the judge gave no answer (NA)
    failures: dict[tuple[int, int], str] = field(default_factory=dict)  # why not answered
    cached: int = 0  # answers served from the cache
    # Per sample: characters of the response the normalisation rule removed or replaced.
    normalized: list[int] = field(default_factory=list)
    tokens: int = 0  # tokens the backend processed (where it counts them)
    # Short-circuit judging: questions judged per round, and questions skipped (NA, with
    # the reason in `failures`).
    rounds: tuple[int, ...] = ()
    skipped: int = 0
    # A student with a cascade: answers it gave, and answers it sent to the teacher.
    student_answers: int = 0
    escalated: int = 0


class Judge:
    """Scores samples against every question of a compiled constitution."""

    def __init__(self, rubric: Rubric | Mapping[str, Any], backend: Backend,
                 cache: AnswerCache | None = None, normalization: str = DEFAULT_RULE,
                 max_input_chars: int = MAX_INPUT_CHARS, short_circuit: str = "off",
                 teacher: Judge | None = None, below_confidence: float = 0.8,
                 thresholds: str = "global") -> None:
        if normalization not in RULES:
            raise ValueError(f"unknown normalisation rule `{normalization}`")
        if short_circuit not in SHORT_CIRCUIT_MODES:
            raise ValueError(f"unknown short-circuit mode `{short_circuit}`; use "
                             f"{', '.join(SHORT_CIRCUIT_MODES)}")
        self.rubric = Rubric.of(rubric)
        self.document = self.rubric.document
        self.backend = backend
        self.cache = cache
        self.normalization = normalization
        self.max_input_chars = max_input_chars
        limit = getattr(backend, "context_limit", None)
        self.context_limit: int | None = limit() if callable(limit) else None
        # A student (`reads_samples`) answers whole samples: no prompts, no label tokens.
        # With a cascade `teacher`, what it is unsure of goes to the teacher (cascade.py).
        self.cascade: Cascade | None = None
        self.short_circuit: ShortCircuit | None = None
        if getattr(backend, "reads_samples", False):
            self.frames, self.specials = [], []
            self.label_tokens: list[list[int]] = []
            self.max_labels = max(len(q.labels) for q in self.rubric.questions)
            self.cascade = Cascade(self.rubric, backend, teacher, below_confidence, thresholds)
            identity = backend.identity + self.cascade.identity
            self.fingerprints = [self._fingerprint(q, identity)
                                 for q in range(len(self.rubric.questions))]
            if short_circuit == "reward":
                self.short_circuit = ShortCircuit(self.rubric)
            return
        if teacher is not None:
            raise ValueError("a cascade teacher needs a student backend")
        templates = self.rubric.prompt_program.templates
        renderer = backend.render_chat()
        self.frames = [frame_template(t, renderer) for t in templates]
        self.specials = backend.special_tokens()
        self.max_labels = max(len(q.labels) for q in self.rubric.questions)
        # The label-token check, once per (template, scale): fails fast at load.
        self.label_tokens = []
        checked: dict[tuple[int, str], list[int]] = {}
        for question in self.rubric.questions:
            key = (question.template, question.scale)
            if key not in checked:
                checked[key] = label_first_tokens(
                    backend.encode, backend.describe_token,
                    self.frames[question.template].answer_context,
                    answer_separator(templates[question.template]),
                    list(question.labels), question.scale)
            self.label_tokens.append(checked[key])
        self.fingerprints = [self._fingerprint(q, backend.identity)
                             for q in range(len(self.rubric.questions))]
        # `reward`: judge in rounds, skipping what cannot change the reward (short_circuit.py).
        self.short_circuit = ShortCircuit(self.rubric) if short_circuit == "reward" else None

    def load(self) -> None:
        """Load the weights of every model this judge runs now — its backend's and a cascade
        teacher's — where a backend loads lazily (a server or an actor fails at start, not
        on its first request)."""
        teacher = self.cascade.teacher if self.cascade is not None else None
        for judge in (self, teacher):
            if judge is not None and hasattr(judge.backend, "load"):
                judge.backend.load()

    def _fingerprint(self, q: int, identity: str) -> str:
        """What the judge's answer to question q depends on, besides the sample: its full
        prompt program and labels. Pooling changes leave it unchanged, so re-pooling never
        re-judges."""
        # Hashed from the wire JSON, so cache keys survive changes to the typed view.
        question = self.document["questions"][q]
        program = self.document["prompt_program"]
        payload = {
            "template": program["templates"][question["template"]],
            "suffix": program["suffixes"][q],
            "labels": question["labels"],
            "judge": identity,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def score(self, samples: Sequence[Sample],
              progress: Callable[[int], None] | None = None,
              wanted: Sequence[set[int]] | None = None) -> JudgeResult:
        """Every question of every sample, or only `wanted[b]` of sample b (the others stay
        unanswered, with no reason: a cascade asks its teacher for some questions only)."""
        q_count = len(self.rubric.questions)
        probabilities = torch.zeros(len(samples), q_count, self.max_labels)
        answered = torch.zeros(len(samples), q_count, dtype=torch.bool)
        result = JudgeResult(probabilities, answered)
        samples = [self._normalize(sample, result) for sample in samples]
        sample_keys = [self._keys(sample) for sample in samples]
        pending: list[set[int]] = []  # per sample: not answered by the cache
        for b, sample in enumerate(samples):
            keys = sample_keys[b]
            if wanted is not None:
                keys = {q: key for q, key in keys.items() if q in wanted[b]}
            known = self.cache.get_many(list(keys.values())) if self.cache is not None else {}
            for q, key in keys.items():
                if key in known:
                    self._store(result, b, q, known[key])
                    result.cached += 1
            pending.append({q for q, key in keys.items() if key not in known})
            size = len(sample.response) + len(conversation_key(sample.prompt))
            if size > self.max_input_chars:  # before tokenizing: a 50 MB response is refused
                for q in pending[-1]:
                    self._store(result, b, q, f"input too long: {size} characters > the "
                                f"limit of {self.max_input_chars}")
                pending[-1] = set()

        def judge(wanted: list[set[int]]) -> None:
            self._judge(samples, sample_keys, wanted, result)

        if self.short_circuit is None:
            judge(pending)
        else:
            # Backends that can keep each head's KV cache between rounds do so (transformers).
            retain = getattr(self.backend, "retain_heads", None)
            with retain(len(samples) * len(self.frames)) if retain else nullcontext():
                report = self.short_circuit.run(probabilities, answered, pending, judge,
                                                result.failures)
            result.rounds, result.skipped = report.judged, report.skipped
        if progress:
            progress(len(samples))
        return result

    def _judge(self, samples: Sequence[Sample], sample_keys: list[dict[int, str]],
               wanted: list[set[int]], result: JudgeResult) -> None:
        """Judge `wanted[b]` of each sample in one backend call; answers go to `result`
        and the cache."""
        if self.cascade is not None:
            answers = self.cascade.answer(samples, wanted, result)
            for (b, q), answer in answers.items():
                self._store(result, b, q, answer)
            if self.cache is not None:
                learned = {sample_keys[b][q]: answer for (b, q), answer in answers.items()
                           if not isinstance(answer, str)}
                if learned:
                    self.cache.put_many(learned)
            return
        jobs: list[ScoringJob] = []
        owners: list[tuple[int, list[int]]] = []
        for b, sample in enumerate(samples):
            if not wanted[b]:
                continue
            for plan in plan_sample(self.rubric, self.frames, sample.prompt, sample.response,
                                    self.specials):
                missing = [i for i, q in enumerate(plan.questions) if q in wanted[b]]
                missing = self._within_context(plan, missing, result, b)
                if not missing:
                    continue
                questions = [plan.questions[i] for i in missing]
                template = self.rubric.prompt_program.templates[plan.template]
                jobs.append(ScoringJob(
                    head=plan.head,
                    suffixes=[plan.suffixes[i] for i in missing],
                    label_tokens=[self.label_tokens[q] for q in questions],
                    labels=[list(self.rubric.questions[q].labels) for q in questions],
                    separator=answer_separator(template),
                    mode=template.mode,
                    answer_prefix=self.frames[plan.template].answer_prefix,
                    **plan.tree(missing),
                ))
                owners.append((b, questions))
        scored = self.backend.score(jobs) if jobs else []
        result.tokens += int(getattr(self.backend, "tokens_processed", 0)) if jobs else 0
        fresh: dict[str, list[float]] = {}
        for (b, questions), scores in zip(owners, scored):
            for q, answer in zip(questions, scores):
                self._store(result, b, q, answer)
                if not isinstance(answer, str):
                    fresh[sample_keys[b][q]] = answer
        if self.cache is not None and fresh:
            self.cache.put_many(fresh)

    def _normalize(self, sample: Sample, result: JudgeResult) -> Sample:
        """The sample as the judge sees it; the response's change count goes to `result`.
        Cache keys hash the normalised text, so the rule is part of every key."""
        response, changed = normalize(sample.response, self.normalization)
        result.normalized.append(changed)
        prompt: Conversation
        if isinstance(sample.prompt, str):
            prompt = normalize(sample.prompt, self.normalization)[0]
        else:
            prompt = [{**message, "content": normalize(str(message.get("content", "")),
                                                       self.normalization)[0]}
                      for message in sample.prompt]
        return Sample(prompt, response)

    def _within_context(self, plan: SamplePlan, missing: list[int], result: JudgeResult,
                        b: int) -> list[int]:
        """The questions whose prompt fits the judge's context; the others are NA with the
        reason (never silently truncated)."""
        if self.context_limit is None or not missing:
            return missing
        template = self.document["prompt_program"]["templates"][plan.template]
        reserve = int(getattr(self.backend, "max_reason_tokens", 0)) \
            if template["mode"] == "reason" else 0
        head = len(self.backend.encode(plan.head))
        # A token is at least one byte (+2 for a tokenizer's prefix): when the longest
        # suffix fits by bytes, every suffix fits, and none has to be tokenized here.
        longest = max(len(plan.suffixes[i].encode("utf-8", "surrogatepass")) for i in missing)
        if head + longest + 2 + reserve <= self.context_limit:
            return missing
        fitting = []
        for i in missing:
            length = head + len(self.backend.encode(plan.suffixes[i])) + reserve
            if length > self.context_limit:
                self._store(result, b, plan.questions[i],
                            f"context overflow: the prompt is {length} tokens, the judge's "
                            f"context is {self.context_limit}")
            else:
                fitting.append(i)
        return fitting

    def _keys(self, sample: Sample) -> dict[int, str]:
        base = hashlib.sha256(
            (conversation_key(sample.prompt) + "\x00" + sample.response).encode(
                "utf-8", "surrogatepass")).hexdigest()
        return {q: hashlib.sha256((fp + base).encode()).hexdigest()
                for q, fp in enumerate(self.fingerprints)}

    @staticmethod
    def _store(result: JudgeResult, b: int, q: int, answer: list[float] | str) -> None:
        if isinstance(answer, str):
            result.failures[(b, q)] = answer
            return
        result.probabilities[b, q, : len(answer)] = torch.tensor(answer)
        result.answered[b, q] = True


def judge_from_spec(rubric: Rubric | Mapping[str, Any], spec: JudgeSpec,
                    cache: AnswerCache | None = None, api_key: str | None = None,
                    **options: Any) -> Judge:
    """The Judge a `JudgeSpec` describes, with its cascade teacher when it has one (the
    teacher shares the answer cache: its answers are keyed by its own identity)."""
    from qalign_dsl.judge.backend import build_backend

    teacher = None
    cascade = spec.cascade
    if cascade is not None:
        teacher_options = {k: v for k, v in options.items() if k in ("normalization",
                                                                      "max_input_chars")}
        teacher = Judge(rubric, build_backend(cascade.teacher, api_key), cache,
                        **teacher_options)
        options = {**options, "teacher": teacher, "below_confidence": cascade.below_confidence,
                   "thresholds": cascade.thresholds}
    return Judge(rubric, build_backend(spec, api_key), cache, **options)
