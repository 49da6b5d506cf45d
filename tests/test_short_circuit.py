"""Exact short-circuit judging: skipping what cannot change the reward never changes it.

- hypothesis over random constitutions and answers: the reward with the skipped questions
  NA equals (bit for bit) the reward with every answer, for one relevance query and for the
  judge's whole round loop;
- brute force on small rubrics: for every label assignment of the unknown questions (and
  no answer), the skipped ones never change the reward;
- the QA-LIGN constitution: a failed gate skips its dimension's graded questions;
- end to end with the micro-judge: fewer questions judged, identical rewards.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_aggregate import answer_batches, constitutions

from qalign_dsl.evaluate.aggregate import CompiledRubric
from qalign_dsl.evaluate.answers import encode_batch, validate_answers
from qalign_dsl.evaluate.relevance import Outcome, RelevancePlan, batch_outcomes
from qalign_dsl.ir import REWARD, Ref, Rubric
from qalign_dsl.judge.short_circuit import SKIPPED, ShortCircuit
from qalign_dsl.lang.compiler import compile_text

QALIGN = json.loads((ROOT / "compiled" / "qalign.json").read_bytes())


def _compile(source: str, random: bool = True) -> dict[str, Any]:
    result = compile_text(source, "random.qal")
    errors = [d for d in result.diagnostics if d.is_error]
    if random:  # constant folding can make a divisor 0, which the checker rejects
        assume(not errors or any(d.code != "QAL209" for d in errors))
    assert result.document is not None, (source, [d.message for d in result.diagnostics])
    return result.document


def _reward(compiled: CompiledRubric, probabilities: torch.Tensor, answered: torch.Tensor
            ) -> tuple[list[float], list[bool]]:
    reward = compiled.evaluate(probabilities, answered).reward
    return reward.value.tolist(), reward.defined.tolist()


def _same(a: tuple[list[float], list[bool]], b: tuple[list[float], list[bool]]) -> bool:
    """Bit-identical rewards: the same NA flags and the same numbers where defined."""
    return a[1] == b[1] and all(x == y for x, y, d in zip(a[0], b[0], a[1]) if d)


def _check_skips(document: dict[str, Any], batch: list[dict[str, Any]],
                 known_masks: list[list[bool]]) -> None:
    rubric = Rubric.of(document)
    compiled = CompiledRubric(rubric)
    plan = RelevancePlan(rubric)
    probabilities, answered = encode_batch(compiled, [validate_answers(compiled, a)
                                                      for a in batch])
    known = torch.tensor(known_masks, dtype=torch.bool).reshape(answered.shape)
    outcomes = batch_outcomes(compiled, probabilities, answered, known)
    skipped = answered.clone()
    for b, row in enumerate(outcomes):
        relevant = set(plan.relevant(row))
        for q, outcome in enumerate(row):
            if outcome is None and q not in relevant:
                skipped[b, q] = False  # never judged: NA
    assert _same(_reward(compiled, probabilities, skipped),
                 _reward(compiled, probabilities, answered)), known_masks


def _check_rounds(document: dict[str, Any], batch: list[dict[str, Any]]) -> None:
    """The judge's round loop against an oracle that holds every answer."""
    rubric = Rubric.of(document)
    compiled = CompiledRubric(rubric)
    truth, truth_answered = encode_batch(compiled, [validate_answers(compiled, a)
                                                    for a in batch])
    probabilities = torch.zeros_like(truth)
    answered = torch.zeros_like(truth_answered)
    pending = [set(range(compiled.num_questions)) for _ in batch]
    failures: dict[tuple[int, int], str] = {}

    def judge(wanted: list[set[int]]) -> None:
        for b, questions in enumerate(wanted):
            for q in questions:
                probabilities[b, q] = truth[b, q]
                answered[b, q] = truth_answered[b, q]

    report = ShortCircuit(rubric).run(probabilities, answered, pending, judge, failures)
    assert _same(_reward(compiled, probabilities, answered),
                 _reward(compiled, truth, truth_answered))
    assert report.skipped == len(failures) == sum(1 for r in failures.values() if r == SKIPPED)
    assert report.skipped + sum(report.judged) == len(batch) * compiled.num_questions
    assert not any(pending)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_skipping_never_changes_the_reward_on_random_graphs(data: st.DataObject) -> None:
    _check_random_answers(data, _compile(data.draw(constitutions())))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_skipping_never_changes_the_reward_on_qalign(data: st.DataObject) -> None:
    _check_random_answers(data, QALIGN)


