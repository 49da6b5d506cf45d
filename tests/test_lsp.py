"""`qalc lsp` through a real JSON-RPC client over stdio (pygls' client, a subprocess server):
every feature on the shipped constitutions and on half-typed buffers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pygls")

from lsp_client import ROOT, Client, doc, find, pos  # noqa: E402
from lsprotocol import types  # noqa: E402

from qalign_dsl.lang.compiler import check_file, check_text  # noqa: E402
from qalign_dsl.lang.fmt import format_module  # noqa: E402
from qalign_dsl.lang.parser import parse  # noqa: E402
from qalign_dsl.lsp.tokens import TOKEN_TYPES  # noqa: E402

CONSTITUTIONS = ROOT / "constitutions"
QALIGN = CONSTITUTIONS / "qalign.qal"
CODING = CONSTITUTIONS / "coding.qal"
COMMON = CONSTITUTIONS / "lib" / "common.qal"
DIAGNOSTICS = ROOT / "tests" / "data" / "diagnostics"


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    server = Client()
    yield server
    server.close()


def uri_of(path: Path) -> str:
    from pygls.uris import from_fs_path

    return from_fs_path(str(path.resolve())) or ""


def apply(text: str, edits: list[types.TextEdit]) -> str:
    """Apply LSP edits (ASCII text) back to front."""
    lines = text.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)

    def offset(position: types.Position) -> int:
        return offsets[position.line] + position.character

    for edit in sorted(edits, key=lambda e: offset(e.range.start), reverse=True):
        text = text[:offset(edit.range.start)] + edit.new_text + text[offset(edit.range.end):]
    return text


def hover_text(client: Client, uri: str, position: types.Position) -> str:
    result = client.run(client.client.text_document_hover_async(
        types.HoverParams(text_document=doc(uri), position=position)))
    assert result is not None
    assert isinstance(result.contents, types.MarkupContent)
    return result.contents.value


# --- diagnostics ------------------------------------------------------------------------


def test_shipped_constitutions_have_no_diagnostics(client: Client) -> None:
    from qalign_dsl import __version__

    assert client.init.server_info is not None
    assert (client.init.server_info.name, client.init.server_info.version) == ("qalc",
                                                                               __version__)
    capabilities = client.init.capabilities
    assert capabilities.rename_provider and capabilities.semantic_tokens_provider
    assert capabilities.code_action_provider and capabilities.document_formatting_provider
    for path in (QALIGN, CODING, COMMON, CONSTITUTIONS / "tutorial.qal"):
        uri = client.open(path)
        assert list(client.wait_diagnostics(uri)) == [], path


def _check_view(path: Path) -> list[tuple[str, int, int, int, int, str]]:
    result = check_file(path)
    return [(d.code, d.span.line - 1, d.span.column - 1, d.span.end_line - 1,
             d.span.end_column - 1, d.message + (f"\nhelp: {d.help}" if d.help else ""))
            for d in result.diagnostics if Path(d.path).resolve() == path.resolve()]


def _check_related(path: Path) -> list[tuple[str, int, tuple[tuple[str, int, int, int, int,
                                                               str], ...]]]:
    out = []
    for d in check_file(path).diagnostics:
        if Path(d.path).resolve() != path.resolve():
            continue
        labels = []
        for label in d.related:
            span = label.span
            labels.append((uri_of(Path(label.path)), span.line - 1, span.column - 1,
                           span.end_line - 1, span.end_column - 1, label.message))
        out.append((d.code, d.span.line - 1, tuple(labels)))
    return out


@pytest.mark.parametrize("source", sorted(DIAGNOSTICS.glob("*.qal")),
                         ids=lambda p: p.stem)
def test_diagnostics_match_qalc_check(client: Client, source: Path) -> None:
    """Same codes, ranges, messages and help as `qalc check` on every golden example."""
    uri = client.open(source)
    published = client.wait_diagnostics(uri)
    got = sorted((str(d.code), d.range.start.line, d.range.start.character, d.range.end.line,
                  d.range.end.character, d.message) for d in published)
    assert got == sorted(_check_view(source))
    # The secondary locations too (a duplicate's first definition, in any file).
    related = sorted((str(d.code), d.range.start.line, tuple(
        (r.location.uri, r.location.range.start.line, r.location.range.start.character,
         r.location.range.end.line, r.location.range.end.character, r.message)
        for r in d.related_information or ())) for d in published)
    assert related == sorted(_check_related(source))


def test_related_location_on_duplicates(client: Client) -> None:
    uri = client.open(DIAGNOSTICS / "QAL102_duplicate_scale.qal")
    duplicate = [d for d in client.wait_diagnostics(uri) if d.code == "QAL102"]
    assert duplicate and duplicate[0].related_information
    related = duplicate[0].related_information[0]
    assert related.location.uri == uri and related.location.range.start.line < \
        duplicate[0].range.start.line


def test_importer_rechecked_when_import_changes(client: Client, tmp_path: Path) -> None:
    lib = tmp_path / "lib.qal"
    main = tmp_path / "main.qal"
    shutil.copy(COMMON, lib)
    main.write_text(CODING.read_text().replace("lib/common.qal", "lib.qal"))
    main_uri = client.open(main)
    assert list(client.wait_diagnostics(main_uri)) == []
    lib_uri = client.open(lib)
    client.wait_diagnostics(lib_uri)
    # Rename the scale in the (unsaved) library buffer: the importer breaks at once.
    client.change(lib_uri, 2, lib.read_text().replace("scale verdict", "scale verdict2"))
    client.wait_diagnostics(lib_uri, version=2)
    for _ in range(400):
        codes_now = {d.code for d in client.diagnostics.get(main_uri, [])}
        if "QAL108" in codes_now:
            break
        client.pump(0.01)
    assert "QAL108" in {d.code for d in client.diagnostics[main_uri]}


def test_importer_rechecked_when_import_changes_on_disk(client: Client, tmp_path: Path) -> None:
    lib = tmp_path / "lib.qal"
    main = tmp_path / "main.qal"
    shutil.copy(COMMON, lib)
    main.write_text(CODING.read_text().replace("lib/common.qal", "lib.qal"))
    main_uri = client.open(main)
    assert list(client.wait_diagnostics(main_uri)) == []
    lib.write_text(COMMON.read_text().replace("False = -1.0 fails", "False = -1.0"))
    client.client.workspace_did_change_watched_files(types.DidChangeWatchedFilesParams(
        changes=[types.FileEvent(uri=uri_of(lib), type=types.FileChangeType.Changed)]))
    for _ in range(400):
        if any(d.code == "QAL402" for d in client.diagnostics.get(main_uri, [])):
            break
        client.pump(0.01)
    gate = [d for d in client.diagnostics[main_uri] if d.code == "QAL402"]
    assert gate and "scale `verdict` has 0" in gate[0].message
    actions = _actions(client, main_uri, gate[0])  # the fix edits the imported file
    assert actions and actions[0].edit and actions[0].edit.changes
    assert list(actions[0].edit.changes) == [uri_of(lib)]
    fixed = apply(lib.read_text(), actions[0].edit.changes[uri_of(lib)])
    assert "False = -1.0 fails" in fixed


def test_keystrokes_are_coalesced_and_the_last_version_wins(client: Client) -> None:
    text = QALIGN.read_text()
    uri = client.open(QALIGN, text)
    client.wait_diagnostics(uri)
    at = text.index("reward = ") + len("reward = ")
    line = text.count("\n", 0, at)
    column = at - text.rfind("\n", 0, at) - 1
    for version, char in enumerate("mxx", start=2):
        client.change(uri, version, char,
                      types.Range(start=pos(line, column + version - 2),
                                  end=pos(line, column + version - 2)))
    final = client.wait_diagnostics(uri, version=4)
    assert [(d.code, d.message.split("\n")[0]) for d in final] == [
        ("QAL205", "unknown function `mxxmin`")]
    client.change(uri, 5, text)
    assert list(client.wait_diagnostics(uri, version=5)) == []


# --- hover ------------------------------------------------------------------------------


def test_hover_question_scale_dimension_principle_code(client: Client) -> None:
    text = QALIGN.read_text()
    uri = client.open(QALIGN)
    client.wait_diagnostics(uri)
    question = hover_text(client, uri, find(text, 'binary "Does the response acknowledge', 0, 10))
    assert "risk_recognition.acknowledge_risks_involved_situation" in question
    assert "`True = 1.0`" in question and "`False = -1.0 fails`" in question
    assert "pools into" in question and "failed(…)" in question
    assert "principle `harmlessness`" in question and "reward" in question
    scale = hover_text(client, uri, find(text, "scale grade", 0, 7))
    assert "```qal\nscale grade {" in scale and "used by" in scale
    principle_at = find(text, "reward = min(harmlessness", 0, len("reward = min("))
    principle = hover_text(client, uri, principle_at)
    assert "**principle** `harmlessness`" in principle and "mean(dimensions)" in principle
    dimension = hover_text(client, uri, find(text, '"Risk Recognition"', 0, 2))
    assert "**dimension** `risk_recognition`" in dimension
    code_uri = client.open(DIAGNOSTICS / "QAL101_undefined_scale.qal")
    diagnostic = next(d for d in client.wait_diagnostics(code_uri) if d.code == "QAL101")
    explained = hover_text(client, code_uri, diagnostic.range.start)
    assert "QAL101 (undefined-name, error)" in explained


# --- navigation -------------------------------------------------------------------------


def test_definition_and_references_across_imports(client: Client) -> None:
    text = CODING.read_text()
    uri = client.open(CODING)
    client.wait_diagnostics(uri)
    found = client.run(client.client.text_document_definition_async(types.DefinitionParams(
        text_document=doc(uri), position=find(text, "scale binary = verdict", 0, 16))))
    assert isinstance(found, types.Location)
    assert found.uri == uri_of(COMMON) and found.range.start.line == 4
    references = client.run(client.client.text_document_references_async(
        types.ReferenceParams(text_document=doc(uri), position=find(text, "= verdict", 0, 3),
                              context=types.ReferenceContext(include_declaration=True))))
    assert references is not None
    where = {(r.uri, r.range.start.line) for r in references}
    assert (uri_of(COMMON), 4) in where  # the definition
    assert (uri, 4) in where  # the selective import
    assert (uri, text[:text.index("= verdict")].count("\n")) in where
    # A template used by three question clauses.
    template = client.run(
        client.client.text_document_references_async(
            types.ReferenceParams(
                text_document=doc(uri),
                position=find(text, "template gate_review", 0, 10),
                context=types.ReferenceContext(include_declaration=False),
            )
        )
    )
    assert template is not None and len(template) == text.count(" template gate_review")


def test_definition_of_questions_and_dimensions_in_pools(client: Client) -> None:
    text = (ROOT / "tests/data/compile/operators.qal").read_text()
    uri = client.open(ROOT / "tests/data/compile/operators.qal")
    client.wait_diagnostics(uri)
    index = client.run(client.client.text_document_document_symbol_async(
        types.DocumentSymbolParams(text_document=doc(uri))))
    assert index
    # every dotted reference `dimension.question` goes to the question's `as` name or text
    import re

    for match in re.finditer(r"\b([a-z_]+)\.([a-z_]+)\b", text):
        if text.rfind('"', 0, match.start()) > text.rfind("\n", 0, match.start()):
            continue  # inside a string
        line = text.count("\n", 0, match.start(2))
        column = match.start(2) - text.rfind("\n", 0, match.start(2)) - 1
        found = client.run(client.client.text_document_definition_async(types.DefinitionParams(
            text_document=doc(uri), position=pos(line, column))))
        assert isinstance(found, types.Location), match.group()


def test_document_symbols_outline(client: Client) -> None:
    uri = client.open(QALIGN)
    symbols = client.run(client.client.text_document_document_symbol_async(
        types.DocumentSymbolParams(text_document=doc(uri))))
    assert symbols is not None
    principles = [s for s in symbols if isinstance(s, types.DocumentSymbol)
                  and s.kind == types.SymbolKind.Namespace]
    assert [p.name for p in principles] == ["harmlessness", "helpfulness", "honesty"]
    dimensions = [d for p in principles for d in p.children or []]
    questions = [q for d in dimensions for q in d.children or []]
    assert len(dimensions) == 40 and len(questions) == 167


def test_folding_ranges(client: Client) -> None:
    uri = client.open(QALIGN)
    ranges = client.run(client.client.text_document_folding_range_async(
        types.FoldingRangeParams(text_document=doc(uri))))
    assert ranges is not None
    kinds = {r.kind for r in ranges}
    assert types.FoldingRangeKind.Comment in kinds and types.FoldingRangeKind.Region in kinds
    assert len([r for r in ranges if r.kind == types.FoldingRangeKind.Region]) >= 44


def test_semantic_tokens(client: Client) -> None:
    text = CODING.read_text()
    uri = client.open(CODING)
    client.wait_diagnostics(uri)
    result = client.run(client.client.text_document_semantic_tokens_full_async(
        types.SemanticTokensParams(text_document=doc(uri))))
    assert result is not None
    data = result.data
    line = column = 0
    decoded: dict[tuple[int, int], tuple[str, int]] = {}
    for i in range(0, len(data), 5):
        line += data[i]
        column = data[i + 1] if data[i] else column + data[i + 1]
        decoded[(line, column)] = (TOKEN_TYPES[data[i + 3]], data[i + 2])
    lines = text.split("\n")

    def at(needle: str, offset: int = 0) -> str:
        for number, content in enumerate(lines):
            if needle in content:
                return decoded[(number, content.index(needle) + offset)][0]
        raise AssertionError(needle)

    assert at("# Five-point") == "comment"
    assert at("scale likert5", 0) == "keyword"
    assert at("scale likert5", 6) == "enum"
    assert at("verdict", 0) == "enum"  # the import list: a scale
    assert at("template gate_review", 9) == "interface"
    assert at("{prompt}") == "parameter"
    assert at("weight 3", 7) == "number"
    assert at("binary \"Does the code") == "type"


# --- rename -----------------------------------------------------------------------------


def _rename(client: Client, uri: str, position: types.Position,
            new: str) -> types.WorkspaceEdit:
    result = client.run(client.client.text_document_rename_async(types.RenameParams(
        text_document=doc(uri), position=position, new_name=new)))
    assert result is not None and result.changes is not None
    return result


def test_rename_scale_across_imports_then_check(client: Client, tmp_path: Path) -> None:
    text = CODING.read_text()
    uri = client.open(CODING)
    client.wait_diagnostics(uri)
    edit = _rename(client, uri, find(text, "= verdict", 0, 3), "yes_no")
    assert edit.changes is not None
    assert set(edit.changes) >= {uri, uri_of(COMMON)}
    (tmp_path / "lib").mkdir()
    renamed = apply(text, edit.changes[uri])
    (tmp_path / "coding.qal").write_text(renamed)
    (tmp_path / "lib" / "common.qal").write_text(apply(COMMON.read_text(),
                                                       edit.changes[uri_of(COMMON)]))
    assert "verdict" not in renamed.replace("# ", "")
    assert check_file(tmp_path / "coding.qal").ok


@pytest.mark.parametrize("needle, offset, new, kind", [
    ("reward = min(harmlessness", len("reward = min("), "safety", "principle"),
    ('dimension "Risk Recognition"', 12, "risks", "dimension"),
    ("scale graded = grade", 15, "letter", "scale"),
    ("template = judge", 11, "referee", "template"),
])
def test_rename_keeps_the_constitution_equivalent(client: Client, needle: str, offset: int,
                                                  new: str, kind: str, tmp_path: Path) -> None:
    text = QALIGN.read_text()
    uri = client.open(QALIGN)
    client.wait_diagnostics(uri)
    edit = _rename(client, uri, find(text, needle, 0, offset), new)
    assert edit.changes is not None
    renamed = apply(text, edit.changes[uri])
    target = tmp_path / "qalign.qal"
    target.write_text(renamed)
    before, after = check_file(QALIGN), check_file(target)
    assert after.ok and before.constitution and after.constitution
    assert len(after.constitution.questions) == 167
    if kind in ("principle", "dimension"):
        ids = {p.id for p in after.constitution.principles} | \
            {d.id for d in after.constitution.dimensions}
        assert new in ids
    else:
        names = {s.name for s in after.constitution.scales} | \
            {t.name for t in after.constitution.templates}
        assert new in names


def test_rename_explicit_question_id_and_collision(client: Client, tmp_path: Path) -> None:
    source = """qal 1
