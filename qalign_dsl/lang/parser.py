"""Source text -> AST. Decoding checks, Lark LALR parsing, friendly syntax errors.

Pure: takes bytes or text, returns a `Module` or diagnostics. The CLI reads files.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from qalign_dsl.lang import codes, nodes
from qalign_dsl.lang.diagnostics import Diagnostic, Span

MAX_SOURCE_BYTES = 4 * 1024 * 1024
MAX_NESTING = 100
LANGUAGE_VERSION = 1


@dataclass(frozen=True, slots=True)
class ParseResult:
    module: nodes.Module | None
    diagnostics: list[Diagnostic]
    source: str | None = None


def grammar_text() -> str:
    """The grammar, from inside the installed package or, in a checkout, from grammar/."""
    packaged = importlib.resources.files("qalign_dsl").joinpath("grammar/qal.lark")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "grammar" / "qal.lark").read_text(
        encoding="utf-8"
    )


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    options: dict[str, Any] = dict(
        parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=False
    )
    try:
        # Lark caches the LALR tables in the temp folder, keyed by the grammar's hash:
        # ~80 ms off every cold `qalc` start.
        return Lark(grammar_text(), cache=True, **options)
    except OSError:  # pragma: no cover - unwritable temp folder
        return Lark(grammar_text(), **options)


def decode_source(data: bytes, path: str) -> tuple[str | None, list[Diagnostic]]:
    """Bytes -> text, rejecting oversized, binary and non-UTF-8 input with a diagnostic."""
    if len(data) > MAX_SOURCE_BYTES:
        size_mb = len(data) / (1024 * 1024)
        return None, [
            codes.make(
                "QAL007", path, Span(1, 1, 1, 1),
                detail=f"file is too large ({size_mb:.1f} MiB; the limit is "
                f"{MAX_SOURCE_BYTES // (1024 * 1024)} MiB)",
            )
        ]
    nul = data.find(b"\x00")
    if nul >= 0:
        line, column = _position_of(data, nul)
        return None, [
            codes.make(
                "QAL006", path, Span.point(line, column),
                detail="file looks binary (it contains a NUL byte)",
                help="a .qal file must be UTF-8 text",
            )
        ]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line, column = _position_of(data, error.start)
        return None, [
            codes.make(
                "QAL006", path, Span.point(line, column),
                detail=f"file is not valid UTF-8 (byte 0x{data[error.start]:02x} at offset "
                f"{error.start})",
                help="save the file as UTF-8",
            )
        ]
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = re.sub(r"\r(?!\n)", "\n", text)  # classic Mac line endings: a lone CR ends a line
    problems = control_characters(text, path)
    return (None, problems) if problems else (text, [])


def control_characters(text: str, path: str) -> list[Diagnostic]:
    """QAL011 for the first control character of decoded text (files, stdin and editor
    buffers alike)."""
    control = _CONTROL.search(text)
    if control is None:
        return []
    before = text[:control.start()]
    line, column = before.count("\n") + 1, control.start() - (before.rfind("\n") + 1) + 1
    return [codes.make("QAL011", path, Span.point(line, column),
                       char=f"U+{ord(control.group()):04X}",
                       help="remove it (tab, newline and carriage return are the only control "
                       "characters allowed)")]


# C0 controls but tab, newline and carriage return; DEL and C1; bidi embeddings, overrides
# and isolates ("Trojan Source"). NUL is reported earlier, as binary.
_CONTROL = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _position_of(data: bytes, offset: int) -> tuple[int, int]:
    before = data[:offset]
    line = before.count(b"\n") + 1
    column = offset - (before.rfind(b"\n") + 1) + 1
    return line, column


def parse(text: str, path: str) -> ParseResult:
    """Parse .qal text into a Module, or return the syntax diagnostics."""
    comments: list[nodes.Comment] = []
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as error:
        return ParseResult(None, [_syntax_diagnostic(error, text, path)], text)
    except RecursionError:  # pragma: no cover - the LALR parser is iterative
        return ParseResult(None, [_too_deep(path, text, Span(1, 1, 1, 1))], text)
    deepest = _deepest(tree)
    if deepest is not None:
        return ParseResult(None, [_too_deep(path, text, deepest)], text)
    comments.extend(_comment_positions(text))
    try:
        module = _Builder().transform(tree)
    except VisitError as error:
        if isinstance(error.orig_exc, _BuildError):
            return ParseResult(
                None, [codes.make(**error.orig_exc.fields, path=path, source=text)], text
            )
        raise
    assert isinstance(module, nodes.Module)
    module = nodes.Module(module.items, tuple(comments), module.span)
    return ParseResult(module, [], text)


def _too_deep(path: str, text: str, span: Span) -> Diagnostic:
    return codes.make(
        "QAL007", path, span, source=text,
        detail=f"expressions are nested too deeply (more than {MAX_NESTING} levels)",
        help="split the expression, e.g. pool parts in their own dimensions",
    )


def _deepest(tree: Tree[Any]) -> Span | None:
    """Where the tree first goes deeper than MAX_NESTING levels, or None."""
    stack: list[tuple[Any, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            if isinstance(node, Token):
                return _token_span(node)
            return _span_of(node.meta) if isinstance(node, Tree) else Span(1, 1, 1, 1)
        if isinstance(node, Tree):
            stack.extend((child, depth + 1) for child in node.children)
    return None


def _line_column(text: str, offset: int) -> tuple[int, int]:
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _comment_positions(text: str) -> list[nodes.Comment]:
    """Comments with their positions; the scan skips strings so a `#` inside one is kept."""
    found: list[nodes.Comment] = []
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token.startswith("#"):
            prefix = text[: match.start()]
            line = prefix.count("\n") + 1
            column = match.start() - (prefix.rfind("\n") + 1) + 1
            found.append(nodes.Comment(token.rstrip(), line, column))
    return found


# --- friendly syntax errors ----------------------------------------------------

_TOKEN_WORDS = {
    "NAME": "a name",
    "STRING": "a string",
    "INT": "a whole number",
    "SIGNED_FLOAT_LITERAL": "a number",
    "KIND": "`binary` or `graded`",
    "LEVEL": "`dimension` or `principle`",
    "FAILS": "`fails`",
    "NA_VALUE": "`n/a`",
    "$END": "the end of the file",
}

# Messages chosen by example (lark's match_examples): the parser state in which each
# broken snippet fails identifies the mistake better than a list of expected tokens.
_SYNTAX_EXAMPLES: dict[str, list[str]] = {
    "a principle needs a title in quotes, e.g. `principle \"Harmlessness\" { … }`": [
        "qal 1 principle {",
        "qal 1 principle harm {",
    ],
    "a dimension needs a title in quotes, e.g. `dimension \"Clarity\" { … }`": [
        'qal 1 principle "P" { dimension {',
        'qal 1 principle "P" { dimension clarity {',
    ],
    "a question needs its text in quotes, e.g. `binary \"Is the response safe?\"`": [
        'qal 1 principle "P" { dimension "D" { binary Is',
        'qal 1 principle "P" { dimension "D" { graded }',
        'qal 1 principle "P" { dimension "D" { binary }',
    ],
    "expected `=` and a value after the setting name": [
        "qal 1 template t { user",
        "qal 1 revision_reward { alpha 10",
        "qal 1 output { draft }",
    ],
    "expected a pooling expression after `=`": [
        "qal 1 reward = }",
        "qal 1 reward =",
        'qal 1 principle "P" { pool = }',
    ],
    "a scale label needs a value, e.g. `A = 1.0` or `NA = n/a`": [
        "qal 1 scale s { A }",
        "qal 1 scale s { A = }",
        "qal 1 scale s { A = B",
    ],
    "an `if` needs both branches: `if failed(gates) then -1 else min(graded)`": [
        "qal 1 reward = if failed(gates) then -1 }",
        "qal 1 reward = if failed(gates) -1 else 1",
    ],
    "expected a block `{ … }` after the declaration": [
        'qal 1 principle "P" "Q"',
        "qal 1 scale s s",
    ],
}


def _syntax_diagnostic(error: UnexpectedInput, text: str, path: str) -> Diagnostic:
    if isinstance(error, UnexpectedCharacters):
        line, column = error.line, error.column
        offset = error.pos_in_stream or 0
        char = text[offset] if offset < len(text) else ""
        if char == '"':
            end = text.find("\n", offset)
            end = len(text) if end < 0 else end
            width = max(end - offset, 1)
            return codes.make(
                "QAL003", path, Span(line, column, line, column + width), source=text,
                help='add the closing `"`; use `"""…"""` for text on several lines',
            )
        return codes.make(
            "QAL004", path, Span.point(line, column), source=text, char=_describe_char(char),
            help=_character_hint(char),
        )
    unclosed = _unclosed_bracket(text)
    at_end = isinstance(error, UnexpectedEOF) or (
        isinstance(error, UnexpectedToken) and error.token.type == "$END"
    )
    if at_end and unclosed is not None:
        opener, line, column = unclosed
        closer = {"{": "}", "(": ")", "[": "]"}[opener]
        what = {"{": "this block", "(": "this parenthesis", "[": "this list"}[opener]
        return codes.make(
            "QAL002", path, Span.point(line, column), source=text, opener=opener, what=what,
            help=f"add `{closer}` where it should end",
        )
    assert isinstance(error, (UnexpectedToken, UnexpectedEOF))
    token = error.token if isinstance(error, UnexpectedToken) else None
    line = getattr(error, "line", -1)
    column = getattr(error, "column", -1)
    if token is None or token.type == "$END" or line is None or line < 1:
        # Point right after the last token (what is missing follows it), not at the empty
        # line after the final newline.
        last = _previous_token(text, len(text))
        if last is not None:
            line, column = last[0], last[1]
        else:
            lines = text.split("\n")
            line, column = len(lines), len(lines[-1]) + 1
        found = "end of the file"
        width = 1
    else:
        found = f"`{_clip(str(token))}`"
        width = max(len(str(token).split("\n")[0]), 1)
    stray = _stray_closer(text)
    if stray is not None and (token is None or token.type == "$END"
                              or (stray[1], stray[2]) <= (line, column)):
        # A closer that matches nothing, before the parser got stuck (or at the end): the
        # stray brace is the mistake. One after it is usually the echo of a missing `{`.
        closer, stray_line, stray_column = stray
        return codes.make(
            "QAL001", path, Span.point(stray_line, stray_column), source=text,
            detail=f"unexpected `{closer}`: nothing is open here",
            help="remove it, or add the opening bracket it belongs to",
        )
    chosen = error.match_examples(_lark().parse, _SYNTAX_EXAMPLES, use_accepts=True)
    expected = _expected_words(error)
    help_text = f"expected {expected}" if expected else None
    detail = f"unexpected {found}"
    if chosen:
        detail = f"unexpected {found}: {chosen}"
    span = Span(line, column, line, column + width)
    if token is not None and token.type != "$END":
        offset = _offset(text, line, column)
        slip = _common_slip(text, offset, str(token), error)
        previous = _previous_token(text, offset)
        first_on_line = not text[text.rfind("\n", 0, offset) + 1:offset].strip()
        block = (_open_block(text, offset) if str(token) in _TOP_LEVEL and first_on_line
                 else None)
        if str(token) == "dimension" and block is None:
            inner = _open_block(text, offset)  # `dimension` met inside a dimension
            block = inner if inner is not None and inner[0].startswith("`dimension") else None
        keyword = _keyword_before(text, offset, previous)
        if keyword is not None and not ({"EQUAL", "FAILS"} & _acceptable(error)):
            keyword = None  # the keyword was read as one (`scale binry` in defaults), not a label
        swallowed = _swallowed_name(text, offset, previous)
        suggestion = _keyword_suggestion(error, str(token))
        misplaced = _misplaced(text, offset, str(token)) if _between_items(error) else None
        setting = None
        if (str(token) not in _TOP_LEVEL and _between_items(error)
                and _before_equals(text, offset + len(str(token)))
                and not text[text.rfind("\n", 0, offset) + 1:offset].strip()):
            setting = _open_block(text, offset)  # `NAME = …` starting a line inside a block
        if block is None and keyword is not None:
            # `scale verdict {` inside a block still open reads as a label named `scale`.
            block = _open_block(text, keyword[2])
            if block is not None:
                found = f"`{keyword[3]}`"
                line, column = keyword[0], keyword[1]
                span = Span(line, column, line, column + len(keyword[3]))
        if slip is not None:
            help_text = slip
        elif setting is not None:
            # `tempalte = judge` in `defaults`: a misspelt setting, as in the other blocks.
            if str(token) == "weight":
                help_text = "a weight goes in the header, e.g. `dimension \"…\" weight 2 {`"
            elif suggestion is not None:
                help_text = f"did you mean `{suggestion}`?"
            return codes.make("QAL110", path, span, source=text, name=str(token),
                              block=setting[0], help=help_text)
        elif suggestion is not None:
            help_text = f"did you mean `{suggestion}`?"
        elif misplaced is not None:
            help_text = misplaced
        elif swallowed is not None:
            # `scale` at the end of a line, then `graded "…"`: `graded` was read as the
            # scale's name; the name is what is missing, after `scale`.
            prev_line, prev_column, prev_text = swallowed
            wanted = "an expression" if prev_text in _EXPR_OPENERS else "a name"
            detail = f"expected {wanted} after `{prev_text}`"
            help_text = f"`{previous[2] if previous else ''}` on the next line starts something " \
                f"else; write {wanted} here"
            span = Span.point(prev_line, prev_column)
        elif block is not None:
            detail = f"unexpected {found}: {block[0]} is still open"
            help_text = f"add `}}` to close {block[0]} (opened at line {block[1]}) before this"
        elif previous is not None and previous[0] < line and not _between_items(error):
            # Something is missing at the end of the previous line: say so there, not at
            # the next token a line later.
            prev_line, prev_column, prev_text = previous
            after = _expected_words(error, skip_operators=True)
            missing = f"expected {after}" if after else "something is missing"
            detail = f"{missing} after `{_clip(prev_text)}`"
            if chosen:
                detail += f": {chosen}"
            help_text = f"found {found} on line {line} instead"
            span = Span.point(prev_line, prev_column)
            meant = difflib.get_close_matches(prev_text, _OFTEN_MISSPELT, n=1, cutoff=0.6)
            if meant and prev_text not in _OFTEN_MISSPELT:
                # `False = -1.0 fail`: the misspelt keyword was read as the next label.
                detail = f"unexpected `{_clip(prev_text)}`"
                help_text = f"did you mean `{meant[0]}`?"
                span = Span(prev_line, prev_column - len(prev_text), prev_line, prev_column)
    return codes.make("QAL001", path, span, source=text, detail=detail, help=help_text)


_OFTEN_MISSPELT = ("fails", "then", "else", "weight")
_TOP_LEVEL = frozenset(("principle", "reward", "scale", "template", "defaults", "import",
                        "constitution", "output", "revision_reward", "qal"))


def _between_items(error: UnexpectedInput) -> bool:
    """Whether the parser was ready for a new item or a closing brace: then the unexpected
    token itself is the mistake (a misspelt keyword), not something missing before it."""
    names = _acceptable(error)
    return bool(names & {"RBRACE", "PRINCIPLE", "$END"})


_OPERATORS = frozenset(("PLUS", "MINUS", "STAR", "SLASH"))


def _acceptable(error: UnexpectedInput) -> set[str]:
    """The tokens the parser could have taken here (precise, unlike lark's `expected`,
    which LALR state merging inflates)."""
    accepts = getattr(error, "accepts", None)
    if accepts:
        return set(accepts)
    return set(getattr(error, "expected", None) or ())


def _offset(text: str, line: int, column: int) -> int:
    lines = text.split("\n")
    return sum(len(part) + 1 for part in lines[: line - 1]) + column - 1


def _previous_token(text: str, offset: int) -> tuple[int, int, str] | None:
    """The line, the column just after, and the text of the last token before `offset`
    (comments and blank lines skipped)."""
    lines = text[:offset].split("\n")
    for index in range(len(lines) - 1, -1, -1):
        code = lines[index]
        for match in _BRACKETS.finditer(code):
            if match.group().startswith("#"):
                code = code[: match.start()]
                break
        code = code.rstrip()
        if code:
            last = re.search(r'("[^"]*"|-?[A-Za-z0-9_./]+|\S)$', code)
            return index + 1, len(code) + 1, last.group() if last else code[-1]
    return None


_CLAUSE_KEYWORDS = frozenset(("scale", "template", "as", "weight"))
_EXPR_OPENERS = frozenset(("=", "then", "else", "+", "-", "*", "/", "(", ","))
_LINE_STARTERS = frozenset(("binary", "graded", "dimension", "principle", "pool", "scale",
                            "template", "description"))


def _swallowed_name(text: str, offset: int, previous: tuple[int, int, str] | None
                    ) -> tuple[int, int, str] | None:
    """`… scale` ending a line, then `graded "…"` on the next: the parser took the word that
    starts the next line as the clause's name. The clause keyword's position and text."""
    start = _line_start_word(text, previous, _LINE_STARTERS)
    if start is None or previous is None:
        return None
    line = previous[0]
    before = _previous_token(text, start)
    if before is None or before[0] >= line or before[2] not in _CLAUSE_KEYWORDS | _EXPR_OPENERS:
        return None
    return before


def _before_equals(text: str, offset: int) -> bool:
    """Whether `=` (not `==`) follows `offset` on the same line."""
    rest = text[offset:text.find("\n", offset) if "\n" in text[offset:] else len(text)]
    return bool(re.match(r"\s*=(?!=)", rest))


# Words from other rubric formats for the keyword .qal uses.
_SYNONYMS = {"boolean": "binary", "bool": "binary", "yesno": "binary", "gate": "binary",
             "yes_no": "binary", "rating": "graded", "rated": "graded", "likert": "graded",
             "score": "graded", "scored": "graded", "criterion": "dimension",
             "category": "principle", "section": "principle", "aspect": "dimension",
             "import_": "import", "rubric": "constitution", "prompt": "template"}


def _misplaced(text: str, offset: int, token: str) -> str | None:
    """A question or dimension written one level too high."""
    block = _open_block(text, offset)
    if token in ("binary", "graded") and block is not None and block[0].startswith("`principle"):
        return 'questions go inside a dimension: `dimension "Clarity" { graded "…" }`'
    if token == "dimension" and block is None:
        return 'dimensions go inside a principle: `principle "Helpfulness" { dimension "…" { … } }`'
    if token in ("binary", "graded") and block is None:
        return 'questions go inside a dimension, inside a principle'
    return None


def _keyword_suggestion(error: UnexpectedInput, token: str) -> str | None:
    """The keyword a misspelt word was probably meant to be (`scal` -> `scale`)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token):
        return None
    words: set[str] = set()
    for name in _acceptable(error):
        if name == "KIND":
            words |= {"binary", "graded"}
        elif name == "LEVEL":
            words |= {"dimension", "principle"}
        else:
            try:
                pattern = _lark().get_terminal(name).pattern
            except KeyError:
                continue
            if pattern.type == "str" and pattern.value.isidentifier():
                words.add(pattern.value)
    words.discard(token)
    meant = _SYNONYMS.get(token.lower())
    if meant in words:
        return meant
    if token.lower() in words:
        return token.lower()
    close = difflib.get_close_matches(token.lower(), sorted(words), n=1, cutoff=0.7)
    return close[0] if close else None


