"""The architecture holds: the compiler runs without torch, every judge option is reachable
from the command line and from recipes, only the CLI prints, and the typed IR view matches
the wire JSON of every shipped rubric."""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from qalign_dsl import ir
from qalign_dsl.cli import build_parser
from qalign_dsl.ir import REWARD, Ref
from qalign_dsl.judge.spec import JudgeSpec, JudgeSpecError, json_schema, spec_fields
from qalign_dsl.training.config import SCHEMA

PACKAGE = ROOT / "qalign_dsl"
HEAVY = ("torch", "transformers", "trl", "tokenizers", "datasets", "accelerate", "vllm", "httpx")

# Runs qalc with the ML stack made unimportable, as on a machine with only the light install.
BLOCKER = textwrap.dedent(f"""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {HEAVY!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
    sys.meta_path.insert(0, Block())
    from qalign_dsl.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("arguments", [
    ["check", "constitutions/qalign.qal", "constitutions/lib/common.qal"],
    ["compile", "--check", "constitutions/qalign.qal", "constitutions/tutorial.qal"],
    ["fmt", "--check", "constitutions/qalign.qal"],
    ["diff", "tests/data/diff/base.qal", "tests/data/diff/rename_reword/new.qal"],
    ["explain", "QAL101"],
    ["textconv", "compiled/tutorial.json"],
], ids=lambda a: a[0])
def test_compiler_commands_run_without_torch(arguments: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", BLOCKER, *arguments], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "blocked" not in done.stderr


def test_judging_without_torch_names_the_missing_extra(tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "Hi", "response": "Hello"}\n')
    done = subprocess.run([sys.executable, "-c", BLOCKER, "score", "compiled/tutorial.json",
                           str(data), "--judge", "m"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "pip install 'qalign-dsl[judge]'" in done.stderr and "Traceback" not in done.stderr


def _judge_options(command: str) -> set[str]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in subparsers.choices[command]._actions}


@pytest.mark.parametrize("command", ["score", "synth", "expand"])
def test_every_judge_option_reaches_the_cli(command: str) -> None:
    offered = {f.name for f in spec_fields()
               if command in f.metadata.get("commands", (command,))}
    missing = offered - _judge_options(command)
    assert not missing, f"qalc {command} lacks judge options {sorted(missing)}"


def test_every_judge_option_reaches_recipes() -> None:
    judge_schema = SCHEMA["properties"]["judge"]
    assert judge_schema == json_schema()
    # The scalar options, and the nested sections (a student's cascade, a GRPO audit).
    assert set(judge_schema["properties"]) == {f.name for f in spec_fields()} | {"cascade",
                                                                                  "audit"}
    for spec_field in spec_fields():
        assert spec_field.metadata["help"], spec_field.name


def test_recipe_judge_section_becomes_a_judge_spec(tmp_path: Path) -> None:
    from qalign_dsl.training.config import ConfigError, load_config

    recipe = tmp_path / "r.yaml"
    base = ("model: m\nconstitution: c.json\ndata: d.jsonl\noutput_dir: out\n"
            "judge:\n  backend: openai\n  model: served\n  base_url: http://127.0.0.1:9/v1\n")
    recipe.write_text(base + "  retries: 7\n  top_logprobs: 5\n  api_key_env: MY_KEY\n")
    config = load_config(recipe, "grpo", check_paths=False)
    assert config.judge == JudgeSpec(backend="openai", model="served",
                                     base_url="http://127.0.0.1:9/v1", retries=7,
                                     top_logprobs=5, api_key_env="MY_KEY")
    recipe.write_text(base + "  timeout: .nan\n")
    with pytest.raises(ConfigError, match=r"judge\.timeout: must be a finite number"):
        load_config(recipe, "grpo", check_paths=False)


def test_judge_spec_validates_each_field() -> None:
    with pytest.raises(JudgeSpecError, match="retries: must be at least 0"):
        JudgeSpec(model="m", retries=-1)
    with pytest.raises(JudgeSpecError, match="dtype: must be one of"):
        JudgeSpec(model="m", dtype="float8")
    with pytest.raises(JudgeSpecError, match="concurrency: expected int, got str"):
        JudgeSpec(model="m", concurrency="8")  # type: ignore[arg-type]
    assert JudgeSpec(model="m", gpu_memory_utilization=0.5).engine_args == {
        "gpu_memory_utilization": 0.5}


def test_cli_judge_option_errors_name_the_flag(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from qalign_dsl.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "Hi", "response": "Hello"}\n')
    rubric = str(ROOT / "compiled" / "tutorial.json")
    code = main(["score", rubric, str(data), "--judge", "m", "--backend", "openai"])
    assert code == 2
    assert "--backend openai needs --base-url" in capsys.readouterr().err
    code = main(["score", rubric, str(data), "--judge", "m", "--retries", "-2"])
    assert code == 2 and "--retries: must be at least 0, got -2" in capsys.readouterr().err


def _printing_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) else "")
            if name == "print" or (name == "write" and "stdout" in ast.unparse(func)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_cli_prints() -> None:
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py"))
                 if "cli" not in path.relative_to(PACKAGE).parts
                 for hit in _printing_calls(path)]
    assert not offenders, offenders


@pytest.mark.parametrize("compiled", sorted((ROOT / "compiled").glob("*.json")),
                         ids=lambda p: p.stem)
def test_typed_view_matches_the_wire_json(compiled: Path) -> None:
    document = json.loads(compiled.read_bytes())
    rubric = ir.load(compiled.read_bytes(), where=str(compiled))
    assert rubric.document == document and rubric.hash == document["hash"]
    assert [q.id for q in rubric.questions] == [q["id"] for q in document["questions"]]
    for index, question in enumerate(rubric.questions):
        assert rubric.question(question.id) is question
        assert rubric.question_index(question.id) == index
        assert rubric.dimension(question.dimension).principle == question.principle
        assert question.is_gate == (question.kind == "binary")
    for node, raw in zip(rubric.aggregation.nodes, document["aggregation"]["nodes"]):
        assert node.ref.wire == raw["id"] and Ref.parse(raw["id"]) == node.ref
        assert [a.wire if isinstance(a, Ref) else a for a in node.args] == raw["args"]
        assert rubric.aggregation.node(node.ref) is node
    assert rubric.aggregation.reward == REWARD
    assert {k: v.wire for k, v in rubric.aggregation.dimensions.items()} == \
        document["aggregation"]["outputs"]["dimensions"]
    # The JSON stays the wire format: the typed view never changes its bytes.
    assert ir.canonical_bytes(dict(rubric.document)) == compiled.read_bytes()


def test_refs_round_trip() -> None:
    for text, kind in (("q:a.b", "question"), ("d:x", "dimension"), ("p:y", "principle"),
                       ("reward", "reward"), ("d:x#3", "node")):
        ref = Ref.parse(text)
        assert ref.kind == kind and ref.wire == text and str(ref) == text
    with pytest.raises(ValueError, match="not a graph reference"):
        Ref.parse("z:oops")


def test_docs_list_every_judge_option() -> None:
    text = (ROOT / "docs" / "judge.md").read_text(encoding="utf-8")
    missing = [f.name for f in spec_fields() if f"| `{f.name}` /" not in text]
    assert not missing, f"docs/judge.md's option table lacks {missing}"


def _every_argument(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
                    ) -> Iterator[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _every_argument(sub, prefix + (name,))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            name = "/".join(action.option_strings) or action.dest
            yield " ".join(prefix + (name,)), parser, action


def test_every_argument_has_help_and_shows_its_default() -> None:
    """`qalc COMMAND --help` documents every argument and the value it takes when omitted."""
    arguments = list(_every_argument(build_parser()))
    assert len(arguments) > 150
    for where, parser, action in arguments:
        text = parser.formatter_class(prog="qalc")._get_help_string(action)  # type: ignore[attr-defined]
        assert text, f"`{where}` has no help"
        default = action.default
        if action.option_strings and default not in (None, False, [], argparse.SUPPRESS):
            assert "default" in text, f"`{where}` does not show its default {default!r}"


def test_help_of_every_command_renders() -> None:
    for command in ("score", "synth", "train", "validate", "eval", "serve", "expand", "diff"):
        result = subprocess.run([sys.executable, "-m", "qalign_dsl", command, "--help"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: qalc {command}"), command