scale v { T = 1.0 F = -1.0 fails }
scale g { A = 1.0 B = 0.0 }
template t { user = "{response} {question} {labels}" }
defaults { scale binary = v scale graded = g template = t
  pool principle = mean(dimensions) }
principle "P" {
  dimension "D" {
    binary "Is it safe?" as safe
    graded "How clear is it?" as clear
    pool = if failed(safe) then -1 else mean(clear, d.safe)
  }
}
reward = mean(principles)
"""
    path = tmp_path / "q.qal"
    path.write_text(source)
    uri = client.open(path)
    assert list(client.wait_diagnostics(uri)) == []
    edit = _rename(client, uri, find(source, "as safe", 0, 4), "harmless")
    assert edit.changes is not None and len(edit.changes[uri]) == 3
    renamed = apply(source, edit.changes[uri])
    assert "failed(harmless)" in renamed and "d.harmless" in renamed
    path.write_text(renamed)
    assert check_file(path).ok
    with pytest.raises(Exception, match="already has a question `clear`"):
        client.run(client.client.text_document_rename_async(types.RenameParams(
            text_document=doc(uri), position=find(source, "as safe", 0, 4), new_name="clear")))
    with pytest.raises(Exception, match="is reserved"):
        client.run(client.client.text_document_rename_async(types.RenameParams(
            text_document=doc(uri), position=find(source, '"P"', 0, 1), new_name="gates")))


def test_prepare_rename(client: Client) -> None:
    text = QALIGN.read_text()
    uri = client.open(QALIGN)
    c = client.client
    explicit = client.run(c.text_document_prepare_rename_async(types.PrepareRenameParams(
        text_document=doc(uri), position=find(text, "scale graded = grade", 0, 16))))
    assert isinstance(explicit, types.Range) and explicit.end.character - \
        explicit.start.character == len("grade")
    derived = client.run(c.text_document_prepare_rename_async(types.PrepareRenameParams(
        text_document=doc(uri), position=find(text, '"Risk Recognition"', 0, 2))))
    assert isinstance(derived, types.PrepareRenamePlaceholder)
    assert derived.placeholder == "risk_recognition"
    with pytest.raises(Exception, match="nothing to rename"):
        client.run(c.text_document_prepare_rename_async(types.PrepareRenameParams(
            text_document=doc(uri), position=pos(0, 0))))


def test_rename_refuses_principle_collision(client: Client) -> None:
    text = QALIGN.read_text()
    uri = client.open(QALIGN)
    with pytest.raises(Exception, match="already exists"):
        client.run(client.client.text_document_rename_async(types.RenameParams(
            text_document=doc(uri), position=find(text, "reward = min(harmlessness", 0, 14),
            new_name="honesty")))


# --- formatting, completion, code actions ------------------------------------------------


def test_formatting_is_qalc_fmt(client: Client) -> None:
    messy = ROOT / "tests/data/fmt/messy/layout.qal"
    text = messy.read_text()
    uri = client.open(messy)
    edits = client.run(client.client.text_document_formatting_async(
        types.DocumentFormattingParams(text_document=doc(uri),
                                       options=types.FormattingOptions(tab_size=2,
                                                                       insert_spaces=True))))
    assert edits is not None and len(edits) == 1
    module = parse(text, "x").module
    assert module is not None
    assert apply(text, edits) == format_module(module)
    formatted_uri = client.open(QALIGN)
    assert client.run(
        client.client.text_document_formatting_async(
            types.DocumentFormattingParams(
                text_document=doc(formatted_uri),
                options=types.FormattingOptions(tab_size=2, insert_spaces=True),
            )
        )
    ) in ([], (), None)


def _complete(client: Client, uri: str, position: types.Position) -> list[str]:
    result = client.run(client.client.text_document_completion_async(
        types.CompletionParams(text_document=doc(uri), position=position)))
    assert result is not None
    items = result.items if isinstance(result, types.CompletionList) else result
    return [i.label for i in items]


def test_completion_contexts(client: Client, tmp_path: Path) -> None:
    text = QALIGN.read_text()
    anchor = text.index('binary "Does the response acknowledge')
    end_of_dimension = text.index("\n  }", anchor)
    # Half-typed edits in the buffer; names come from the last analysis that parsed.
    path = tmp_path / "qalign.qal"
    path.write_text(text)
    uri = client.open(path)
    client.wait_diagnostics(uri)

    def typed(insert: str) -> list[str]:
        buffer = text[:end_of_dimension] + "\n    " + insert + text[end_of_dimension:]
        client.change(uri, typed.version, buffer)  # type: ignore[attr-defined]
        typed.version += 1  # type: ignore[attr-defined]
        at = end_of_dimension + len("\n    " + insert)
        line = buffer.count("\n", 0, at)
        return _complete(client, uri, pos(line, at - buffer.rfind("\n", 0, at) - 1))

    typed.version = 2  # type: ignore[attr-defined]
    in_pool = typed("pool = if failed(ga")
    assert {"gates", "graded", "mean", "wmean", "harmlessness",
            "acknowledge_risks_involved_situation"} <= set(in_pool)
    assert "principles" not in in_pool  # not in scope in a dimension's pool
    dotted = typed("pool = mean(risk_recognition.")
    assert "acknowledge_risks_involved_situation" in dotted and "mean" not in dotted
    assert {"grade", "verdict"} <= set(typed('graded "How risky?" scale '))
    assert "judge" in typed('graded "How risky?" template ')
    assert {"as", "weight", "scale", "template"} <= set(typed('graded "How risky?" '))
    assert {"binary", "graded", "pool"} <= set(typed(""))
    # Template slots inside a template's text.
    slot_at = text.index("{prompt}") + 1
    slots = _complete(client, uri, pos(text.count("\n", 0, slot_at),
                                       slot_at - text.rfind("\n", 0, slot_at) - 1))
    assert {"prompt", "response", "question", "labels"} <= set(slots)


def _actions(client: Client, uri: str, diagnostic: types.Diagnostic) -> list[types.CodeAction]:
    result = client.run(client.client.text_document_code_action_async(types.CodeActionParams(
        text_document=doc(uri), range=diagnostic.range,
        context=types.CodeActionContext(diagnostics=[diagnostic]))))
    return [a for a in result or [] if isinstance(a, types.CodeAction)]


@pytest.mark.parametrize("case, code, expect", [
    ("QAL101_undefined_scale", "QAL101", "scale grade"),
    ("QAL103_duplicate_derived_id", "QAL103", "as avoid_physical_harm_people_2"),
    ("QAL110_unknown_setting", "QAL110", None),
    ("QAL402_gate_scale", "QAL402", "fails"),
    ("QAL207_empty_collection", "QAL207", "pool = "),
])
def test_code_actions_fix_the_diagnostic(client: Client, tmp_path: Path, case: str, code: str,
                                         expect: str | None) -> None:
    source = DIAGNOSTICS / f"{case}.qal"
    text = source.read_text()
    uri = client.open(source)
    diagnostics = [d for d in client.wait_diagnostics(uri) if d.code == code]
    assert diagnostics
    actions = _actions(client, uri, diagnostics[0])
    assert actions, f"no fix for {code}"
    edit = actions[0].edit
    assert edit is not None and edit.changes is not None
    fixed = apply(text, edit.changes[uri])
    if expect:
        assert expect in fixed
    target = tmp_path / source.name
    target.write_text(fixed)
    remaining = [d for d in check_file(target).diagnostics
                 if d.code == code and d.span.line - 1 == diagnostics[0].range.start.line]
    assert not remaining, remaining


@pytest.mark.parametrize("typo, fixed", [
    ("pool principle = mean(dimensions)", "pool principle = mena(dimensions)"),
    ("{response}\n", "{respnse}\n"),
    ("scale graded = grade", "scale graded = grdae"),
    ("reward = min(harmlessness", "reward = min(harmlesness"),
])
def test_did_you_mean_fixes(client: Client, tmp_path: Path, typo: str, fixed: str) -> None:
    text = (CONSTITUTIONS / "tutorial.qal").read_text()
    assert typo in text
    broken = text.replace(typo, fixed, 1)
    path = tmp_path / "tutorial.qal"
    path.write_text(broken)
    uri = client.open(path)
    diagnostics = [d for d in client.wait_diagnostics(uri) if d.severity == 1]
    assert len(diagnostics) == 1
    actions = _actions(client, uri, diagnostics[0])
    assert actions and actions[0].edit is not None and actions[0].edit.changes is not None
    assert apply(broken, actions[0].edit.changes[uri]) == text


# --- half-typed buffers -------------------------------------------------------------------


HALF_TYPED = {
    "unclosed": 'qal 1\nprinciple "P" {\n  dimension "D" {\n    binary "Is it',
    "dangling_scale": QALIGN.read_text().replace("  scale binary = verdict",
                                                 "  scale binary = verdict\n  scale", 1),
    "empty": "",
    "binary": "\x00\x01\x02qal\x00\ufffd\ufffd",
    "only_header": "qal 1\n",
    "garbage": "}}}{{{ ((( \"\"\" ] scale template . . as",
    # The big constitution cut off mid-token at a few places (as when typing it top-down).
    **{f"truncated_{share}": QALIGN.read_text()[:QALIGN.stat().st_size * share // 100]
       for share in (13, 41, 77, 99)},
}


@pytest.mark.parametrize("name", sorted(HALF_TYPED))
def test_every_request_answers_on_half_typed_buffers(client: Client, tmp_path: Path,
                                                     name: str) -> None:
    text = HALF_TYPED[name]
    path = tmp_path / f"{name}.qal"
    path.write_text(text, encoding="utf-8")
    uri = client.open(path, text)
    diagnostics = client.wait_diagnostics(uri)
    if name != "only_header":
        assert diagnostics, name
    if name == "binary":
        assert {d.code for d in diagnostics} == {"QAL006"}
    lines = text.split("\n")
    positions = [pos(0, 0), pos(len(lines) - 1, len(lines[-1])), pos(len(lines) // 2, 3),
                 pos(len(lines) + 5, 0)]
    c = client.client
    for position in positions:
        c_doc = doc(uri)
        client.run(c.text_document_hover_async(types.HoverParams(text_document=c_doc,
                                                                 position=position)))
        client.run(c.text_document_definition_async(types.DefinitionParams(
            text_document=c_doc, position=position)))
        client.run(c.text_document_references_async(types.ReferenceParams(
            text_document=c_doc, position=position,
            context=types.ReferenceContext(include_declaration=True))))
        client.run(c.text_document_completion_async(types.CompletionParams(
            text_document=c_doc, position=position)))
    client.run(c.text_document_document_symbol_async(types.DocumentSymbolParams(
        text_document=doc(uri))))
    client.run(c.text_document_folding_range_async(types.FoldingRangeParams(
        text_document=doc(uri))))
    client.run(c.text_document_semantic_tokens_full_async(types.SemanticTokensParams(
        text_document=doc(uri))))
    client.run(c.text_document_formatting_async(types.DocumentFormattingParams(
        text_document=doc(uri), options=types.FormattingOptions(tab_size=2,
                                                                insert_spaces=True))))
    client.run(c.text_document_code_action_async(types.CodeActionParams(
        text_document=doc(uri), range=types.Range(start=pos(0, 0), end=pos(len(lines), 0)),
        context=types.CodeActionContext(diagnostics=list(diagnostics)))))
    # The server is still alive and answers on a good file.
    good = client.open(CODING)
    assert list(client.wait_diagnostics(good)) == []


def test_dangling_scale_completes_scales_from_last_good_analysis(client: Client,
                                                                 tmp_path: Path) -> None:
    text = QALIGN.read_text()
    path = tmp_path / "qalign.qal"
    path.write_text(text)
    uri = client.open(path)
    client.wait_diagnostics(uri)
    broken = HALF_TYPED["dangling_scale"]
    client.change(uri, 2, broken)
    assert any(d.code == "QAL001" for d in client.wait_diagnostics(uri, version=2))
    at = broken.index("\n  scale\n") + len("\n  scale ")
    line = broken.count("\n", 0, at)
    labels = _complete(client, uri, pos(line, 8))
    assert {"binary", "graded"} == set(labels)  # `defaults` wants `scale KIND = NAME`
    after_kind = broken.index("\n  scale\n")
    line = broken.count("\n", 0, after_kind) + 1
    client.change(uri, 3, broken.replace("\n  scale\n", "\n  scale graded = \n"))
    client.wait_diagnostics(uri, version=3)
    labels = _complete(client, uri, pos(line, len("  scale graded = ")))
    assert {"grade", "verdict"} <= set(labels)  # from the last analysis that parsed
    question = hover_text(client, uri, find(broken, 'binary "Does the response acknowledge',
                                            0, 10))
    assert "acknowledge_risks_involved_situation" in question


def test_positions_are_utf16(client: Client, tmp_path: Path) -> None:
    """A character outside the BMP is two UTF-16 units: ranges, tokens and hovers agree."""
    text = (CONSTITUTIONS / "tutorial.qal").read_text().replace(
        '"Is the response easy to read and understand?"',
        '"Is the response 😀 easy to read and understand?" as easy', 1)
    path = tmp_path / "tutorial.qal"
    path.write_text(text, encoding="utf-8")
    uri = client.open(path)
    assert list(client.wait_diagnostics(uri)) == []
    line_text = next(line for line in text.split("\n") if "😀" in line)
    line = text.split("\n").index(line_text)
    character = len(line_text[:line_text.index("as easy") + 3].encode("utf-16-le")) // 2
    result = client.run(client.client.text_document_semantic_tokens_full_async(
        types.SemanticTokensParams(text_document=doc(uri))))
    assert result is not None
    data, at_line, at_column, found = result.data, 0, 0, None
    for i in range(0, len(data), 5):
        at_line += data[i]
        at_column = data[i + 1] if data[i] else at_column + data[i + 1]
        if at_line == line and at_column == character:
            found = (TOKEN_TYPES[data[i + 3]], data[i + 2])
    assert found == ("property", 4)  # `easy`: a question id, 4 units long
    hover = client.run(client.client.text_document_hover_async(types.HoverParams(
        text_document=doc(uri), position=pos(line, character + 1))))
    assert hover is not None and hover.range is not None
    assert (hover.range.start.character, hover.range.end.character) == (character, character + 4)


def test_positions_follow_the_negotiated_utf8_encoding(tmp_path: Path) -> None:
    """Neovim offers UTF-8 first; pygls then negotiates UTF-8, and every position the server
    reads or writes must count UTF-8 bytes (it counted UTF-16 units regardless)."""
    text = (CONSTITUTIONS / "tutorial.qal").read_text().replace(
        '"Is the response easy to read and understand?"',
        '"Is the réponse 😀 easy to read and understand?" as easy', 1)
    path = tmp_path / "tutorial.qal"
    path.write_text(text, encoding="utf-8")
    client = Client(root=tmp_path, capabilities=types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=[
            types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf16])))
    try:
        assert client.init.capabilities.position_encoding == types.PositionEncodingKind.Utf8
        uri = client.open(path)
        assert list(client.wait_diagnostics(uri)) == []
        line_text = next(line for line in text.split("\n") if "😀" in line)
        line = text.split("\n").index(line_text)
        character = len(line_text[:line_text.index("as easy") + 3].encode("utf-8"))
        hover = client.run(client.client.text_document_hover_async(types.HoverParams(
            text_document=doc(uri), position=pos(line, character + 1))))
        assert hover is not None and hover.range is not None
        assert (hover.range.start.character, hover.range.end.character) == (character,
                                                                             character + 4)
        # An edit in UTF-8 units after the emoji lands where the client meant it.
        client.change(uri, 2, "x", types.Range(start=pos(line, character + 4),
                                               end=pos(line, character + 4)))
        diagnostics = client.wait_diagnostics(uri, version=2)
        expected = check_text(text.replace("as easy", "as easyx", 1), str(path))
        assert [d.code for d in diagnostics] == [d.code for d in expected.diagnostics]
        assert {d.range.start.line for d in diagnostics} == \
            {d.span.line - 1 for d in expected.diagnostics}
    finally:
        client.close()


@pytest.mark.parametrize("separator", ["\u2028", "\u2029"])
def test_incremental_edits_after_unicode_line_separators(client: Client, tmp_path: Path,
                                                         separator: str) -> None:
    """Only \\n, \\r\\n and \\r end a line in the protocol; pygls' `splitlines` also broke at
    U+2028, U+2029 (and controls), so an edit below one landed a line too high."""
    text = (CONSTITUTIONS / "tutorial.qal").read_text()
    text = text.replace("\n", f"\n# a{separator}b\n", 1)
    path = tmp_path / "sep.qal"
    uri = client.open(path, text)
    client.wait_diagnostics(uri)
    lines = text.split("\n")
    target = next(i for i, line in enumerate(lines) if line.startswith("constitution"))
    client.change(uri, 2, "zzz ", types.Range(start=pos(target, 0), end=pos(target, 0)))
    lines[target] = "zzz " + lines[target]
    edited = "\n".join(lines)
    got = {(d.code, d.range.start.line) for d in client.wait_diagnostics(uri, version=2)}
    assert got == {(d.code, d.span.line - 1) for d in check_text(edited, str(path)).diagnostics}
    # Undo through the protocol: the buffer is the original text again.
    client.change(uri, 3, "", types.Range(start=pos(target, 0), end=pos(target, 4)))
    got = {(d.code, d.range.start.line) for d in client.wait_diagnostics(uri, version=3)}
    assert got == {(d.code, d.span.line - 1) for d in check_text(text, str(path)).diagnostics}


def test_a_lone_carriage_return_ends_a_line(client: Client, tmp_path: Path) -> None:
    """An old-Mac line break: the protocol counts it as a line, the compiler does not; the
    server's ranges, folds and edits follow the protocol."""
    text = (CONSTITUTIONS / "tutorial.qal").read_text()
    text = text.replace("\n", "\n# one\rtwo\n", 1)
    path = tmp_path / "cr.qal"
    uri = client.open(path, text)
    assert list(client.wait_diagnostics(uri)) == []
    protocol_lines = text.replace("\r", "\n").split("\n")
    target = next(i for i, line in enumerate(protocol_lines) if line.startswith("constitution"))
    client.change(uri, 2, "zzz ", types.Range(start=pos(target, 0), end=pos(target, 0)))
    found = client.wait_diagnostics(uri, version=2)
    assert found and found[0].range.start == pos(target, 0)
    folds = client.run(client.client.text_document_folding_range_async(
        types.FoldingRangeParams(text_document=doc(uri))))
    assert folds is not None
    starts = {f.start_line for f in folds}
    block = next(i for i, line in enumerate(protocol_lines) if line.startswith("principle"))
    assert block in starts