def _keyword_before(text: str, offset: int, previous: tuple[int, int, str] | None
                    ) -> tuple[int, int, int, str] | None:
    """A top-level keyword that starts the line of `offset` just before it (line, column,
    offset, keyword), e.g. `scale` in `scale verdict {` met where a label was expected."""
    start = _line_start_word(text, previous, _TOP_LEVEL)
    if start is None or previous is None:
        return None
    line, end_column, keyword = previous
    return line, end_column - len(keyword), start, keyword


def _line_start_word(text: str, previous: tuple[int, int, str] | None,
                     words: frozenset[str] | set[str]) -> int | None:
    """The offset of `previous` (line, end column, word) when it is one of `words` and the
    first word of its line, else None."""
    if previous is None or previous[2] not in words:
        return None
    line, end_column, word = previous
    start = _offset(text, line, end_column - len(word))
    if text[text.rfind("\n", 0, start) + 1:start].strip():
        return None  # not the first word of its line
    return start


def _open_block(text: str, offset: int) -> tuple[str, int] | None:
    """The innermost `{` still open at `offset`: how it starts (e.g. `principle "Safety"`)
    and its line."""
    stack: list[int] = []
    for char, position in _bracket_events(text[:offset]):
        if char == "{":
            stack.append(position)
        elif char == "}" and stack:
            stack.pop()
    if not stack:
        return None
    position = stack[-1]
    line_start = text.rfind("\n", 0, position) + 1
    head = text[line_start:position].strip() or "a block"
    return f"`{_clip(head)}`", text.count("\n", 0, position) + 1


