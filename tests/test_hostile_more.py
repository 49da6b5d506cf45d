"""Hostile input to the commands and input paths added after tests/test_hostile.py (issue
12, second audit): `eval`, `validate`, `merge`, `serve`, `expand`, `explain`, `fmt`, data
sources (CSV, parquet, save_to_disk folders, Hub ids offline, column mappings), parquet
outputs and their journal, `--shard`, `synth --pairs`, `train dpo`, `lora:`, `eval_data:`
and `reward.functions`. Same rules as test_hostile.py: each case asserts the exit code, a
message naming the file (and line) or the option, no traceback, and no file changed.

Every case runs in this process (no interpreter start per case) under an alarm, so a read
that would hang on a FIFO fails the case instead of the suite."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from test_hostile import (
    GOOD_DATA,
    GOOD_PROMPT,
    MICRO,
    NO_MODEL,
    QALIGN,
    _materialize,
    _snapshot,
)

from qalign_dsl.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def parquet(columns: dict[str, list[Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


Files = dict[str, bytes]
CASES: list[tuple[str, list[str], Files, int, str, dict[str, str]]] = []


def add(name: str, argv: list[str], files: Files, code: int, message: str,
        env: dict[str, str] | None = None) -> None:
    CASES.append((name, argv, files, code, message, env or {}))


SCORE = ["score", MICRO, "{tmp}/d.jsonl", "--model", NO_MODEL, "--no-cache"]
DATA = {"d.jsonl": GOOD_DATA.encode()}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": "{tmp}/hf"}


def score(data: str, *extra: str) -> list[str]:
    return ["score", MICRO, data, "--model", NO_MODEL, "--no-cache", *extra]


# --- data sources: CSV, parquet, folders, Hub ids, column mappings (through `score`) ------
CSV_HEAD = b"id,prompt,response\n"
SOURCES: list[tuple[str, str, Files, int, str, tuple[str, ...]]] = [
    ("csv-nul", "d.csv", {"d.csv": CSV_HEAD + b"a,hi,the\x00re\n"}, 1, "d.csv:2", ()),
    ("csv-invalid-utf8", "d.csv", {"d.csv": CSV_HEAD + b"a,hi,caf\xe9\n"}, 1, "d.csv", ()),
    ("csv-empty", "d.csv", {"d.csv": b""}, 1, "d.csv: no rows", ()),
    ("csv-header-only", "d.csv", {"d.csv": CSV_HEAD}, 1, "d.csv: no rows", ()),
    ("csv-binary", "d.csv", {"d.csv": bytes(range(256)) * 4}, 1, "d.csv", ()),
    ("csv-extra-field", "d.csv", {"d.csv": CSV_HEAD + b"a,hi,there,more\n"}, 1,
     "d.csv:2: more fields", ()),
    ("csv-missing-column", "d.csv", {"d.csv": b"id,prompt\na,hi\n"}, 1,
     "d.csv:2: missing column `response`", ()),
    ("csv-duplicate-ids", "d.csv", {"d.csv": CSV_HEAD + b"a,hi,x\na,hi,y\n"}, 1,
     "d.csv:3: duplicate id `a`", ()),
    ("csv-huge-field", "d.csv", {"d.csv": CSV_HEAD + b'a,hi,"' + b"x" * 200_000 + b'"\n'}, 1,
     "d.csv", ()),
    ("csv-unclosed-quote", "d.csv", {"d.csv": CSV_HEAD + b'a,"hi,there\n'}, 1, "d.csv", ()),
    ("csv-fifo", "fifo.csv", {}, 1, "fifo.csv: cannot read", ()),
    ("csv-dev-zero", "/dev/zero", {}, 1, "/dev/zero: cannot read", ("--format", "csv")),
    ("csv-directory", "{tmp}", {}, 1, "cannot read", ("--format", "csv")),
    ("csv-markup", "d.csv", {"d.csv": CSV_HEAD + b"[/],[bold],x\n[/],hi,y\n"}, 1,
     "d.csv:3: duplicate id `[/]`", ()),
    ("csv-wrong-mapping", "d.csv", {"d.csv": CSV_HEAD + b"a,hi,x\n"}, 1,
     "d.csv:2: missing column `nope`", ("--column", "response=nope")),
    ("csv-other-columns", "d.csv", {"d.csv": b"id,q,a\n1,hi,x\n"}, 1,
     "d.csv:2: missing column `prompt`", ()),
    ("parquet-is-csv", "d.parquet", {"d.parquet": CSV_HEAD + b"a,hi,x\n"}, 1,
     "d.parquet: cannot read parquet", ()),
    ("parquet-empty-file", "d.parquet", {"d.parquet": b""}, 1, "d.parquet: cannot read", ()),
    ("parquet-garbage", "d.parquet", {"d.parquet": b"PAR1" + b"\x00" * 100 + b"PAR1"}, 1,
     "d.parquet: cannot read", ()),
    ("parquet-fifo", "fifo.parquet", {}, 1, "fifo.parquet: cannot read", ()),
    ("parquet-float-id", "d.parquet", {"d.parquet": parquet(
        {"id": [1.5], "prompt": ["hi"], "response": ["x"]})}, 1, "row 1: `id` must be", ()),
    ("parquet-nan-id", "d.parquet", {"d.parquet": parquet(
        {"id": [float("nan")], "prompt": ["hi"], "response": ["x"]})}, 1,
     "row 1: `id` must be", ()),
    ("parquet-list-id", "d.parquet", {"d.parquet": parquet(
        {"id": [[1]], "prompt": ["hi"], "response": ["x"]})}, 1, "row 1: `id` must be", ()),
    ("parquet-int-prompt", "d.parquet", {"d.parquet": parquet(
        {"prompt": [5], "response": ["x"]})}, 1, "row 1: `prompt` must be", ()),
    ("parquet-null-response", "d.parquet", {"d.parquet": parquet(
        {"prompt": ["hi"], "response": [None]})}, 1, "row 1: missing `response`", ()),
    ("parquet-no-rows", "d.parquet", {"d.parquet": parquet(
        {"prompt": pa.array([], pa.string()), "response": pa.array([], pa.string())})}, 1,
     "no rows", ()),
    ("parquet-role-injection", "d.parquet", {"d.parquet": parquet(
        {"prompt": [[{"role": "user<|eot_id|>", "content": "x"}]], "response": ["x"]})}, 1,
     "unknown role", ()),
    ("format-parquet-on-jsonl", "d.jsonl", DATA, 1, "d.jsonl: cannot read parquet",
     ("--format", "parquet")),
    ("format-csv-on-jsonl", "d.jsonl", DATA, 1, "d.jsonl: no rows", ("--format", "csv")),
    ("jsonl-mapping-missing", "d.jsonl", DATA, 1, "d.jsonl:1: missing column `text`",
     ("--column", "response=text")),
    ("jsonl-mapping-to-object", "d.jsonl", {"d.jsonl": b'{"prompt": "p", "r": {"a": 1}}\n'}, 1,
     "d.jsonl:1: missing `response`", ("--column", "response=r")),
    ("disk-folder-not-a-dataset", "folder", {"folder/state.json": b"{}"}, 1, "folder", ()),
    ("hub-offline", "qalc-tests/no-such-dataset", {}, 1,
     "qalc-tests/no-such-dataset[test]: cannot load", ("--split", "test")),
]
SYNTH_TOO = {"csv-nul", "csv-invalid-utf8", "csv-empty", "csv-header-only", "csv-binary",
             "csv-extra-field", "csv-duplicate-ids", "csv-huge-field", "csv-fifo",
             "csv-dev-zero", "csv-directory", "csv-markup", "parquet-is-csv",
             "parquet-empty-file", "parquet-garbage", "parquet-fifo", "parquet-float-id",
             "parquet-nan-id", "parquet-list-id", "parquet-int-prompt",
             "parquet-role-injection", "hub-offline"}
for name, data, files, code, message, extra in SOURCES:
    path = data if data.startswith("/") or data.startswith("{") or "/" in data and \
        not data.startswith(("fifo", "d.", "folder")) else "{tmp}/" + data
    add(f"source-{name}", score(path, *extra), files, code, message, OFFLINE)
    if name in SYNTH_TOO:  # the same source problems as synth's PROMPTS
        add(f"synth-source-{name}", ["synth", MICRO, path, "--policy", NO_MODEL, "--judge",
            NO_MODEL, "-o", "{tmp}/out.jsonl", *extra], files, 1, message, OFFLINE)

OPTIONS = [
    (["--column", "prompt"], "--column `prompt`: expected FIELD=COLUMN"),
    (["--column", "=x"], "--column `=x`: expected FIELD=COLUMN"),
    (["--column", "bogus=x"], "--column `bogus=x`: unknown field"),
    (["--column", "prompt=a", "--column", "prompt=b"], "mapped twice"),
    (["--split", "train"], "--split: "),
    (["--config-name", "x"], "applies to Hub datasets only"),
    (["--revision", "main"], "applies to Hub datasets only"),
    (["--format", "xml"], "--format"),
    (["--shard", "3/2"], "--shard"), (["--shard", "0/0"], "--shard"),
    (["--shard", "-1/2"], "--shard"), (["--shard", "1/0"], "--shard"),
    (["--shard", "a/b"], "--shard"), (["--shard", "1/2/3"], "--shard"),
    (["--shard", ""], "--shard"), (["--shard", "x/3"], "--shard"),
    (["--normalize", "bogus"], "--normalize"), (["--short-circuit", "bogus"], "--short-circuit"),
    (["--pack-tokens", "-5"], "--pack-tokens"),
    (["--backend", "bogus"], "--backend"),
]
for extra, message in OPTIONS:
    slug = "-".join(e.strip("-").replace("/", "_") or "empty" for e in extra)
    add(f"score-option-{slug}", SCORE + extra, DATA, 2, message)
add("score-hub-id-path-like", score("hub:../../etc/passwd"), {}, 2, "not a Hub dataset id")

# --- parquet outputs and their journal ---------------------------------------------------
PARQUET_OUT = [
    ("foreign-csv", {"out.parquet": CSV_HEAD + b"a,b,c\n"}, 1, "out.parquet: not a parquet"),
    ("no-id-column", {"out.parquet": parquet({"name": ["x"]})}, 1, "has no `id` column"),
    ("journal-garbage", {"out.parquet.partial.jsonl": b"hello\n"}, 1,
     "out.parquet.partial.jsonl:1: not a JSON line"),
    ("journal-invalid-utf8", {"out.parquet.partial.jsonl": b'{"id": "\xff"}\n'}, 1,
     "not valid UTF-8"),
    ("journal-directory", {"out.parquet.partial.jsonl/x": b""}, 2, "is a directory"),
]
for name, files, code, message in PARQUET_OUT:
    add(f"score-parquet-out-{name}", SCORE + ["-o", "{tmp}/out.parquet"], {**DATA, **files},
        code, message)
    add(f"synth-parquet-out-{name}", ["synth", MICRO, "{tmp}/p.jsonl", "--policy", NO_MODEL,
        "--judge", NO_MODEL, "-o", "{tmp}/out.parquet"], {"p.jsonl": GOOD_PROMPT.encode(),
        **files}, code, message)
add("score-parquet-journal-is-input", score("{tmp}/out.parquet.partial.jsonl", "-o",
    "{tmp}/out.parquet"), {"out.parquet.partial.jsonl": GOOD_DATA.encode()}, 2, "is the input")
add("score-parquet-out-is-data", score("{tmp}/d.parquet", "-o", "{tmp}/d.parquet"),
    {"d.parquet": parquet({"prompt": ["hi"], "response": ["x"]})}, 2, "is the input")

# --- synth --pairs and its options ---------------------------------------------------------
SYNTH = ["synth", MICRO, "{tmp}/p.jsonl", "--policy", NO_MODEL, "--judge", NO_MODEL, "-o",
         "{tmp}/out.jsonl"]
PROMPTS = {"p.jsonl": GOOD_PROMPT.encode()}
for extra, message in [
    (["--pairs", "--samples", "0"], "--samples"), (["--pairs", "--samples", "1"], "--samples"),
    (["--pairs", "--samples", "-3"], "--samples"),
    (["--pairs", "--samples", "100000000"], "--samples"),
    (["--pairs", "--pairs-per-prompt", "0"], "--pairs-per-prompt"),
    (["--pairs", "--pairs-per-prompt", "-1"], "--pairs-per-prompt"),
    (["--pairs", "--margin", "nan"], "--margin"), (["--margin", "inf"], "--margin"),
    (["--margin", "-1"], "--margin"), (["--engine", "bogus"], "--engine"),
    (["--pairs", "--seed", "-1"], "--seed"),
    (["--pairs", "--seed", "99999999999999999999999"], "--seed"),
    (["--reviser", "-x"], "--reviser"),
]:
    slug = "-".join(e.strip("-") for e in extra)
    add(f"synth-option-{slug}", SYNTH + extra, PROMPTS, 2, message)
add("synth-pairs-output-is-prompts", SYNTH[:-1] + ["{tmp}/p.jsonl", "--pairs"], PROMPTS, 2,
    "is the input")
add("synth-pairs-foreign-output", SYNTH + ["--pairs"], {**PROMPTS, "out.jsonl": b"garbage\n"},
    1, "out.jsonl:1: not a JSON line")
add("synth-dropped-output-is-prompts", ["synth", MICRO, "{tmp}/out.dropped.jsonl", "--policy",
    NO_MODEL, "--judge", NO_MODEL, "-o", "{tmp}/out.jsonl"],
    {"out.dropped.jsonl": GOOD_PROMPT.encode()}, 2, "is the input")

# --- aggregate with the new source kinds ------------------------------------------------
AGG = ["aggregate", QALIGN]
for name, data, files, code, message in [
    ("csv-nan-answers", "a.csv", {"a.csv": b'id,answers\n1,"{""x"": NaN}"\n'}, 1, "a.csv:2"),
    ("csv-deep-answers", "a.csv", {"a.csv": b'id,answers\n1,"' + b"[" * 50_000 + b'"\n'}, 1,
     "a.csv:2"),
    ("csv-answers-not-json", "a.csv", {"a.csv": b"id,answers\n1,hello\n"}, 1, "a.csv:2"),
    ("parquet-is-csv", "a.parquet", {"a.parquet": b"id,answers\n1,{}\n"}, 1,
     "a.parquet: cannot read parquet"),
    ("parquet-no-answers", "a.parquet", {"a.parquet": parquet({"id": [1]})}, 1,
     "a.parquet row 1"),
    ("parquet-duplicate-ids", "a.parquet", {"a.parquet": parquet(
        {"id": [1, 1], "answers": ["{}", "{}"]})}, 1, "duplicate id `1`"),
    ("output-parquet-is-input", "a.parquet", {"a.parquet": parquet(
        {"id": [1], "answers": ["{}"]})}, 2, "is the input"),
]:
    argv = AGG + ["{tmp}/" + data, "-o", "{tmp}/out.jsonl" if "output" not in name
                  else "{tmp}/" + data]
    add(f"aggregate-{name}", argv, files, code, message)

# --- merge ----------------------------------------------------------------------------
PART = b'{"id": "a", "reward": 0.5, "principles": {"helpfulness": 0.5}, "dimensions": {}, ' \
       b'"answers": {}, "question_scores": {}}\n'
MERGE = ["merge", "{tmp}/d.jsonl"]
MERGES: list[tuple[str, list[str], Files, int, str]] = [
    ("part-fifo", ["{tmp}/fifo"], {}, 1, "fifo: cannot read"),
    ("part-dev-zero", ["/dev/zero"], {}, 1, "/dev/zero: cannot read"),
    ("part-directory", ["{tmp}"], {}, 1, "cannot read"),
    ("part-missing", ["{tmp}/nope.jsonl"], {}, 1, "nope.jsonl: cannot read"),
    ("part-invalid-utf8", ["{tmp}/p.jsonl"], {"p.jsonl": b'{"id": "\xff"}\n'}, 1,
     "p.jsonl:1: not valid UTF-8"),
    ("part-nan-id", ["{tmp}/p.jsonl"], {"p.jsonl": b'{"id": NaN}\n'}, 1, "p.jsonl:1: "),
    ("part-huge-int-id", ["{tmp}/p.jsonl"], {"p.jsonl": b'{"id": ' + b"9" * 5000 + b"}\n"},
     1, "p.jsonl:1: "),
    ("part-deep", ["{tmp}/p.jsonl"], {"p.jsonl": b"[" * 100_000 + b"\n"}, 1, "p.jsonl:1: "),
    ("part-lone-surrogate", ["{tmp}/p.jsonl"], {"p.jsonl": b'{"id": "\\ud800"}\n'}, 1,
     "p.jsonl:1: "),
    ("part-array-line", ["{tmp}/p.jsonl"], {"p.jsonl": b"[1, 2]\n"}, 1, "p.jsonl:1: "),
    ("part-id-list", ["{tmp}/p.jsonl"], {"p.jsonl": b'{"id": ["a"]}\n'}, 1, "p.jsonl:1: "),
    ("part-parquet-is-csv", ["{tmp}/p.parquet"], {"p.parquet": b"id\na\n"}, 1,
     "p.parquet: not a parquet file"),
    ("part-parquet-no-id", ["{tmp}/p.parquet"], {"p.parquet": parquet({"x": [1]})}, 1,
     "p.parquet: has no `id` column"),
    ("part-unknown-id", ["{tmp}/p.jsonl"], {"p.jsonl": PART.replace(b'"a"', b'"zz"')}, 1,
     "p.jsonl:1: id `zz` is not in"),
    ("overlapping-parts", ["{tmp}/p.jsonl", "{tmp}/q.jsonl"], {"p.jsonl": PART,
     "q.jsonl": PART}, 1, "q.jsonl:1: id `a` again"),
    ("same-part-twice", ["{tmp}/p.jsonl", "{tmp}/p.jsonl"], {"p.jsonl": PART}, 1,
     "p.jsonl: given twice"),
    ("different-rubrics", ["{tmp}/p.jsonl", "{tmp}/q.jsonl"], {
        "d.jsonl": (GOOD_DATA + GOOD_DATA.replace('"a"', '"b"')).encode(), "p.jsonl": PART,
        "q.jsonl": PART.replace(b'"a"', b'"b"').replace(b"helpfulness", b"honesty")}, 1,
     "another rubric"),
    ("missing-rows", ["{tmp}/p.jsonl"], {"d.jsonl": (GOOD_DATA + GOOD_DATA.replace(
        '"a"', '"b"')).encode(), "p.jsonl": PART}, 1, "1 row(s) of"),
    ("output-is-data", ["{tmp}/p.jsonl", "-o", "{tmp}/d.jsonl"], {"p.jsonl": PART}, 2,
     "is the input"),
    ("output-is-part", ["{tmp}/p.jsonl", "-o", "{tmp}/p.jsonl"], {"p.jsonl": PART}, 2,
     "is the input"),
    ("output-directory", ["{tmp}/p.jsonl", "-o", "{tmp}"], {"p.jsonl": PART}, 2,
     "is a directory"),
    ("output-proc", ["{tmp}/p.jsonl", "-o", "/proc/qalc.jsonl"], {"p.jsonl": PART}, 2,
     "cannot write under /proc"),
    ("output-under-file", ["{tmp}/p.jsonl", "-o", "{tmp}/p.jsonl/x.jsonl"], {"p.jsonl": PART},
     2, "Not a directory"),
    ("output-parquet-is-part", ["{tmp}/p.parquet", "-o", "{tmp}/p.parquet"],
     {"p.parquet": parquet({"id": ["a"], "reward": [0.5]})}, 2, "is the input"),
]
for name, extra, files, code, message in MERGES:
    add(f"merge-{name}", MERGE + extra, {"d.jsonl": GOOD_DATA.encode(), **files}, code, message)
add("merge-data-fifo", ["merge", "{tmp}/fifo", "{tmp}/p.jsonl"], {"p.jsonl": PART}, 1,
    "it is a FIFO")
add("merge-data-csv-nul", ["merge", "{tmp}/d.csv", "{tmp}/p.jsonl"],
    {"d.csv": CSV_HEAD + b"a,h\x00i,x\n", "p.jsonl": PART}, 1, "d.csv:2")

# --- validate ---------------------------------------------------------------------------
LABEL = b'{"id": "a", "prompt": "p", "response": "r", "labels": {"physical_harm.gate": ' \
        b'"True"}}\n'
ANSWER = b'{"id": "a", "answers": {}}\n'
VALIDATE = ["validate", MICRO, "{tmp}/l.jsonl", "--answers", "{tmp}/a.jsonl"]
VFILES = {"l.jsonl": LABEL, "a.jsonl": ANSWER}
VALIDATES: list[tuple[str, list[str], Files, int, str]] = [
    ("labels-fifo", ["validate", MICRO, "{tmp}/fifo", "--answers", "{tmp}/a.jsonl"], {}, 1,
     "fifo: cannot read"),
    ("labels-dev-zero", ["validate", MICRO, "/dev/zero", "--answers", "{tmp}/a.jsonl"], {}, 1,
     "/dev/zero: cannot read"),
    ("labels-directory", ["validate", MICRO, "{tmp}", "--answers", "{tmp}/a.jsonl"], {}, 1,
     "cannot read"),
    ("labels-invalid-utf8", VALIDATE, {"l.jsonl": LABEL + b'{"id": "\xff"}\n'}, 1,
     "l.jsonl:2: not valid UTF-8"),
    ("labels-nan", VALIDATE, {"l.jsonl": LABEL + b'{"id": NaN}\n'}, 1, "l.jsonl:2: "),
    ("labels-huge-int", VALIDATE, {"l.jsonl": LABEL + b'{"id": ' + b"9" * 5000 + b"}\n"}, 1,
     "l.jsonl:2: "),
    ("labels-deep", VALIDATE, {"l.jsonl": LABEL + b"[" * 100_000 + b"\n"}, 1, "l.jsonl:2: "),
    ("labels-lone-surrogate", VALIDATE, {"l.jsonl": LABEL.replace(b'"r"', b'"\\ud800"')}, 1,
     "l.jsonl:1: "),
    ("labels-duplicate-ids", VALIDATE, {"l.jsonl": LABEL * 2}, 1, "l.jsonl:2: "),
    ("labels-id-list", VALIDATE, {"l.jsonl": LABEL.replace(b'"a"', b'["a"]', 1)}, 1,
     "l.jsonl:1: "),
    ("labels-empty", VALIDATE, {"l.jsonl": b""}, 1, "l.jsonl: no labelled samples"),
    ("labels-role-injection", VALIDATE, {"l.jsonl": LABEL.replace(
        b'"p"', b'[{"role": "user<|eot_id|>", "content": "x"}]')}, 1, "l.jsonl:1: "),
    ("answers-fifo", ["validate", MICRO, "{tmp}/l.jsonl", "--answers", "{tmp}/fifo"], {}, 1,
     "fifo: cannot read"),
    ("answers-dev-zero", ["validate", MICRO, "{tmp}/l.jsonl", "--answers", "/dev/zero"], {}, 1,
     "/dev/zero: cannot read"),
    ("answers-invalid-utf8", VALIDATE, {"a.jsonl": ANSWER + b'{"id": "\xff"}\n'}, 1,
     "a.jsonl:2: not valid UTF-8"),
    ("answers-nan", VALIDATE, {"a.jsonl": b'{"id": "a", "answers": {"physical_harm.gate": '
                                          b'{"True": NaN}}}\n'}, 1, "a.jsonl:1: "),
    ("answers-deep", VALIDATE, {"a.jsonl": ANSWER + b"[" * 100_000 + b"\n"}, 1, "a.jsonl:2: "),
    ("answers-duplicate-ids", VALIDATE, {"a.jsonl": ANSWER * 2}, 1, "a.jsonl:2: duplicate"),
    ("answers-is-directory", ["validate", MICRO, "{tmp}/l.jsonl", "--answers", "{tmp}"], {}, 1,
     "cannot read"),
    ("report-is-a-file", VALIDATE + ["--report", "{tmp}/l.jsonl"], {}, 2, "--report"),
    ("report-under-proc", VALIDATE + ["--report", "/proc/qalc-report"], {}, 2, "--report"),
    ("report-under-a-file", VALIDATE + ["--report", "{tmp}/a.jsonl/r"], {}, 2, "--report"),
    ("min-kappa-nan", VALIDATE + ["--min-kappa", "nan"], {}, 2, "--min-kappa"),
    ("min-kappa-inf", VALIDATE + ["--min-kappa", "inf"], {}, 2, "--min-kappa"),
    ("band-threshold-nan", VALIDATE + ["--band-threshold", "nan"], {}, 2, "--band-threshold"),
    ("bins-huge", VALIDATE + ["--bins", "1000000000"], {}, 2, "--bins"),
    ("bins-zero", VALIDATE + ["--bins", "0"], {}, 2, "--bins"),
    ("chance-kappa-nan", VALIDATE + ["--chance-kappa", "nan"], {}, 2, "--chance-kappa"),
    ("model-and-answers", VALIDATE + ["--model", NO_MODEL], {}, 2, "not both"),
    ("compiled-fifo", ["validate", "{tmp}/fifo", "{tmp}/l.jsonl", "--answers",
                       "{tmp}/a.jsonl"], {}, 1, "it is a FIFO"),
    # Sample ids are user text in the outputs table: printed as text, not read as markup.
    ("markup-in-ids", VALIDATE, {
        "l.jsonl": LABEL.replace(b'"a"', b'"[/]x"').replace(b'"True"}', b'"True", '
                                                           b'"harmlessness": "high"}'),
        "a.jsonl": ANSWER.replace(b'"a"', b'"[/]x"')}, 0, "[/]x"),
]
for name, argv, files, code, message in VALIDATES:
    add(f"validate-{name}", argv, {**VFILES, **files}, code, message)

# --- eval recipes ----------------------------------------------------------------------
HARM_QAL = (ROOT / "tests" / "data" / "eval" / "micro-classifier.qal").read_bytes()
EVAL_RECIPE = ("name: t\nseed: 0\nsampling: {samples: 1, max_new_tokens: 4}\n"
               "judges:\n  harm: {rubric: harm.qal}\n"
               "suites:\n  - name: s\n    source: {kind: jsonl, path: s.jsonl}\n"
               "    columns: {id: id, prompt: prompt}\n    metric: asr\n    judge: harm\n")
EFILES = {"harm.qal": HARM_QAL, "s.jsonl": b'{"id": "a", "prompt": "hi"}\n',
          "model/config.json": b"{}"}
EVAL = ["eval", "{tmp}/e.yaml", "--model", "m={tmp}/model", "--judge", "harm=" + NO_MODEL,
        "-o", "{tmp}/run"]


def eval_case(name: str, recipe: str | bytes, code: int, message: str,
              files: Files | None = None, extra: list[str] | None = None) -> None:
    data = recipe if isinstance(recipe, bytes) else recipe.encode("utf-8", "surrogatepass")
    add(f"eval-{name}", EVAL + (extra or []), {**EFILES, "e.yaml": data, **(files or {})},
        code, message, OFFLINE)


for name, old, new, message in [
    ("samples-zero", "samples: 1", "samples: 0", "e.yaml"),
    ("samples-huge", "samples: 1", "samples: 99999999999999", "e.yaml"),
    ("samples-list", "samples: 1", "samples: [1]", "e.yaml"),
    ("max-new-tokens-nan", "max_new_tokens: 4", "max_new_tokens: .nan", "e.yaml"),
    ("seed-string", "seed: 0", "seed: x", "e.yaml"),
    ("seed-nan", "seed: 0", "seed: .nan", "e.yaml"),
    ("unknown-metric", "metric: asr", "metric: bogus", "e.yaml"),
    ("unknown-judge", "judge: harm\n", "judge: nope\n", "e.yaml"),
    ("unknown-source-kind", "kind: jsonl", "kind: xml", "e.yaml"),
    ("missing-data", "path: s.jsonl", "path: nope.jsonl", "nope.jsonl"),
    ("data-fifo", "path: s.jsonl", "path: fifo", "fifo"),
    ("data-dev-zero", "path: s.jsonl", "path: /dev/zero", "/dev/zero"),
    ("data-directory", "path: s.jsonl", "path: .", "it is a directory"),
    ("data-csv-nul", "{kind: jsonl, path: s.jsonl}", "{kind: csv, path: n.csv}", "n.csv"),
    ("data-parquet-is-csv", "{kind: jsonl, path: s.jsonl}", "{kind: parquet, path: c.parquet}",
     "c.parquet"),
    ("data-hub-offline", "{kind: jsonl, path: s.jsonl}",
     "{kind: hub, dataset: qalc-tests/nope, split: test}", "qalc-tests/nope"),
    ("rubric-missing", "rubric: harm.qal", "rubric: nope.qal", "nope.qal"),
    ("rubric-fifo", "rubric: harm.qal", "rubric: fifo.qal", "fifo.qal"),
    ("rubric-dev-zero", "rubric: harm.qal", "rubric: /dev/zero", "/dev/zero"),
    ("name-markup", "name: t", "name: '[/]'", "e.yaml"),
    ("name-path-traversal", "name: t", "name: ../../x", "e.yaml"),
]:
    eval_case(name, EVAL_RECIPE.replace(old, new), 1, message, {
        "n.csv": b"id,prompt\na,h\x00i\n", "c.parquet": b"id,prompt\na,hi\n"})
for name, content, message in [
    ("jsonl-nan", b'{"id": NaN, "prompt": "hi"}\n', "s.jsonl:1"),
    ("jsonl-huge-int", b'{"id": ' + b"9" * 5000 + b', "prompt": "hi"}\n', "s.jsonl:1"),
    ("jsonl-deep", b"[" * 100_000 + b"\n", "s.jsonl:1"),
    ("jsonl-lone-surrogate", b'{"id": "a", "prompt": "\\ud800"}\n', "s.jsonl:1"),
    ("jsonl-invalid-utf8", b'{"id": "a", "prompt": "\xff"}\n', "s.jsonl:1"),
    ("jsonl-duplicate-ids", b'{"id": "a", "prompt": "hi"}\n' * 2, "s.jsonl:2"),
    ("jsonl-id-list", b'{"id": ["a"], "prompt": "hi"}\n', "s.jsonl:1"),
    ("jsonl-prompt-number", b'{"id": "a", "prompt": 5}\n', "s.jsonl:1"),
    ("jsonl-id-float", b'{"id": 1.5, "prompt": "hi"}\n', "s.jsonl:1"),
]:
    eval_case(name, EVAL_RECIPE, 1, message, {"s.jsonl": content})
for name, content, message in [
    ("recipe-fifo", None, "fifo"), ("recipe-dev-zero", None, "/dev/zero"),
    ("recipe-invalid-utf8", EVAL_RECIPE.encode() + b"# \xff\n", "e.yaml"),
    ("recipe-binary", bytes(range(256)), "e.yaml"),
    ("recipe-not-mapping", b"- 1\n", "e.yaml"),
    ("recipe-deep", b"a: " + b"[" * 5000 + b"\n", "e.yaml"),
    ("recipe-billion-laughs", b"a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, "
     b"*a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, "
     b"*c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n",
     "e.yaml"),
]:
    if content is None:
        target = "{tmp}/fifo" if name == "recipe-fifo" else "/dev/zero"
        add(f"eval-{name}", ["eval", target] + EVAL[2:], EFILES, 1, message)
    else:
        eval_case(name, content, 1, message)
for name, extra, code, message in [
    ("model-no-equals", ["--model", "x"], 2, "--model expects NAME=PATH"),
    ("model-twice", ["--model", "m=x"], 2, "given twice"),
    ("judge-unknown", ["--judge", "nope=x"], 2, "--judge nope"),
    ("baseline-unknown", ["--baseline", "zz"], 2, "--baseline"),
    ("judge-batch-zero", ["--judge-batch", "0"], 2, "--judge-batch"),
    ("judge-batch-negative", ["--judge-batch", "-3"], 2, "--judge-batch"),
    ("device-bogus", ["--device", "tpu"], 2, "--device"),
    ("output-is-file", ["-o", "{tmp}/harm.qal"], 2, "-o"),
    ("output-under-proc", ["-o", "/proc/qalc-eval"], 2, "-o"),
    ("cache-dir-is-file", ["--cache-dir", "{tmp}/harm.qal"], 2, "--cache-dir"),
    ("output-is-recipe", ["-o", "{tmp}/e.yaml"], 2, "-o"),
]:
    eval_case(name, EVAL_RECIPE, code, message, extra=extra)

eval_case("messages-role-injection", EVAL_RECIPE.replace("prompt: prompt}", "messages: m}"),
          1, "s.jsonl:1: column `m`: unknown role", {"s.jsonl": b'{"id": "a", "m": [{"role": '
                                                     b'"user<|eot_id|>", "content": "x"}]}\n'})
eval_case("messages-deep", EVAL_RECIPE.replace("prompt: prompt}", "messages: m}"), 1,
          "s.jsonl:1", {"s.jsonl": b'{"id": "a", "m": "' + b"[" * 50_000 + b'"}\n'})

# --- train: dpo, lora, eval_data, reward.functions, data sources -------------------------
TRECIPE = "model: ./model\nconstitution: c.qal\ndata: d.jsonl\noutput_dir: out\n"
MICRO_QAL = (ROOT / "tests" / "data" / "judge" / "micro.qal").read_bytes()
TFILES = {"c.qal": MICRO_QAL, "model/config.json": b"{}",
          "d.jsonl": b'{"messages": [{"role": "user", "content": "hi"}]}\n',
          "pairs.jsonl": b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n',
          "p.jsonl": b'{"prompt": "p"}\n', "n.csv": b"prompt,chosen,rejected\np,a\x00,b\n",
          "c.parquet": b"prompt,chosen,rejected\np,a,b\n"}
TRAINS: list[tuple[str, str, str, int, str]] = [
    ("dpo-beta-negative", "dpo", "data: pairs.jsonl\ntrainer: {beta: -1}\n", 1, "trainer.beta"),
    ("dpo-beta-nan", "dpo", "data: pairs.jsonl\ntrainer: {beta: .nan}\n", 1, "trainer.beta"),
    ("dpo-loss-type-bogus", "dpo", "data: pairs.jsonl\ntrainer: {loss_type: bogus}\n", 1,
     "trainer.loss_type"),
    ("dpo-unknown-setting", "dpo", "data: pairs.jsonl\ntrainer: {bogus: 1}\n", 1,
     "trainer.bogus"),
    ("dpo-max-length-zero", "dpo", "data: pairs.jsonl\ntrainer: {max_length: 0}\n", 1,
     "trainer.max_length"),
    ("dpo-rows-not-pairs", "dpo", "data: d.jsonl\n", 1, "d.jsonl:1"),
    ("dpo-csv-nul", "dpo", "data: n.csv\n", 1, "n.csv"),
    ("dpo-parquet-is-csv", "dpo", "data: c.parquet\n", 1, "c.parquet"),
    ("dpo-pairs-nan", "dpo", "data: nan.jsonl\n", 1, "nan.jsonl:1"),
    ("dpo-pairs-deep", "dpo", "data: deep.jsonl\n", 1, "deep.jsonl:1"),
    ("dpo-pairs-huge-int", "dpo", "data: huge.jsonl\n", 1, "huge.jsonl:1"),
    ("dpo-pairs-surrogate", "dpo", "data: sur.jsonl\n", 1, "sur.jsonl:1"),
    ("date-like-value", "sft", "data: d.jsonl\neval_data: 2024-13-45\n", 1,
     "r.yaml: invalid YAML value: month must be in 1..12"),
    ("data-fifo", "sft", "data: fifo\n", 1, "fifo"),
    ("data-dev-zero", "sft", "data: /dev/zero\n", 1, "/dev/zero"),
    ("data-hub-offline", "sft", "data: {dataset: qalc-tests/nope, split: train}\n", 1,
     "qalc-tests/nope"),
    ("data-wrong-column", "sft", "data: {path: d.jsonl, columns: {messages: nope}}\n", 1,
     "nope"),
    ("data-unknown-field", "sft", "data: {path: d.jsonl, columns: {bogus: x}}\n", 1,
     "data.columns.bogus"),
    ("data-split-on-file", "sft", "data: {path: d.jsonl, split: test}\n", 1, "data.split"),
    ("data-columns-list", "sft", "data: {path: d.jsonl, columns: [a]}\n", 1, "data.columns"),
    ("data-kind-bogus", "sft", "data: {path: d.jsonl, kind: xml}\n", 1, "data"),
    ("eval-data-missing", "sft", "data: d.jsonl\neval_data: nope.jsonl\n", 1, "nope.jsonl"),
    ("eval-data-fifo", "sft", "data: d.jsonl\neval_data: fifo\n", 1, "fifo"),
    ("eval-data-nan", "sft", "data: d.jsonl\neval_data: nan.jsonl\n", 1, "nan.jsonl:1"),
    ("eval-data-twice", "sft", "data: {train: d.jsonl, eval: d.jsonl}\neval_data: d.jsonl\n", 1,
     "eval_data"),
    ("eval-data-number", "sft", "data: d.jsonl\neval_data: 5\n", 1, "eval_data"),
    ("lora-r-zero", "sft", "data: d.jsonl\nlora: {r: 0}\n", 1, "lora"),
    ("lora-r-nan", "sft", "data: d.jsonl\nlora: {r: .nan}\n", 1, "lora"),
    ("lora-r-huge", "sft", "data: d.jsonl\nlora: {r: 99999999999999999999}\n", 1, "lora.r"),
    ("lora-alpha-inf", "sft", "data: d.jsonl\nlora: {alpha: .inf}\n", 1, "lora.alpha"),
    ("lora-dropout-one", "sft", "data: d.jsonl\nlora: {dropout: 1}\n", 1, "lora"),
    ("lora-targets-empty", "sft", "data: d.jsonl\nlora: {target_modules: []}\n", 1, "lora"),
    ("lora-unknown-key", "sft", "data: d.jsonl\nlora: {rank: 4}\n", 1, "lora"),
    ("lora-not-mapping", "sft", "data: d.jsonl\nlora: 4\n", 1, "lora"),
    ("reward-functions-sft", "sft", "data: d.jsonl\nreward: {functions: [{kind: rubric}]}\n",
     1, "reward.functions"),
    ("reward-weight-nan", "grpo", "data: p.jsonl\njudge: {model: ./model}\nreward: {functions: "
     "[{kind: rubric, weight: .nan}]}\n", 1, "reward.functions"),
    ("reward-weight-string", "grpo", "data: p.jsonl\njudge: {model: ./model}\nreward: "
     "{functions: [{kind: rubric, weight: x}]}\n", 1, "reward.functions"),
    ("reward-python-missing-module", "grpo", "data: p.jsonl\njudge: {model: ./model}\nreward: "
     "{functions: [{kind: rubric}, {kind: python, function: 'qalc_no_such_mod:f'}]}\n", 1,
     "model: cannot load"),
    ("reward-python-not-a-function", "grpo", "data: p.jsonl\njudge: {model: ./model}\nreward: "
     "{functions: [{kind: rubric}, {kind: python, function: 'math:pi'}]}\n", 1,
     "model: cannot load"),
    ("reward-model-missing", "grpo", "data: p.jsonl\njudge: {model: ./model}\nreward: "
     "{functions: [{kind: rubric}, {kind: model, model: ./nope}]}\n", 1, "nope"),
    ("reward-model-offline", "grpo", "data: p.jsonl\njudge: {model: ./model}\nreward: "
     "{functions: [{kind: rubric}, {kind: model, model: qalc-tests/nope-rm}]}\n", 1,
     "model: cannot load"),
    ("reward-two-rubrics", "grpo", "data: p.jsonl\njudge: {model: ./model}\nreward: "
     "{functions: [{kind: rubric}, {kind: rubric, name: b}]}\n", 1, "rubric appears twice"),
    ("reward-batch-size-zero", "grpo", "data: p.jsonl\njudge: {model: ./model}\nreward: "
     "{functions: [{kind: rubric}, {kind: model, model: ./model, batch_size: 0}]}\n", 1,
     "reward.functions"),
    ("eval-recipe-fifo", "sft", "data: d.jsonl\neval: {recipe: fifo}\n", 1, "fifo"),
    ("eval-recipe-dev-zero", "sft", "data: d.jsonl\neval: {recipe: /dev/zero}\n", 1,
     "/dev/zero"),
    ("eval-every-steps-zero", "sft", "data: d.jsonl\neval: {recipe: e.yaml, every_steps: 0}\n",
     1, "eval.every_steps"),
    ("constitution-fifo", "sft", "data: d.jsonl\n", 1, "fifo"),
    ("constitution-dev-zero", "sft", "data: d.jsonl\n", 1, "/dev/zero"),
    ("reward-functions-empty", "grpo", "data: p.jsonl\njudge: {model: ./model}\nreward: "
     "{functions: []}\n", 1, "reward.functions"),
]
BAD_DATA = {"nan.jsonl": b'{"prompt": "p", "chosen": NaN, "rejected": "b", "messages": NaN}\n',
            "deep.jsonl": b"[" * 100_000 + b"\n",
            "huge.jsonl": b'{"prompt": ' + b"9" * 5000 + b"}\n",
            "sur.jsonl": b'{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n'}
for name, stage, body, code, message in TRAINS:
    head = TRECIPE.replace("data: d.jsonl\n", "")
    if name.startswith("constitution-"):
        head = head.replace("c.qal", "fifo" if name.endswith("fifo") else "/dev/zero")
    add(f"train-{name}", ["train", stage, "--config", "{tmp}/r.yaml"],
        {**TFILES, **BAD_DATA, "r.yaml": (head + body).encode()}, code, message, OFFLINE)

# --- serve (options), expand, explain, fmt ------------------------------------------------
SERVE = ["serve", MICRO, "--judge", NO_MODEL]
for extra, code, message in [
    (["--port", "-1"], 2, "--port"), (["--port", "70000"], 2, "--port"),
    (["--max-batch", "0"], 2, "--max-batch"), (["--max-items", "0"], 2, "--max-items"),
    (["--max-body-bytes", "0"], 2, "--max-body-bytes"),
    (["--max-wait-ms", "nan"], 2, "--max-wait-ms"), (["--max-wait-ms", "inf"], 2,
                                                     "--max-wait-ms"),
    (["--max-wait-ms", "-1"], 2, "--max-wait-ms"),
    (["--token-env", "QALC_TEST_UNSET_VARIABLE"], 2, "--token-env"),
    (["--cache", "{tmp}"], 2, "--cache"), (["--cache", "/dev/null"], 2, "--cache"),
    (["--timeout", "nan"], 2, "--timeout"),
    (["--device", "tpu"], 2, "--device"), (["--dtype", "float8"], 2, "--dtype"),
    ([], 1, NO_MODEL),
]:
    slug = "-".join(e.strip("-") for e in extra) or "missing-model"
    add(f"serve-option-{slug}", SERVE + extra, {}, code, message)
add("serve-compiled-fifo", ["serve", "{tmp}/fifo", "--judge", NO_MODEL], {}, 1, "it is a FIFO")

PRINCIPLES = b"principles:\n  - name: Helpfulness\n    description: be helpful\n"
EXPAND = ["expand", "{tmp}/p.yaml", "--backend", "transformers", "--model", NO_MODEL]
for name, argv, files, code, message in [
    ("fifo", ["expand", "{tmp}/fifo"] + EXPAND[2:], {}, 1, "fifo: cannot read"),
    ("dev-zero", ["expand", "/dev/zero"] + EXPAND[2:], {}, 1, "/dev/zero: cannot read"),
    ("directory", ["expand", "{tmp}"] + EXPAND[2:], {}, 1, "cannot read"),
    ("invalid-utf8", EXPAND, {"p.yaml": PRINCIPLES + b"# \xff\n"}, 1, "p.yaml"),
    ("binary", EXPAND, {"p.yaml": bytes(range(256))}, 1, "p.yaml"),
    ("yaml-garbage", EXPAND, {"p.yaml": b"a: [\n"}, 1, "p.yaml"),
    ("yaml-nan-name", EXPAND, {"p.yaml": b"principles:\n  - name: .nan\n"}, 1, "p.yaml"),
    ("yaml-deep", EXPAND, {"p.yaml": b"a: " + b"[" * 5000 + b"\n"}, 1, "p.yaml"),
    ("yaml-date-like", EXPAND, {"p.yaml": PRINCIPLES + b"title: 2024-13-45\n"}, 1,
     "p.yaml: invalid YAML value"),
    ("yaml-misspelt-key", EXPAND, {"p.yaml": PRINCIPLES + b"    descripton: x\n"}, 1,
     "p.yaml: principles[0]: unknown key `descripton` (did you mean `description`?)"),
    ("dimensions-zero", EXPAND + ["--dimensions", "0"], {}, 2, "--dimensions"),
    ("dimensions-huge", EXPAND + ["--dimensions", "1000000000"], {}, 2, "--dimensions"),
    ("attempts-huge", EXPAND + ["--attempts", "1000000000"], {}, 2, "--attempts"),
    ("temperature-nan", EXPAND + ["--temperature", "nan"], {}, 2, "--temperature"),
    ("max-tokens-zero", EXPAND + ["--max-tokens", "0"], {}, 2, "--max-tokens"),
    ("output-directory", EXPAND + ["-o", "{tmp}"], {}, 2, "-o"),
    ("output-proc", EXPAND + ["-o", "/proc/qalc.qal"], {}, 2, "-o"),
    ("output-is-input", EXPAND + ["-o", "{tmp}/p.yaml"], {}, 2, "is the input"),
]:
    add(f"expand-{name}", argv, {"p.yaml": PRINCIPLES, **files}, code, message)

for name, code_text in [("markup", "x[/]"), ("escape", "\x1b]0;pwned\x07"),
                        ("long", "Q" * 100_000), ("unknown", "QAL999"),
                        ("surrogate", "QAL\udc80")]:
    add(f"explain-{name}", ["explain", code_text], {}, 2, "unknown")

QAL = (ROOT / "tests" / "data" / "judge" / "micro.qal").read_bytes()
for name, target, files, message in [
    ("fifo", "{tmp}/fifo.qal", {}, "[QAL005]"),
    ("dev-zero", "/dev/zero", {}, "[QAL005]"),
    ("directory", "{tmp}", {}, "[QAL005]"),
    ("missing", "{tmp}/nope.qal", {}, "[QAL005]"),
    ("invalid-utf8", "{tmp}/x.qal", {"x.qal": QAL + b"# \xff\n"}, "x.qal"),
    ("binary", "{tmp}/x.qal", {"x.qal": bytes(range(256))}, "x.qal"),
    ("nul", "{tmp}/x.qal", {"x.qal": QAL + b"\x00"}, "x.qal"),
    ("deep-parens", "{tmp}/x.qal", {"x.qal": b"qal 1\noutput x = " + b"(" * 5000 + b"\n"},
     "x.qal"),
    ("control-chars", "{tmp}/x.qal", {"x.qal": b'qal 1\nprinciple "a\x1b[2J" { }\n'},
     "[QAL011]"),
]:
    for check in ([], ["--check"]):
        add(f"fmt-{name}{'-check' if check else ''}", ["fmt", target, *check], files, 1,
            message)


# --- the harness -------------------------------------------------------------------------
class Hang(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise Hang("the command did not finish in 20 s (a read that blocks?)")


@pytest.fixture
def alarm() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name, argv, files, code, message, env", CASES,
                         ids=[c[0] for c in CASES])
def test_hostile_input(name: str, argv: list[str], files: Files, code: int, message: str,
                       env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch, alarm: None) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace("{tmp}", str(tmp_path)))
    monkeypatch.delenv("QALC_TEST_UNSET_VARIABLE", raising=False)
    _materialize(tmp_path, files)
    for fifo in ("fifo.csv", "fifo.parquet"):
        os.mkfifo(tmp_path / fifo)
    before = _snapshot(tmp_path)
    try:
        result = main([part.replace("{tmp}", str(tmp_path)) for part in argv])
    except SystemExit as exit_:  # argparse's own usage errors (e.g. a choices option)
        result = exit_.code
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Traceback" not in output
    assert result == code, output
    assert message.replace("{tmp}", str(tmp_path)) in output, output
    after = _snapshot(tmp_path)
    created = {k for k in after if k not in before and not k.endswith(".lock")
               and not k.startswith("hf/")}
    assert not created, f"created {created}"
    assert {k: v for k, v in after.items() if k in before} == before, "a file changed"
    assert not Path("/proc/qalc-out.jsonl").exists()


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 250, len(CASES)


# --- serve: hostile HTTP bodies against the real app and a real (tiny) judge -----------------
def test_serve_rejects_hostile_bodies(tiny_model: Path) -> None:
    """Every hostile body is a 4xx JSON error naming the problem (never a 500 with a logged
    traceback), and the server still scores a good request afterwards."""
    from starlette.testclient import TestClient

    from qalign_dsl import ir
    from qalign_dsl.judge.backends.transformers import TransformersBackend
    from qalign_dsl.judge.runtime import Judge
    from qalign_dsl.serve.app import ServeLimits, create_app
    from qalign_dsl.serve.batcher import Batcher
    from qalign_dsl.serve.scoring import RubricScorer

    rubric = ir.load(Path(MICRO).read_bytes())
    batcher = Batcher(RubricScorer(Judge(rubric, TransformersBackend(str(tiny_model)))))
    app = create_app(batcher, {"title": rubric.title}, ServeLimits(4096, 4), token="sesame")
    auth = {"Authorization": "Bearer sesame"}
    item = '{"prompt": "p", "response": "r"}'
    bodies: list[tuple[str, bytes | str, int, str]] = [
        ("/v1/score", "x" * 5000, 413, "over the limit"),
        ("/v1/score", "[" * 4000, 400, "not valid JSON"),
        ("/v1/score", "[" * 100_000, 413, "over the limit"),
        ("/v1/score", '{"items": [{"prompt": "p", "response": NaN}]}', 400, "NaN"),
        ("/v1/score", '{"items": [], "x": 1e999}', 400, "out of range"),
        ("/v1/score", '{"items": [], "x": ' + "9" * 3000 + "}", 400, "digits"),
        ("/v1/score", '{"items": [{"prompt": "\\ud800", "response": "r"}]}', 400,
         "lone surrogate"),
        ("/v1/score", b'{"items": [{"prompt": "\xff", "response": "r"}]}', 400, "UTF-8"),
        ("/v1/score", "", 400, "not valid JSON"),
        ("/v1/score", "[]", 422, "expected"),
        ("/v1/score", '{"items": 5}', 422, "expected"),
        ("/v1/score", '{"items": [5]}', 422, "items[0] must be an object"),
        ("/v1/score", '{"items": [{"prompt": 5, "response": "r"}]}', 422, "items[0].prompt"),
        ("/v1/score", '{"items": [{"prompt": "p", "response": ["r"]}]}', 422,
         "items[0].response"),
        ("/v1/score", '{"items": [{"prompt": [{"role": "user<|eot_id|>", "content": "x"}], '
         '"response": "r"}]}', 422, "unknown role"),
        ("/v1/score", '{"items": [{"prompt": [{"role": "user"}], "response": "r"}]}', 422,
         "prompt[0]"),
        ("/v1/score", '{"items": [' + ",".join([item] * 5) + "]}", 413, "--max-items"),
        ("/get_reward", '{"query": "q", "prompts": ["p"]}', 422, "`query` must be a list"),
        ("/get_reward", '{"query": ["q"], "prompts": [1]}', 422, "prompts[0] must be"),
        ("/get_reward", '{"query": ["q", "r"], "prompts": ["q"]}', 422, "one prompt per"),
        ("/get_reward", '{"query": ["abc"], "prompts": ["x"]}', 422, "does not start with"),
        ("/get_reward", "null", 422, "expected"),
    ]
    with TestClient(app, raise_server_exceptions=False) as client:
        for path, body, status, message in bodies:
            response = client.post(path, content=body, headers=auth)
            assert response.status_code == status, (body[:80], response.text)
            assert message in response.json()["error"], (body[:80], response.text)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"},
                        {"Authorization": "Basic sesame"}):
            response = client.post("/v1/score", content='{"items": []}', headers=headers)
            assert response.status_code == 401, response.text
        response = client.post("/v1/score", content='{"items": [' + item + "]}",
                               headers={**auth, "Content-Length": "99999999999"})
        assert response.status_code in (400, 413), response.text
        good = client.post("/v1/score", json={"items": [{"prompt": "p", "response": "r"}]},
                           headers=auth)
        assert good.status_code == 200, good.text
        assert isinstance(good.json()["results"][0]["reward"], float)


# --- kill -9 mid-run, then rerun: the parquet outputs of `synth --pairs` --------------------
def test_synth_pairs_parquet_resumes_after_a_kill(tiny_model: Path, tmp_path: Path) -> None:
    """Both parquet outputs (pairs and dropped prompts) journal their rows; a kill leaves
    journals only, a rerun resumes from them: every prompt decided once, no journal left."""
    import subprocess
    import sys

    from conftest import kill_after_lines

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about {i}."})
                               + "\n" for i in range(8)))
    out = tmp_path / "pairs.parquet"
    journal = tmp_path / "pairs.dropped.parquet.partial.jsonl"
    command = [sys.executable, "-m", "qalign_dsl", "synth", str(ROOT / "compiled" /
               "tutorial.json"), str(prompts), "--pairs", "--samples", "2", "--policy",
               str(tiny_model), "--judge", str(tiny_model), "--max-new-tokens", "4",
               "--batch-size", "1", "--margin", "1000", "-o", str(out)]
    before = kill_after_lines(command, journal)  # the margin drops every prompt
    assert 2 <= before < 8 and not out.exists()
    with journal.open("a") as handle:  # a row cut off mid-write
        handle.write('{"id": "p7", "prom')
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    ids = [row["id"] for row in pq.read_table(tmp_path / "pairs.dropped.parquet").to_pylist()]
    ids += [row["id"] for row in pq.read_table(out).to_pylist()]
    assert sorted(ids) == [f"p{i}" for i in range(8)]
    assert not journal.exists()
    assert not (tmp_path / "pairs.parquet.partial.jsonl").exists()


@pytest.mark.parametrize("cache", ["generations.sqlite", "answers.sqlite"])
def test_eval_cache_qalc_did_not_write(cache: str, tiny_model: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A cache file in -o that is not SQLite: a message naming the folder, exit 1, the file
    untouched, no results written (it was a traceback)."""
    _materialize(tmp_path, {**EFILES, "e.yaml": EVAL_RECIPE.encode()})
    garbage = tmp_path / "run" / cache
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a database " * 100)
    code = main(["eval", str(tmp_path / "e.yaml"), "--model", f"m={tiny_model}", "--judge",
                 f"harm={tiny_model}", "-o", str(tmp_path / "run"), "--no-plots"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "not a usable SQLite database" in err and "Traceback" not in err
    assert garbage.read_bytes() == b"not a database " * 100
    # Nothing of the run is written (a judge that loaded may have opened its answer cache).
    assert not {"results.json", "report.md", "plots"} & {p.name for p in garbage.parent.iterdir()}


@pytest.mark.parametrize("stdin, message", [
    ("/dev/zero", "file is too large"), ("/dev/urandom", "<stdin>"),
])
def test_fmt_stdin_is_bounded(stdin: str, message: str, tmp_path: Path) -> None:
    """`qalc fmt -` reads at most one byte past the source limit: `< /dev/zero` is an error
    at once, not a read that never ends."""
    import subprocess
    import sys

    with open(stdin, "rb") as source:
        done = subprocess.run([sys.executable, "-m", "qalign_dsl", "fmt", "-"], stdin=source,
                              capture_output=True, timeout=60, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, err
    assert message in err and "Traceback" not in err


_ = (stat, Callable)


def test_judge_problems_are_reported_at_start(tiny_model: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             alarm: None) -> None:
    """serve loads the judge's weights before it listens: a judge that cannot load is exit 1
    at start (not a healthy server failing every request); validate and serve say when
    --cache is not an SQLite file."""
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_model, broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    assert main(["serve", MICRO, "--judge", str(broken), "--port", "0"]) == 1
    assert "cannot load judge model" in capsys.readouterr().err
    not_sqlite = tmp_path / "notdb.sqlite"
    not_sqlite.write_bytes(b"not a database" * 100)
    labels = tmp_path / "l.jsonl"
    labels.write_bytes(LABEL)
    assert main(["validate", MICRO, str(labels), "--model", str(tiny_model), "--cache",
                 str(not_sqlite)]) == 1
    assert "--cache" in capsys.readouterr().err
    assert main(["serve", MICRO, "--judge", str(tiny_model), "--cache", str(not_sqlite),
                 "--port", "0"]) == 1
    error = capsys.readouterr().err
    assert "--cache" in error and "Traceback" not in error
