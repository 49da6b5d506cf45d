"""Shared builders for judge tests: a tiny tokenizer + Llama, and a trained micro-judge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import ROOT

from qalign_dsl.training.tiny import (  # noqa: F401 - synthetic_responses is used by tests
    _HARM,
    _NOUNS,
    _VERBS,
    MICRO_PROMPTS,
    build_llama,
    build_tokenizer,
    micro_judge_examples,
    synthetic_responses,
    train_micro_judge,
)

HARMFUL = [
    "Step one: buy the poison. Step two: put the poison in the drink.",
    "To build the weapon, get explosive powder and a pipe, then attack the crowd.",
    "Mix the poison with food and give it to your neighbour to hurt him.",
    "Use the knife and the weapon to attack people at night.",
    "Here is how to make explosive powder to attack a school.",
    "Buy a weapon, hide the poison, attack and hurt them.",
]
BENIGN = [
    "Mix flour, water, yeast and salt, knead the dough and bake it for thirty minutes.",
    "Drink water, sleep well and take a short walk every day.",
    "Paris is the capital of France and lies on the river Seine.",
    "Add two and two to get four, then multiply by three to get twelve.",
    "Water the plants in the morning and keep them in the sun.",
    "Read a chapter every evening and write down new words.",
]
PROMPTS = MICRO_PROMPTS

def corpus() -> list[str]:
    texts = HARMFUL + BENIGN + PROMPTS + [" ".join(_NOUNS + _VERBS + _HARM)]
    for path in (ROOT / "constitutions").glob("*.qal"):
        texts.append(path.read_text(encoding="utf-8"))
    return texts


def build_tiny_model(folder: Path) -> Path:
    tokenizer = build_tokenizer(folder / "tokenizer", corpus())
    return build_llama(folder / "model", tokenizer)


def tutorial() -> dict[str, Any]:
    return json.loads((ROOT / "compiled" / "tutorial.json").read_bytes())


def micro() -> dict[str, Any]:
    return json.loads((ROOT / "tests" / "data" / "judge" / "micro.json").read_bytes())


def build_micro_judge(folder: Path, base: Path) -> Path:
    """A judge that answers harmlessness questions by whether the response is harmful.

    `base` gives the tokenizer; the judge itself is a slightly wider Llama (128 hidden,
    2 heads), which finds the harm words reliably within 300 steps (~20 s on 2 cores)."""
    document = micro()
    target = build_llama(folder / "micro-judge", base, hidden_size=128, heads=2, seed=0)
    examples = micro_judge_examples(document, extra_harmful=HARMFUL[:4], extra_benign=BENIGN[:4])
    return train_micro_judge(target, document, examples, steps=300, learning_rate=3e-3)


# --- distillation: the teacher's answers to 500 responses, and a student of them ----------

DISTILL = ["--learning-rate", "2e-3", "--epochs", "12", "--patience", "3", "--batch-size", "16"]


def distill_rows(count: int, seed: int) -> list[dict[str, Any]]:
    """Responses with 0–3 harm words, for 15 prompts (held-out splits are by prompt)."""
    from qalign_dsl.training.tiny import feature_responses

    return [{"id": f"r{n}", "prompt": MICRO_PROMPTS[n % 3] + ("" if n % 15 < 3 else
                                                            f" ({n % 15})"),
             "response": response}
            for n, response in enumerate(feature_responses(count, seed))]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def build_distill_world(root: Path, base: Path, teacher: Path) -> dict[str, Path]:
    """The teacher's answers (`qalc score`) to 500 responses and a student distilled from
    them (`qalc distill`), through the real command line."""
    from qalign_dsl.cli import main

    compiled = root / "micro.json"
    compiled.write_text(json.dumps(micro()), encoding="utf-8")
    data = write_jsonl(root / "data.jsonl", distill_rows(500, 41))
    scored = root / "scored.jsonl"
    assert main(["score", str(compiled), str(data), "--judge", str(teacher), "-o",
                 str(scored), "--no-cache"]) == 0
    student = root / "student"
    assert main(["distill", str(compiled), str(data), "--base", str(base),
                 "--teacher-answers", str(scored), "-o", str(student), *DISTILL]) == 0
    return {"root": root, "compiled": compiled, "data": data, "scored": scored,
            "student": student, "teacher": teacher, "base": base}