def _common_slip(text: str, offset: int, token: str, error: UnexpectedInput) -> str | None:
    """A hint for mistakes carried over from other languages."""
    if text.startswith("//", offset):
        return "comments start with `#`"
    if "NA_VALUE" in _acceptable(error) and re.match(r"(?i)n\s*[\\/]?\s*a\b|none\b|null\b|nan\b",
                                                      text[offset:]):
        return "write `n/a` (lowercase, with a slash) for the not-applicable label"
    if token in ("True", "False", "true", "false", "TRUE", "FALSE", "None", "null"):
        return "there are no booleans or null here: write a number (e.g. `1.0`, `-1.0`)"
    if token == "=" and text[:offset].rstrip().endswith("="):
        return "write a single `=`"
    if token == ",":
        return "remove the `,`: items are separated by new lines or spaces, not commas"
    # After an operator, `if` is read as a name and the parser stops at the next token.
    if re.search(r"[-+*/]\s*if\s*$", text[:offset] if token != "if" else text[:offset] + "if"):
        return "`if` binds loosest: put it in parentheses, e.g. " \
            "`1 + (if failed(gates) then -1 else 0)`"
    return None


_CHARACTER_HINTS = {
    ":": "write `=` to give a value, e.g. `A = 1.0` or `score = expected`",
    ";": "remove it: nothing ends with `;` in .qal",
    "\u201c": 'use straight quotes `"`', "\u201d": 'use straight quotes `"`',
    "\u2018": 'use straight quotes `"`', "\u2019": 'use straight quotes `"`',
    "'": 'strings use double quotes `"`',
    "\u2026": "`…` in the docs stands for what you write there; replace it with the content",
    "&": "there is no `&`: combine numbers with `min(…)`, `mean(…)` or arithmetic",
    "|": "there is no `|`: combine numbers with `max(…)`, `mean(…)` or arithmetic",
}


