"""The tree-shaped prompt program: the compiler factors each template's question suffixes
into shared blocks and leaves (exactly), the IR records it (version 2, version 1 still
loads), and the transformers judge runs each block once per sample with a tree attention
mask — scores equal to independent full prompts, tokens C + Σ blocks + Σ leaves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from judge_fixtures import BENIGN, HARMFUL

from qalign_dsl import ir
from qalign_dsl.ir.model import Rubric
from qalign_dsl.judge.backend import ScoringJob
from qalign_dsl.judge.backends.transformers import TransformersBackend
from qalign_dsl.judge.prompts import plan_sample
from qalign_dsl.judge.runtime import Judge, Sample
from qalign_dsl.lang.compiler import compile_text

QALIGN = json.loads((ROOT / "compiled" / "qalign.json").read_bytes())
CODING = json.loads((ROOT / "compiled" / "coding.json").read_bytes())
V1 = ROOT / "tests" / "data" / "ir"

SAMPLE = Sample([{"role": "user", "content": "How do I bake bread?"},
                 {"role": "assistant", "content": "Which kind?"},
                 {"role": "user", "content": "Sourdough."}],
                BENIGN[0] + "\n\n- step one\n- step two")


@pytest.fixture(scope="module")
def backend(tiny_model: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model))


def tree_jobs(judge: Judge, sample: Sample, direct_only: bool = True) -> list[ScoringJob]:
    """The jobs the judge would send for one sample, tree included (reason-mode templates
    scored as direct here: the tree is a direct-mode path)."""
    jobs = []
    for plan in plan_sample(judge.rubric, judge.frames, sample.prompt, sample.response,
                            judge.specials):
        template = judge.rubric.prompt_program.templates[plan.template]
        if direct_only and template.mode != "direct":
            continue
        members = list(range(len(plan.questions)))
        jobs.append(ScoringJob(plan.head, plan.suffixes,
                               [judge.label_tokens[q] for q in plan.questions], [], "",
                               **plan.tree(members)))
    return jobs


def formula(backend: TransformersBackend, jobs: list[ScoringJob]) -> int:
    """C + Σ blocks + Σ leaves, each block once per job, counted from the texts."""
    total = 0
    for job in jobs:
        total += len(backend.encode(job.head))
        if job.leaves:
            used = {b for path in job.paths for b in path}
            total += sum(len(backend.encode(job.blocks[b])) for b in used)
            total += sum(len(backend.encode(leaf)) for leaf in job.leaves)
        else:
            total += sum(len(backend.encode(s)) for s in job.suffixes)
    return total


def score_with_budget(backend: TransformersBackend, jobs: list[ScoringJob], budget: int
                      ) -> tuple[list[Any], int]:
    """Scores and tokens processed with `max_chunk_tokens = budget` (the module's backend is
    shared: the default 1024 is restored)."""
    backend.max_chunk_tokens = budget
    try:
        return backend.score(jobs), backend.tokens_processed
    finally:
        backend.max_chunk_tokens = 1024


def assert_same_scores(shared: list[Any], alone: list[Any], expected: int) -> None:
    compared = 0
    for a, b in zip(shared, alone):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert isinstance(x, list) and isinstance(y, list)
            assert max(abs(p - r) for p, r in zip(x, y)) < 1e-4
            compared += 1
    assert compared == expected


# --- the factorisation and the IR ------------------------------------------------------


def test_qalign_tree_shares_principle_and_dimension_lines() -> None:
    program = Rubric.of(QALIGN).prompt_program
    roots = [b.text for b in program.blocks if b.parent is None]
    assert roots == ["Harmlessness\n", "Helpfulness\n", "Honesty\n"]
    first = program.path(0)
    assert [program.blocks[b].text for b in first] == [
        "Harmlessness\n", "Dimension: Language Sensitivity\n"]
    for q, suffix in enumerate(program.suffixes):
        # Exact: blocks + leaf is the question's full suffix, character for character.
        text = "".join(program.blocks[b].text for b in program.path(q))
        assert text + "".join(s for s in program.leaf(q) if isinstance(s, str)) == suffix[0]
        assert program.leaf(q) and program.leaf(q)[0].startswith("Question: ")


def test_version_1_files_load_as_a_fresh_compile() -> None:
    for name in ("qalign", "coding"):
        old = (V1 / f"{name}-v1.json").read_bytes()
        assert json.loads(old)["ir_version"] == 1
        upgraded = ir.loads(old, f"{name}-v1.json")
        assert upgraded["ir_version"] == ir.IR_VERSION == 2
        # The upgrade computes the same tree the compiler does: same bytes, same hash.
        assert ir.canonical_bytes(upgraded) == (ROOT / "compiled" / f"{name}.json").read_bytes()
        rubric = ir.load(old)
        assert rubric.prompt_program.blocks and len(rubric.prompt_program.paths) == len(
            rubric.questions)
    tampered = json.loads((V1 / "qalign-v1.json").read_bytes())
    tampered["questions"][0]["text"] = "Edited?"
    with pytest.raises(ir.InvalidIR, match="content hash"):
        ir.loads(json.dumps(tampered))
    # A version-1 file with version-2 fields is not version 1.
    mixed = json.loads((V1 / "coding-v1.json").read_bytes())
    mixed["prompt_program"]["blocks"] = []
    mixed["hash"] = ir.content_hash(mixed)
    with pytest.raises(ir.InvalidIR, match="schema violation at prompt_program"):
        ir.loads(json.dumps(mixed))
    future = dict(QALIGN, ir_version=3)
    with pytest.raises(ir.InvalidIR, match="versions 1, 2"):
        ir.loads(json.dumps(future))


def test_an_inconsistent_tree_is_refused() -> None:
    broken = json.loads(json.dumps(QALIGN))
    broken["prompt_program"]["paths"][0] = [1]  # a dimension block without its principle
    broken["hash"] = ir.content_hash(broken)
    with pytest.raises(ir.InvalidIR, match=r"prompt tree: paths\[0\]: block 1 does not "
                                           r"continue the path"):
        ir.loads(json.dumps(broken))
    wrong_text = json.loads(json.dumps(QALIGN))
    wrong_text["prompt_program"]["blocks"][0]["text"] = "Harmless\n"
    wrong_text["hash"] = ir.content_hash(wrong_text)
    with pytest.raises(ir.InvalidIR, match="not a proper prefix"):
        ir.loads(json.dumps(wrong_text))


# --- the judge: tree == independent prompts --------------------------------------------


@pytest.mark.parametrize(("document", "budget"), [(QALIGN, 8192), (CODING, 8192), (CODING, 300)],
                         ids=["qalign", "coding", "coding-chunked"])
def test_tree_scores_equal_independent_prompts(backend: TransformersBackend,
                                               document: dict[str, Any], budget: int) -> None:
    judge = Judge(document, backend)
    jobs = tree_jobs(judge, SAMPLE, direct_only=False)
    assert any(job.blocks for job in jobs)
    for job in jobs:  # the pieces tokenize exactly like each whole suffix
        for path, leaf, suffix in zip(job.paths, job.leaves, job.suffixes):
            pieces = [backend.encode(job.blocks[b]) for b in path] + [backend.encode(leaf)]
            assert [t for p in pieces for t in p] == backend.encode(suffix)
    shared, tokens = score_with_budget(backend, jobs, budget)
    alone = backend.score_unshared(jobs)
    assert_same_scores(shared, alone, sum(len(j.suffixes) for j in jobs))
    minimum = formula(backend, jobs)
    flat = sum(len(backend.encode(j.head)) + sum(len(backend.encode(s)) for s in j.suffixes)
               for j in jobs)
    if budget == 8192:
        assert tokens == minimum < flat
    else:  # chunks repeat the few blocks their leaves need
        assert minimum <= tokens <= flat
        assert tokens - minimum <= 8 * sum(len(j.blocks) for j in jobs)
    if document is QALIGN:
        assert minimum <= 0.85 * flat


def test_judge_scores_equal_flat_scores(backend: TransformersBackend) -> None:
    """The whole runtime (tree jobs, several samples packed to a pass) against the same
    judge fed a version-1 document, which has no tree."""
    samples = [SAMPLE, Sample("Hi", HARMFUL[0]), Sample("Plants?", BENIGN[4])]
    with_tree = Judge(QALIGN, backend).score(samples)
    flat_document = json.loads((V1 / "qalign-v1.json").read_bytes())
    flat = Judge(flat_document, backend).score(samples)
    assert with_tree.answered.all() and flat.answered.all()
    assert torch.allclose(with_tree.probabilities, flat.probabilities, atol=1e-4)


def test_short_samples_share_forward_passes(backend: TransformersBackend) -> None:
    judge = Judge(CODING, backend)
    samples = [Sample(f"Write add number {i}.", "def add(a, b):\n    return a + b\n")
               for i in range(3)]
    jobs = [job for s in samples for job in tree_jobs(judge, s)]
    calls = []
    hook = backend.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        backend.pack_tokens = 4096
        packed = backend.score(jobs)
        packed_calls, packed_tokens = len(calls), backend.tokens_processed
        backend.pack_tokens = 0  # each sample alone: one pass each
        calls.clear()
        alone = backend.score(jobs)
        alone_calls = len(calls)
        # Without packing a sample's scores do not depend on the others in the batch, to
        # the bit (`qalc score --shard` and resumed runs rely on it).
        assert backend.score(jobs[1:2]) == alone[1:2]
        backend.max_chunk_tokens = 64  # too long for one pass: head cached, then chunks
        calls.clear()
        single = backend.score(jobs)
        single_calls = len(calls)
    finally:
        hook.remove()
        backend.max_chunk_tokens, backend.pack_tokens = 1024, 0
    assert packed_calls == 1 and alone_calls == len(jobs) and single_calls > 2 * len(jobs)
    assert packed_tokens == formula(backend, jobs)
    questions = sum(len(j.suffixes) for j in jobs)
    assert_same_scores(packed, single, questions)
    assert_same_scores(alone, single, questions)
    assert_same_scores(packed, backend.score_unshared(jobs), questions)


def test_a_cut_the_tokenizer_would_merge_falls_back_to_a_flat_leaf(
        backend: TransformersBackend) -> None:
    """A hand-made job that cuts inside a word: the pieces tokenize differently from the
    whole, so that question runs flat and its score is still the full prompt's."""
    judge = Judge(QALIGN, backend)
    job = tree_jobs(judge, SAMPLE)[0]
    whole = job.suffixes[:2]
    cut = whole[0].index("Language") + 4  # "Lang" | "uage Sensitivity…"
    assert backend.encode(whole[0][:cut]) + backend.encode(whole[0][cut:]) \
        != backend.encode(whole[0])
    merged = ScoringJob(job.head, whole, job.label_tokens[:2], [], "",
                        blocks=[whole[0][:cut]], parents=[-1], paths=[[0], []],
                        leaves=[whole[0][cut:], whole[1]])
    scores = backend.score([merged])
    assert backend.tokens_processed == len(backend.encode(job.head)) + sum(
        len(backend.encode(s)) for s in whole)
    assert_same_scores(scores, backend.score_unshared([merged]), 2)


