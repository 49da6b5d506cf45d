"""Where a command's batches run: on this machine (`local`), or on a Ray cluster (`ray`).

`ExecutorSpec` is what `--executor`, `--ray-address`, `--actors`, `--gpus-per-actor`,
`--cpus-per-actor` and `--batch-rows` say on the command line of `score`, `eval` and
`synth`, and what the `executor:` section of an eval recipe says. It is plain data, checked
when made; the Ray pipeline itself is `qalign_dsl.cli.ray_executor`. Like `sources`, this
module imports no other qalign_dsl module, so recipes of any layer may hold one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

EXECUTORS = ("local", "ray")
# Bounds that catch a typo (`--actors 10000`) before a cluster is asked for anything.
MAX_ACTORS = 4096
MAX_BATCH_ROWS = 1_000_000
MAX_RESOURCES_PER_ACTOR = 1024.0


class ExecutorError(ValueError):
    """A bad executor setting; `key` is the field (`actors`), `message` says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class ExecutorSpec:
    """How batches are run. `address` None starts a local Ray cluster for the run; `auto`
    joins the cluster this machine belongs to (`ray start`); `HOST:PORT` joins that one."""

    kind: str = "local"
    address: str | None = None
    actors: int = 1  # judge or generator actors, each holding one model
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    batch_rows: int = 64  # rows sent to an actor in one task: the unit of retry

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ExecutorError("kind", f"unknown executor `{self.kind}` "
                                f"(one of: {', '.join(EXECUTORS)})")
        if isinstance(self.actors, bool) or not isinstance(self.actors, int) \
                or not 1 <= self.actors <= MAX_ACTORS:
            raise ExecutorError("actors", f"must be a whole number from 1 to {MAX_ACTORS}, "
                                f"got {self.actors!r}")
        if isinstance(self.batch_rows, bool) or not isinstance(self.batch_rows, int) \
                or not 1 <= self.batch_rows <= MAX_BATCH_ROWS:
            raise ExecutorError("batch_rows", f"must be a whole number from 1 to "
                                f"{MAX_BATCH_ROWS}, got {self.batch_rows!r}")
        for key in ("gpus_per_actor", "cpus_per_actor"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value <= MAX_RESOURCES_PER_ACTOR or value != value:
                raise ExecutorError(key, f"must be a number from 0 to "
                                    f"{MAX_RESOURCES_PER_ACTOR:g}, got {value!r}")
        if self.address is not None and not self.address.strip():
            raise ExecutorError("address", "is empty (leave it out to start a local cluster, "
                                "or give `auto` or HOST:PORT)")

    @property
    def starts_cluster(self) -> bool:
        """Whether the run starts its own (local) Ray cluster rather than joining one."""
        return self.address is None

    def units_per_task(self, unit_rows: int) -> int:
        """Units (one local batch of `unit_rows` rows each) sent to an actor per task."""
        return max(1, self.batch_rows // max(1, unit_rows))


FIELDS = tuple(f.name for f in fields(ExecutorSpec))


def executor_from_mapping(raw: Mapping[str, Any], base: ExecutorSpec | None = None
                          ) -> ExecutorSpec:
    """An `executor:` section (recipe keys are the field names) over `base`; ExecutorError
    for an unknown key or a bad value."""
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ExecutorError(unknown[0], f"unknown key (known: {', '.join(FIELDS)})")
    return replace(base or ExecutorSpec(), **dict(raw))