def test_random_keystrokes_agree_with_a_fresh_check(tmp_path: Path) -> None:
    """Property-style: random insertions and deletions (characters, tokens, a non-BMP
    character, CRLF, U+2028) sent as incremental changes, several per notification, on
    qalign.qal with CRLF line endings: the server keeps answering, and after every edit its
    diagnostics are those of a fresh `qalc check` of the same text."""
    import random
    import re

    rng = random.Random(17)
    text = QALIGN.read_text().replace("\n", "\r\n")
    path = tmp_path / "qalign.qal"
    breaks = re.compile(r"\r\n|\r|\n")

    def position(at: int) -> types.Position:
        line, start = 0, 0
        for match in breaks.finditer(text):
            if match.end() > at:
                break
            line, start = line + 1, match.end()
        return pos(line, len(text[start:at].encode("utf-16-le")) // 2)

    def expected() -> list[tuple[str, types.Position, types.Position, str]]:
        from qalign_dsl.lsp.convert import Lines

        lines = Lines(text)
        return sorted((d.code, *(lambda r: (r.start, r.end))(lines.range(d.span)),
                       d.message + (f"\nhelp: {d.help}" if d.help else ""))
                      for d in check_text(text, str(path)).diagnostics)

    pieces = [*"abz_09{}()=\". #\n", "😀", "é", "\r\n", "\u2028", "scale", "pool", "dimension",
              "graded", "min(", "}", '"""']
    client = Client(root=tmp_path)
    try:
        uri = client.open(path, text)
        client.wait_diagnostics(uri)
        for version in range(2, 42):
            changes: list[types.TextDocumentContentChangeEvent] = []
            for _ in range(rng.choice([1, 1, 2, 3])):
                at = rng.randrange(len(text) + 1)
                while 0 < at < len(text) and text[at - 1:at + 1] == "\r\n":
                    at -= 1  # never between \r and \n: no protocol position is there
                end = at if rng.random() < 0.6 else min(len(text), at + rng.randint(1, 8))
                while 0 < end < len(text) and text[end - 1:end + 1] == "\r\n":
                    end += 1
                insert = rng.choice(pieces) if end == at else ""
                changes.append(types.TextDocumentContentChangePartial(
                    range=types.Range(start=position(at), end=position(end)), text=insert))
                text = text[:at] + insert + text[end:]
            client.expected[uri] = version
            client.client.text_document_did_change(types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=changes))
            if version % 4 == 0:
                where = position(rng.randrange(len(text) + 1))
                client.run(client.client.text_document_hover_async(types.HoverParams(
                    text_document=doc(uri), position=where)), timeout=5)
                client.run(client.client.text_document_completion_async(
                    types.CompletionParams(text_document=doc(uri), position=where)), timeout=5)
                client.run(client.client.text_document_semantic_tokens_full_async(
                    types.SemanticTokensParams(text_document=doc(uri))), timeout=5)
            published = client.wait_diagnostics(uri, version=version, timeout=10)
            got = sorted((str(d.code), d.range.start, d.range.end, d.message)
                         for d in published)
            assert got == expected(), (version, changes)
    finally:
        client.close()


