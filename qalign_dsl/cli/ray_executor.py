"""`--executor ray`: a command's batches as a Ray Data pipeline over a pool of actors.

The driver (this process) reads and checks the rows exactly as a local run does (so a bad
row is named by file, row and column, and nothing reaches the cluster), cuts what is left
to do into *units* — the batches a local run would judge or generate one after another —
and hands them to `ray.data`: `map_batches` with `UnitActor`, a callable class that builds
the command's worker (one judge, or one policy generator, per actor) once in its
constructor. Results stream back in the input's order (`preserve_order`), and the command
writes each as it arrives, exactly as its local loop does: the output is the checkpoint,
so a driver killed with kill -9 resumes from what was written.

Faults: a dead actor is restarted (`max_restarts`) and the tasks it held are retried on
the pool (`max_task_retries`); a task's result is taken once, whoever ran it, so every
row is written exactly once. Expected problems of a worker (a judge that cannot load, a
server error) travel back as `WorkerError` messages, never as a remote traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from qalign_dsl.cli.common import UsageError
from qalign_dsl.cli.inputs import BadInput
from qalign_dsl.executor import EXECUTORS, ExecutorError, ExecutorSpec

# An actor killed mid-task is restarted and its task retried this many times; a row that
# kills every actor it reaches (a segfault in the model) fails the run after that.
MAX_RESTARTS = 4
MAX_TASK_RETRIES = 4
DEFAULT_PORT = 6379  # `ray start --head`'s GCS port
CONNECT_TIMEOUT_S = 5.0

Worker = Callable[[str], str]  # one unit (JSON text) -> its result (JSON text)
BuildWorker = Callable[[], Worker]  # picklable: sent to each actor, called once there


class WorkerError(Exception):
    """A problem a worker reports as a message (raise it in a worker or its builder)."""


def add_executor_arguments(parser: argparse.ArgumentParser, recipe: bool = False) -> None:
    """The executor options; with `recipe`, their defaults are None so that the recipe's
    `executor:` section applies where an option is not given."""
    base = ExecutorSpec()

    def default(value: Any) -> Any:
        return None if recipe else value

    group = parser.add_argument_group(
        "executor", "where batches run: this machine, or a Ray cluster (docs/scale.md; "
        "needs pip install 'qalign-dsl[ray]')" + (" — overrides the recipe's `executor:`"
                                                  if recipe else ""))
    group.add_argument("--executor", choices=EXECUTORS, default=default(base.kind),
                       help="local: this process; ray: a Ray Data pipeline over --actors actors")
    group.add_argument("--ray-address", metavar="ADDRESS", default=None,
                       help="the Ray cluster to join: `auto` (the one this machine belongs to) "
                       "or HOST:PORT (default: start a local cluster for the run)")
    group.add_argument("--actors", type=int, default=default(base.actors), metavar="N",
                       help="actors in the pool, each holding one model")
    group.add_argument("--gpus-per-actor", type=float, default=default(base.gpus_per_actor),
                       metavar="X", help="GPUs each actor reserves (e.g. 1 for a vLLM judge)")
    group.add_argument("--cpus-per-actor", type=float, default=default(base.cpus_per_actor),
                       metavar="X", help="CPUs each actor reserves")
    group.add_argument("--batch-rows", type=int, default=default(base.batch_rows), metavar="N",
                       help="rows sent to an actor per task, in whole batches of the "
                       "command's batch size (a failed task is retried whole)")


_OPTIONS = {"kind": "--executor", "address": "--ray-address", "actors": "--actors",
            "gpus_per_actor": "--gpus-per-actor", "cpus_per_actor": "--cpus-per-actor",
            "batch_rows": "--batch-rows"}


def executor_from_arguments(arguments: argparse.Namespace,
                            base: ExecutorSpec | None = None) -> ExecutorSpec:
    """The executor the options describe, over `base` (a recipe's); a UsageError naming
    the option for a bad value, or for Ray options given without `--executor ray`."""
    given = {key: getattr(arguments, option.removeprefix("--").replace("-", "_"), None)
             for key, option in _OPTIONS.items()}
    values = {key: value for key, value in given.items() if value is not None}
    try:
        spec = ExecutorSpec(**{**_fields(base or ExecutorSpec()), **values})
    except ExecutorError as error:
        raise UsageError(f"{_OPTIONS[error.key]}: {error.message}") from None
    if spec.kind == "local":
        defaults = ExecutorSpec()
        extra = [_OPTIONS[key] for key, value in values.items()
                 if key != "kind" and value != getattr(defaults, key)]
        if extra:
            raise UsageError(f"{extra[0]} applies to --executor ray only")
    return spec


def _fields(spec: ExecutorSpec) -> dict[str, Any]:
    return {key: getattr(spec, key) for key in _OPTIONS}


def require_ray() -> None:
    """Import Ray Data now, before any work: a missing extra is `qalc`'s install hint
    (ModuleNotFoundError for `ray`: cli.main prints it, exit 2)."""
    import ray.data  # noqa: F401


# --- the cluster ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resources:
    """What the cluster offers: per alive node, and in all."""

    gpus: tuple[float, ...]
    cpus: tuple[float, ...]


def resource_problem(spec: ExecutorSpec, resources: Resources, where: str) -> str | None:
    """Why the actor pool cannot be placed on the cluster, naming both numbers; None when it
    fits. Checked before any work: Ray would otherwise wait for resources that never come."""
    for kind, per_actor, option, offered in (
            ("GPU", spec.gpus_per_actor, "--gpus-per-actor", resources.gpus),
            ("CPU", spec.cpus_per_actor, "--cpus-per-actor", resources.cpus)):
        if per_actor <= 0:
            continue
        largest, total = max(offered, default=0.0), sum(offered)
        if per_actor > largest:
            return (f"{option} {per_actor:g}: no node of the Ray cluster ({where}) has "
                    f"{per_actor:g} {kind}(s); the largest has {largest:g} and the cluster "
                    f"{total:g} in all")
        if per_actor * spec.actors > total:
            return (f"--actors {spec.actors} × {option} {per_actor:g} needs "
                    f"{per_actor * spec.actors:g} {kind}(s); the Ray cluster ({where}) has "
                    f"{total:g}")
    return None


def _reachable(address: str) -> str | None:
    """Why HOST:PORT (or ray://HOST:PORT) does not accept a connection, or None. Checked
    first because `ray.init` waits for minutes on an address where nothing answers."""
    target = address.removeprefix("ray://")
    host, sep, port_text = target.rpartition(":")
    if not sep:
        host, port_text = target, str(DEFAULT_PORT)
    try:
        port = int(port_text)
    except ValueError:
        return f"`{port_text}` is not a port number"
    try:
        socket.create_connection((host.strip("[]"), port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__
    return None


class RayCluster:
    """A connection to a Ray cluster for one command: `with RayCluster(spec) as cluster:`
    starts a local cluster (`address` None) or joins one, checks that the actor pool fits,
    and disconnects (stopping a cluster it started) at the end, whatever happens."""

    def __init__(self, spec: ExecutorSpec) -> None:
        self.spec = spec
        self.where = "a local cluster" if spec.starts_cluster else spec.address

    def __enter__(self) -> RayCluster:
        import ray

        address = self.spec.address
        if address is not None and address != "auto":
            problem = _reachable(address)
            if problem:
                raise BadInput(f"--ray-address {address}: cannot reach a Ray cluster there "
                               f"({problem}); start one with `ray start --head`, or leave out "
                               "--ray-address to start a local one")
        # Ray's usage reports and Ray Data's end-of-run metric queries (a Prometheus on
        # localhost:9090) print tracebacks where nothing answers, e.g. offline; RAY_USAGE_
        # STATS_ENABLED=1 still turns them on.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if address is None:  # `local`: a new cluster even when RAY_ADDRESS is set
                ray.init(address="local", include_dashboard=False, **options)
            else:
                ray.init(address=address, **options)
        except ConnectionError as error:
            if address is None:
                raise BadInput(f"ray: could not start a local cluster ({error})") from None
            # Ray sends a token to a cluster it finds itself (`auto`), never to an address
            # it is given: that takes RAY_AUTH_MODE=token and the cluster's token.
            token = ("; if the cluster uses token authentication (`ray start`'s default), "
                     "set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or "
                     "~/.ray/auth_token)") if address != "auto" and not os.environ.get(
                         "RAY_AUTH_MODE") else ""
            raise BadInput(f"--ray-address {address}: cannot reach a Ray cluster there "
                           f"({error}){token}; start one with `ray start --head`, or leave "
                           "out --ray-address to start a local one") from None
        try:
            nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
            problem = resource_problem(self.spec, Resources(
                tuple(float(n.get("GPU", 0)) for n in nodes),
                tuple(float(n.get("CPU", 0)) for n in nodes)), self.where or "")
            if problem:
                raise UsageError(problem)
        except BaseException:
            ray.shutdown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        ray.shutdown()

    def run(self, name: str, build: BuildWorker, units: Sequence[str],
            unit_rows: int) -> Iterator[str]:
        """Each unit's result, in the units' order, as the pool `name` finishes them."""
        return run_units(self.spec, name, build, units, unit_rows)


def describe(spec: ExecutorSpec, cluster: RayCluster) -> str:
    """The line a command prints before its Ray pipeline starts."""
    return (f"ray: {spec.actors} actor(s) on {cluster.where}, {spec.cpus_per_actor:g} CPU "
            f"and {spec.gpus_per_actor:g} GPU each")


# --- the pipeline --------------------------------------------------------------------------


class UnitActor:
    """One actor of the pool: builds its worker once, then maps each unit of a batch.

    A `WorkerError` (at build time or for one unit) becomes the unit's `error`; the driver
    raises it again, so the command prints it as a local run would."""

    build: BuildWorker  # set by `actor_class`

    def __init__(self) -> None:
        self.work: Worker | None = None
        self.problem = ""
        try:
            self.work = type(self).build()
        except WorkerError as error:
            self.problem = str(error)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        results: list[str] = []
        errors: list[str] = []
        for payload in batch["payload"]:
            result, problem = "", self.problem
            if self.work is not None:
                try:
                    result = self.work(str(payload))
                except WorkerError as error:
                    problem = str(error)
            results.append(result)
            errors.append(problem)
        return {"unit": [int(u) for u in batch["unit"]], "result": results, "error": errors}


def actor_class(name: str, build: BuildWorker) -> type[UnitActor]:
    """A `UnitActor` subclass carrying `build`: Ray ships it with the class (not as
    constructor arguments in the object store, which a restarted actor could lose), and
    `name` is what `ray status` and the process titles show (`MapBatches(score)`)."""
    return type(name, (UnitActor,), {"build": staticmethod(build), "__module__": __name__})


def run_units(spec: ExecutorSpec, name: str, build: BuildWorker, units: Sequence[str],
              unit_rows: int) -> Iterator[str]:
    """The Ray Data pipeline: units in, results out in the same order (see the module
    doc). Needs a connected cluster (`RayCluster`)."""
    import ray.data

    if not units:
        return
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    per_task = spec.units_per_task(unit_rows)
    blocks = -(-len(units) // per_task)  # one block per task: the pool shares them out
    rows = ray.data.from_items([{"unit": i, "payload": unit} for i, unit in enumerate(units)],
                               override_num_blocks=blocks)
    with warnings.catch_warnings():  # restarts have no named parameter yet (pyproject: ray)
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = rows.map_batches(
            actor_class(name, build), batch_size=per_task, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=spec.actors), num_cpus=spec.cpus_per_actor,
            num_gpus=spec.gpus_per_actor or None, max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_TASK_RETRIES)
    for expected, row in enumerate(dataset.iter_rows()):
        if int(row["unit"]) != expected:  # preserve_order is what makes resume exact
            raise RuntimeError(f"ray: unit {row['unit']} arrived where {expected} was due")
        if row["error"]:
            raise WorkerError(str(row["error"]))
        yield str(row["result"])


def task_failure(error: BaseException) -> str | None:
    """A one-line message for a Ray failure that retries did not cure (an actor that kept
    dying, a lost node), or None for an error that is not Ray's."""
    module = type(error).__module__
    if not module.startswith("ray"):
        return None
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (f"ray: the pipeline failed after {MAX_TASK_RETRIES} retries per task: "
            f"{type(error).__name__}: {first}")


def as_json(value: Any) -> str:
    """A unit or a result as the text the pipeline carries (one column of strings)."""
    return json.dumps(value, ensure_ascii=False)


def note_cache(console: Console, spec: ExecutorSpec, used: bool, path: Any) -> bool:
    """Whether the actors may open the answer cache at `path`: only on a cluster this run
    started (on this machine); on a joined cluster its absence is said once."""
    if not used:
        return False
    if spec.starts_cluster:
        return True
    console.print(f"answer cache: not used on a joined Ray cluster ({spec.address}); its "
                  f"workers may not reach {path}, so every answer is judged", style="cyan",
                  markup=False)
    return False
