"""`qalc distill`, the `student` judge backend, the cascade and the agreement report, on
real models: the teacher is the session's micro-judge (trained to fail micro.qal's
harmlessness questions on harm words), the student a tiny Llama sequence classifier trained
here by `qalc distill` on the teacher's answers to 500 responses.

Calibration on this CPU (the held-out split of 100 rows, seeds 0–2 and two data sets):
mean per-question agreement 0.98–1.00, failed-gate recall 1.00, reward Pearson 0.96–1.00,
GRPO advantage sign agreement 1.00, reward Spearman 0.85–0.93. Spearman is the weakest
measure here and for a reason: the toy teacher is saturated (rewards ≈ −1 or ≈ +1), so
Spearman mostly ranks differences of 1e-4 within each mode, which the student reproduces
only in part. The margins below sit under the lowest run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from judge_fixtures import micro, read_jsonl, write_jsonl

from qalign_dsl.cli import main
from qalign_dsl.training.tiny import MICRO_PROMPTS

pytest.importorskip("transformers")


@pytest.fixture
def world(distill_world: dict[str, Path]) -> dict[str, Path]:
    return distill_world


def test_the_student_is_a_standard_sequence_classifier(world: dict[str, Path]) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(world["student"]))
    document = micro()
    labels = [f"{q['id']}={label}" for q in document["questions"] for label in q["labels"]]
    assert model.config.num_labels == len(labels)
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    meta = json.loads((world["student"] / "qalign_student.json").read_text())
    assert meta["rubric_hash"] == document["hash"]
    assert [h["id"] for h in meta["heads"]] == [q["id"] for q in document["questions"]]
    assert all(len(h["fingerprint"]) == 16 and h["reliable"] for h in meta["heads"])
    assert meta["teacher"] and meta["data_hash"] and meta["weights_sha256"]
    assert meta["metrics"]["heldout_samples"] > 50


def test_heldout_agreement_with_the_teacher(world: dict[str, Path]) -> None:
    report = json.loads((world["student"] / "qalign_student.json").read_text())["metrics"]
    summary = {k: report[k] for k in ("mean_question_agreement", "failed_gate_recall",
                                      "reward_pearson", "reward_spearman",
                                      "advantage_sign_agreement", "group_rank_agreement")}
    assert report["mean_question_agreement"] >= 0.9, summary
    assert report["failed_gate_recall"] >= 0.9, summary
    assert report["reward_pearson"] >= 0.9, summary
    assert report["reward_spearman"] >= 0.8, summary
    assert report["advantage_sign_agreement"] >= 0.9, summary
    low, high = report["reward_spearman_ci"]
    assert low <= report["reward_spearman"] <= high
    assert report["unlearned"] == []


def test_validate_student_reproduces_the_distill_report(
        world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["validate", str(world["compiled"]), str(world["student"] / "heldout.jsonl"),
                 "--backend", "student", "--judge", str(world["student"]), "--json",
                 "--no-cache"]) == 0
    report = json.loads(capsys.readouterr().out)
    saved = json.loads((world["student"] / "qalign_student.json").read_text())["metrics"]
    for key in ("mean_question_agreement", "reward_pearson", "reward_spearman",
                "failed_gate_recall"):
        assert report[key] == pytest.approx(saved[key], abs=1e-3), key


def test_score_with_the_student_and_the_cascade(world: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "few.jsonl", read_jsonl(world["data"])[:24])
    common = ["score", str(world["compiled"]), str(data), "--backend", "student", "--judge",
              str(world["student"]), "--no-cache"]
    assert main([*common, "-o", str(tmp_path / "student.jsonl")]) == 0
    student = read_jsonl(tmp_path / "student.jsonl")
    assert len(student) == 24 and all(len(r["answers"]) == 4 for r in student)
    teacher = {r["id"]: r for r in read_jsonl(world["scored"])}
    capsys.readouterr()
    cascade = [*common, "--cascade-judge", str(world["teacher"]), "--below-confidence"]
    assert main([*cascade, "1.0", "-o", str(tmp_path / "all.jsonl")]) == 0
    assert "96 of 96 fresh answer(s) (100.0%) went to the teacher" in capsys.readouterr().err
    for row in read_jsonl(tmp_path / "all.jsonl"):
        assert row["answers"] == teacher[row["id"]]["answers"]
        assert row["reward"] == pytest.approx(teacher[row["id"]]["reward"], abs=1e-5)
    assert main([*cascade, "0", "-o", str(tmp_path / "none.jsonl")]) == 0
    assert "0 of 96 fresh answer(s) (0.0%)" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "none.jsonl") == student
    # At the median of the student's confidences, about half of the answers escalate.
    confidences = sorted(max(answer.values()) for row in student
                         for answer in row["answers"].values())
    # (Halfway between two distinct values: the output's 6 decimals hide exact ties.)
    middle = len(confidences) // 2
    above = next(c for c in confidences[middle:] if c - confidences[middle] > 1e-5)
    threshold = (confidences[middle] + above) / 2
    assert main([*cascade, str(threshold), "-o", str(tmp_path / "some.jsonl")]) == 0
    err = capsys.readouterr().err
    escalated = int(err.split("cascade: ")[1].split(" of ")[0])
    assert escalated == sum(c < threshold for c in confidences), err
    assert 0 < escalated < 96, err


def test_a_recipe_judge_section_with_a_cascade_builds_one(world: dict[str, Path]) -> None:
    from qalign_dsl.judge.runtime import Sample, judge_from_spec
    from qalign_dsl.judge.spec import JudgeSpec

    spec = JudgeSpec.from_mapping({"backend": "student", "model": str(world["student"]),
                                   "cascade": {"teacher": {"model": str(world["teacher"])},
                                               "below_confidence": 1.0}})
    judge = judge_from_spec(micro(), spec)
    result = judge.score([Sample("How do I do this?", "Bake the bread.")])
    assert result.escalated == 4 and result.student_answers == 0
    assert bool(result.answered.all())


def _compile(text: str, folder: Path) -> Path:
    source = folder / "changed.qal"
    source.write_text(text, encoding="utf-8")
    assert main(["compile", str(source), "-o", str(folder / "changed.json")]) == 0
    return folder / "changed.json"


def test_a_student_for_another_rubric_is_refused(world: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "tests" / "data" / "judge" / "micro.qal").read_text(encoding="utf-8")
    reworded = _compile(text.replace('"Is it safe?"', '"Is it harmless?"'), tmp_path)
    data = write_jsonl(tmp_path / "one.jsonl", read_jsonl(world["data"])[:2])
    capsys.readouterr()
    assert main(["score", str(reworded), str(data), "--backend", "student", "--judge",
                 str(world["student"]), "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert "trained for another rubric" in err and "physical_harm.gate" in err
    assert "reworded" in err and "Traceback" not in err


def test_a_question_added_after_distillation_is_na_unless_a_teacher_answers(
        world: dict[str, Path], tmp_path: Path) -> None:
    text = (ROOT / "tests" / "data" / "judge" / "micro.qal").read_text(encoding="utf-8")
    added = _compile(text.replace('    graded "How useful is it?" as grade\n',
                                  '    graded "How useful is it?" as grade\n'
                                  '    binary "Is it polite?" as polite\n'), tmp_path)
    data = write_jsonl(tmp_path / "one.jsonl", read_jsonl(world["data"])[:3])
    out = tmp_path / "out.jsonl"
    assert main(["score", str(added), str(data), "--backend", "student", "--judge",
                 str(world["student"]), "--no-cache", "-o", str(out)]) == 0
    for row in read_jsonl(out):
        assert "relevance.polite" not in row["answers"]
        assert row["failures"]["relevance.polite"].startswith("not in the student")
    assert main(["score", str(added), str(data), "--backend", "student", "--judge",
                 str(world["student"]), "--no-cache", "-o", str(tmp_path / "c.jsonl"),
                 "--cascade-judge", str(world["teacher"]), "--below-confidence", "0"]) == 0
    for row in read_jsonl(tmp_path / "c.jsonl"):
        assert "relevance.polite" in row["answers"] and "failures" not in row


@pytest.mark.parametrize("response", [
    "", ":", "Thought process:", "{prompt}",
    "I'm sorry, but I can't help with that.",
])
def test_degenerate_responses_do_not_fool_the_student_more_than_the_teacher(
        world: dict[str, Path], response: str) -> None:
    from qalign_dsl.api import make_judge, score
    from qalign_dsl.ir import Rubric

    rubric = Rubric.of(micro())
    prompt = MICRO_PROMPTS[0]
    pairs = [(prompt, response.replace("{prompt}", prompt))]
    student = score(rubric, make_judge(rubric, {"backend": "student",
                                                "model": str(world["student"])}), pairs)
    teacher = score(rubric, make_judge(rubric, {"model": str(world["teacher"])}), pairs)
    assert student[0]["reward"] <= teacher[0]["reward"] + 0.1, (student, teacher)


# --- bad input ------------------------------------------------------------------------------

def _distill(world: dict[str, Path], answers: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", str(world["compiled"]), str(world["data"]), "--base",
            str(world["base"]), "--teacher-answers", str(answers), "-o", str(out), *extra]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: {**r, "answers": {**r["answers"], "nope.q": {"True": 1.0}}},
     "unknown question id `nope.q`"),
    (lambda r: {**r, "answers": {**r["answers"], "physical_harm.gate": {"True": -0.5,
                                                                        "False": 1.5}}},
     "physical_harm.gate"),
    (lambda r: {**r, "answers": {**r["answers"], "physical_harm.gate": {"True": float("nan"),
                                                                        "False": 1.0}}},
     "`NaN` is not a JSON number"),
    (lambda r: {**r, "id": "not-in-data"}, "id `not-in-data` is not in DATA"),
    (lambda r: {**r, "prompt": "only a prompt"}, "needs both `prompt` and `response`"),
])
def test_bad_teacher_answers_are_located(world: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], edit: Any,
                                         message: str) -> None:
    records = read_jsonl(world["scored"])[:30]
    records[7] = edit(records[7])
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    capsys.readouterr()
    assert main(_distill(world, answers, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f"{answers}:8" in err and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_duplicate_ids_and_unlearnable_questions(world: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    records = read_jsonl(world["scored"])[:30]
    answers = write_jsonl(tmp_path / "dup.jsonl", records + [records[3]])
    capsys.readouterr()
    assert main(_distill(world, answers, tmp_path / "out")) == 1
    assert "duplicate id `r3`" in capsys.readouterr().err
    # A question the teacher never answered: named with its count, its head unreliable.
    for record in records:
        record["answers"].pop("relevance.grade")
    answers = write_jsonl(tmp_path / "partial.jsonl", records)
    assert main(_distill(world, answers, tmp_path / "out", "--epochs", "1")) == 0
    err = capsys.readouterr().err
    assert "question `relevance.grade`: only 0 teacher answer(s)" in err
    heads = json.loads((tmp_path / "out" / "qalign_student.json").read_text())["heads"]
    assert [h["reliable"] for h in heads] == [True, True, True, False]
    out = tmp_path / "scored.jsonl"
    assert main(["score", str(world["compiled"]), str(world["data"]), "--backend", "student",
                 "--judge", str(tmp_path / "out"), "--no-cache", "-o", str(out)]) == 0
    first = read_jsonl(out)[0]
    assert "unreliable" in first["failures"]["relevance.grade"]


def test_not_a_student_folder_and_a_short_context(world: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from qalign_dsl.training.tiny import build_llama

    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert main(["score", str(world["compiled"]), str(world["data"]), "--backend", "student",
                 "--judge", str(tmp_path / "empty"), "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert "not a student folder: no qalign_student.json" in err and "Traceback" not in err
    short = build_llama(tmp_path / "short", world["base"], max_positions=24)
    assert main(["distill", str(world["compiled"]), str(world["data"]), "--base", str(short),
                 "--teacher-answers", str(world["scored"]), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "longer than the student reads (24 tokens)" in err and "`r" in err
    assert not (tmp_path / "out").exists()


def test_distill_resumes_after_kill_9(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "student"
    state = tmp_path / ".student.distill-state" / "state.pt"
    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(world["data"])[:60])
    answers = write_jsonl(tmp_path / "answers.jsonl", read_jsonl(world["scored"])[:60])
    command = [sys.executable, "-m", "qalign_dsl", "distill", str(world["compiled"]), str(data),
               "--base", str(world["base"]), "--teacher-answers", str(answers), "-o", str(out),
               "--epochs", "40", "--patience", "40", "--checkpoint-every", "2",
               "--batch-size", "8", "--learning-rate", "2e-3", "--bootstrap", "20"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert state.exists(), process.stderr.read().decode() if process.stderr else ""
    assert not out.exists()  # nothing half-written
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed from step" in done.stderr
    assert (out / "qalign_student.json").is_file() and not state.parent.exists()


def test_teacher_judged_here_lora_and_the_recipe_form(world: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--judge judges DATA inside distill (cached); --lora-r trains adapters, merged into a
    plain checkpoint; a recipe's judge section resolves the student and its teacher."""
    from qalign_dsl.training.config import load_config

    data = write_jsonl(tmp_path / "data.jsonl", read_jsonl(world["data"])[:60])
    out = tmp_path / "lora"
    argv = ["distill", str(world["compiled"]), str(data), "--base", str(world["base"]),
            "--judge", str(world["teacher"]), "--cache", str(tmp_path / "cache.sqlite"),
            "-o", str(out), "--lora-r", "4", "--epochs", "1", "--min-answers", "1"]
    assert main(argv) == 0
    meta = json.loads((out / "qalign_student.json").read_text())
    assert meta["teacher"].startswith("transformers:")
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    teacher = {r["id"]: r for r in read_jsonl(world["scored"])}
    for row in (json.loads(line) for line in (out / "heldout.jsonl").open()):
        for question, answer in row["answers"].items():
            expected = teacher[row["id"]]["answers"][question]
            assert answer == pytest.approx(expected, abs=1e-5)
    recipe = tmp_path / "grpo.yaml"
    (tmp_path / "judge").symlink_to(world["teacher"])
    recipe.write_text(
        f"model: {world['base']}\nconstitution: {world['compiled']}\ndata: {data}\n"
        "output_dir: run\njudge:\n  backend: student\n  model: ./lora\n"
        "  cascade:\n    teacher: {model: ./judge}\n    below_confidence: 0.9\n"
        "  audit:\n    teacher: {model: ./judge}\n    fraction: 0.5\n    stop_on_gap: true\n",
        encoding="utf-8")
    config = load_config(recipe, "grpo")
    assert config.judge is not None and config.judge.backend == "student"
    assert config.judge.model == str(out)
    assert config.judge.cascade is not None and config.judge.audit is not None
    assert config.judge.cascade.teacher.model == str((tmp_path / "judge").resolve())
    assert config.judge.audit.stops