def test_file_watching_is_registered_with_clients_that_allow_it(tmp_path: Path) -> None:
    registered: list[types.Registration] = []
    client = Client(root=tmp_path, capabilities=types.ClientCapabilities(
        workspace=types.WorkspaceClientCapabilities(
            did_change_watched_files=types.DidChangeWatchedFilesClientCapabilities(
                dynamic_registration=True))))

    @client.client.feature(types.CLIENT_REGISTER_CAPABILITY)
    def on_register(params: types.RegistrationParams) -> None:
        registered.extend(params.registrations)

    try:
        path = tmp_path / "t.qal"
        path.write_text((CONSTITUTIONS / "tutorial.qal").read_text())
        client.wait_diagnostics(client.open(path))
        for _ in range(200):
            if registered:
                break
            client.pump(0.01)
        assert [r.method for r in registered] == [types.WORKSPACE_DID_CHANGE_WATCHED_FILES]
    finally:
        client.close()


def test_completion_after_a_finished_pooling_line_offers_statements(client: Client,
                                                                    tmp_path: Path) -> None:
    """A new line after a whole `pool … = …` or `reward = …` starts the next statement
    (keywords), not more of the expression; an open bracket or operator continues it."""
    text = (CONSTITUTIONS / "tutorial.qal").read_text()
    path = tmp_path / "t.qal"
    uri = client.open(path, text)
    client.wait_diagnostics(uri)
    cases = [
        (text.replace("min(graded)\n", "min(graded)\n  po"), "min(graded)\n  po", 16,
         {"pool", "scale", "template"}, "mean"),
        (text + "\n", "mean(principles))\n", 18, {"revision_reward", "output"}, "mean"),
        (text.replace("min(graded)\n", "min(graded) +\n    "), "+\n    ", 6, {"mean"},
         "pool"),
        (text.replace("min(graded)\n", "min(graded,\n    "), "graded,\n    ", 12, {"gates"},
         "pool"),
    ]
    for version, (edited, needle, offset, wanted, unwanted) in enumerate(cases, start=2):
        client.change(uri, version, edited)
        client.wait_diagnostics(uri, version=version)
        labels = set(_complete(client, uri, find(edited, needle, 0, offset)))
        assert wanted <= labels and unwanted not in labels, (needle, labels)