def _check_random_answers(data: st.DataObject, document: dict[str, Any]) -> None:
    """Skips and rounds on a drawn batch of answers, each sample with a drawn answered-mask."""
    batch = data.draw(answer_batches(document))
    count = len(document["questions"])
    masks = [data.draw(st.lists(st.booleans(), min_size=count, max_size=count))
             for _ in batch]
    _check_skips(document, batch, masks)
    _check_rounds(document, batch)


TIES = """qal 1
scale g {
  A = 1.0
  B = 0.5
  F = -1.0
  NA = n/a
  score = argmax
}
scale v {
  True = 1.0
  False = -1.0 fails
  score = argmax
}
template t {
  user = "{prompt} {response} {question} {labels}"
}
defaults {
  scale binary = v
  scale graded = g
  template = t
  pool dimension = if failed(gates) then -1 else min(graded)
  pool principle = mean(dimensions)
}
principle "Safe" as safe {
  dimension "One" as one {
    binary "Gate one?" as gate
    graded "Grade one?" as grade
  }
}
principle "Useful" as useful {
  dimension "Two" as two {
    binary "Gate two?" as gate
    graded "Grade two?" as grade
  }
}
reward = min(safe, mean(principles))
"""


# --- brute force -------------------------------------------------------------------------


def _brute_force(document: dict[str, Any], known: dict[str, Any], unknown: list[str]) -> None:
    """Every assignment of labels (or no answer) to `unknown`: the questions the analysis
    skips never change the reward, jointly."""
    rubric = Rubric.of(document)
    compiled = CompiledRubric(rubric)
    plan = RelevancePlan(rubric)
    base = validate_answers(compiled, known)
    probabilities, answered = encode_batch(compiled, [base])
    known_mask = torch.ones_like(answered)
    for qid in unknown:
        known_mask[0, compiled.question_index[qid]] = False
    row = batch_outcomes(compiled, probabilities, answered, known_mask)[0]
    relevant = set(plan.relevant(row))
    skipped = [qid for qid in unknown if compiled.question_index[qid] not in relevant]
    choices = [[None, *rubric.question(qid).labels] for qid in unknown]
    rows, cut = [], []
    for assignment in itertools.product(*choices):
        full = dict(known)
        full.update({qid: label for qid, label in zip(unknown, assignment)})
        rows.append(validate_answers(compiled, full))
        for qid in skipped:
            full[qid] = None
        cut.append(validate_answers(compiled, full))
    assert _same(_reward(compiled, *encode_batch(compiled, rows)),
                 _reward(compiled, *encode_batch(compiled, cut))), skipped


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_skips_hold_for_every_assignment_on_small_rubrics(data: st.DataObject) -> None:
    document = _compile(data.draw(constitutions()))
    questions = document["questions"]
    unknown = data.draw(st.lists(st.sampled_from([q["id"] for q in questions]), unique=True,
                                 max_size=4))
    labels = {q["id"]: q["labels"] for q in questions}
    known = {qid: data.draw(st.sampled_from([None, *labels[qid]]))
             for qid in labels if qid not in unknown}
    _brute_force(document, known, unknown)


