"""The transformers backend: single-token scoring with the response's prefix shared.

Per sample and template, the head (system + conversation + fenced response) runs once.
The question suffixes follow as a tree (see `ir.tree`): the blocks questions share (the
principle's line, the dimension's line) and then each question's leaf, packed in one
sequence with a tree attention mask: a token sees the head, its ancestors' blocks and its
own node's earlier tokens, and position ids continue along each path, so every leaf
computes exactly what its whole prompt would alone. Only the logits at the answer positions
are computed (`logits_to_keep`), and only the label tokens are read. Work per sample:
C + Σ blocks + Σ leaves tokens, against C + Σq with flat suffixes and Q·C + Σq for one call
per question.

Forward passes are bounded by tokens, not samples: a sample whose head and tree fit
`max_chunk_tokens` runs in one pass; a longer one runs its head once with the KV cache kept,
then its tree in chunks. With `pack_tokens` > 0, samples that fit are packed several to a
pass of at most that many tokens (each head a root of the mask, no cache). Packing is off by
default: float rounding then depends on which samples share a pass, and `qalc score` promises
that a resumed or sharded run writes the same bytes as one run. The mask is a
dense additive [T, T] tensor: torch's flex attention needs torch.compile to be fast on CPU,
and a dense mask keeps every model and attention implementation exact.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qalign_dsl.judge.backend import JudgeError, Scores, ScoringJob, TokenizerFacts
from qalign_dsl.judge.fingerprint import model_fingerprint
from qalign_dsl.judge.spec import JudgeSpec


class TransformersBackend(TokenizerFacts):
    """The model's weights load on the first forward pass, not here: a run whose answers
    are all cached (a rerun, a re-pooled rubric) never pays for loading the judge. The
    tokenizer and config load at once, so a wrong path or label tokens fail early."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto",
                 max_chunk_tokens: int = 1024, attn_implementation: str | None = None,
                 pack_tokens: int = 0) -> None:
        try:
            from transformers import AutoConfig, AutoTokenizer
        except ImportError as error:  # pragma: no cover - transformers is a core extra
            raise JudgeError("the transformers backend needs `pip install transformers`") from error
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.config = AutoConfig.from_pretrained(model)
        except (OSError, ValueError) as error:
            raise JudgeError(f"cannot load judge model `{model}`: {error}") from None
        self._source = model
        self._load_options: dict[str, Any] = {
            "dtype": "auto" if dtype == "auto" else getattr(torch, dtype)}
        if attn_implementation:
            self._load_options["attn_implementation"] = attn_implementation
        self._model: Any = None
        self.device = torch.device(device)
        self.max_chunk_tokens = max_chunk_tokens
        self.pack_tokens = pack_tokens
        self._encoded: dict[str, list[int]] = {}
        config = json.dumps(self.config.to_dict(), sort_keys=True, default=str)
        name = str(Path(model).resolve()) if Path(model).exists() else model
        # The weights' fingerprint: a judge retrained in place must not hit stale answers;
        # the dtype and attention implementation change the numbers, so they count too.
        self.identity = ("transformers:" + name + ":"
                         + hashlib.sha256(config.encode()).hexdigest()[:12] + ":"
                         + model_fingerprint(model) + f":{dtype}"
                         + (f":{attn_implementation}" if attn_implementation else ""))
        # Tokens processed by the last `score` call: the benchmark reports them.
        self.tokens_processed = 0

    @property
    def model(self) -> Any:
        if self._model is None:
            from transformers import AutoModelForCausalLM

            try:
                loaded = AutoModelForCausalLM.from_pretrained(self._source, **self._load_options)
            except (OSError, ValueError) as error:
                raise JudgeError(f"cannot load judge model `{self._source}`: {error}") from None
            self._model = loaded.to(self.device).eval()  # type: ignore[arg-type]
        return self._model

    def load(self) -> None:
        """Load the weights now (`qalc serve`: fail at start, not on the first request)."""
        self.model  # noqa: B018 - the property loads

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, name: str,
                   max_chunk_tokens: int = 1024, pack_tokens: int = 0) -> TransformersBackend:
        """Wrap a model already in memory (benchmarks, the training harness)."""
        backend = cls.__new__(cls)
        backend.tokenizer = tokenizer
        backend._model = model.eval()
        backend.config = model.config
        backend.device = next(model.parameters()).device
        backend.max_chunk_tokens = max_chunk_tokens
        backend.pack_tokens = pack_tokens
        backend._encoded = {}
        backend.identity = f"transformers:{name}"
        backend.tokens_processed = 0
        return backend

    # --- scoring -------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, jobs: list[ScoringJob]) -> list[Scores]:
        results: list[Scores] = [[] for _ in jobs]
        self.tokens_processed = 0
        prepared: list[tuple[int, _Prepared]] = []
        for index, job in enumerate(jobs):
            if job.mode == "reason":
                results[index] = self._reason_job(job)
            else:
                prepared.append((index, self._prepare(job)))
        # A sample that fits the budget whole runs in one pass (with others that fit when
        # packing is on); a longer one runs alone, its head cached, its tree in chunks.
        budget = max(self.pack_tokens, self.max_chunk_tokens) if self.pack_tokens else 0
        batch: list[tuple[int, _Prepared]] = []
        used = 0
        retaining = getattr(self, "_kept_heads", None) is not None
        for index, item in prepared:
            if retaining:  # short-circuit rounds: the head's cache outlives this call
                results[index] = self._score_long(item)
                continue
            if item.size <= self.max_chunk_tokens and not budget:
                self._score_packed([(index, item)], results)
                continue
            if item.size > budget:
                results[index] = self._score_long(item)
                continue
            if batch and used + item.size > budget:
                self._score_packed(batch, results)
                batch, used = [], 0
            batch.append((index, item))
            used += item.size
        if batch:
            self._score_packed(batch, results)
        return results

    def _encode_shared(self, text: str) -> list[int]:
        """`encode` for text that recurs across samples (blocks, leaves, suffixes)."""
        ids = self._encoded.get(text)
        if ids is None:
            if len(self._encoded) >= _ENCODED_LIMIT:
                self._encoded.clear()
            ids = self._encoded[text] = self.encode(text)
        return ids

    def _prepare(self, job: ScoringJob) -> _Prepared:
        """Tokenize a job into its head and tree nodes (blocks used, then one leaf per
        suffix). A question whose pieces tokenize differently from its whole suffix (a
        tokenizer that merges across a cut) gets a flat leaf, so scores never change."""
        item = _Prepared(self.encode(job.head))
        block_node: dict[int, int] = {}
        for i, suffix in enumerate(job.suffixes):
            pieces = [job.blocks[b] for b in job.paths[i]] + [job.leaves[i]] if job.leaves \
                else [suffix]
            ids = [self._encode_shared(piece) for piece in pieces]
            if len(pieces) > 1 and [t for part in ids for t in part] \
                    != self._encode_shared(suffix):
                pieces, ids = [suffix], [self._encode_shared(suffix)]
            parent = -1
            for b, block_ids in zip(job.paths[i] if len(pieces) > 1 else [], ids):
                if b not in block_node:
                    block_node[b] = item.add(block_ids, parent)
                parent = block_node[b]
            leaf = item.add(ids[-1], parent)
            item.answers.append(leaf)
            item.label_tokens[leaf] = job.label_tokens[i]
        return item

    def _score_long(self, item: _Prepared) -> Scores:
        """One sample alone: the head once with its KV cache, then the tree in chunks of at
        most `max_chunk_tokens` (a chunk repeats the blocks its leaves need)."""
        cache = self._head_cache(item.head)
        scores: Scores = []
        for chunk in item.chunks(self.max_chunk_tokens):
            nodes = [item.nodes[n] for n in chunk]
            local = {n: i for i, n in enumerate(chunk)}
            parents = [local[item.parents[n]] if item.parents[n] >= 0 else -1 for n in chunk]
            positions, mask, ends = _tree_layout([len(n) for n in nodes], parents,
                                                 len(item.head), self.model.dtype, self.device)
            ids = [token for node in nodes for token in node]
            leaves = [local[a] for a in item.answers if a in local]
            output = self.model(
                input_ids=torch.tensor([ids], device=self.device),
                position_ids=positions[None], attention_mask=mask,
                past_key_values=cache, use_cache=True, logits_to_keep=ends[leaves],
            )
            # Drop the chunk's keys again; a negative count means "remove" in every version.
            cache.crop(-len(ids))
            self.tokens_processed += len(ids)
            logits = output.logits[0].float()  # [leaves in the chunk, vocab]
            for row, a in enumerate(a for a in item.answers if a in local):
                scores.append(_label_distribution(logits[row], item.label_tokens[a]))
        return scores

    def _score_packed(self, batch: list[tuple[int, _Prepared]], results: list[Scores]) -> None:
        """Several whole samples in one forward pass, no cache: each head is a root of the
        tree mask, so a sample's tokens never see another sample's."""
        lengths: list[int] = []
        parents: list[int] = []
        ids: list[int] = []
        answers: list[int] = []
        for _, item in batch:
            base = len(lengths)
            lengths.append(len(item.head))
            parents.append(-1)
            ids.extend(item.head)
            for node, parent in zip(item.nodes, item.parents):
                lengths.append(len(node))
                parents.append(base + 1 + parent if parent >= 0 else base)
                ids.extend(node)
            answers.extend(base + 1 + a for a in item.answers)
        if not answers:  # jobs without questions: nothing to run
            for index, _ in batch:
                results[index] = []
            return
        positions, mask, ends = _tree_layout(lengths, parents, 0, self.model.dtype, self.device)
        output = self.model(input_ids=torch.tensor([ids], device=self.device),
                            position_ids=positions[None], attention_mask=mask, use_cache=False,
                            logits_to_keep=ends[answers])
        self.tokens_processed += len(ids)
        logits = output.logits[0].float()
        row = 0
        for index, item in batch:
            scores: Scores = []
            for a in item.answers:
                scores.append(_label_distribution(logits[row], item.label_tokens[a]))
                row += 1
            results[index] = scores

    # --- head KV caches kept between rounds (short-circuit judging) ------------------
    def _head_cache(self, head: list[int]) -> Any:
        """The head's KV cache: computed, or kept from an earlier round. Tree passes crop
        the cache back to the head, so a kept cache is reusable as it is."""
        kept: OrderedDict[tuple[int, ...], Any] | None = getattr(self, "_kept_heads", None)
        key = tuple(head)
        if kept is not None and key in kept:
            kept.move_to_end(key)
            return kept[key]
        head_ids = torch.tensor([head], device=self.device)
        output = self.model(input_ids=head_ids, use_cache=True, logits_to_keep=1)
        self.tokens_processed += len(head)
        if kept is not None:
            kept[key] = output.past_key_values
            while len(kept) > self._kept_limit:
                kept.popitem(last=False)
        return output.past_key_values

    @contextmanager
    def retain_heads(self, limit: int) -> Iterator[None]:
        """Within the block, keep up to `limit` heads' KV caches (least recently used go
        first), so that a later round over the same samples skips their heads; freed on
        exit. The judge's short-circuit rounds use it: every sample then runs head-cached
        (`_score_long`) rather than in one uncached pass."""
        self._kept_heads: OrderedDict[tuple[int, ...], Any] | None = OrderedDict()
        self._kept_limit = limit
        try:
            yield
        finally:
            self._kept_heads = None

    max_reason_tokens = 256

    def _reason_job(self, job: ScoringJob) -> Scores:
        """Generative mode: the judge reasons (greedy, bounded), then the answer prefix is
        appended and the label token scored as in direct mode."""
        scores: Scores = []
        marker = job.answer_prefix.strip()
        for suffix, label_tokens in zip(job.suffixes, job.label_tokens):
            ids = torch.tensor([self.encode(job.head + suffix)], device=self.device)
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_reason_tokens,
                do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
            reasoning = str(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
            if marker and marker in reasoning:
                reasoning = reasoning[: reasoning.index(marker)]
            reasoning = reasoning.rstrip()
            final = job.head + suffix + reasoning + ("\n" if reasoning else "") + job.answer_prefix
            final_ids = self.encode(final)
            self.tokens_processed += ids.shape[1] + len(final_ids)
            output = self.model(input_ids=torch.tensor([final_ids], device=self.device),
                                logits_to_keep=1)
            scores.append(_label_distribution(output.logits[0, -1].float(), label_tokens))
        return scores

    # No constrained decoding here: `qalc expand` validates and retries instead.
    structured_output = False

    @torch.inference_mode()
    def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.7,
                 seed: int = 0, json_schema: dict[str, Any] | None = None) -> str:
        """One chat completion (sampled when temperature > 0), as text."""
        ids = torch.tensor([self.encode(self.render_chat()(messages))], device=self.device)
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 \
            else {"do_sample": False}
        out = self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        self.tokens_processed += int(out.shape[1])
        return str(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))

    @torch.inference_mode()
    def score_unshared(self, jobs: list[ScoringJob]) -> list[Scores]:
        """The baseline: every question prompt tokenized whole and run on its own."""
        results: list[Scores] = []
        self.tokens_processed = 0
        for job in jobs:
            scores: Scores = []
            for suffix, label_tokens in zip(job.suffixes, job.label_tokens):
                ids = self.encode(job.head + suffix)
                self.tokens_processed += len(ids)
                output = self.model(input_ids=torch.tensor([ids], device=self.device),
                                    logits_to_keep=1)
                scores.append(_label_distribution(output.logits[0, -1].float(), label_tokens))
            results.append(scores)
        return results