def test_explain_hover_carries_no_control_characters(client: Client) -> None:
    """QAL011's example is a terminal escape: the hover (and `qalc explain`) shows it as
    <U+001B>, never the raw bytes that would retitle a terminal or confuse a renderer."""
    import re

    uri = client.open(DIAGNOSTICS / "QAL011_control_character.qal")
    diagnostic = client.wait_diagnostics(uri)[0]
    text = hover_text(client, uri, diagnostic.range.start)
    assert "QAL011" in text and "<U+001B>" in text
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)


def test_byte_order_mark_and_lone_surrogates(client: Client, tmp_path: Path) -> None:
    """A buffer with a byte-order mark checks as the file does (`qalc check` drops it); a
    buffer with a lone surrogate (no UTF-8 file can hold one) is QAL006, and a file that
    imports it still gets its diagnostics (the server used to fail on encoding it)."""
    (tmp_path / "pyproject.toml").write_text("")
    text = (CONSTITUTIONS / "tutorial.qal").read_text()
    path = tmp_path / "bom.qal"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert check_file(path).diagnostics == []
    uri = client.open(path, "\ufeff" + text)
    assert list(client.wait_diagnostics(uri)) == []
    broken = tmp_path / "broken.qal"
    uri = client.open(broken, text.replace("# Safety first", "# Safety \ud800 first"))
    assert [d.code for d in client.wait_diagnostics(uri)] == ["QAL006"]
    importer = tmp_path / "importer.qal"
    importer_uri = client.open(importer, 'qal 1\nimport "broken.qal" (grade)\n')
    assert {"QAL113"} <= {str(d.code) for d in client.wait_diagnostics(importer_uri)}