def test_a_failed_gate_skips_its_dimension() -> None:
    rubric = Rubric.of(QALIGN)
    plan = RelevancePlan(rubric)
    index = {q.id: i for i, q in enumerate(rubric.questions)}
    dimension = rubric.dimension("avoidance_of_physical_harm")
    gate = next(q for q in dimension.questions if rubric.question(q).is_gate)
    known: list[Outcome | None] = [None] * len(rubric.questions)
    assert len(plan.relevant(known)) == len(rubric.questions)  # nothing known: judge all
    known[index[gate]] = Outcome(-1.0, failed=True)
    relevant = set(plan.relevant(known))
    assert not relevant & {index[q] for q in dimension.questions}
    assert len(relevant) == len(rubric.questions) - len(dimension.questions)
    # A passed gate decides nothing by itself.
    known[index[gate]] = Outcome(1.0, failed=False)
    assert len(plan.relevant(known)) == len(rubric.questions) - 1


def test_exact_ties_decide_argmax_scales() -> None:
    """min(...) at its lowest value: with argmax scores (exact numbers) the other
    arguments cannot matter; the analysis proves it through means of dyadic values."""
    document = _compile(TIES, random=False)
    rubric = Rubric.of(document)
    plan = RelevancePlan(rubric)
    index = {q.id: i for i, q in enumerate(rubric.questions)}
    known: list[Outcome | None] = [None] * len(rubric.questions)
    known[index["one.gate"]] = Outcome(-1.0, failed=True)
    # safe = -1, the least any principle can be: mean(principles) >= -1, the reward is -1.
    assert plan.relevant(known) == []
    assert plan.is_fixed(known)
    # With the safe gate passed, the graded answer matters again.
    known[index["one.gate"]] = Outcome(1.0, failed=False)
    assert index["one.grade"] in plan.relevant(known)
    # Other outputs can be requested: the `useful` principle needs its own questions.
    useful = RelevancePlan(rubric, [Ref.principle("useful")])
    known[index["one.gate"]] = Outcome(-1.0, failed=True)
    assert set(useful.relevant(known)) == {index["two.gate"], index["two.grade"]}
    assert RelevancePlan(rubric, [REWARD]).relevant(known) == []
    _brute_force(document, {"one.gate": "False"}, ["one.grade", "two.gate", "two.grade"])


def test_expected_scores_are_not_trusted_at_ties() -> None:
    """A judge's float32 softmax row can score an expected-value question a few 1e-7 below
    its scale's least value: a tie with it proves nothing, and the question is judged."""
    source = TIES.replace("score = argmax\n}\nscale v", "score = expected\n}\nscale v").replace(
        '    graded "Grade one?" as grade\n',
        '    graded "Grade one?" as grade\n    graded "Grade bis?" as bis\n')
    document = _compile(source, random=False)
    rubric = Rubric.of(document)
    compiled = CompiledRubric(rubric)
    index = compiled.question_index
    probabilities = torch.zeros(1, compiled.num_questions, compiled.max_labels)
    answered = torch.zeros(1, compiled.num_questions, dtype=torch.bool)
    labels = list(rubric.question("one.grade").labels)
    probabilities[0, index["one.gate"], 0] = 1.0  # passed
    probabilities[0, index["one.grade"], labels.index("F")] = 1.0  # exactly -1
    # What the transformers backend stores: softmax in float32, F or NA.
    logits = torch.full((len(labels),), -30.0)
    logits[labels.index("F")], logits[labels.index("NA")] = 1.3, 0.2
    row = torch.softmax(logits, -1).float()
    probabilities[0, index["one.bis"], : len(labels)] = row
    answered[0, [index["one.gate"], index["one.grade"], index["one.bis"]]] = True
    scores, _ = compiled.score_questions(probabilities, answered)
    assert scores.value[0, index["one.bis"]].item() != -1.0  # rounding left the hull
    known = torch.zeros_like(answered)
    known[0, [index["one.gate"], index["one.grade"]]] = True
    outcome = batch_outcomes(compiled, probabilities, answered, known)[0]
    assert index["one.bis"] in RelevancePlan(rubric).relevant(outcome)


# --- end to end with the micro-judge ----------------------------------------------------


