"""The registry of diagnostic codes: one place for every message template and its docs.

Messages are templates so their wording never drifts between call sites; `qalc explain`
renders the explanation, a failing example and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qalign_dsl.lang.diagnostics import Diagnostic, Label, Severity, Span


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    name: str
    severity: Severity
    template: str
    explanation: str
    example: str
    fix: str


_E = Severity.ERROR
_W = Severity.WARNING

_REGISTRY: list[ErrorCode] = [
    # --- reading and syntax ------------------------------------------------
    ErrorCode("QAL001", "syntax-error", _E, "{detail}",
              "The text does not follow the .qal grammar at this point.",
              'principle "Harmlessness" {\n  dimension { }\n}',
              'principle "Harmlessness" {\n'
              '  dimension "Physical Harm" { binary "Is it safe?" }\n}'),
    ErrorCode("QAL002", "unclosed-block", _E, "unclosed `{opener}`: {what} is never closed",
              "A `{`, `(` or `[` has no matching closing bracket before the end of the file.",
              'dimension "Clarity" {\n  binary "Is it clear?"\n',
              'dimension "Clarity" {\n  binary "Is it clear?"\n}'),
    ErrorCode("QAL003", "unterminated-string", _E, "unterminated string",
              "A string starts with `\"` but has no closing quote on the same line "
              "(use `\"\"\"…\"\"\"` for text spanning several lines).",
              'binary "Is the response clear?',
              'binary "Is the response clear?"'),
    ErrorCode("QAL004", "invalid-character", _E, "unexpected character {char}",
              "This character cannot start any token of the language.",
              "reward = mean(principles) $ 2",
              "reward = mean(principles) * 2"),
    ErrorCode("QAL005", "unreadable-file", _E, "cannot read {what}: {reason}",
              "The file does not exist, is a directory, or cannot be opened.",
              "qalc check missing.qal", "qalc check constitutions/qalign.qal"),
    ErrorCode("QAL006", "not-text", _E, "{detail}",
              "A .qal file must be UTF-8 text; binary data and invalid UTF-8 are rejected.",
              "(a file holding bytes such as 0xff 0xfe 0x00)",
              "(save the file as UTF-8 text)"),
    ErrorCode("QAL007", "input-too-large", _E, "{detail}",
              "The file is larger, or nests brackets deeper, than qalc accepts. Limits protect "
              "the tools from pathological input; real constitutions are far below them.",
              "reward = -(-(-(-(-(…-(1)…)))))  # more than 100 levels; parentheses alone "
              "do not count",
              "reward = 1"),
    ErrorCode("QAL008", "missing-header", _E,
              "missing version header: the file must start with `qal 1`",
              "Every .qal file starts with the language version it was written for, so that "
              "future versions of qalc can read it unchanged.",
              'scale grade { A = 1.0 }', 'qal 1\n\nscale grade { A = 1.0 }'),
    ErrorCode("QAL009", "unsupported-version", _E,
              "unsupported language version {version}; this qalc reads `qal 1`",
              "The header names a version of the language this qalc does not know.",
              "qal 7", "qal 1"),
    ErrorCode("QAL010", "misplaced-header", _E,
              "the version header must be the first item of the file",
              "`qal N` may appear once, before any other declaration.",
              'scale grade { A = 1.0 }\nqal 1', 'qal 1\nscale grade { A = 1.0 }'),
    # --- names, ids, structure ----------------------------------------------
    ErrorCode("QAL011", "control-character", _E, "control character {char} in the source",
              "Control characters (ESC, other C0/C1 codes, bidi overrides) are not allowed in "
              "a .qal file: printed by `qalc diff` or an editor they can rewrite the terminal "
              "or reorder what a reviewer reads.",
              'principle "Evil\x1b]0;pwned\x07" { }',
              'principle "Evil" { }'),
    ErrorCode("QAL101", "undefined-name", _E, "undefined {kind} `{name}`",
              "A name is used that no declaration (or import) defines.",
              'graded "How clear is it?" scale grdae',
              'graded "How clear is it?" scale grade'),
    ErrorCode("QAL102", "duplicate-definition", _E, "duplicate {kind} `{name}`",
              "Two scales, templates, principles or dimensions share one name; references to it "
              "would be ambiguous.",
              'scale grade { A = 1.0 }\nscale grade { B = 0.5 }',
              'scale grade { A = 1.0 }\nscale grade5 { B = 0.5 }'),
    ErrorCode("QAL103", "duplicate-id", _E, "duplicate question id `{id}`",
              "Two questions of one dimension have the same id, given with `as` or derived from "
              "their text (the first four significant words). Ids key caches and diffs, so they "
              "must be unique.",
              'binary "Does the response avoid physical harm to people?"\n'
              'binary "Does the response avoid physical harm to people or pets?"',
              'binary "Does the response avoid physical harm to people?"\n'
              'binary "Does the response avoid physical harm to people or pets?"'
              ' as avoid_harm_pets'),
    ErrorCode("QAL104", "duplicate-question", _E, "duplicate question text",
              "The same question (ignoring case and spacing) is asked twice; it would be judged "
              "twice and counted twice.",
              'graded "How clear is it?"\ngraded "How  clear is it?"',
              'graded "How clear is it?"'),
    ErrorCode("QAL105", "empty-block", _E, "{kind} `{name}` has no {children}",
              "A principle needs at least one dimension and a dimension at least one question; "
              "an empty one has nothing to pool.",
              'dimension "Clarity" { }', 'dimension "Clarity" { binary "Is it clear?" }'),
    ErrorCode("QAL106", "import-not-found", _E, "cannot import `{target}`: {reason}",
              "An `import` names a file that cannot be read. Paths are relative to the "
              "importing file.",
              'import "comon.qal"', 'import "common.qal"'),
    ErrorCode("QAL107", "import-cycle", _E, "import cycle: {chain}",
              "Files import each other in a loop, so neither can be read first.",
              '# a.qal\nimport "b.qal"\n# b.qal\nimport "a.qal"',
              'move the shared scales and templates into a third file that both import'),
    ErrorCode("QAL108", "import-name-missing", _E,
              "`{name}` is not a scale or template of `{target}`",
              "A selective import names something the imported file does not define.",
              'import "common.qal" (grade, verdikt)', 'import "common.qal" (grade, verdict)'),
    ErrorCode("QAL109", "duplicate-setting", _E, "{what} is set more than once",
              "A setting, clause or declaration that may appear once appears twice; qalc will not "
              "guess which one you meant.",
              'reward = mean(principles)\nreward = min(principles)',
              'reward = mean(principles)'),
    ErrorCode("QAL110", "unknown-setting", _E, "unknown setting `{name}` in {block}",
              "The block does not have a setting of that name.",
              'revision_reward { alpa = 10 }', 'revision_reward { alpha = 10 }'),
    ErrorCode("QAL111", "invalid-setting", _E, "{detail}",
              "A setting has a value of the wrong type or out of range.",
              'revision_reward { alpha = "ten" }', 'revision_reward { alpha = 10 }'),
    ErrorCode("QAL112", "missing-default", _E, "no {what} for {subject}",
              "Nothing says which scale, template or pooling rule applies here: neither the item "
              "itself, its parents, nor the `defaults` block.",
              'principle "Helpfulness" {\n  dimension "Clarity" { graded "How clear is it?" }\n}',
              'defaults {\n  scale graded = grade\n  template = judge\n'
              '  pool dimension = min(graded)\n  pool principle = mean(dimensions)\n}'),
    ErrorCode("QAL113", "missing-reward", _E, "no `reward = …` declaration",
              "A constitution must say how principles pool into the reward.",
              'principle "Helpfulness" { … }',
              'reward = min(harmlessness, mean(principles))'),
    ErrorCode("QAL114", "invalid-id", _E, "cannot derive an id from {title}",
              "Ids are derived from titles by keeping letters and digits; this title has none, "
              "or starts with a digit.",
              'dimension "???" { … }', 'dimension "???" as mystery { … }'),
    ErrorCode("QAL115", "reserved-name", _E, "`{name}` is reserved and cannot name a {kind}",
              "Names such as `principles`, `dimensions`, `questions`, `graded` and `gates` denote "
              "collections inside pooling expressions, and function names denote functions.",
              'principle "Gates" { … }', 'principle "Gates" as gating { … }'),
    ErrorCode("QAL116", "number-out-of-range", _E, "{detail}",
              "A number, or a constant expression, is too large for the compiled IR (which "
              "holds finite numbers only): a literal that overflows such as `1e999` or an "
              "integer with hundreds of digits, or a constant expression that overflows or "
              "is undefined (`1e308 * 10`, `inf - inf`).",
              'scale grade { A = 1e999 F = -1.0 }', 'scale grade { A = 1.0 F = -1.0 }'),
    # --- pooling expressions -------------------------------------------------
    ErrorCode("QAL201", "gate-on-graded", _E,
              "`failed` gates on binary questions, but `{name}` is graded",
              "`failed(...)` is true when a binary question is answered with its `fails` label; "
              "graded questions have no pass/fail answer.",
              'pool = if failed(graded) then -1 else min(graded)',
              'pool = if failed(gates) then -1 else min(graded)'),
    ErrorCode("QAL202", "pooling-cycle", _E, "pooling cycle: {chain}",
              "Pooling rules refer to each other in a loop, so none of them can be computed.",
              'principle "A" as a { pool = mean(b) … }\n'
              'principle "B" as b { pool = mean(a) … }',
              'principle "A" as a { pool = mean(dimensions) … }'),
    ErrorCode("QAL203", "wrong-kind", _E, "{detail}",
              "An operator got a value of the wrong kind: arithmetic needs single numbers (pool a "
              "collection first), `failed` needs binary questions, conditions need `failed(...)`.",
              'pool = dimensions * 2', 'pool = mean(dimensions) * 2'),
    ErrorCode("QAL204", "weight-mismatch", _E, "`wmean` got {weights} weights for {inputs} inputs",
              "`wmean(x, y, weights=[…])` needs exactly one weight per input after collections "
              "are expanded.",
              'reward = wmean(helpfulness, harmlessness, weights=[1, 2, 3])',
              'reward = wmean(helpfulness, harmlessness, weights=[1, 2])'),
    ErrorCode("QAL205", "unknown-function", _E, "unknown function `{name}`",
              "Pooling expressions can call mean, min, max, sum, wmean, clip and failed.",
              'pool = avg(dimensions)', 'pool = mean(dimensions)'),
    ErrorCode("QAL206", "wrong-arity", _E, "`{name}` takes {expected}, got {got}",
              "The function was called with the wrong number of arguments.",
              'pool = clip(mean(dimensions))', 'pool = clip(mean(dimensions), -1, 1)'),
    ErrorCode("QAL207", "empty-collection", _E, "`{name}` is empty in {place}",
              "A pooling rule reduces a collection that has no members here, e.g. `min(graded)` in "
              "a dimension with only binary questions. Override the pool for this dimension.",
              'dimension "Clarity" { binary "Is it clear?" }  # default pool: min(graded)',
              'dimension "Clarity" {\n  binary "Is it clear?"\n'
              '  pool = if failed(gates) then -1 else 1\n}'),
    ErrorCode("QAL208", "out-of-scope", _E, "`{name}` is only available {scope}",
              "`questions`, `graded` and `gates` exist inside a dimension's pool; `dimensions` "
              "inside a principle's pool or the reward.",
              'reward = min(graded)', 'reward = min(principles)'),
    ErrorCode("QAL209", "invalid-argument", _E, "{detail}",
              "An argument is out of range: `clip` bounds in the wrong order, a negative or zero "
              "total weight, division by the constant 0, or an unknown keyword argument.",
              'reward = clip(mean(principles), 1, -1)', 'reward = clip(mean(principles), -1, 1)'),
    # --- judge templates -----------------------------------------------------
    ErrorCode("QAL301", "unknown-slot", _E, "unknown template slot `{{{slot}}}`",
              "Templates may use {prompt}, {response}, {question}, {labels}, {principle} and "
              "{dimension}. Write `{{` and `}}` for literal braces.",
              'user = "Rate {answer}"', 'user = "Rate {response}"'),
    ErrorCode("QAL302", "missing-slot", _E, "template `{name}` has no `{{{slot}}}` slot",
              "A judge template must show the judge the response, the question and the labels "
              "it may answer with.",
              'user = "{prompt}\\n{response}\\nAnswer:"',
              'user = "{prompt}\\n{response}\\n{question}\\nAnswer with one of {labels}."'),
    ErrorCode("QAL303", "slot-before-response", _W,
              "`{{{slot}}}` comes before `{{response}}`, "
              "so questions cannot share the response's prefix",
              "The judge runtime encodes everything before the first per-question slot once per "
              "response and reuses it for every question. A per-question slot ({question}, "
              "{labels}, {principle}, {dimension}) placed before {response} forces the response to "
              "be re-encoded for every question: about Q times the judge cost.",
              'user = "{question}\\n{response}"', 'user = "{response}\\n{question}"'),
    ErrorCode("QAL304", "slot-in-system", _E, "slots are not allowed in the system message",
              "The system message is shared verbatim by every judge call; put slots in `user`.",
              'system = "Judge {response}"',
              'system = "You are a careful judge."\nuser = "… {response} …"'),
    ErrorCode("QAL305", "unbalanced-brace", _E, "unmatched `{brace}` in template text",
              "A single `{` or `}` in template text is ambiguous; write `{{` or `}}` for a literal "
              "brace.",
              'user = "JSON: {\\"a\\": 1} {response}"', 'user = "JSON: {{\\"a\\": 1}} {response}"'),
    # --- scales ------------------------------------------------------------
    ErrorCode("QAL401", "duplicate-label", _E, "duplicate label `{label}` in scale `{scale}`",
              "Each label of a scale must be distinct.",
              'scale grade { A = 1.0 A = 0.5 }', 'scale grade { A = 1.0 B = 0.5 }'),
    ErrorCode("QAL402", "gate-scale", _E,
              "binary questions need a scale with exactly one `fails` label; "
              "scale `{scale}` has {count}",
              "A binary question is a gate: the scale must say which answer fails it.",
              'scale verdict { True = 1.0 False = -1.0 }',
              'scale verdict { True = 1.0 False = -1.0 fails NA = n/a }'),
    ErrorCode("QAL403", "invalid-scale", _E, "{detail}",
              "A scale needs at least two labels with values, at most one `n/a` label, and a "
              "scoring rule of `argmax` or `expected`.",
              'scale grade { A = 1.0 score = median }',
              'scale grade { A = 1.0 F = -1.0 score = expected }'),
    # --- warnings ------------------------------------------------------------
    ErrorCode("QAL501", "unused-scale", _W, "scale `{name}` is never used",
              "The scale is declared but no question uses it (directly or through defaults).",
              'scale likert5 { … }  # and nothing says `scale likert5`',
              'delete the scale, or use it: graded "…" scale likert5'),
    ErrorCode("QAL502", "unused-template", _W, "template `{name}` is never used",
              "The template is declared but no question uses it (directly or through defaults).",
              'template strict { … }  # and nothing says `template strict`',
              'delete the template, or use it: dimension "…" { template = strict … }'),
    ErrorCode("QAL503", "ignored-weight", _W, "this weight has no effect: {reason}",
              "Weights are read only by `wmean(…)` without explicit `weights=[…]`. A weight on "
              "a question, dimension or principle whose parent pools it with `min`, `mean`, "
              "`max`, `sum`, or `wmean(…, weights=[…])` changes nothing.",
              'dimension "Clarity" {\n  pool = min(graded)\n'
              '  graded "How clear is it?" weight 3\n  graded "How concise is it?"\n}',
              'dimension "Clarity" {\n  pool = wmean(graded)\n'
              '  graded "How clear is it?" weight 3\n  graded "How concise is it?"\n}'),
]

CODES: dict[str, ErrorCode] = {entry.code: entry for entry in _REGISTRY}


def make(
    code: str,
    path: str,
    span: Span,
    *,
    help: str | None = None,
    source: str | None = None,
    related: tuple[Label, ...] = (),
    **fields: object,
) -> Diagnostic:
    """Build the diagnostic for `code`, filling its message template with `fields`."""
    entry = CODES[code]
    return Diagnostic(
        code=code,
        severity=entry.severity,
        message=entry.template.format(**fields),
        path=path,
        span=span,
        help=help,
        source=source,
        related=related,
    )


def explain(code: str) -> str | None:
    """The long form shown by `qalc explain CODE`, or None for an unknown code."""
    entry = CODES.get(code.upper())
    if entry is None:
        return None
    return (
        f"{entry.code} ({entry.name}, {entry.severity.value})\n\n"
        f"{entry.explanation}\n\n"
        f"Example that triggers it:\n\n{_indent(entry.example)}\n\n"
        f"Write instead:\n\n{_indent(entry.fix)}\n"
    )


def _indent(text: str) -> str:
    # Shown as <U+001B>: QAL011's own example must not set the terminal's title when printed.
    text = _CONTROL.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)
    return "\n".join("    " + line for line in text.split("\n"))


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