def _expected_words(error: UnexpectedInput, skip_operators: bool = False) -> str:
    expected = sorted(_acceptable(error))
    if skip_operators and set(expected) - _OPERATORS:
        expected = [name for name in expected if name not in _OPERATORS]
    words: list[str] = []
    for name in expected:
        if name in _TOKEN_WORDS:
            words.append(_TOKEN_WORDS[name])
            continue
        try:
            pattern = _lark().get_terminal(name).pattern
        except KeyError:
            continue
        words.append(f"`{pattern.value}`" if pattern.type == "str" else name.lower())
    words = sorted(set(words))
    if "`}`" in words:  # a missing closing brace must not hide in "N more"
        words.remove("`}`")
        words.insert(0, "`}`")
    if len(words) > 6:
        return ", ".join(words[:6]) + f" or {len(words) - 6} more"
    if len(words) > 1:
        return ", ".join(words[:-1]) + " or " + words[-1]
    return words[0] if words else ""


def _describe_char(char: str) -> str:
    if not char:
        return "at the end of the file"
    if char.isprintable() and not char.isspace():
        return f"`{char}`"
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name.lower()})" if name else "")


def _character_hint(char: str) -> str:
    """How to fix an unexpected character: the usual slips first, then by its kind."""
    if char in _CHARACTER_HINTS:
        return _CHARACTER_HINTS[char]
    if char in _INVISIBLE:
        return "an invisible character (often pasted from a web page or chat): delete it"
    if char.isspace():
        return "a non-standard space: replace it with an ordinary space"
    if unicodedata.category(char) == "Pd":
        return "use the ASCII minus `-`"
    plain = unicodedata.normalize("NFKC", char)
    if plain != char and plain.isascii():
        return f"use the ASCII `{plain}`"
    if char.isalpha():
        return "names use ASCII letters, digits and `_`; other text belongs in a string"
    return "remove it, or put it inside a string"