def test_short_circuit_with_a_student_keeps_the_reward(world: dict[str, Path]) -> None:
    from qalign_dsl.evaluate.aggregate import CompiledRubric
    from qalign_dsl.judge.runtime import Sample, judge_from_spec
    from qalign_dsl.judge.spec import JudgeSpec

    samples = [Sample(r["prompt"], r["response"]) for r in read_jsonl(world["data"])[:16]]
    compiled = CompiledRubric(micro())
    rewards = []
    for mode in ("off", "reward"):
        spec = JudgeSpec(backend="student", model=str(world["student"]), short_circuit=mode)
        result = judge_from_spec(micro(), spec, short_circuit=mode).score(samples)
        rewards.append(compiled.evaluate(result.probabilities, result.answered).reward.to_list())
    assert rewards[0] == rewards[1]


def test_learned_thresholds_escalate_per_question(world: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`thresholds: learned`: each head's threshold from the held-out split (the lowest
    confidence from which it agrees with the teacher 95% of the time) decides alone."""
    heads = json.loads((world["student"] / "qalign_student.json").read_text())["heads"]
    thresholds = {h["id"]: h["threshold"] for h in heads}
    assert all(t is not None and 0.0 < t <= 1.0 for t in thresholds.values()), thresholds
    data = write_jsonl(tmp_path / "few.jsonl", read_jsonl(world["data"])[:24])
    common = ["score", str(world["compiled"]), str(data), "--backend", "student", "--judge",
              str(world["student"]), "--no-cache"]
    assert main([*common, "-o", str(tmp_path / "student.jsonl")]) == 0
    # (The output's 6 decimals cannot tell a confidence from a threshold within 1e-6.)
    gaps = [max(answer.values()) - thresholds[question]
            for row in read_jsonl(tmp_path / "student.jsonl")
            for question, answer in row["answers"].items()]
    below, ties = sum(g < -1e-6 for g in gaps), sum(abs(g) <= 1e-6 for g in gaps)
    capsys.readouterr()
    assert main([*common, "--cascade-judge", str(world["teacher"]), "--cascade-thresholds",
                 "learned", "-o", str(tmp_path / "learned.jsonl")]) == 0
    err = capsys.readouterr().err
    escalated = int(err.split("cascade: ")[1].split(" of ")[0])
    assert below <= escalated <= below + ties, (err, thresholds)


@pytest.mark.vllm
def test_vllm_serves_the_student_folder_as_a_classifier(world: dict[str, Path]) -> None:
    """The folder is a standard sequence classifier: vLLM's pooling runner loads it without
    our code, and its outputs, renormalized within each question, are the student's."""
    import torch

    from qalign_dsl.judge.backends.student import StudentBackend
    from qalign_dsl.judge.student import conversation_text

    python = Path(os.environ.get("QALC_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
    if not python.exists():
        pytest.skip(f"no vLLM environment at {python} (set QALC_VLLM_PYTHON)")
    backend = StudentBackend(str(world["student"]))
    pairs = [(r["prompt"], r["response"]) for r in read_jsonl(world["data"])[:4]]
    sequences = [backend.encode(conversation_text(backend.tokenizer, p, r,
                                                  backend.meta.input_format))
                 for p, r in pairs]
    completed = subprocess.run(
        [str(python), str(ROOT / "tests" / "vllm_student_check.py"), str(world["student"]),
         json.dumps(sequences)], capture_output=True, text=True, timeout=900,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-3000:]
    served = torch.tensor(json.loads(lines[0][len("RESULT "):]))
    heads = torch.cat([served[:, h.offset: h.offset + len(h.labels)]
                       / served[:, h.offset: h.offset + len(h.labels)].sum(-1, keepdim=True)
                       for h in backend.meta.heads], dim=-1)
    ours, _ = backend.score_samples(pairs)
    assert (heads - ours).abs().max() < 2e-3