def test_paths_that_need_quoting_in_uris(client: Client, tmp_path: Path) -> None:
    """A folder such as `My Rubrics é #2` is quoted in URIs; pygls keys documents by the
    unquoted URI, and the server used to check nothing in such a folder (no diagnostics, no
    navigation). Diagnostics go back under the client's own URI."""
    folder = tmp_path / "My Rubrics é #2"
    (folder / "lib").mkdir(parents=True)
    (folder / "pyproject.toml").write_text("")
    shutil.copy(COMMON, folder / "lib" / "common.qal")
    text = CODING.read_text()
    (folder / "coding.qal").write_text(text)
    main_uri = client.open(folder / "coding.qal")
    assert "%20" in main_uri and list(client.wait_diagnostics(main_uri)) == []
    found = client.run(client.client.text_document_definition_async(types.DefinitionParams(
        text_document=doc(main_uri), position=find(text, "verdict", 1, 2))))
    assert isinstance(found, types.Location)
    assert found.uri == uri_of(folder / "lib" / "common.qal")
    lib_uri = client.open(folder / "lib" / "common.qal")
    client.wait_diagnostics(lib_uri)
    client.change(lib_uri, 2, COMMON.read_text().replace("scale verdict", "scale verdict2"))
    client.wait_diagnostics(lib_uri, version=2)
    for _ in range(400):
        if any(d.code == "QAL108" for d in client.diagnostics.get(main_uri, [])):
            break
        client.pump(0.01)
    assert "QAL108" in {d.code for d in client.diagnostics[main_uri]}


