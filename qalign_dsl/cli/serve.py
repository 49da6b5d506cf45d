"""`qalc serve`: the compiled rubric as an HTTP reward server (docs/serve.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from qalign_dsl.cli import validation
from qalign_dsl.cli.common import ExitCode, UsageError
from qalign_dsl.cli.judge_options import add_backend_arguments, build_judge, judge_spec
from qalign_dsl.cli.outputs import check_output
from qalign_dsl.cli.rubric import add_compiled_argument, load_rubric


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "serve", help="serve the rubric reward over HTTP (OpenRLHF /get_reward, /v1/score)",
        description="An HTTP reward server: OpenRLHF's remote reward-model contract at POST "
        "/get_reward, qalc's own JSON API at POST /v1/score, GET /health and GET /metrics. "
        "Concurrent requests are gathered into one judge call.")
    add_compiled_argument(parser)
    add_backend_arguments(parser, ("--judge", "--model"), "the judge",
                          default_backend="transformers", command="serve")
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s, this machine only)")
    group.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    group.add_argument("--max-batch", type=int, default=64,
                       help="samples per judge call at most (default: %(default)s)")
    group.add_argument("--max-wait-ms", type=float, default=10.0,
                       help="how long the first request of a batch waits for others "
                       "(default: %(default)s)")
    group.add_argument("--max-items", type=int, default=1024,
                       help="samples per request at most; more is 413 (default: %(default)s)")
    group.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024,
                       help="request body size at most; more is 413 (default: %(default)s)")
    group.add_argument("--token-env", metavar="VAR",
                       help="require `Authorization: Bearer TOKEN`, TOKEN read from this "
                       "environment variable (default: no auth)")
    group.add_argument("--cache", type=Path, help="answer cache (SQLite; default: none)")
    parser.set_defaults(run=run_serve)


def run_serve(arguments: argparse.Namespace, console: Console) -> int:
    for name in ("port", "max_batch", "max_items", "max_body_bytes"):
        value = getattr(arguments, name)
        if value < (0 if name == "port" else 1) or (name == "port" and value > 65535):
            raise UsageError(f"--{name.replace('_', '-')}: out of range: {value}")
    validation.finite_float("--max-wait-ms", arguments.max_wait_ms, minimum=0.0,
                            maximum=60_000.0)
    validation.backend_options(arguments)
    if arguments.cache is not None:
        check_output(arguments.cache, [arguments.compiled], "--cache")
    token = None
    if arguments.token_env:
        token = os.environ.get(arguments.token_env)
        if not token:
            raise UsageError(f"--token-env {arguments.token_env}: the variable is unset or "
                             "empty")
    rubric = load_rubric(arguments.compiled, console)
    if rubric is None:
        return ExitCode.PROBLEMS
    import uvicorn

    from qalign_dsl.serve.app import ServeLimits, create_app
    from qalign_dsl.serve.batcher import Batcher
    from qalign_dsl.serve.scoring import RubricScorer

    judge = build_judge(arguments, rubric.rubric, console, arguments.cache, load_weights=True,
                        short_circuit=judge_spec(arguments).short_circuit)
    if judge is None:
        return ExitCode.PROBLEMS
    batcher = Batcher(RubricScorer(judge), arguments.max_batch, arguments.max_wait_ms / 1000)
    info = {"title": rubric.rubric.title, "hash": rubric.rubric.hash}
    app = create_app(batcher, info, ServeLimits(arguments.max_body_bytes, arguments.max_items),
                     token)
    console.print(f"qalc serve: {rubric.rubric.title} on http://{arguments.host}:"
                  f"{arguments.port} (POST /get_reward, /v1/score; GET /health, /metrics)",
                  markup=False)
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="warning")
    return ExitCode.OK