_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f")


def _clip(text: str, limit: int = 40) -> str:
    first = text.split("\n")[0]
    return first if len(first) <= limit else first[:limit] + "…"


_BRACKETS = re.compile(
    r'"""(?:[^"\\]|\\.|"(?!""))*(?:"""|$)'  # a triple-quoted string, maybe unterminated
    r'|"(?:[^"\\\n]|\\.)*"?'  # a string, maybe unterminated
    r"|#[^\n]*|[{}()\[\]]"
)


def _bracket_events(text: str) -> list[tuple[str, int]]:
    return [(m.group(), m.start()) for m in _BRACKETS.finditer(text) if len(m.group()) == 1
            and m.group() in "{}()[]"]


def _unclosed_bracket(text: str) -> tuple[str, int, int] | None:
    """The innermost bracket left open at the end of the text, with its position."""
    stack: list[tuple[str, int]] = []
    for char, offset in _bracket_events(text):
        if char in "{([":
            stack.append((char, offset))
        elif stack:
            stack.pop()
    if not stack:
        return None
    char, offset = stack[-1]
    prefix = text[:offset]
    return char, prefix.count("\n") + 1, offset - (prefix.rfind("\n") + 1) + 1


def _stray_closer(text: str) -> tuple[str, int, int] | None:
    """The first closing bracket that matches no opener."""
    stack: list[str] = []
    pairs = {"}": "{", ")": "(", "]": "["}
    for char, offset in _bracket_events(text):
        if char in "{([":
            stack.append(char)
        elif not stack or stack[-1] != pairs[char]:
            prefix = text[:offset]
            line = prefix.count("\n") + 1
            column = offset - (prefix.rfind("\n") + 1) + 1
            return char, line, column
        else:
            stack.pop()
    return None