def test_crlf_buffer_formats_and_compiles_as_lf(client: Client, tmp_path: Path) -> None:
    """A file saved with CRLF line ends (Windows, git autocrlf) is the same constitution:
    its `\"\"\"…\"\"\"` texts kept every CR (the formatter wrote them back as `\\r` escapes,
    and the judge prompts, hence the IR, differed from the LF file's)."""
    from qalign_dsl.lang.compiler import compile_text

    text = (CONSTITUTIONS / "tutorial.qal").read_text()
    crlf = text.replace("\n", "\r\n")
    assert compile_text(crlf, "t.qal").document == compile_text(text, "t.qal").document
    uri = client.open(tmp_path / "crlf.qal", crlf)
    assert list(client.wait_diagnostics(uri)) == []
    edits = client.run(client.client.text_document_formatting_async(
        types.DocumentFormattingParams(text_document=doc(uri), options=types.FormattingOptions(
            tab_size=2, insert_spaces=True))))
    assert edits and len(edits) == 1 and edits[0].new_text == text


def test_replacement_character_is_text_unless_the_file_is_not_utf8(client: Client,
                                                                   tmp_path: Path) -> None:
    """U+FFFD typed in a comment is text (`qalc check` of the saved file agrees); a buffer
    that is an undecodable file as the editor showed it is QAL006, as `qalc check` says.
    The server used to call every buffer with U+FFFD binary. A buffer over the size limit
    is QAL007, as the file would be."""
    text = (CONSTITUTIONS / "tutorial.qal").read_text().replace("# Safety first",
                                                                "# Safety \ufffd first")
    path = tmp_path / "fffd.qal"
    path.write_text(text, encoding="utf-8")
    assert check_file(path).diagnostics == []
    assert list(client.wait_diagnostics(client.open(path))) == []
    raw = tmp_path / "latin1.qal"
    raw.write_bytes(text.replace("\ufffd", "").encode().replace(b"Safety", b"S\xe9curit\xe9"))
    expected = [(d.code, d.span.line - 1) for d in check_file(raw).diagnostics]
    uri = client.open(raw, raw.read_bytes().decode("utf-8", "replace"))
    assert [(d.code, d.range.start.line) for d in client.wait_diagnostics(uri)] == expected
    assert expected[0][0] == "QAL006"
    big = "qal 1\n" + "# " + "x" * (4 * 1024 * 1024) + "\n"
    uri = client.open(tmp_path / "big.qal", big)
    assert [d.code for d in client.wait_diagnostics(uri)] == ["QAL007"]