# --- a generated constitution ----------------------------------------------------------

WORDS = ["care", "truth", "safety", "clarity", "tone", "facts", "scope", "risk", "detail"]
LINES = ["Principle: {principle}", "Dimension: {dimension}", "  indented {dimension}", "",
         "{principle} / {dimension}", "Area: {principle}, {dimension}."]


def render(lines: list[str], body: list[str]) -> str:
    """A constitution whose judge template has `lines` after the response."""
    user = "\n".join(["Conversation:", "{prompt}", "", "Response:", "{response}", *lines])
    return f'''qal 1
scale grade {{
  A = 1.0
  B = 0.5
  F = -1.0
  NA = n/a
  score = expected
}}
scale verdict {{
  True = 1.0
  False = -1.0 fails
  NA = n/a
}}
template judge {{
  user = """
{user}
"""
}}
defaults {{
  scale binary = verdict
  scale graded = grade
  template = judge
  pool dimension = if failed(gates) then -1 else min(graded)
  pool principle = mean(dimensions)
}}
{chr(10).join(body)}
reward = mean(principles)
'''


@st.composite
def constitutions(draw: st.DrawFn) -> str:
    before = draw(st.lists(st.sampled_from(LINES), max_size=4))
    after = draw(st.permutations(["Labels: {labels}", *draw(
        st.lists(st.sampled_from(["", "Answer briefly."]), max_size=2))]))
    inline = draw(st.sampled_from(["Question: {question}", "{dimension}: {question}"]))
    body = []
    for p in range(draw(st.integers(1, 3))):
        body.append(f'principle "{draw(st.sampled_from(WORDS)).title()} {p}" {{')
        for d in range(draw(st.integers(1, 3))):
            body.append(f'  dimension "{draw(st.sampled_from(WORDS))} {p}.{d}" {{')
            body.append(f'    binary "Is the {draw(st.sampled_from(WORDS))} fine ({p}.{d})?"')
            for g in range(draw(st.integers(1, 3))):
                aspect = ("wording", "format", "reasoning")[g]
                body.append(f'    graded "How good is the {aspect} ({p}.{d}.{g})?"')
            body.append("  }")
        body.append("}")
    return render([*before, inline, *after], body)


