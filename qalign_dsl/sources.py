"""Rows from a dataset source: JSONL, CSV, parquet, a `datasets` folder or a Hub dataset.

Shared by every command that reads data (`eval`, `score`, `synth`, `aggregate`, `train`):
it imports no other qalign_dsl module but `safe_io`, so any layer may use it
(pyproject's import-linter contract "Dataset sources import no other qalign_dsl module").

`load_rows(spec)` yields `SourceRow`s in file order, each with a location a person can open
(`data.jsonl:7`, `data.csv:12` counting the header as line 1, `x.parquet row 3`,
`org/name/config[test] row 3`) and either the record or the reason it could not be read;
problems with the source as a whole (missing file, unknown dataset, no network) raise
`SourceError`. Hub datasets are loaded with `datasets.load_dataset`; when the Hub cannot be
reached the load runs in offline mode, so a dataset already in the cache still loads and
one that is not fails at once with a message saying so (instead of minutes of retries).

`spec_from_text` turns a command-line DATA argument into a `SourceSpec`; `apply_columns`
renames a record's columns by a `FIELD=COLUMN` mapping (dotted paths reach into nested
records).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qalign_dsl.safe_io import (
    MAX_DATA_BYTES,
    BadInput,
    iter_lines,
    open_regular,
    parse_json,
)

KINDS = ("jsonl", "csv", "parquet", "disk", "hub")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# A Hub id: `name` or `org/name` (letters, digits, `-`, `_`, `.`), nothing path-like.
_SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class SourceError(ValueError):
    """The source as a whole cannot be read (missing file, unknown dataset, bad format)."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """Where rows come from. `split` picks a split of a `datasets` folder or a Hub dataset;
    None takes the only split, or `train` when there are several."""

    kind: str
    path: Path | None = None
    dataset: str | None = None
    config: str | None = None
    split: str | None = "test"
    revision: str | None = None

    def describe(self) -> str:
        if self.kind == "hub":
            return (f"{self.dataset}" + (f"/{self.config}" if self.config else "")
                    + (f"[{self.split}]" if self.split else ""))
        return str(self.path)


@dataclass(frozen=True, slots=True)
class SourceRow:
    where: str  # file:line or a row number, for messages
    record: dict[str, Any] | None
    error: str | None = None


def spec_from_text(text: str, kind: str | None = None, split: str | None = None,
                   config: str | None = None, revision: str | None = None) -> SourceSpec:
    """A DATA argument as a source: `hub:org/name` or an `org/name` that is not a local
    path is a Hub dataset; a folder saved with `save_to_disk` is a `disk` source; a file's
    kind comes from `kind` or its extension (.csv, .parquet; anything else is JSONL).
    Raises SourceError."""
    if kind is not None and kind not in KINDS:
        raise SourceError(f"unknown source kind `{kind}` (one of: {', '.join(KINDS)})")
    if text.startswith("hub:") or kind == "hub":
        name = text.removeprefix("hub:")
        if not _HUB_ID.match(name):
            raise SourceError(f"{text}: not a Hub dataset id (`name` or `org/name`)")
        return SourceSpec("hub", None, name, config, split, revision)
    path = Path(text).expanduser()
    if kind is None:
        if path.is_dir() and any((path / marker).exists() for marker in _SAVED_MARKERS):
            kind = "disk"
        elif path.suffix.lower() in SUFFIXES:
            kind = SUFFIXES[path.suffix.lower()]
        elif (not path.exists() and "/" in text and _HUB_ID.match(text)
              and not text.startswith((".", "~"))):
            return SourceSpec("hub", None, text, config, split, revision)
        else:  # the historic default: any other name is read as JSONL
            kind = "jsonl"
    if kind != "hub" and (config or revision):
        raise SourceError(f"{text}: a config name or revision applies to Hub datasets only")
    return SourceSpec(kind, path, None, None, split, None)


def load_rows(spec: SourceSpec) -> Iterator[SourceRow]:
    """Every row of the source, in order, with row-level errors (see the module doc)."""
    if spec.kind == "jsonl":
        yield from _jsonl(_existing(spec.path))
    elif spec.kind == "csv":
        yield from _csv(_existing(spec.path))
    elif spec.kind == "parquet":
        yield from _parquet(_existing(spec.path))
    elif spec.kind == "disk":
        yield from _disk(_existing(spec.path), spec.split)
    elif spec.kind == "hub":
        yield from _hub(spec)
    else:
        raise SourceError(f"unknown source kind `{spec.kind}`")


def _existing(path: Path | None) -> Path:
    if path is None or not path.exists():
        raise SourceError(f"{path}: does not exist")
    return path


def _jsonl(path: Path) -> Iterator[SourceRow]:
    """Strict JSON line by line (safe_io): NaN, huge integers, deep nesting, lone
    surrogates and invalid UTF-8 are row errors; a FIFO, a device or a file over 1 GiB is
    refused before a byte is read."""
    try:
        lines = iter_lines(path, MAX_DATA_BYTES)
    except BadInput as error:
        raise SourceError(str(error)) from None
    for number, line in lines:
        where = f"{path}:{number}"
        try:
            if isinstance(line, BadInput):
                raise line
            record = parse_json(line)
        except BadInput as error:
            yield SourceRow(where, None, str(error).removeprefix(f"{where}: "))
            continue
        if not isinstance(record, dict):
            yield SourceRow(where, None, "expected a JSON object")
            continue
        yield SourceRow(where, record)


def _csv(path: Path) -> Iterator[SourceRow]:
    try:
        raw = open_regular(path, MAX_DATA_BYTES)
    except BadInput as error:
        raise SourceError(str(error)) from None
    with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            for record in reader:
                # line_num is the reader's physical line after the row: right for one-line
                # rows, the last line of a row with quoted newlines.
                where = f"{path}:{reader.line_num}"
                if None in record:
                    yield SourceRow(where, None, f"more fields than the header's "
                                    f"{len(reader.fieldnames or [])}")
                    continue
                if any("\x00" in value for value in record.values() if isinstance(value, str)):
                    # Python's csv reads NUL bytes as text; in a CSV they mean a binary or
                    # UTF-16 file, and the judge would see them.
                    yield SourceRow(where, None, "a NUL byte in a field (is this a binary or "
                                    "UTF-16 file?)")
                    continue
                yield SourceRow(where, dict(record))
        except (csv.Error, UnicodeDecodeError) as error:
            raise SourceError(f"{path}:{reader.line_num}: malformed CSV: {error}") from None


def _parquet(path: Path) -> Iterator[SourceRow]:
    try:
        open_regular(path, None).close()
    except BadInput as error:
        raise SourceError(str(error)) from None
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(str(path))
    except ImportError:
        raise SourceError(
            "parquet sources need `pyarrow` (pip install 'qalign-dsl[train]')"
        ) from None
    except Exception as error:  # pyarrow raises its own hierarchy (ArrowInvalid, OSError)
        raise SourceError(f"{path}: cannot read parquet: {error}") from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield SourceRow(f"{path} row {number}", record)


def _pick_split(loaded: Any, split: str | None, name: str) -> Any:
    """One split of a DatasetDict: the one asked for, else the only one, else `train`."""
    import datasets

    if not isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return loaded
    if split is None:
        if len(loaded) == 1:
            return next(iter(loaded.values()))
        if "train" in loaded:
            return loaded["train"]
        raise SourceError(f"{name}: has several splits ({', '.join(loaded)}); pick one")
    if split not in loaded:
        raise SourceError(f"{name}: no split `{split}` (has: {', '.join(loaded)})")
    return loaded[split]


def _disk(path: Path, split: str | None) -> Iterator[SourceRow]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise SourceError(f"{path}: not a dataset saved with save_to_disk: {error}") from None
    for number, record in enumerate(_pick_split(loaded, split, str(path)), start=1):
        yield SourceRow(f"{path} row {number}", dict(record))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint answers a TCP connection (no request is sent)."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port),
                                 timeout=timeout).close()
    except OSError:
        return False
    return True


def _offline_requested() -> bool:
    """Offline mode asked for: by the environment (read now: the libraries read it once, at
    import) or by a switch already set in a loaded library."""
    if any(os.environ.get(key, "").strip().lower() in ("1", "true", "yes", "on")
           for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")):
        return True
    return any(getattr(module, key, False) for module, key in _offline_switches())


def _offline_switches() -> list[tuple[Any, str]]:
    """The offline flags of the Hub libraries that are loaded (none is imported here)."""
    import sys

    switches: list[tuple[Any, str]] = []
    if "datasets" in sys.modules:
        config = sys.modules["datasets"].config
        switches += [(config, "HF_DATASETS_OFFLINE"), (config, "HF_HUB_OFFLINE")]
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:  # pragma: no cover - transformers and datasets depend on it
        return switches
    return [*switches, (hub_constants, "HF_HUB_OFFLINE")]


@contextmanager
def hub_access(name: str) -> Iterator[str | None]:
    """Around loading `name` from the Hub (`from_pretrained`, `load_dataset`): a local
    path loads as is; for a Hub id, when offline mode is asked for or the Hub cannot be
    reached, the Hub libraries are switched offline for the call, so a cached model or
    dataset still loads and a missing one fails at once, instead of after retries whose
    tracebacks the libraries log. Yields why the call runs offline ("offline mode", "the
    Hub cannot be reached"), or None."""
    reason = None
    if not Path(name).exists():
        if _offline_requested():
            reason = "offline mode"
        elif not hub_reachable():
            reason = "the Hub cannot be reached"
    switches = _offline_switches() if reason else []
    saved = [(module, key, getattr(module, key, None)) for module, key in switches]
    try:
        for module, key in switches:
            setattr(module, key, True)
        yield reason
    finally:
        for module, key, value in saved:
            setattr(module, key, value)


def _hub(spec: SourceSpec) -> Iterator[SourceRow]:
    import datasets

    name = spec.describe()
    with hub_access(str(spec.dataset)) as offline:
        try:
            loaded = datasets.load_dataset(spec.dataset, spec.config, split=spec.split,
                                           revision=spec.revision)
        except Exception as error:  # offline misses, unknown configs: many exception types
            first = str(error).splitlines()[0] if str(error) else ""
            hint = (f" ({offline}, and the dataset is not in the local cache "
                    "(HF_DATASETS_CACHE); download it on a machine with a network, or save it "
                    "as parquet/save_to_disk and pass that)") if offline else ""
            raise SourceError(f"{name}: cannot load: {type(error).__name__}: {first}{hint}"
                              ) from None
    for number, record in enumerate(_pick_split(loaded, spec.split, name), start=1):
        yield SourceRow(f"{name} row {number}", dict(record))


# --- column mapping -------------------------------------------------------------------


def get_column(record: Mapping[str, Any], column: str) -> Any:
    """A column, or a dotted path into nested records (`turns.0.content`); KeyError(column)
    when absent."""
    if column in record:
        return record[column]
    node: Any = record
    for part in column.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(column)
    return node


def parse_columns(pairs: list[str], fields: tuple[str, ...] | None = None
                  ) -> dict[str, str]:
    """`FIELD=COLUMN` strings (command-line `--column`) as a mapping; SourceError for a
    malformed pair, a field given twice, or a field not in `fields`."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        field, column = field.strip(), column.strip()
        if not sep or not field or not column:
            raise SourceError(f"`{pair}`: expected FIELD=COLUMN, e.g. prompt=question")
        if fields is not None and field not in fields:
            raise SourceError(f"`{pair}`: unknown field `{field}` (one of: {', '.join(fields)})")
        if field in mapping:
            raise SourceError(f"`{pair}`: `{field}` is mapped twice")
        mapping[field] = column
    return mapping


def apply_columns(record: dict[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """The record with each mapped field read from its column (other columns kept as they
    are); KeyError naming the missing column."""
    if not columns:
        return record
    mapped = dict(record)
    for field, column in columns.items():
        mapped[field] = get_column(record, column)
    return mapped


def missing_column(record: Mapping[str, Any], column: str) -> str:
    return f"missing column `{column}` (has: {', '.join(map(str, record))})"
