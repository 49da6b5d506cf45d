"""The backend interface every judge runs through (transformers, vLLM, OpenAI servers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from qalign_dsl.judge.prompts import ChatRenderer


@dataclass(frozen=True, slots=True)
class ScoringJob:
    """All question prompts of one sample under one template: `head` + each suffix, and
    the first token of every label the answer may start with."""

    head: str
    suffixes: list[str]
    label_tokens: list[list[int]]
    labels: list[list[str]]
    separator: str  # whitespace between the prompt's end and a label
    mode: str = "direct"  # reason: generate reasoning first, then score after answer_prefix
    answer_prefix: str = ""


# Per suffix: probabilities over its labels (renormalized, in label order), or the reason
# the judge produced no answer (an explicit NA, never a silent 0).
Scores = list[list[float] | str]


class JudgeError(RuntimeError):
    """The judge cannot run at all (model missing, server down, no logprob support)."""


class Backend(Protocol):
    identity: str  # names the judge in cache keys: backend, model, revision

    def render_chat(self) -> ChatRenderer: ...

    def encode(self, text: str) -> list[int]: ...

    def describe_token(self, token: int) -> str: ...

    def special_tokens(self) -> list[str]: ...

    def score(self, jobs: list[ScoringJob]) -> list[Scores]: ...
