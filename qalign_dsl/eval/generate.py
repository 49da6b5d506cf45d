"""Generation: every model answers every prompt `samples` times, batched, cached on disk.

The cache is SQLite (WAL): one row per (model identity, conversation, sampling settings,
sample index), one transaction per batch. A kill -9 loses at most the batch in flight and
never leaves half a row; a rerun generates only what is missing, and a rerun with a new
metric or judge generates nothing.

Sample s of a prompt is drawn with seed `recipe seed + s`, set once per batch: generation
is reproducible for a given batch layout (a resumed run draws its remaining samples in
other batches, so they are other draws from the same distribution).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from qalign_dsl.eval.recipe import Sampling
from qalign_dsl.eval.sources import EvalItem
from qalign_dsl.judge.fingerprint import model_fingerprint


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str  # the row label, e.g. "grpo"
    path: str  # a local folder or a Hub id

    def identity(self) -> str:
        """What generations depend on: the weights (judge.fingerprint.model_fingerprint)."""
        return model_fingerprint(self.path)


class Generator(Protocol):
    calls: int  # batched generate calls made (tests count them)

    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]: ...


Batch = tuple[Sequence[list[dict[str, str]]], int]  # (conversations, seed)


class BatchGenerator(Generator, Protocol):
    """A generator handed every batch at once (a pool of Ray actors): one list of texts
    per batch, in the batches' order, each as soon as it and those before it are done."""

    def generate_batches(self, batches: Sequence[Batch]) -> Iterator[list[str]]: ...


def _generated(generator: Generator, batches: Sequence[Batch]) -> Iterator[list[str]]:
    if hasattr(generator, "generate_batches"):
        return generator.generate_batches(batches)  # type: ignore[no-any-return]
    return (generator.generate(conversations, seed) for conversations, seed in batches)


def conversation_with_system(item: EvalItem, sampling: Sampling) -> list[dict[str, str]]:
    messages = item.conversation()
    if sampling.system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": sampling.system}] + messages
    return messages


class TransformersGenerator:
    """Batched `generate` with left padding: one call per batch, never one per prompt."""

    def __init__(self, model: Any, tokenizer: Any, sampling: Sampling) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.calls = 0

    @classmethod
    def load(cls, path: str, sampling: Sampling, device: str = "cpu") -> TransformersGenerator:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).to(device)  # type: ignore[arg-type]
        return cls(model, tokenizer, sampling)

    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]:
        import torch

        tokenizer = self.tokenizer
        texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"  # generation continues from the right edge
        try:
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tokenizer.padding_side = side
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        sampling = self.sampling
        sample = sampling.temperature > 0
        settings: dict[str, Any] = {"do_sample": sample, "max_new_tokens": sampling.max_new_tokens}
        if sample:
            settings.update(temperature=sampling.temperature, top_p=sampling.top_p,
                            top_k=sampling.top_k)
        else:
            settings.update(temperature=None, top_p=None, top_k=None)
        torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            output = self.model.generate(**batch, pad_token_id=tokenizer.pad_token_id,
                                         **settings)
        if was_training:
            self.model.train()
        self.calls += 1
        width = batch["input_ids"].shape[1]
        return [str(tokenizer.decode(row[width:], skip_special_tokens=True)).strip()
                for row in output]


class VLLMGenerator:
    """vLLM's offline engine, used when `vllm` is importable (GPU machines)."""

    def __init__(self, path: str, sampling: Sampling) -> None:
        from vllm import LLM

        self.engine = LLM(model=path)
        self.sampling = sampling
        self.calls = 0

    def generate(self, conversations: Sequence[list[dict[str, str]]], seed: int) -> list[str]:
        from vllm import SamplingParams

        s = self.sampling
        params = SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or -1,
                                max_tokens=s.max_new_tokens, seed=seed)
        outputs = self.engine.chat(list(conversations), params, use_tqdm=False)
        self.calls += 1
        return [output.outputs[0].text.strip() for output in outputs]


def load_generator(path: str, sampling: Sampling, engine: str = "auto",
                   device: str = "cpu") -> Generator:
    """vLLM when asked for or (`auto`) importable on a machine with a GPU; else transformers."""
    if engine in ("auto", "vllm"):
        try:
            import torch
            import vllm  # noqa: F401

            if engine == "vllm" or torch.cuda.is_available():
                return VLLMGenerator(path, sampling)
        except ImportError:
            if engine == "vllm":
                raise
    return TransformersGenerator.load(path, sampling, device)


class GenerationStore:
    """The on-disk generation cache (see the module doc)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.connection = sqlite3.connect(str(path), timeout=30)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, model TEXT NOT NULL,"
            " item TEXT NOT NULL, sample INTEGER NOT NULL, response TEXT NOT NULL)")
        self.connection.commit()

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self.connection.execute(
                "SELECT key, response FROM generations WHERE key IN "
                f"({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            found.update(dict(rows))
        return found

    def put_many(self, rows: list[tuple[str, str, str, int, str]]) -> None:
        with self.connection:  # one transaction: all of the batch or none of it
            self.connection.executemany(
                "INSERT OR REPLACE INTO generations (key, model, item, sample, response) "
                "VALUES (?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return int(self.connection.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    def close(self) -> None:
        self.connection.close()


def generation_key(identity: str, conversation: list[dict[str, str]], sampling: Sampling,
                   seed: int, sample: int) -> str:
    payload = json.dumps({"model": identity, "conversation": conversation,
                          "sampling": sampling.key(), "seed": seed, "sample": sample},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class GenerationStats:
    generated: int
    cached: int


def generate_all(identity: str, make_generator: Callable[[], Generator],
                 items: Sequence[EvalItem], sampling: Sampling, seed: int,
                 store: GenerationStore, progress: Callable[[int], None] | None = None
                 ) -> tuple[dict[tuple[str, int], str], GenerationStats]:
    """Responses {(item id, sample): text} for one model. The generator is built only if
    something is missing from the store, so a fully cached rerun never loads the model."""
    conversations = {item.id: conversation_with_system(item, sampling) for item in items}
    keys = {(item.id, s): generation_key(identity, conversations[item.id], sampling, seed, s)
            for item in items for s in range(sampling.samples)}
    known = store.get_many(list(keys.values()))
    responses = {slot: known[key] for slot, key in keys.items() if key in known}
    if progress and responses:
        progress(len(responses))
    missing = [slot for slot in keys if slot not in responses]
    # Batches by sample index (one seed per batch), prompts of similar length together.
    by_sample: dict[int, list[str]] = {}
    for item_id, s in missing:
        by_sample.setdefault(s, []).append(item_id)
    plan: list[tuple[int, list[str]]] = []
    for s, ids in sorted(by_sample.items()):
        ids.sort(key=lambda i: len(json.dumps(conversations[i])))
        plan += [(s, ids[start:start + sampling.batch_size])
                 for start in range(0, len(ids), sampling.batch_size)]
    if plan:
        generated = _generated(make_generator(), [
            ([conversations[i] for i in chunk], seed + s) for s, chunk in plan])
        for (s, chunk), texts in zip(plan, generated):
            rows = []
            for item_id, text in zip(chunk, texts):
                responses[(item_id, s)] = text
                rows.append((keys[(item_id, s)], identity, item_id, s, text))
            store.put_many(rows)  # each batch as it comes: a kill loses only those in flight
            if progress:
                progress(len(chunk))
    return responses, GenerationStats(generated=len(missing), cached=len(keys) - len(missing))
