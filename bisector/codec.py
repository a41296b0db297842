"""Options and specs as JSON, and back: how a session records its command and its check.

``encode`` turns a dataclass into JSON (paths as strings, sets sorted); ``decode`` rebuilds the
dataclass, each field back to the type its annotation names::

    decode(ReduceOptions, encode(opts)) == opts
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from bisector.errors import UserError


def encode(value: Any) -> Any:
    """Options as JSON: paths as strings, sets sorted, dataclasses as dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(encode(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def decode(cls: type, doc: dict[str, Any]) -> Any:
    """The options dataclass ``cls`` from :func:`encode`'s JSON, each field back to its type."""
    if not isinstance(doc, dict):
        raise UserError(f"stored {cls.__name__} is not a JSON object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - names)
    if unknown:
        raise UserError(f"stored {cls.__name__} has no field {unknown[0]!r} (a session from another bisector?)")
    return cls(**{k: _as(hints[k], v) for k, v in doc.items()})


def _as(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is not type(None):
                return _as(arg, value)
    if hint is Path:
        return Path(value)
    if origin in (frozenset, set):
        (arg,) = typing.get_args(hint) or (Any,)
        return origin(_as(arg, v) for v in value)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        arg = args[0] if args else Any
        return origin(_as(arg, v) for v in value)
    if origin is dict:
        _, arg = typing.get_args(hint) or (Any, Any)
        return {k: _as(arg, v) for k, v in value.items()}
    return value


def absolute(value):
    """``value`` with every Path (in a dataclass's fields, lists and tuples too) made absolute, so
    that what a session records works from any directory."""
    if isinstance(value, Path):
        return value.absolute()
    if isinstance(value, (list, tuple)):
        return type(value)(absolute(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: absolute(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value