# Found by the test below: the template's text after {response} starts with blanks, so the
# head's cut must not fall between "\n" and "  " (a byte-level BPE merges them).
INDENTED = render(["  indented {dimension}", "Question: {question}", "Labels: {labels}"], [
    'principle "Care 0" {', '  dimension "care 0.0" {', '    binary "Is the care fine?"',
    '    graded "How good is the wording?"', "  }", "}"])


def compiled(source: str) -> dict[str, Any]:
    result = compile_text(source, "generated.qal")
    assert result.document is not None, [d.message for d in result.diagnostics]
    return result.document


@settings(max_examples=60, deadline=None)
@given(constitutions())
def test_generated_trees_are_exact(source: str) -> None:
    document = compiled(source)
    program = Rubric.of(document).prompt_program
    for q, suffix in enumerate(program.suffixes):
        blocks = [program.blocks[b].text for b in program.path(q)]
        assert "".join(blocks) + "".join(s for s in program.leaf(q) if isinstance(s, str)) \
            == "".join(s for s in suffix if isinstance(s, str))
        for text in blocks:  # cuts only after a newline, before a non-blank character
            assert text.endswith("\n")
        if blocks:
            assert program.leaf(q)[0][:1] not in ("", " ", "\n")
    # Every block is shared by two or more questions.
    users: dict[int, int] = {}
    for q in range(len(program.suffixes)):
        for b in program.path(q):
            users[b] = users.get(b, 0) + 1
    assert all(users.get(b, 0) >= 2 for b in range(len(program.blocks)))
    assert ir.loads(ir.dumps(document)) == document


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(constitutions(), st.sampled_from([8192, 120]))
@example(INDENTED, 8192)
def test_generated_constitutions_score_like_independent_prompts(
        backend: TransformersBackend, source: str, budget: int) -> None:
    judge = Judge(compiled(source), backend)
    jobs = tree_jobs(judge, Sample("Is this safe?", HARMFUL[1]))
    shared, tokens = score_with_budget(backend, jobs, budget)
    assert_same_scores(shared, backend.score_unshared(jobs),
                       sum(len(j.suffixes) for j in jobs))
    if budget == 8192:
        assert tokens == formula(backend, jobs)
