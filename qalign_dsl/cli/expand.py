"""`qalc expand PRINCIPLES --backend … --model … -o DRAFT.qal` (QA-LIGN stage 1)."""

from __future__ import annotations

import argparse
import datetime
import textwrap
from pathlib import Path
from typing import Any

from rich.console import Console

from qalign_dsl.cli import validation
from qalign_dsl.cli.common import ExitCode, write_atomic
from qalign_dsl.cli.console import print_diagnostic
from qalign_dsl.cli.judge_options import add_backend_arguments, make_backend
from qalign_dsl.cli.outputs import check_output


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "expand", help="draft dimensions and questions for principles with an LLM",
        description="Principles (YAML, or a .qal skeleton) → an LLM proposes dimensions with "
                    "a binary gate and graded questions as schema-validated JSON → a formatted "
                    ".qal draft that passes `qalc check`. Review it before use.")
    parser.add_argument("principles", type=Path, metavar="PRINCIPLES",
                        help="principles.yaml, or a .qal skeleton with principles and "
                             "optional dimensions")
    add_backend_arguments(parser, "--model", "the drafting model", default_backend=None,
                          title="model")
    parser.add_argument(
        "-o", "--output", type=Path, help="the draft (default: PRINCIPLES stem + .qal)"
    )
    parser.add_argument("--dimensions", type=int, default=4,
                        help="dimensions to propose for a principle that lists none (default 4)")
    parser.add_argument("--graded", type=int, default=3,
                        help="graded questions per dimension, besides its gate (default 3)")
    parser.add_argument("--attempts", type=int, default=3,
                        help="tries per principle, each told why the last one failed (default 3)")
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="sampling temperature of the drafting model")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--max-tokens", type=int, default=2048,
                        help="tokens the model may write for one principle's JSON")
    parser.add_argument("--no-structured", action="store_true",
                        help="do not ask the backend for schema-constrained decoding")
    parser.set_defaults(run=run_expand)


def run_expand(arguments: argparse.Namespace, console: Console) -> int:
    from qalign_dsl.judge.backend import JudgeError
    from qalign_dsl.lang.compiler import check_text
    from qalign_dsl.review.expand import (
        SYSTEM_PROMPT,
        Brief,
        ExpandError,
        Expansion,
        PrincipleSpec,
        Shape,
        expand_principle,
        read_brief,
        render_qal,
        task_prompt,
    )

    validation.positive_int("--dimensions", arguments.dimensions, 64)
    validation.positive_int("--graded", arguments.graded, 64)
    validation.positive_int("--attempts", arguments.attempts, 100)
    validation.positive_int("--max-tokens", arguments.max_tokens, 1_000_000)
    validation.finite_float("--temperature", arguments.temperature, minimum=0.0, maximum=100.0)
    if arguments.output is not None:
        check_output(arguments.output, [arguments.principles])
    output: Path = arguments.output or arguments.principles.with_suffix(".qal")
    if output.resolve() == arguments.principles.resolve():
        output = output.with_name(output.stem + ".draft.qal")
    shape = Shape(arguments.dimensions, arguments.graded)
    try:
        brief: Brief = read_brief(arguments.principles)
        model: Any = make_backend(arguments)
        if not hasattr(model, "complete"):
            raise ExpandError(f"the {arguments.backend} backend cannot generate text")
        if arguments.no_structured:
            model.structured_output = False  # type: ignore[attr-defined]
        expansions: list[Expansion] = []
        for principle in brief.principles:
            # Dimensions that already hold questions (in a skeleton) are kept as written.
            done = [d for d in principle.dimensions if d.binary or d.graded]
            asked = [d for d in principle.dimensions if not (d.binary or d.graded)]
            if principle.dimensions and not asked:
                expansions.append(Expansion(principle, done, 0, False))
                continue
            task = PrincipleSpec(principle.name, principle.description, asked)
            result = expand_principle(
                model, task, shape, arguments.attempts, arguments.temperature, arguments.seed,
                arguments.max_tokens,
                report=lambda line: console.print(f"  {line}", style="yellow", markup=False))
            order = [d.name for d in principle.dimensions]
            merged = sorted(done + result.dimensions, key=lambda d: order.index(d.name)) \
                if order else result.dimensions
            expansions.append(Expansion(principle, merged, result.attempts, result.structured))
            console.print(f"{principle.name}: {len(result.dimensions)} dimensions in "
                          f"{result.attempts} attempt(s)", style="green", markup=False)
    except (ExpandError, JudgeError) as error:
        console.print(f"qalc expand: {error}", style="red", markup=False)
        return ExitCode.PROBLEMS

    example = next((e.principle for e in expansions if e.attempts), brief.principles[0])
    header = [
        f"Drafted by `qalc expand {arguments.principles.name}` on "
        f"{datetime.date.today().isoformat()}: review every question before use.",
        f"Model: {model.identity} (temperature {arguments.temperature:g}, seed {arguments.seed}, "
        + ("schema-constrained decoding" if any(e.structured for e in expansions)
           else "validated, with retries") + "; "
        f"attempts per principle: {', '.join(str(e.attempts) for e in expansions)}).",
        "System prompt:",
        *[f"  {line}" for line in textwrap.wrap(SYSTEM_PROMPT, 88)],
        f"Task prompt (for `{example.name}`; the others differ only in the principle):",
        *[f"  {line}" for line in task_prompt(example, shape).split("\n")],
        "",
    ]
    text = render_qal(brief, expansions, header)
    checked = check_text(text, str(output))
    if not checked.ok:
        for diagnostic in checked.diagnostics:
            print_diagnostic(console, diagnostic)
        console.print("qalc expand: the draft does not pass `qalc check`; nothing written",
                      style="red")
        return ExitCode.PROBLEMS
    write_atomic(output, text.encode("utf-8"))
    questions = sum(len(d.binary) + len(d.graded) for e in expansions for d in e.dimensions)
    console.print(f"wrote {output}: {len(expansions)} principles, "
                  f"{sum(len(e.dimensions) for e in expansions)} dimensions, {questions} questions "
                  f"(passes `qalc check`)", style="green", markup=False)
    return ExitCode.OK