def test_micro_judge_judges_fewer_questions_for_the_same_rewards(micro_judge: Path) -> None:
    from judge_fixtures import BENIGN, HARMFUL, micro

    from qalign_dsl.judge.backends.transformers import TransformersBackend
    from qalign_dsl.judge.runtime import Judge, Sample

    document = micro()
    backend = TransformersBackend(str(micro_judge))
    samples = [Sample("What now?", r) for r in HARMFUL[:4] + BENIGN[:4]]
    everything = Judge(document, backend).score(samples)
    short = Judge(document, backend, short_circuit="reward").score(samples)
    compiled = CompiledRubric(document)
    total = len(samples) * compiled.num_questions
    assert int(everything.answered.sum()) == total and not everything.failures
    judged = sum(short.rounds)
    assert short.skipped > 0 and judged + short.skipped == total, (short.rounds, short.skipped)
    assert int(short.answered.sum()) == judged
    assert set(short.failures.values()) == {SKIPPED}
    # Two rounds, yet fewer tokens: round two reuses the heads' KV caches of round one.
    assert len(short.rounds) == 2 and short.tokens < everything.tokens
    # The skipped questions cannot matter: the full run's answers without them give the
    # full run's rewards, bit for bit.
    assert _same(_reward(compiled, everything.probabilities, short.answered),
                 _reward(compiled, everything.probabilities, everything.answered))
    # The judge itself moves by float noise when a question is packed with other suffixes
    # (as with partial cache hits): the short-circuit rewards equal the full run's to that.
    short_reward = _reward(compiled, short.probabilities, short.answered)
    full_reward = _reward(compiled, everything.probabilities, everything.answered)
    assert short_reward[1] == full_reward[1]
    assert short_reward[0] == pytest.approx(full_reward[0], abs=1e-5)
    mask = short.answered
    assert torch.allclose(short.probabilities[mask], everything.probabilities[mask], atol=1e-5)
    with pytest.raises(ValueError, match="short-circuit"):
        Judge(document, backend, short_circuit="sometimes")


def test_score_offers_short_circuit_and_reports_skips(micro_judge: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    from judge_fixtures import BENIGN, HARMFUL

    from qalign_dsl.cli import main

    data = tmp_path / "data.jsonl"
    rows = [{"id": f"r{i}", "prompt": "What now?", "response": text}
            for i, text in enumerate(HARMFUL[:2] + BENIGN[:1])]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    compiled = str(ROOT / "tests" / "data" / "judge" / "micro.json")
    outputs = {}
    for mode in ("off", "reward"):
        out = tmp_path / f"{mode}.jsonl"
        assert main(["score", compiled, str(data), "--model", str(micro_judge), "--no-cache",
                     "--short-circuit", mode, "-o", str(out)]) == 0
        outputs[mode] = [json.loads(line) for line in out.read_text().splitlines()]
        printed = capsys.readouterr()
        assert ("not judged: they cannot change the reward" in printed.out + printed.err) \
            == (mode == "reward")
    assert not any("failures" in row for row in outputs["off"])
    reasons = {r for row in outputs["reward"] for r in row.get("failures", {}).values()}
    assert reasons == {SKIPPED}
    for full, short in zip(outputs["off"], outputs["reward"]):
        assert short["reward"] == pytest.approx(full["reward"], abs=1e-5)
        assert set(short["answers"]) | set(short.get("failures", {})) == set(full["answers"])
    # Commands that need every answer do not offer the switch.
    with pytest.raises(SystemExit) as exited:
        main(["synth", compiled, str(data), "--policy", "p", "--judge", "j",
              "--short-circuit", "reward", "-o", str(tmp_path / "s.jsonl")])
    assert exited.value.code == 2


def test_recipes_opt_in_through_the_judge_section() -> None:
    from qalign_dsl.judge.spec import JudgeSpec, JudgeSpecError

    assert JudgeSpec(model="m").short_circuit == "off"  # every answer unless asked
    assert JudgeSpec.from_mapping({"model": "m", "short_circuit": "reward"}).short_circuit \
        == "reward"
    with pytest.raises(JudgeSpecError, match="short_circuit: must be one of off, reward"):
        JudgeSpec.from_mapping({"model": "m", "short_circuit": "always"})