_ENCODED_LIMIT = 8192  # recurring texts whose tokens are kept


@dataclass
class _Prepared:
    """One direct-mode job, tokenized: the head and the tree's nodes (parents first)."""

    head: list[int]
    nodes: list[list[int]] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # per node: parent node or -1 (head)
    answers: list[int] = field(default_factory=list)  # per suffix: its leaf node
    label_tokens: dict[int, list[int]] = field(default_factory=dict)  # per leaf node

    def add(self, ids: list[int], parent: int) -> int:
        self.nodes.append(ids)
        self.parents.append(parent)
        return len(self.nodes) - 1

    @property
    def size(self) -> int:
        return len(self.head) + sum(len(n) for n in self.nodes)

    def chunks(self, budget: int) -> list[list[int]]:
        """Node groups of at most `budget` tokens (unless one path alone is longer), each
        closed under ancestors, in leaf order; sorted so parents come first."""
        chunks: list[list[int]] = []
        members: set[int] = set()
        used = 0
        for leaf in self.answers:
            chain = [leaf]
            while self.parents[chain[-1]] >= 0:
                chain.append(self.parents[chain[-1]])
            new = [n for n in chain if n not in members]
            cost = sum(len(self.nodes[n]) for n in new)
            if members and used + cost > budget:
                chunks.append(sorted(members))
                members, used = set(), 0
                new = chain
                cost = sum(len(self.nodes[n]) for n in chain)
            members.update(new)
            used += cost
        if members:
            chunks.append(sorted(members))
        return chunks