# --- tree -> AST -------------------------------------------------------------------


class _BuildError(Exception):
    def __init__(self, **fields: Any) -> None:
        super().__init__(fields.get("detail", ""))
        self.fields = fields


def _span_of(meta: Any) -> Span:
    if getattr(meta, "empty", True):
        return Span(1, 1, 1, 1)
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(token: Token) -> Span:
    return Span(token.line or 1, token.column or 1, token.end_line or 1, token.end_column or 1)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _unescape(body: str, token: Token) -> str:
    out: list[str] = []
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\" and index + 1 < len(body):
            following = body[index + 1]
            if following not in _ESCAPES:
                line = (token.line or 1) + body[:index].count("\n")
                raise _BuildError(
                    code="QAL001",
                    span=Span.point(line, (token.column or 1) + index + 1),
                    detail=f"unknown escape `\\{following}` in string",
                    help='write `\\\\` for a backslash; known escapes are \\n \\t \\r \\" \\\\',
                )
            out.append(_ESCAPES[following])
            index += 2
            continue
        out.append(char)
        index += 1
    return "".join(out)


def text_of(token: Token) -> nodes.Text:
    raw = str(token)
    if raw.startswith('"""'):
        # A file saved with CRLF line ends means the same text (write `\r` for a real CR).
        body = raw[3:-3].replace("\r\n", "\n")
        if body.startswith("\n"):
            body = body[1:]
        return nodes.Text(_unescape(body, token), True, _token_span(token))
    return nodes.Text(_unescape(raw[1:-1], token), False, _token_span(token))


