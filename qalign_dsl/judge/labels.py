"""Label tokens: each label of a scale must begin with its own token under the judge's
tokenizer, or single-token scoring could not tell two answers apart."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class LabelTokenError(ValueError):
    """Two labels of one scale start with the same token; the message says how to fix it."""


def label_first_tokens(encode: Callable[[str], list[int]], describe: Callable[[int], str],
                       context: str, separator: str, labels: Sequence[str],
                       scale: str) -> list[int]:
    """The token each label starts with when it follows `context` + `separator`.

    Tokenizing the context with and without the label handles tokenizers that fold the
    leading space into the label's token (" A" in byte-level BPE) as well as those that
    do not.
    """
    base = encode(context)
    first_tokens: list[int] = []
    for label in labels:
        ids = encode(context + separator + label)
        if ids[: len(base)] != base or len(ids) <= len(base):
            raise LabelTokenError(
                f"label `{label}` of scale `{scale}` merges with the text before it under this "
                f"judge's tokenizer, so it has no token of its own; end the template's "
                f"answer_prefix with a space or punctuation")
        first_tokens.append(ids[len(base)])
    clashes: dict[int, list[str]] = {}
    for label, token in zip(labels, first_tokens):
        clashes.setdefault(token, []).append(label)
    for token, group in clashes.items():
        if len(group) > 1:
            names = " and ".join(f"`{label}`" for label in group)
            raise LabelTokenError(
                f"labels {names} of scale `{scale}` all begin with the token "
                f"{describe(token)!r} under this judge's tokenizer, so single-token scoring "
                f"cannot tell them apart; rename labels so each starts differently (e.g. "
                f"`Yes`/`No`/`Unsure` rather than `N`/`NA`), or use another judge")
    return first_tokens
