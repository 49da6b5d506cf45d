"""One analysis of one open buffer: the compiler's own load -> parse -> check, plus the index.

Pure given `read_bytes` (the server passes a reader that prefers open buffers over disk).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qalign_dsl.lang import model
from qalign_dsl.lang.check import CheckResult, check
from qalign_dsl.lang.diagnostics import Diagnostic, sort_diagnostics
from qalign_dsl.lang.lower import lower_pooling
from qalign_dsl.lang.modules import (
    Program,
    ReadBytes,
    SourceUnavailable,
    load_text,
    read_file_bytes,
)
from qalign_dsl.lang.parser import MAX_SOURCE_BYTES, decode_source, parse
from qalign_dsl.lsp.incremental import IncrementalParser
from qalign_dsl.lsp.index import Index, build_index, file_key


@dataclass(slots=True)
class Analysis:
    path: str
    text: str
    version: int | None
    program: Program
    result: CheckResult
    # Built on first use: a keystroke's diagnostics need neither the index nor the graph.
    _index: Index | None = None
    _graph: tuple[dict[str, list[tuple[str, bool]]], dict[str, str]] | None = None

    @property
    def index(self) -> Index | None:
        """Definitions and references; None when the text does not parse."""
        if self._index is None and self.program.entry is not None:
            self._index = build_index(self.program)
        return self._index

    @property
    def consumers(self) -> dict[str, list[tuple[str, bool]]]:
        """The aggregation graph of the compiled IR, reversed: "q:ID" / "d:ID" / "p:ID" ->
        the outputs ("d:…", "p:…", "reward") whose pooling reads it, and whether as a gate."""
        return self._pooling()[0]

    @property
    def rules(self) -> dict[str, str]:
        """Each output's pooling rule as written."""
        return self._pooling()[1]

    def _pooling(self) -> tuple[dict[str, list[tuple[str, bool]]], dict[str, str]]:
        if self._graph is None:
            self._graph = pooling_consumers(self.constitution) if self.constitution else ({}, {})
        return self._graph

    @property
    def constitution(self) -> model.Constitution | None:
        return self.result.constitution

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return self.result.diagnostics

    def files(self) -> set[str]:
        """The keys of every file this analysis read (the entry and its imports)."""
        return {file_key(p) for p in self.program.files} | {file_key(self.path)}


_SURROGATE = re.compile("[\ud800-\udfff]")


def analyze(text: str, path: str, version: int | None = None,
            read_bytes: ReadBytes = read_file_bytes,
            parser: IncrementalParser | None = None) -> Analysis:
    problems = _not_text(text, path)
    if problems:
        program = Program(entry=None, diagnostics=problems)
        return Analysis(path, text, version, program, CheckResult(None, problems))
    # `qalc check` drops a leading byte-order mark; a space keeps the buffer's columns.
    source = " " + text[1:] if text.startswith("\ufeff") else text
    program = load_text(source, path, read_bytes, parser or parse)
    result = check(program, default_title=Path(path).stem)
    return Analysis(path, text, version, program, result)


def _not_text(text: str, path: str) -> list[Diagnostic]:
    """What `qalc check` says of a file that is not text (QAL006, QAL007), for a buffer:
    one with a NUL, with lone surrogates (no UTF-8 file holds one) or too large; and one
    with U+FFFD that is the file on disk as the editor decoded it (undecodable bytes)."""
    data: bytes | None = None
    if "\x00" in text or _SURROGATE.search(text) or (
            len(text) * 4 > MAX_SOURCE_BYTES
            and len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES):
        data = text.encode("utf-8", "surrogatepass")
    elif "\ufffd" in text:
        try:
            disk = read_file_bytes(Path(path))
        except SourceUnavailable:
            disk = b""
        if disk.decode("utf-8", "replace") == text:
            data = disk
    if data is None:
        return []
    decoded, problems = decode_source(data, path)
    return sort_diagnostics(problems) if decoded is None else []


def pooling_consumers(
    constitution: model.Constitution,
) -> tuple[dict[str, list[tuple[str, bool]]], dict[str, str]]:
    graph = lower_pooling(constitution)
    consumers: dict[str, list[tuple[str, bool]]] = {}
    for node in graph["nodes"]:
        owner = str(node["id"]).split("#", 1)[0]
        gate = node["op"] == "failed"
        for argument in node["args"]:
            if isinstance(argument, str) and argument[:2] in ("q:", "d:", "p:"):
                seen = consumers.setdefault(argument, [])
                if (owner, gate) not in seen:
                    seen.append((owner, gate))
    return consumers, dict(graph["rules"])
