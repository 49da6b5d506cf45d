"""Reading YAML recipes (`qalc train`, `qalc eval`): one reader, one error style.

Both recipe kinds are YAML validated by a JSON Schema, and a user's mistake must come back
as `FILE[:LINE:COL]: KEY.PATH[0].KEY: what is wrong` — unknown keys first with a
did-you-mean (a typo otherwise shows up as a missing key), then the schema's verdict with
the key path, a `required` failure naming the missing keys. Each caller passes its own
exception type, so `ConfigError` and `RecipeError` keep their meaning.

A leaf module beside safe_io, whose bounded reading it uses: the training and the eval
layer both read recipes through it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema
import yaml

from qalign_dsl.safe_io import MAX_RECIPE_BYTES, BadInput, read_text

__all__ = ["MAX_RECIPE_BYTES", "key_path", "read_yaml", "validate_recipe"]



def read_yaml(path: Path, error: type[Exception], max_bytes: int) -> tuple[Any, bytes]:
    """The parsed YAML of `path` and the bytes it came from. Anything unreadable raises
    `error` naming the file (and the line and column of a YAML syntax error); directories,
    FIFOs, devices and oversized files are refused on the opened descriptor, before a byte
    is read (safe_io)."""
    try:
        text = read_text(path, max_bytes)
    except BadInput as problem:
        raise error(str(problem)) from None
    try:
        return yaml.safe_load(text), text.encode("utf-8")
    except RecursionError:
        raise error(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise error(
            f"{path}{where}: invalid YAML: {getattr(problem, 'problem', problem)}"
        ) from None
    except (ValueError, TypeError) as problem:  # e.g. a date-like scalar such as 2024-13-45
        raise error(f"{path}: invalid YAML value: {problem}") from None


def key_path(keys: list[str]) -> str:
    """`["suites", "0", "name"]` → `suites[0].name`; the empty path is `(top level)`."""
    out = ""
    for key in keys:
        out += f"[{key}]" if key.isdigit() else (f".{key}" if out else key)
    return out or "(top level)"


def validate_recipe(path: Path, raw: Any, schema: dict[str, Any],
                    validator: Callable[[Any], Any], error: type[Exception]) -> None:
    """Unknown keys (with a suggestion), then the schema, each raising `error` with the key
    path. `validator` is `fastjsonschema.compile(schema)`, compiled once by the caller."""
    _check_unknown_keys(path, raw, schema, [], error)
    try:
        validator(raw)
    except fastjsonschema.JsonSchemaValueException as problem:
        keys = [str(p) for p in (problem.path or [])[1:]]
        message = problem.message.replace(problem.name or "data", "value", 1)
        definition = problem.definition if isinstance(problem.definition, dict) else {}
        if problem.rule == "pattern" and "description" in definition:
            message = f"value must be {definition['description']}"  # not the raw regex
        if problem.rule == "required":
            node = _lookup(raw, keys) or {}
            missing = [k for k in problem.rule_definition if k not in node]
            message = "missing required key(s): " + ", ".join(missing)
        raise error(f"{path}: {key_path(keys)}: {message}") from None


def _check_unknown_keys(path: Path, raw: Any, schema: dict[str, Any], keys: list[str],
                        error: type[Exception]) -> None:
    if isinstance(raw, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(raw):
            _check_unknown_keys(path, item, schema["items"], keys + [str(index)], error)
        return
    if not isinstance(raw, dict):
        return
    extra = schema.get("additionalProperties", True)
    known = list(schema.get("properties", {}))
    for key, value in raw.items():
        if key in known:
            _check_unknown_keys(path, value, schema["properties"][key], keys + [str(key)],
                                error)
        elif isinstance(extra, dict):
            _check_unknown_keys(path, value, extra, keys + [str(key)], error)
        elif extra is False:
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise error(f"{path}: {key_path(keys)}: unknown key `{key}`" + (
                f" (did you mean `{hint[0]}`?)" if hint else f"; known keys: {', '.join(known)}"))


def _lookup(raw: Any, keys: list[str]) -> Any:
    node: Any = raw
    for key in keys:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            node = node.get(key) if isinstance(node, dict) else None
    return node
