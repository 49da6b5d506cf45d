"""Policy completions in the constitution's output format: draft → reflection → revision."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Parts:
    draft: str
    reflection: str
    revision: str


class FormatError(ValueError):
    """The completion does not follow the output format; the message says how."""


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string (standard format) or assistant messages
    (conversational format)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion
                       if isinstance(m, dict) and m.get("role", "assistant") == "assistant")
    return str(completion)


def split_completion(text: str, tags: dict[str, str]) -> Parts:
    """Split by the constitution's tags; each must appear once, in order, and be non-empty."""
    found: dict[str, tuple[int, str]] = {}
    for part in ("draft", "reflection", "revision"):
        tag = re.escape(tags[part])
        matches = list(re.finditer(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL))
        if len(matches) != 1:
            raise FormatError(f"expected one <{tags[part]}>…</{tags[part]}> block, found "
                              f"{len(matches)}")
        content = matches[0].group(1).strip()
        if not content:
            raise FormatError(f"<{tags[part]}> is empty")
        found[part] = (matches[0].start(), content)
    starts = [found[p][0] for p in ("draft", "reflection", "revision")]
    if starts != sorted(starts):
        raise FormatError("the blocks must come in the order draft, reflection, revision")
    return Parts(found["draft"][1], found["reflection"][1], found["revision"][1])


def format_completion(parts: Parts, tags: dict[str, str]) -> str:
    return "\n".join(f"<{tags[p]}>\n{getattr(parts, p)}\n</{tags[p]}>"
                     for p in ("draft", "reflection", "revision"))
