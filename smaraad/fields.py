"""Typed fields with their allowed values, checked once at the edge.

A params or config dataclass declares each field with `num(...)` (an interval) or `choice(...)`
(a set of values); `build(cls, mapping)` coerces types and checks every field, and each mistake is
one `ConfigError` that names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import field
from typing import Any, Mapping

from smaraad.errors import UserError


class ConfigError(UserError):
    """A bad configuration value: the message names the key and what is allowed."""


# ---------------------------------------------------------------------------------------------


def num(default, lo=None, hi=None, *, lo_open=False, hi_open=False, doc=""):
    """A numeric field with an allowed interval; open ends exclude the bound."""
    return field(default=default, metadata=dict(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open,
                                                doc=doc))


def choice(default, options, doc=""):
    """A field whose value must be one of `options` (a tuple, or a callable returning one)."""
    return field(default=default, metadata=dict(options=options, doc=doc))


def _interval(md) -> str:
    lo, hi = md.get("lo"), md.get("hi")
    left = "(" if md.get("lo_open") else "["
    right = ")" if md.get("hi_open") else "]"
    return f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def _coerce(name: str, value: Any, kind: type) -> Any:
    """Convert `value` to the field's type, or raise a ConfigError naming the key."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, str) and kind is float:  # PyYAML reads 5e-4 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{name}: expected a {'number' if kind is float else 'whole number'}"
                              f", got {value!r}")
        if kind is int:
            if float(value) != int(value):
                raise ConfigError(f"{name}: expected a whole number, got {value!r}")
            return int(value)
        return float(value)
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    if kind is tuple:
        if isinstance(value, (list, tuple)) and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
            return tuple(float(v) for v in value)
        raise ConfigError(f"{name}: expected a list of numbers, got {value!r}")
    raise TypeError(f"unsupported field type {kind}")


def _field_kind(f: dataclasses.Field) -> type:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return {"bool": bool, "int": int, "float": float, "str": str}.get(t.split("[")[0], tuple)


def check_fields(obj) -> None:
    """Validate every field of a dataclass instance against its metadata."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        md = f.metadata
        options = md.get("options")
        if options is not None:
            options = options() if callable(options) else options
            if value not in options:
                raise ConfigError(f"{f.name}: {value!r} is not allowed; allowed: "
                                  f"{', '.join(map(str, options))}")
        if "lo" in md:
            lo, hi = md["lo"], md["hi"]
            bad = ((lo is not None and (value < lo or (md["lo_open"] and value == lo)))
                   or (hi is not None and (value > hi or (md["hi_open"] and value == hi))))
            if bad:
                raise ConfigError(f"{f.name}: {value!r} is out of range; allowed: {_interval(md)}")


def build(cls, values: Mapping[str, Any], *, where: str = "", **ready):
    """Instantiate dataclass `cls` from `values`, coercing types and checking ranges; `ready`
    holds fields already built (passed through unchanged)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in ready}
    kwargs = dict(ready)
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {key!r}{where}; allowed: {', '.join(fields)}")
        kwargs[key] = _coerce(key, value, _field_kind(fields[key]))
    obj = cls(**kwargs)
    check_fields(obj)
    return obj


def fields_doc(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}