def _tree_layout(lengths: list[int], parents: list[int], past: int, dtype: torch.dtype,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Position ids, the additive 4D mask and each node's last index, for tree nodes packed
    in one sequence after `past` cached tokens (which every token sees).

    A token sees its own node's earlier tokens and every token of its node's ancestors;
    positions continue along each path (a root starts at `past`). With every node a root
    this is the block-diagonal mask of independent suffixes.
    """
    count = len(lengths)
    ancestors = torch.zeros(count, count, dtype=torch.bool)
    starts = [0] * count
    for index, parent in enumerate(parents):
        if parent >= 0:
            ancestors[index] = ancestors[parent]
            starts[index] = starts[parent] + lengths[parent]
        else:
            starts[index] = past
        ancestors[index, index] = True
    sizes = torch.tensor(lengths)
    node = torch.repeat_interleave(torch.arange(count), sizes)
    first = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
    offset = torch.arange(int(sizes.sum())) - first[node]
    positions = torch.tensor(starts)[node] + offset
    allowed = ancestors[node[:, None], node[None, :]]
    allowed &= (node[:, None] != node[None, :]) | (offset[:, None] >= offset[None, :])
    total = len(offset)
    mask = torch.zeros(1, 1, total, past + total, dtype=dtype)
    mask[..., past:].masked_fill_(~allowed, torch.finfo(dtype).min)
    ends = first + sizes - 1
    return positions.to(device), mask.to(device), ends.to(device)


def _label_distribution(logits: torch.Tensor, label_tokens: list[int]) -> list[float] | str:
    chosen = logits[label_tokens]
    if not torch.isfinite(chosen).all():
        return "the judge produced non-finite logits for the labels"
    return torch.softmax(chosen, dim=-1).tolist()


def from_spec(spec: JudgeSpec, api_key: str | None = None) -> TransformersBackend:
    return TransformersBackend(spec.model, device=spec.device, dtype=spec.dtype,
                               max_chunk_tokens=spec.chunk_tokens, pack_tokens=spec.pack_tokens)
