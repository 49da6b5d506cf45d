"""The judge options of score, synth, expand (and validate, eval, serve), generated from
`JudgeSpec`'s fields so that the command line and the `judge:` section of recipes cannot
drift apart."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qalign_dsl.cli.common import UsageError
from qalign_dsl.cli.inputs import BadInput
from qalign_dsl.judge.spec import (
    BACKENDS,
    CASCADE_THRESHOLDS,
    TEACHER_BACKENDS,
    CascadeSpec,
    JudgeSpec,
    JudgeSpecError,
    spec_fields,
    value_type,
)

if TYPE_CHECKING:
    from rich.console import Console

_METAVARS = {int: "N", float: "X", str: "TEXT"}
# Commands whose judge may be a student with a cascade to a teacher.
CASCADE_COMMANDS = ("score", "serve", "validate", "synth", "expand", "distill")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_backend_arguments(parser: argparse.ArgumentParser, model_flags: tuple[str, ...] | str,
                          model_help: str, default_backend: str | None,
                          title: str = "judge", command: str | None = None) -> None:
    """One option per `JudgeSpec` field (read back by `judge_spec`). The model is named by
    `model_flags` (the first is shown, e.g. `--judge`; the others are aliases);
    `default_backend` None makes --backend required. Fields whose `commands` do not name
    `command` are left out (they keep their defaults)."""
    flags = (model_flags,) if isinstance(model_flags, str) else model_flags
    group = parser.add_argument_group(
        title, "which model answers, and how it runs (the `judge:` section of a training "
        "recipe takes the same settings)")
    for spec_field in spec_fields():
        name, meta = spec_field.name, spec_field.metadata
        if "commands" in meta and command not in meta["commands"]:
            continue
        backends = meta["backends"]
        scope = "" if len(backends) == len(BACKENDS) else "/".join(backends) + ": "
        if name == "model":
            group.add_argument(*flags, dest="model", required=True,
                               help=f"{model_help} ({meta['help']})")
            continue
        if name == "backend":
            group.add_argument("--backend", choices=meta["choices"], default=default_backend,
                               required=default_backend is None,
                               help=meta["help"] + ("" if default_backend is None
                                                    else " (default: %(default)s)"))
            continue
        default = spec_field.default
        shown = "" if default is None else " (default: %(default)s)"
        group.add_argument(flag(name), dest=name, type=value_type(spec_field), default=default,
                           choices=meta.get("choices"), metavar=None if meta.get("choices")
                           else meta.get("metavar", _METAVARS[value_type(spec_field)]),
                           help=scope + meta["help"] + shown)
    if command in CASCADE_COMMANDS:
        cascade = parser.add_argument_group(
            "cascade (--backend student)", "the student answers every question; those it is "
            "unsure of go to a teacher judge, run with the options above (a recipe's "
            "`judge.cascade` section; docs/distill.md)")
        cascade.add_argument("--cascade-judge", metavar="MODEL", default=None,
                             help="the teacher judge the student escalates to")
        cascade.add_argument("--cascade-backend", choices=TEACHER_BACKENDS,
                             default="transformers", help="where the teacher runs "
                             "(default: %(default)s)")
        cascade.add_argument("--below-confidence", type=float, default=0.8, metavar="P",
                             help="escalate answers whose top label probability is below P "
                             "(1: all to the teacher, 0: none; default: %(default)s)")
        cascade.add_argument("--cascade-thresholds", choices=CASCADE_THRESHOLDS,
                             default="global", help="global: P for every question; learned: "
                             "each question's threshold from the student's held-out split "
                             "(default: %(default)s)")
    # Kept for scripts written before --api-key-env; prefer the environment variable, which
    # keeps the key out of shell history and process lists.
    group.add_argument("--api-key", default=None,
                       help="openai: the API key itself (default: read from --api-key-env)")


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """The answer cache options of every command that judges."""
    parser.add_argument("--cache", type=Path, default=Path(".qalc-cache/answers.sqlite"),
                        help="answer cache (SQLite), shared by score and validate")
    parser.add_argument("--no-cache", action="store_true",
                        help="judge everything again and write no cache")


def judge_spec(arguments: argparse.Namespace) -> JudgeSpec:
    """The `JudgeSpec` from `add_backend_arguments`' options; a bad value is a usage error
    that names the option."""
    values: dict[str, Any] = {f.name: getattr(arguments, f.name, f.default)
                              for f in spec_fields()}
    try:
        teacher_model = getattr(arguments, "cascade_judge", None)
        if teacher_model:
            if values["backend"] != "student":
                raise UsageError("--cascade-judge needs --backend student (the student answers "
                                 "first, the teacher what it is unsure of)")
            teacher = JudgeSpec(**{**values, "backend": arguments.cascade_backend,
                                   "model": teacher_model, "short_circuit": "off"})
            values["cascade"] = CascadeSpec(teacher, arguments.below_confidence,
                                            arguments.cascade_thresholds)
        return JudgeSpec(**values)
    except JudgeSpecError as error:
        if error.key.startswith("cascade."):
            option = {"cascade.below_confidence": "--below-confidence",
                      "cascade.thresholds": "--cascade-thresholds"}.get(error.key)
            raise UsageError(f"{option or '--cascade-judge'}: {error.message}") from None
        if error.key == "base_url" and arguments.backend == "openai":
            raise UsageError("--backend openai needs --base-url") from None
        name = "--judge/--model" if error.key == "model" else flag(error.key)
        raise UsageError(f"{name}: {error.message}") from None


def make_backend(arguments: argparse.Namespace) -> Any:
    """The backend from `add_backend_arguments`' options (score, synth, expand)."""
    from qalign_dsl.judge.backend import build_backend

    return build_backend(judge_spec(arguments), api_key=arguments.api_key)


def make_judge(arguments: argparse.Namespace, document: Any, cache: Any = None,
               **options: Any) -> Any:
    """The Judge from `add_backend_arguments`' options, with its cascade teacher if any
    (JudgeError, LabelTokenError: the caller reports them)."""
    from qalign_dsl.judge.runtime import judge_from_spec

    return judge_from_spec(document, judge_spec(arguments), cache, api_key=arguments.api_key,
                           **options)


def open_answer_cache(path: Path | None) -> Any:
    """The answer cache at `path` (None: no cache). A file that is not an SQLite database is
    a located problem (`BadInput`: the CLI prints it and exits 1), never a traceback."""
    from qalign_dsl.judge.cache import AnswerCache

    if path is None:
        return None
    try:
        return AnswerCache(path)
    except sqlite3.Error as error:
        raise BadInput(f"--cache {path}: not a usable SQLite answer cache ({error})") from None


def build_judge(arguments: argparse.Namespace, document: Any, console: Console,
                cache: Path | None, load_weights: bool = False, **options: Any) -> Any | None:
    """The command's Judge: the backend from its judge options, the answer cache at `cache`
    (None: no cache) and `options` for `Judge`. Problems are printed and give None: a model
    that cannot load, a label-token clash (a cache that is not SQLite: `open_answer_cache`
    raises). `load_weights`
    loads a lazily loaded model now (a server must fail at start, not on its first request)."""
    from qalign_dsl.judge.backend import JudgeError
    from qalign_dsl.judge.labels import LabelTokenError

    answer_cache = None
    try:
        answer_cache = open_answer_cache(cache)
        judge = make_judge(arguments, document, answer_cache, **options)
        if load_weights:
            judge.load()
        return judge
    except (JudgeError, LabelTokenError) as error:
        console.print(f"judge: {error}", style="red", markup=False)
    if answer_cache is not None:
        answer_cache.close()
    return None