def name_of(token: Token) -> nodes.Name:
    return nodes.Name(str(token), _token_span(token))


@v_args(meta=True)
class _Builder(Transformer[Token, Any]):
    """Lark tree -> frozen AST nodes, one method per grammar rule or alias."""

    def start(self, meta: Any, children: list[Any]) -> nodes.Module:
        return nodes.Module(tuple(children), (), _span_of(meta))

    def header(self, meta: Any, children: list[Token]) -> nodes.Header:
        return nodes.Header(int(children[0]), _span_of(meta))

    def import_decl(self, meta: Any, children: list[Any]) -> nodes.Import:
        names = children[1] if len(children) > 1 else None
        return nodes.Import(text_of(children[0]), names, _span_of(meta))

    def import_names(self, meta: Any, children: list[Token]) -> tuple[nodes.Name, ...]:
        return tuple(name_of(token) for token in children)

    def constitution_decl(self, meta: Any, children: list[Any]) -> nodes.ConstitutionDecl:
        return nodes.ConstitutionDecl(text_of(children[0]), tuple(children[1:]), _span_of(meta))

    def scale_decl(self, meta: Any, children: list[Any]) -> nodes.ScaleDecl:
        return nodes.ScaleDecl(name_of(children[0]), tuple(children[1:]), _span_of(meta))

    def scale_label(self, meta: Any, children: list[Any]) -> nodes.ScaleLabel:
        label, value = children[0], children[1]
        fails = len(children) > 2
        return nodes.ScaleLabel(label, value, fails, _span_of(meta))

    def label(self, meta: Any, children: list[Token]) -> nodes.Name:
        return name_of(children[0])

    def na_value(self, meta: Any, children: list[Token]) -> None:
        return None

    def scale_score(self, meta: Any, children: list[Token]) -> nodes.ScaleScore:
        return nodes.ScaleScore(name_of(children[0]), _span_of(meta))

    def template_decl(self, meta: Any, children: list[Any]) -> nodes.TemplateDecl:
        return nodes.TemplateDecl(name_of(children[0]), tuple(children[1:]), _span_of(meta))

    def defaults_decl(self, meta: Any, children: list[Any]) -> nodes.DefaultsDecl:
        return nodes.DefaultsDecl(tuple(children), _span_of(meta))

    def default_scale(self, meta: Any, children: list[Token]) -> nodes.DefaultScale:
        return nodes.DefaultScale(str(children[0]), name_of(children[1]), _span_of(meta))

    def default_template(self, meta: Any, children: list[Token]) -> nodes.DefaultTemplate:
        return nodes.DefaultTemplate(name_of(children[0]), _span_of(meta))

    def default_pool(self, meta: Any, children: list[Any]) -> nodes.DefaultPool:
        return nodes.DefaultPool(str(children[0]), children[1], _span_of(meta))

    def principle_decl(self, meta: Any, children: list[Any]) -> nodes.Principle:
        title, rest = text_of(children[0]), children[1:]
        clauses = tuple(c for c in rest if isinstance(c, nodes.Clause))
        members = tuple(c for c in rest if not isinstance(c, nodes.Clause))
        return nodes.Principle(title, clauses, members, _span_of(meta))

    def dimension_decl(self, meta: Any, children: list[Any]) -> nodes.Dimension:
        title, rest = text_of(children[0]), children[1:]
        clauses = tuple(c for c in rest if isinstance(c, nodes.Clause))
        members = tuple(c for c in rest if not isinstance(c, nodes.Clause))
        return nodes.Dimension(title, clauses, members, _span_of(meta))

    def question(self, meta: Any, children: list[Any]) -> nodes.Question:
        return nodes.Question(
            str(children[0]), text_of(children[1]), tuple(children[2:]), _span_of(meta)
        )

    def id_clause(self, meta: Any, children: list[Token]) -> nodes.Clause:
        return nodes.Clause("as", name_of(children[0]), _span_of(meta))

    def weight_clause(self, meta: Any, children: list[Any]) -> nodes.Clause:
        return nodes.Clause("weight", children[0], _span_of(meta))

    def scale_clause(self, meta: Any, children: list[Token]) -> nodes.Clause:
        return nodes.Clause("scale", name_of(children[0]), _span_of(meta))

    def template_clause(self, meta: Any, children: list[Token]) -> nodes.Clause:
        return nodes.Clause("template", name_of(children[0]), _span_of(meta))

    def pool_setting(self, meta: Any, children: list[Any]) -> nodes.PoolSetting:
        return nodes.PoolSetting(children[0], _span_of(meta))

    def template_setting(self, meta: Any, children: list[Token]) -> nodes.TemplateSetting:
        return nodes.TemplateSetting(name_of(children[0]), _span_of(meta))

    def scale_setting(self, meta: Any, children: list[Token]) -> nodes.ScaleSetting:
        return nodes.ScaleSetting(str(children[0]), name_of(children[1]), _span_of(meta))

    def description_setting(self, meta: Any, children: list[Token]) -> nodes.DescriptionSetting:
        return nodes.DescriptionSetting(text_of(children[0]), _span_of(meta))

    def reward_decl(self, meta: Any, children: list[Any]) -> nodes.RewardDecl:
        return nodes.RewardDecl(children[0], _span_of(meta))

    def revision_decl(self, meta: Any, children: list[Any]) -> nodes.RevisionDecl:
        return nodes.RevisionDecl(tuple(children), _span_of(meta))

    def output_decl(self, meta: Any, children: list[Any]) -> nodes.OutputDecl:
        return nodes.OutputDecl(tuple(children), _span_of(meta))

    def setting(self, meta: Any, children: list[Any]) -> nodes.Setting:
        raw = children[1]
        value: nodes.SettingValue
        if isinstance(raw, Token) and raw.type == "STRING":
            value = text_of(raw)
        elif isinstance(raw, Token):
            value = name_of(raw)
        else:
            value = raw
        return nodes.Setting(name_of(children[0]), value, _span_of(meta))

    # --- expressions
    def number(self, meta: Any, children: list[Token]) -> nodes.Number:
        token = children[0]
        return nodes.Number(float(token), str(token), _token_span(token))

    def negative_number(self, meta: Any, children: list[nodes.Number]) -> nodes.Number:
        inner = children[0]
        return nodes.Number(-inner.value, "-" + inner.text, _span_of(meta))

    def ref(self, meta: Any, children: list[Token]) -> nodes.Ref:
        return nodes.Ref(tuple(str(token) for token in children), _span_of(meta))

    def call(self, meta: Any, children: list[Any]) -> nodes.Call:
        function = name_of(children[0])
        arguments = children[1] if len(children) > 1 else []
        positional = tuple(a for a in arguments if not isinstance(a, nodes.KeywordArgument))
        keywords = tuple(a for a in arguments if isinstance(a, nodes.KeywordArgument))
        return nodes.Call(function, positional, keywords, _span_of(meta))

    def arguments(self, meta: Any, children: list[Any]) -> list[Any]:
        return children

    def keyword_argument(self, meta: Any, children: list[Any]) -> nodes.KeywordArgument:
        return nodes.KeywordArgument(name_of(children[0]), children[1], _span_of(meta))

    def list_expr(self, meta: Any, children: list[Any]) -> nodes.ListExpr:
        return nodes.ListExpr(tuple(children), _span_of(meta))

    def neg(self, meta: Any, children: list[Any]) -> nodes.Expr:
        return nodes.Negate(children[0], _span_of(meta))

    def _binary(self, operator: str, meta: Any, children: list[Any]) -> nodes.Binary:
        return nodes.Binary(operator, children[0], children[1], _span_of(meta))

    def add(self, meta: Any, children: list[Any]) -> nodes.Binary:
        return self._binary("+", meta, children)

    def sub(self, meta: Any, children: list[Any]) -> nodes.Binary:
        return self._binary("-", meta, children)

    def mul(self, meta: Any, children: list[Any]) -> nodes.Binary:
        return self._binary("*", meta, children)

    def div(self, meta: Any, children: list[Any]) -> nodes.Binary:
        return self._binary("/", meta, children)

    def select(self, meta: Any, children: list[Any]) -> nodes.Select:
        return nodes.Select(children[0], children[1], children[2], _span_of(meta))
