"""The `student` backend: a distilled student answers every question in one pass.

One forward pass of a sequence classifier over the conversation (prompt + response) gives
the label logits of every question; a softmax within each question's slice gives the same
label distributions the full judge returns. No prompts are built and no label tokens are
read, so the Judge hands this backend whole samples (`reads_samples`) instead of jobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from qalign_dsl.ir import Rubric
from qalign_dsl.judge.backend import JudgeError, plain_chat
from qalign_dsl.judge.fingerprint import model_fingerprint
from qalign_dsl.judge.prompts import ChatRenderer
from qalign_dsl.judge.spec import JudgeSpec
from qalign_dsl.judge.student import (
    StudentBinding,
    StudentError,
    StudentMeta,
    bind,
    conversation_text,
    read_meta,
)


class StudentBackend:
    reads_samples = True  # the Judge passes samples to `score_samples`, not prompt jobs

    def __init__(self, folder: str, device: str = "cpu", dtype: str = "auto",
                 batch_tokens: int = 8192) -> None:
        from transformers import AutoTokenizer

        try:
            self.meta: StudentMeta = read_meta(Path(folder))
        except StudentError as error:
            raise JudgeError(str(error)) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as error:
            raise JudgeError(f"{folder}: cannot load the student's tokenizer: {error}") from None
        self.folder = folder
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_tokens = batch_tokens
        self._model: Any = None
        self.tokens_processed = 0
        # The weights' fingerprint, as for any judge: a student retrained in place gets new
        # cache keys.
        name = str(Path(folder).resolve())
        self.identity = f"student:{name}:{model_fingerprint(folder)}:{dtype}"

    @property
    def model(self) -> Any:
        if self._model is None:
            from transformers import AutoModelForSequenceClassification

            options: dict[str, Any] = {}
            if self.dtype != "auto":
                options["dtype"] = getattr(torch, self.dtype)
            try:
                model = AutoModelForSequenceClassification.from_pretrained(self.folder, **options)
            except (OSError, ValueError) as error:
                raise JudgeError(f"{self.folder}: cannot load the student: {error}") from None
            if model.config.num_labels != self.meta.num_labels:
                raise JudgeError(f"{self.folder}: the model has {model.config.num_labels} "
                                 f"outputs, its qalign_student.json {self.meta.num_labels}")
            self._model = model.to(self.device).eval()  # type: ignore[arg-type]
        return self._model

    def load(self) -> None:
        self.model  # noqa: B018 - the property loads

    def bind(self, rubric: Rubric) -> StudentBinding:
        try:
            return bind(self.meta, rubric, self.folder)
        except StudentError as error:
            raise JudgeError(str(error)) from None

    # The Backend protocol's tokenizer half (callers that only describe a judge use it).
    def render_chat(self) -> ChatRenderer:
        return plain_chat

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def describe_token(self, token: int) -> str:
        return str(self.tokenizer.convert_ids_to_tokens(token))

    def special_tokens(self) -> list[str]:
        return [str(t) for t in self.tokenizer.all_special_tokens]

    def score(self, jobs: list[Any]) -> list[Any]:
        raise JudgeError("the student answers whole samples (Judge.score), not prompt jobs")

    def context_limit(self) -> int:
        return self.meta.max_length

    @torch.inference_mode()
    def score_samples(self, samples: Sequence[tuple[Any, str]]
                      ) -> tuple[torch.Tensor, list[str | None]]:
        """Per sample, every head's label distribution ([n, Σ labels], a softmax within each
        head), and why a sample could not be read (longer than the student's context: NA,
        never silently cut), else None."""
        texts = [conversation_text(self.tokenizer, p, r, self.meta.input_format)
                 for p, r in samples]
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        problems: list[str | None] = [
            None if len(ids) <= self.meta.max_length else
            f"context overflow: the conversation is {len(ids)} tokens, the student reads "
            f"{self.meta.max_length}" for ids in encoded]
        probabilities = torch.zeros(len(samples), self.meta.num_labels)
        readable = [i for i, problem in enumerate(problems) if problem is None]
        self.tokens_processed = sum(len(encoded[i]) for i in readable)
        # Batches bounded by padded tokens; longest first so that padding stays small.
        readable.sort(key=lambda i: -len(encoded[i]))
        start = 0
        while start < len(readable):
            width = len(encoded[readable[start]])
            count = max(1, self.batch_tokens // max(width, 1))
            batch = readable[start:start + count]
            start += len(batch)
            logits = forward_logits(self.model, [encoded[i] for i in batch],
                                    self.tokenizer.pad_token_id, self.device)
            probabilities[batch] = head_softmax(logits.float().cpu(), self.meta)
        return probabilities, problems


def forward_logits(model: Any, sequences: list[list[int]], pad_id: int | None,
                   device: torch.device) -> torch.Tensor:
    """The classifier's logits for right-padded sequences (Hugging Face sequence
    classifiers read the last non-pad token, or the pooled first token of an encoder)."""
    pad = 0 if pad_id is None else pad_id
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    attention = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, : len(ids)] = 1
    output = model(input_ids=input_ids.to(device), attention_mask=attention.to(device))
    logits: torch.Tensor = output.logits
    return logits


def head_softmax(logits: torch.Tensor, meta: StudentMeta) -> torch.Tensor:
    """A softmax within each head's columns (one log-softmax per head, [n, Σ])."""
    return head_log_softmax(logits, meta).exp()


def head_log_softmax(logits: torch.Tensor, meta: StudentMeta) -> torch.Tensor:
    parts = [torch.log_softmax(logits[:, h.offset: h.offset + len(h.labels)], dim=-1)
             for h in meta.heads]
    return torch.cat(parts, dim=-1)


def weights_digest(folder: Path) -> str:
    """sha256 over the weight files, read in 16 MiB chunks (checkpoints may be large)."""
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def from_spec(spec: JudgeSpec, api_key: str | None = None) -> StudentBackend:
    return StudentBackend(spec.model, device=spec.device, dtype=spec.dtype)
