"""Strict parsing of JSON/YAML objects into (nested) frozen dataclasses.

Used for bundle manifests and training configs alike: unknown keys, missing required keys and
wrong types are errors naming the field path, because a silently ignored typo in a threshold or
a learning rate costs a clinic or a GPU-day.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import types
import typing
from typing import Any, Literal

from core.errors import DRError

_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")

_ERROR: contextvars.ContextVar[type[DRError]] = contextvars.ContextVar("_ERROR", default=DRError)


def parse_strict(cls: type, data: Any, *, source: str, error: type[DRError] = DRError) -> Any:
    """Build `cls` from `data`; problems raise `error` with "source: field 'a.b': why"."""
    token = _ERROR.set(error)
    try:
        return _parse_dataclass(cls, data, path="", source=source)
    finally:
        _ERROR.reset(token)


def _fail(source: str, path: str, msg: str) -> typing.NoReturn:
    where = path or "(top level)"
    raise _ERROR.get()(f"{source}: field '{where}': {msg}")


def _parse_dataclass(cls: type, data: Any, path: str, source: str) -> Any:
    if not isinstance(data, dict):
        _fail(source, path, f"expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        _fail(source, path, f"unknown key(s) {unknown}; allowed: {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name not in data:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                _fail(source, sub, "missing (required)")
            continue
        values[name] = _parse_value(hints[name], data[name], sub, source)
    return cls(**values)


def _parse_value(tp: Any, value: Any, path: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _parse_dataclass(tp, value, path, source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse_value(inner[0], value, path, source)
    if origin is Literal:
        if value not in args:
            _fail(source, path, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            _fail(source, path, f"expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_value(args[0], v, f"{path}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            _fail(source, path, f"expected {len(args)} items, got {len(value)}")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_parse_value(a, v, f"{path}[{i}]", source) for i, (a, v) in pairs)
    if origin is dict:
        if not isinstance(value, dict):
            _fail(source, path, f"expected an object, got {type(value).__name__}")
        return dict(value)
    return _parse_scalar(tp, value, path, source)


def _parse_scalar(tp: Any, value: Any, path: str, source: str) -> Any:
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
    if tp is int and isinstance(value, bool):
        _fail(source, path, f"expected int, got bool {value!r}")
    if isinstance(value, tp):
        return value
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        _fail(source, path, f"expected text, got the number {value!r}; quote it so that YAML "
                            f"keeps it as written ({path.rsplit('.', 1)[-1]}: \"{value}\", or "
                            f"on the command line --set '{path}=\"{value}\"')")
    _fail(source, path, f"expected {tp.__name__}, got {type(value).__name__} {value!r}")


def to_jsonable(value: Any) -> Any:
    """asdict() output -> plain JSON/YAML values (tuples become lists)."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
