"""Completion from the text before the cursor (which rarely parses while typing) and the names
the last good analysis knows."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Whitespace

from qalign_dsl.lang import nodes
from qalign_dsl.lsp.analysis import Analysis
from qalign_dsl.lsp.hover import BUILTINS
from qalign_dsl.lsp.index import (
    COLLECTIONS,
    DIMENSION,
    FUNCTIONS,
    PRINCIPLE,
    QUESTION,
    SCALE,
    TEMPLATE,
    TEMPLATE_SLOTS,
    file_key,
)
from qalign_dsl.lsp.lexer import QalLexer

_PARTIAL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")
_DOTTED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)?$")
_SLOT = re.compile(r"\{([A-Za-z_]*)$")
_TOP_LEVEL = re.compile(r"^(qal|import|constitution|scale|template|defaults|principle|reward|"
                        r"revision_reward|output)\b", re.M)
_BLOCK_KEYWORDS = ("scale", "template", "defaults", "principle", "dimension", "constitution",
                   "output", "revision_reward")

KEYWORDS = {
    "top": ["qal", "import", "constitution", "scale", "template", "defaults", "principle",
            "reward", "revision_reward", "output"],
    "principle": ["dimension", "pool", "template", "scale", "description"],
    "dimension": ["binary", "graded", "pool", "template", "scale", "description"],
    "defaults": ["scale", "template", "pool"],
    "scale": ["score", "fails", "n/a"],
    "template": ["system", "user", "mode", "answer_prefix"],
    "constitution": ["description", "version", "authors", "source", "license"],
    "output": ["draft", "reflection", "revision"],
    "revision_reward": ["alpha", "beta"],
}


@dataclass(frozen=True, slots=True)
class Item:
    label: str
    kind: str  # keyword | function | collection | scale | template | principle | dimension |
    #            question | slot
    detail: str = ""


def complete(text: str, offset: int, analysis: Analysis | None, line: int) -> list[Item]:
    """Completions at `offset` of `text`; `analysis` (maybe from an older version of the text)
    supplies the names; `line` (1-based) locates the enclosing dimension in it."""
    prefix = text[:offset]
    raw = [(kind, value) for _, kind, value in QalLexer().get_tokens_unprocessed(prefix)]
    tokens = [(kind, value) for kind, value in raw
              if kind not in Whitespace and kind not in Comment and value.strip()]
    current_line = prefix.rsplit("\n", 1)[-1]
    if _in_string(raw):
        slot = _SLOT.search(current_line)
        tops = _TOP_LEVEL.findall(prefix)
        if slot is not None and tops and tops[-1] == "template":
            return [Item(s, "slot", "{" + s + "}") for s in TEMPLATE_SLOTS]
        return []
    partial = _PARTIAL.search(prefix)
    if partial is not None and tokens and tokens[-1][1] == partial.group():
        tokens = tokens[:-1]
    values = [v for _, v in tokens]
    last = values[-1] if values else ""
    before = values[-2] if len(values) > 1 else ""
    third = values[-3] if len(values) > 2 else ""
    if last == "scale":
        kinds = [Item("binary", "keyword"), Item("graded", "keyword")]
        # In `defaults` a kind must follow (`scale binary = …`); elsewhere a name may.
        return kinds if _block(tokens) == "defaults" else _names(analysis, SCALE) + kinds
    if last == "=" and before in ("binary", "graded") and third == "scale":
        return _names(analysis, SCALE)
    if last == "template" or (last == "=" and before == "template"):
        return _names(analysis, TEMPLATE)
    dotted = _DOTTED.search(prefix)
    level = _expression_level(tokens)
    if level is not None and _finished(tokens, current_line, partial):
        level = None  # a new line after a whole expression starts the next statement
    if level is not None:
        if dotted is not None and last == ".":
            return _questions(analysis, dotted.group(1))
        return _expression_items(analysis, level, line)
    block = _block(tokens)
    if last == "as":
        return []  # a new name
    if block == "dimension" and (last.endswith('"') or _is_number(last)):
        return [Item(k, "keyword") for k in ("as", "weight", "scale", "template")] + \
            [Item(k, "keyword") for k in KEYWORDS["dimension"]]
    return [Item(k, "keyword") for k in KEYWORDS.get(block, [])]


def _in_string(raw: list[tuple[object, str]]) -> bool:
    quote: str | None = None
    for kind, value in raw:
        if quote is None:
            if kind in String and value in ('"', '"""'):
                quote = value
        elif (kind in String and value == quote) or (quote == '"' and value == "\n"):
            quote = None
    return quote is not None


