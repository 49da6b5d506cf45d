"""Property tests: random and mutated sources never raise anything but a diagnostic."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qalign_dsl.lang.compiler import check_text, compile_checked, compile_text
from qalign_dsl.lang.fmt import format_module
from qalign_dsl.lang.parser import decode_source, parse

SEEDS = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "constitutions").glob("*.qal"))]
TOKENS = ["{", "}", "(", ")", "[", "]", "=", ",", ".", "-", "*", "/", "+", '"', '"""', "#",
          "qal 1", "principle", "dimension", "binary", "graded", "scale", "template", "pool",
          "defaults", "reward", "if", "then", "else", "failed", "mean", "min", "wmean",
          "weights", "as", "weight", "n/a", "fails", "gates", "graded", "dimensions",
          "principles", "1.0", "-1", "\n", " ", "{response}", "{question}", "harmlessness",
          "import", "output", "revision_reward", "alpha", "score"]


def _compiles_or_reports(text: str) -> None:
    result = compile_text(text, "fuzz.qal")
    if result.document is None:  # an error, or an import-only library file
        assert result.library or any(d.is_error for d in result.diagnostics)
    parsed = parse(text, "fuzz.qal")
    if parsed.module is not None:
        formatted = format_module(parsed.module)
        again = parse(formatted, "fuzz.qal")
        assert again.module == parsed.module
        assert format_module(again.module) == formatted


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_random_text(text: str) -> None:
    _compiles_or_reports(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_random_token_soup(tokens: list[str]) -> None:
    _compiles_or_reports(" ".join(tokens))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 12), st.sampled_from(TOKENS + [""])),
        min_size=1, max_size=4,
    ),
)
def test_mutated_constitutions(seed: str, edits: list[tuple[float, int, str]]) -> None:
    text = seed
    for where, length, insert in edits:
        at = int(where * len(text))
        text = text[:at] + insert + text[at + length:]
    _compiles_or_reports(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    text, problems = decode_source(data, "fuzz.qal")
    if text is None:
        assert problems
    else:
        _compiles_or_reports(text)


# --- check succeeds => compile succeeds ---------------------------------------------

_TOKEN = re.compile(r'"""(?:[^"\\]|\\.|"(?!""))*"""|"(?:[^"\\\n]|\\.)*"|#[^\n]*|\d+(?:\.\d*)?'
                    r"(?:[eE][-+]?\d+)?|[A-Za-z_][A-Za-z0-9_]*|\S")
_NUMBER = re.compile(r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")
EXTREMES = ["1e999", "1.7976931348623157e308", "9" * 400, "0", "5e-324", "1e308 * 10",
            "(1e308 + 1e308)", "1 / 1e-320"]
CHECK_SEEDS = SEEDS + [p.read_text(encoding="utf-8")
                       for p in sorted((ROOT / "tests" / "data" / "compile").glob("*.qal"))]


def _fuzz_path(text: str) -> str:
    """A path beside the seed the text came from, so that its imports resolve (checked as
    `fuzz.qal` with no folder, every seed that imports stops at QAL106 and never compiles)."""
    folder = ROOT / "constitutions" if "lib/common.qal" in text else ROOT / "tests" / "data" / \
        "compile"
    return str(folder / "fuzz.qal")


def _tokens(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _TOKEN.finditer(text)]


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(CHECK_SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        spans = _tokens(text)
        if not spans:
            break
        start, end = spans[draw(st.integers(0, len(spans) - 1))]
        action = draw(st.sampled_from(["delete", "duplicate", "replace", "extreme", "extreme"]))
        if action == "delete":
            text = text[:start] + text[end:]
        elif action == "duplicate":
            text = text[:end] + " " + text[start:end] + text[end:]
        elif action == "replace":
            other_start, other_end = spans[draw(st.integers(0, len(spans) - 1))]
            text = text[:start] + text[other_start:other_end] + text[end:]
        else:
            numbers = list(_NUMBER.finditer(text))
            if numbers:
                chosen = numbers[draw(st.integers(0, len(numbers) - 1))]
                text = (text[:chosen.start()] + draw(st.sampled_from(EXTREMES))
                        + text[chosen.end():])
    return text


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_check_succeeds_implies_compile_succeeds(text: str) -> None:
    checked = check_text(text, _fuzz_path(text))
    if not checked.ok or checked.library:
        return
    compiled = compile_checked(checked)  # raises on what the IR cannot hold
    assert compiled.document is not None


_STRING = re.compile(r'"""(?:[^"\\]|\\.|"(?!""))*"""|"(?:[^"\\\n]|\\.)*"')
# Strings the IR may refuse (empty text, a tag that is not a name, a lone brace).
STRING_EXTREMES = ['""', '"   "', '"\\n"', '"{"', '"}"', '"{{}}"', '"a b"', '"<x>"',
                   '"{response}"', '"""\n"""']


@pytest.mark.parametrize("literal", STRING_EXTREMES)
def test_odd_strings_never_pass_check_and_fail_compile(literal: str) -> None:
    for seed in CHECK_SEEDS:
        found = list(_STRING.finditer(seed))
        # a few spread over the file, and texts given an id with `as` (no id to derive)
        named = [m for m in found if seed[m.end():m.end() + 4] == " as "]
        for match in found[:: max(len(found) // 6, 1)] + named[:3]:
            text = seed[:match.start()] + literal + seed[match.end():]
            checked = check_text(text, _fuzz_path(text))
            if checked.ok and not checked.library:
                assert compile_checked(checked).document is not None, text


@pytest.mark.parametrize("literal", EXTREMES)
def test_extreme_numbers_never_pass_check_and_fail_compile(literal: str) -> None:
    for seed in CHECK_SEEDS:
        found = list(_NUMBER.finditer(seed))
        for match in found[:: max(len(found) // 4, 1)]:  # a few spread over the file
            text = seed[:match.start()] + literal + seed[match.end():]
            checked = check_text(text, _fuzz_path(text))
            if checked.ok and not checked.library:
                assert compile_checked(checked).document is not None