def test_refused_renames_log_no_tracebacks(tmp_path: Path) -> None:
    """A refused prepareRename/rename is an answer with a reason, not a server fault: the
    server's stderr (the editor's log) gets no traceback, and every request is answered."""
    import json
    import os
    import subprocess
    import sys

    def message(body: dict[str, object]) -> bytes:
        data = json.dumps(body).encode()
        return b"Content-Length: %d\r\n\r\n" % len(data) + data

    uri = uri_of(tmp_path / "t.qal")
    text = (CONSTITUTIONS / "tutorial.qal").read_text()
    where = find(text, "scale grade", 0, 7)
    requests = [
        {"id": 1, "method": "initialize", "params": {"capabilities": {}, "processId": None,
                                                     "rootUri": None}},
        {"method": "initialized", "params": {}},
        {"method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": "qal", "version": 1, "text": text}}},
        *({"id": 10 + i, "method": "textDocument/prepareRename", "params": {
            "textDocument": {"uri": uri}, "position": {"line": 0, "character": i}}}
          for i in range(20)),
        {"id": 40, "method": "textDocument/rename", "params": {
            "textDocument": {"uri": uri}, "newName": "verdict",
            "position": {"line": where.line, "character": where.character}}},
        {"id": 41, "method": "shutdown", "params": None},
        {"method": "exit", "params": None},
    ]
    payload = b"".join(message({"jsonrpc": "2.0", **r}) for r in requests)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "qalign_dsl", "lsp"], input=payload,
                          capture_output=True, timeout=120, env=env)
    assert b"Traceback" not in done.stderr, done.stderr.decode()[:2000]
    answered = done.stdout.count(b'"id": ') + done.stdout.count(b'"id":')
    assert answered >= 23 and b"already visible" in done.stdout
