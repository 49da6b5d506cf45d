"""The backend interface every judge runs through (transformers, vLLM, OpenAI servers)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from qalign_dsl.judge.prompts import ChatRenderer, Message
from qalign_dsl.judge.spec import JudgeSpec


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
    # The prompt tree (optional; empty = flat): shared `blocks` with their `parents` (index
    # or -1), per suffix its block path and leaf, suffixes[i] == its blocks + leaves[i].
    # Backends that send whole prompts ignore it; the transformers backend runs each block
    # once.
    blocks: list[str] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    paths: list[list[int]] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)


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


def plain_chat(messages: list[Message]) -> str:
    """For tokenizers without a chat template: a simple, explicit transcript."""
    parts = [f"### {m['role'].capitalize()}\n{m['content']}\n" for m in messages]
    return "\n".join(parts) + "\n### Assistant\n"


class TokenizerFacts:
    """The tokenizer half of `Backend`, shared by every backend that holds a Hugging Face
    tokenizer as `self.tokenizer`."""

    tokenizer: Any

    def render_chat(self) -> ChatRenderer:
        if getattr(self.tokenizer, "chat_template", None):
            def render(messages: list[Message]) -> str:
                return str(self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True))
            return render
        return plain_chat

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def describe_token(self, token: int) -> str:
        return str(self.tokenizer.convert_ids_to_tokens(token))

    def context_limit(self) -> int | None:
        """The most tokens the judge model reads: its position embeddings (transformers,
        vLLM) and the tokenizer's model_max_length, whichever is smaller and known."""
        limits = []
        length = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(length, int) and 0 < length < 10**8:  # "unset" is a huge sentinel
            limits.append(length)
        # The config, not the model: reading `model` would load a lazily loaded judge.
        config = getattr(self, "config", None)
        if config is None:
            config = getattr(getattr(self, "model", None), "config", None)
        positions = getattr(config, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:
            limits.append(positions)
        engine_limit = getattr(self, "max_model_len", None)
        if isinstance(engine_limit, int) and engine_limit > 0:
            limits.append(engine_limit)
        return min(limits) if limits else None

    def special_tokens(self) -> list[str]:
        return [str(t) for t in self.tokenizer.all_special_tokens] + [
            str(t) for t in getattr(self.tokenizer, "added_tokens_encoder", {})]


# Backends by name -> the module that builds them (`from_spec(spec, api_key)`); a backend's
# module, and what it needs (vLLM, httpx), is imported only when that backend is chosen.
BACKEND_MODULES = {
    "transformers": "qalign_dsl.judge.backends.transformers",
    "vllm": "qalign_dsl.judge.backends.vllm",
    "openai": "qalign_dsl.judge.backends.openai",
    "student": "qalign_dsl.judge.backends.student",
}


def build_backend(spec: JudgeSpec, api_key: str | None = None) -> Backend:
    """The backend a `JudgeSpec` describes. `api_key` overrides the key read from the
    spec's environment variable (the CLI's --api-key)."""
    module_name = BACKEND_MODULES.get(spec.backend)
    if module_name is None:
        raise JudgeError(f"unknown judge backend `{spec.backend}`; use "
                         f"{', '.join(BACKEND_MODULES)}")
    backend: Backend = importlib.import_module(module_name).from_spec(spec, api_key)
    return backend
