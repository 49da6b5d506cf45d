"""Compiler spans (1-based lines, 1-based character columns) <-> LSP ranges (0-based lines,
columns in the negotiated encoding), and compiler diagnostics -> LSP diagnostics."""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Callable

from lsprotocol import types
from pygls.uris import from_fs_path

from qalign_dsl.lang.diagnostics import Diagnostic, Label, Severity, Span
from qalign_dsl.lsp.index import file_key

SOURCE = "qalc"
_UNUSED = ("QAL501", "QAL502")


# The protocol's line breaks: "\n", "\r\n" and a lone "\r" (the compiler counts "\n" only).
_LONE_CR = re.compile(r"\r(?!\n)")


class Lines:
    """A buffer's lines, for conversions between compiler positions (1-based line and
    character column, lines cut at "\n") and LSP positions (0-based line, column in the
    negotiated encoding's code units: UTF-16 unless the client chose UTF-8 or UTF-32; a lone
    "\r" also ends a line)."""

    def __init__(self, text: str, encoding: str = "utf-16") -> None:
        self.lines = text.split("\n")
        self.encoding = encoding
        # Only for text with a lone "\r": per compiler line, the LSP line it starts on and
        # the columns (0-based) where a further LSP line starts inside it.
        self.first: list[int] = []
        self.cuts: list[list[int]] = []
        if "\r" in text and _LONE_CR.search(text):
            number, last = 0, len(self.lines) - 1
            for index, line in enumerate(self.lines):
                # A "\r" that ends a compiler line is a "\r\n" unless the text ends there.
                cuts = [m.end() for m in _LONE_CR.finditer(line)
                        if m.end() < len(line) or index == last]
                self.first.append(number)
                self.cuts.append(cuts)
                number += len(cuts) + 1

    def line(self, number: int) -> str:
        """1-based."""
        return self.lines[number - 1] if 1 <= number <= len(self.lines) else ""

    def units(self, text: str) -> int:
        if text.isascii() or self.encoding == "utf-32":
            return len(text)
        if self.encoding == "utf-8":
            return len(text.encode("utf-8", "surrogatepass"))
        return len(text.encode("utf-16-le", "surrogatepass")) // 2

    def _segment(self, line: int, column: int) -> tuple[int, int]:
        """(LSP line, start column of its segment) of 1-based compiler `line`, 0-based
        `column`."""
        if not self.first or not 1 <= line <= len(self.lines):
            return max(line - 1, 0), 0
        cuts = self.cuts[line - 1]
        k = bisect.bisect_right(cuts, column)
        return self.first[line - 1] + k, cuts[k - 1] if k else 0

    def to_lsp(self, line: int, column: int) -> types.Position:
        """A compiler position -> an LSP position. Past the end of its line (a span that
        ends at the line break) the columns are counted on, as `qalc check` does; clients
        read such a character as the line's end."""
        text = self.line(line)
        column = max(column - 1, 0)
        lsp_line, start = self._segment(line, column)
        prefix = text[start:column]
        return types.Position(line=lsp_line,
                              character=self.units(prefix) + max(column - len(text), 0))

    def compiler(self, lsp_line: int, column: int) -> tuple[int, int]:
        """The compiler position of 0-based `column` (in characters, not code units) of
        0-based LSP line `lsp_line`."""
        if not self.first or lsp_line < 0:
            return lsp_line + 1, column + 1
        index = max(bisect.bisect_right(self.first, lsp_line) - 1, 0)
        k = lsp_line - self.first[index]
        cuts = self.cuts[index]
        start = cuts[min(k, len(cuts)) - 1] if k else 0
        return index + 1, start + column + 1

    def character(self, line: int, column: int) -> int:
        """The LSP character of a compiler position (`to_lsp(...).character`, faster)."""
        text = self.line(line)
        column = max(column - 1, 0)
        if self.first:
            start = self._segment(line, column)[1]
            return self.units(text[start:column]) + max(column - len(text), 0)
        return self.units(text[:column]) + max(column - len(text), 0)

    def position(self, position: types.Position) -> tuple[int, int]:
        """An LSP position -> (1-based line, 1-based column)."""
        lsp_line, character = position.line, position.character
        if self.first:
            count = self.first[-1] + len(self.cuts[-1]) + 1  # LSP lines in the text
            if lsp_line >= count:
                return len(self.lines) + 1 + lsp_line - count, character + 1
            index = bisect.bisect_right(self.first, lsp_line) - 1
            k = lsp_line - self.first[index]
            cuts = self.cuts[index]
            line = index + 1
            start = cuts[k - 1] if k else 0
            stop = cuts[k] if k < len(cuts) else len(self.lines[index])
        else:
            line = lsp_line + 1
            start, stop = 0, len(self.line(line))
            if not 1 <= line <= len(self.lines):
                return line, character + 1
        segment = self.lines[line - 1][start:stop]
        if segment.endswith("\r"):
            segment = segment[:-1]
        if segment.isascii() or self.encoding == "utf-32":
            return line, start + min(character, len(segment)) + 1
        units = 0
        for index, char in enumerate(segment):
            if units >= character:
                return line, start + index + 1
            units += self.units(char)
        return line, start + len(segment) + 1

    def from_utf16(self, line: int, character: int) -> int:
        """An LSP character offset on 1-based `line` -> a 1-based column."""
        return self.position(types.Position(line=line - 1, character=character))[1]

    def range(self, span: Span) -> types.Range:
        return types.Range(start=self.to_lsp(span.line, span.column),
                           end=self.to_lsp(span.end_line, span.end_column))

    def end(self) -> types.Position:
        last = len(self.lines)
        return self.to_lsp(last, len(self.line(last)) + 1)


def to_lsp_diagnostic(diagnostic: Diagnostic, lines: Lines, uri_of: dict[str, str],
                      lines_of: Callable[[str], Lines] | None = None) -> types.Diagnostic:
    """The same code, range, message, help and secondary locations (a duplicate's first
    definition, ...) as `qalc check`. `lines` are the diagnostic's file's; `uri_of` maps
    file keys to the URIs the editor knows them by; `lines_of` reads another file's lines."""
    message = diagnostic.message
    if diagnostic.help:
        message += f"\nhelp: {diagnostic.help}"
    related = [_related(label, diagnostic, lines, uri_of, lines_of)
               for label in diagnostic.related]
    return types.Diagnostic(
        range=lines.range(diagnostic.span),
        message=message,
        severity=(types.DiagnosticSeverity.Error if diagnostic.severity is Severity.ERROR
                  else types.DiagnosticSeverity.Warning),
        code=diagnostic.code,
        source=SOURCE,
        related_information=related or None,
        tags=[types.DiagnosticTag.Unnecessary] if diagnostic.code in _UNUSED else None,
        data={"help": diagnostic.help or "", "path": diagnostic.path},
    )


def _related(label: Label, diagnostic: Diagnostic, lines: Lines, uri_of: dict[str, str],
             lines_of: Callable[[str], Lines] | None) -> types.DiagnosticRelatedInformation:
    key = file_key(label.path)
    if key == file_key(diagnostic.path):
        where = lines
    elif label.source is not None:  # the text the checker read
        where = Lines(label.source, lines.encoding)
    elif lines_of is not None:
        where = lines_of(label.path)
    else:
        where = Lines("", lines.encoding)
    uri = uri_of.get(key) or from_fs_path(os.path.abspath(label.path)) or label.path
    return types.DiagnosticRelatedInformation(
        location=types.Location(uri=uri, range=where.range(label.span)),
        message=label.message)