def _is_number(value: str) -> bool:
    return bool(re.fullmatch(r"[\d.]+", value))


def _block(tokens: list[tuple[object, str]]) -> str:
    """The kind of block the cursor is in, from the brackets before it."""
    stack: list[str] = []
    keyword = "top"
    for kind, value in tokens:
        if value in _BLOCK_KEYWORDS and (kind in Keyword):
            keyword = value
        if value == "{":
            stack.append(keyword)
        elif value == "}" and stack:
            stack.pop()
    return stack[-1] if stack else "top"


_EXPRESSION_TOKENS = (Name, Number, Operator, Punctuation)


def _expression_level(tokens: list[tuple[object, str]]) -> str | None:
    """`dimension`, `principle` or `reward` when the cursor is in a pooling expression."""
    index = len(tokens) - 1
    depth = 0
    while index >= 0:
        kind, value = tokens[index]
        if value == "=":
            name = tokens[index - 1][1] if index > 0 else ""
            if name == "reward":
                return "reward"
            if name in ("dimension", "principle") and index > 1 and tokens[index - 2][1] == "pool":
                return name
            if name == "pool":
                return _block(tokens[:index])
            if depth > 0 and index > 1 and tokens[index - 2][1] in ("(", ","):
                index -= 2  # a keyword argument, e.g. `weights=[…]`
                continue
            return None
        if value in ("(", "["):
            depth += 1
        if value in ("if", "then", "else") or (
                any(kind in t for t in _EXPRESSION_TOKENS) and value not in "{}"):
            index -= 1
            continue
        return None
    return None


def _finished(tokens: list[tuple[object, str]], current_line: str,
              partial: re.Match[str] | None) -> bool:
    """The cursor starts a line after an expression that is complete: its brackets are
    closed and it ends in an operand (an operator or an open bracket continues it)."""
    typed = partial.group() if partial is not None else ""
    if current_line[:len(current_line) - len(typed)].strip() or not tokens:
        return False
    kind, last = tokens[-1]
    if last in ("=", "(", "[", ",", "if", "then", "else") or kind in Operator:
        return False
    depth = 0
    for index in range(len(tokens) - 1, 0, -1):
        value = tokens[index][1]
        if value == "=" and tokens[index - 1][1] in ("reward", "pool", "dimension",
                                                     "principle"):
            break  # the statement's own `=`, not a keyword argument's
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(value, 0)
    return depth <= 0


def _names(analysis: Analysis | None, kind: str) -> list[Item]:
    if analysis is None or analysis.index is None:
        return []
    table = (analysis.index.scales if kind == SCALE else analysis.index.templates).get(
        file_key(analysis.path), {})
    return [Item(name, kind, f"{kind} from {key.file.rsplit('/', 1)[-1]}")
            for name, key in sorted(table.items())]


def _expression_items(analysis: Analysis | None, level: str, line: int) -> list[Item]:
    items = [Item(f, "function", BUILTINS.get(f, "")) for f in FUNCTIONS]
    collections = {"dimension": ("questions", "graded", "gates"),
                   "principle": ("dimensions", "principles"),
                   "reward": ("dimensions", "principles")}[level]
    items += [Item(c, "collection", BUILTINS.get(c, "")) for c in COLLECTIONS
              if c in collections]
    items += [Item("if", "keyword"), Item("then", "keyword"), Item("else", "keyword")]
    if analysis is None or analysis.index is None:
        return items
    index = analysis.index
    for key, definition in sorted(index.definitions.items(), key=lambda kv: kv[0].name):
        if key.kind in (PRINCIPLE, DIMENSION):
            title = getattr(definition.node, "title", None)
            items.append(Item(key.name, key.kind, title.value if title is not None else ""))
    if level == "dimension":
        for key, definition in index.definitions.items():
            node = definition.node
            if key.kind == DIMENSION and isinstance(node, nodes.Dimension) and \
                    node.span.line <= line <= node.span.end_line:
                items += _questions(analysis, key.name)
    return items


def _questions(analysis: Analysis | None, dimension: str) -> list[Item]:
    if analysis is None or analysis.index is None:
        return []
    found = []
    for key, definition in analysis.index.definitions.items():
        if key.kind == QUESTION and definition.dimension == dimension:
            node = definition.node
            text = node.text.value if isinstance(node, nodes.Question) else ""
            local = key.name[len(dimension) + 1:]
            found.append(Item(local, "question", text))
    return found
