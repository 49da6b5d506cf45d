"""Semantic tokens: the lexer's tokens, with names classified by what they resolve to."""

from __future__ import annotations

from pygments.token import Comment, Keyword, Name, Number, Operator, String, _TokenType

from qalign_dsl.lsp.analysis import Analysis
from qalign_dsl.lsp.convert import Lines
from qalign_dsl.lsp.index import DIMENSION, PRINCIPLE, QUESTION, SCALE, TEMPLATE
from qalign_dsl.lsp.lexer import QalLexer

TOKEN_TYPES = ["namespace", "class", "enum", "interface", "property", "function", "variable",
               "keyword", "comment", "string", "number", "operator", "parameter", "type"]
TOKEN_MODIFIERS = ["declaration", "defaultLibrary"]

_BY_KIND = {PRINCIPLE: "namespace", DIMENSION: "class", QUESTION: "property", SCALE: "enum",
            TEMPLATE: "interface"}


def _classify(token: _TokenType) -> tuple[str, int] | None:
    if token in String.Interpol:
        return "parameter", 0
    if token in String:
        return "string", 0
    if token in Comment:
        return "comment", 0
    if token in Keyword.Type:
        return "type", 0
    if token in Keyword:
        return "keyword", 0
    if token in Number:
        return "number", 0
    if token in Operator:
        return "operator", 0
    if token in Name.Builtin.Pseudo:
        return "variable", 2
    if token in Name.Builtin:
        return "function", 2
    if token in Name:
        return "variable", 0
    return None


def semantic_tokens(analysis: Analysis, text: str,
                    lines: Lines | None = None) -> list[tuple[int, int, int, str, int]]:
    """(0-based LSP line, character, length, type, modifier bits) in order, in `lines`'
    encoding (UTF-16 by default); multi-line tokens split per line. Names found in the
    index take their definition's kind."""
    index = analysis.index if analysis.text == text else None
    lines = lines or Lines(text)
    out: list[tuple[int, int, int, str, int]] = []
    line, column = 0, 0
    # Pygments reads "\r\n" and a lone "\r" as "\n": its lines are the protocol's lines.
    for token, value in QalLexer(stripnl=False, ensurenl=False).get_tokens(text):
        kind = _classify(token)
        pieces = value.split("\n")
        for number, piece in enumerate(pieces):
            if number:
                line, column = line + 1, 0
            if kind is not None and piece.strip():
                token_type, modifiers = kind
                at_line, at_column = lines.compiler(line, column)
                if token_type == "variable" and modifiers == 0 and index is not None:
                    occurrence = index.at(analysis.path, at_line, at_column)
                    if occurrence is not None:
                        token_type = _BY_KIND[occurrence.key.kind]
                        modifiers = 1 if occurrence.definition else 0
                start = lines.character(at_line, at_column)
                end = lines.character(at_line, at_column + len(piece))
                out.append((line, start, end - start, token_type, modifiers))
            column += len(piece)
    return out


def encode(tokens: list[tuple[int, int, int, str, int]]) -> list[int]:
    """The LSP relative encoding."""
    data: list[int] = []
    previous_line, previous_start = 0, 0
    for line, start, length, token_type, modifiers in tokens:
        delta_line = line - previous_line
        delta_start = start - previous_start if delta_line == 0 else start
        data += [delta_line, delta_start, length, TOKEN_TYPES.index(token_type), modifiers]
        previous_line, previous_start = line, start
    return data
