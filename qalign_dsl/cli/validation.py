"""Option values checked before any work starts, each a `UsageError` naming the option.

Small functions on plain values (not on argparse namespaces' layout) so that they move with
the judge options wherever those are declared.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from qalign_dsl.cli.common import UsageError

DTYPES = ("auto", "float32", "float16", "bfloat16")


def number_type(parse: type[int] | type[float], minimum: float,
                why: str = "") -> Callable[[str], float]:
    """An argparse `type=` for a number of at least `minimum` (NaN refused): the message
    comes from argparse with the option's name, plus `why` when the bound needs a reason."""
    noun = "a whole number" if parse is int else "a number"

    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got `{text}`") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if not value >= minimum:
            bound = f"at least {int(minimum)}" if parse is int else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(
                f"must be {bound}, got {text}" + (f": {why}" if why else ""))
        return value

    return convert


def positive_int(option: str, value: int, maximum: int = 1_000_000) -> None:
    if not 1 <= value <= maximum:
        raise UsageError(f"{option} must be between 1 and {maximum}, got {value}")


def non_negative_int(option: str, value: int, maximum: int = 1_000) -> None:
    if not 0 <= value <= maximum:
        raise UsageError(f"{option} must be between 0 and {maximum}, got {value}")


def finite_float(option: str, value: float, minimum: float | None = None,
                 maximum: float | None = None, exclusive_minimum: bool = False) -> None:
    if not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value}")
    low_ok = minimum is None or (value > minimum if exclusive_minimum else value >= minimum)
    if not low_ok or (maximum is not None and value > maximum):
        relation = ">" if exclusive_minimum else ">="
        bound = f"{relation} {minimum}" if minimum is not None else ""
        bound += (" and " if bound and maximum is not None else "") + (
            f"<= {maximum}" if maximum is not None else "")
        raise UsageError(f"{option} must be {bound}, got {value}")


def dtype(option: str, value: str) -> None:
    if value not in DTYPES:
        raise UsageError(f"{option}: unknown dtype `{value}`; use one of {', '.join(DTYPES)}")


def device(option: str, value: str) -> None:
    """A torch device that exists here: `cuda` without CUDA is a usage error, not a
    traceback deep inside model loading."""
    import torch

    try:
        parsed = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise UsageError(f"{option}: unknown device `{value}` (cpu, cuda, cuda:N, mps)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {value}: CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"{option} {value}: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{option} {value}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{option}: unsupported device `{value}` (cpu, cuda, cuda:N, mps)")


def backend_options(arguments: argparse.Namespace) -> None:
    """The shared judge-backend options (score, synth, expand), before any file is read:
    JudgeSpec's own checks, then what only this machine can tell (is CUDA there?) and
    bounds JudgeSpec does not carry."""
    from qalign_dsl.cli.judge_options import judge_spec

    judge_spec(arguments)
    dtype("--dtype", arguments.dtype)
    positive_int("--chunk-tokens", arguments.chunk_tokens, 1_000_000)
    positive_int("--concurrency", arguments.concurrency, 4096)
    positive_int("--top-logprobs", arguments.top_logprobs, 20)
    non_negative_int("--retries", arguments.retries, 100)
    finite_float("--timeout", arguments.timeout, minimum=0.0, maximum=86_400.0,
                 exclusive_minimum=True)
    if arguments.backend in ("transformers", "student"):
        device("--device", arguments.device)
