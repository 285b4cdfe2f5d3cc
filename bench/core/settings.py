"""Typed settings: the dataclass fields of engine settings (``bench.config.TrainConfig``) and of
method hyperparameters (``Method.Hparams``), converted and validated in one place.

A field's annotation gives its type (``int``, ``float``, ``bool``, ``str``, a tuple, or
``Literal[...]`` for a choice); :func:`setting` adds a range where one means something::

    ema_decay: float = setting(0.99, ge=0.0, le=1.0)
    loss: Literal["ga", "dice_ce"] = "dice_ce"

:func:`convert` turns a raw value (a ``--set`` string, a TOML or Optuna value) into the field's
type and checks it; a bad value is one :class:`UserError` line naming where it came from, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from bench.core.errors import UserError


def setting(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field with a default and an allowed range (bounds are inclusive for ge / le)."""
    return dataclasses.field(default=default, metadata={"range": (ge, gt, le, lt)})


def _hints(cls: type) -> dict[str, Any]:
    # each base class's annotations are resolved in its own module (Hparams inherit fields)
    return typing.get_type_hints(cls)


def field_types(cls: type) -> dict[str, Any]:
    """``{name: resolved annotation}`` of a settings dataclass (string annotations resolved)."""
    hints = _hints(cls)
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def describe_type(annotation: Any) -> str:
    """What a value of ``annotation`` looks like, for error messages ("one of a, b", "an integer", ...)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if annotation is bool:
        return "true/false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "text"
    if origin is tuple or annotation is tuple:
        return "a list like 32,64,64"
    return str(annotation)


def _range_text(rng) -> str:
    ge, gt, le, lt = rng
    lo = f">= {ge:g}" if ge is not None else (f"> {gt:g}" if gt is not None else "")
    hi = f"<= {le:g}" if le is not None else (f"< {lt:g}" if lt is not None else "")
    return " and ".join(x for x in (lo, hi) if x)


def convert(where: str, key: str, raw: Any, annotation: Any, rng=None) -> Any:
    """``raw`` as a value of ``annotation``, within ``rng``; ``where`` names the source in errors
    (e.g. ``--set`` or ``config x.toml [method.tak]``)."""
    value = _convert(raw, annotation)
    if value is _BAD:
        shown = raw if not isinstance(raw, str) else repr(raw) if " " in raw or not raw else raw
        raise UserError(f"{_at(where, key, shown)}: expected {describe_type(annotation)}")
    if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        ge, gt, le, lt = rng
        bad = ((ge is not None and not value >= ge) or (gt is not None and not value > gt)
               or (le is not None and not value <= le) or (lt is not None and not value < lt))
        if bad or (isinstance(value, float) and math.isnan(value)):
            raise UserError(f"{_at(where, key, raw)}: must be {_range_text(rng)}")
    return value


_BAD = object()


def _at(where: str, key: str, value: Any) -> str:
    """``--set key=value`` or ``config x.toml [train]: key = value``."""
    return f"{where} {key}={value}" if where.endswith("--set") else f"{where}: {key} = {value}"


def _convert(raw: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        for c in choices:
            if raw == c or (isinstance(raw, str) and str(c) == raw.strip()):
                return c
        return _BAD
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null")):
            return None
        return _convert(raw, args[0]) if args else _BAD
    try:
        if annotation is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            return {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}.get(text, _BAD)
        if annotation is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                return _BAD
            return int(raw.strip()) if isinstance(raw, str) else int(raw)
        if annotation is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                return _BAD
            v = float(raw)
            return _BAD if not math.isfinite(v) else v
        if annotation is str:
            return str(raw) if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else _BAD
        if origin is tuple or annotation is tuple:
            inner = [a for a in typing.get_args(annotation) if a is not Ellipsis] or [int]
            items = raw if isinstance(raw, (list, tuple)) else str(raw).replace("x", ",").split(",")
            out = tuple(_convert(v.strip() if isinstance(v, str) else v, inner[min(i, len(inner) - 1)]) for i, v in enumerate(items))
            if any(v is _BAD for v in out):
                return _BAD
            fixed = [a for a in typing.get_args(annotation) if a is not Ellipsis]
            if Ellipsis not in typing.get_args(annotation) and fixed and len(out) != len(fixed):
                return _BAD
            return out
    except (TypeError, ValueError):
        return _BAD
    return raw


def convert_field(where: str, cls: type, key: str, raw: Any) -> Any:
    """``raw`` converted and checked for field ``key`` of the settings dataclass ``cls``."""
    f = {f.name: f for f in dataclasses.fields(cls)}[key]
    return convert(where, key, raw, field_types(cls)[key], f.metadata.get("range"))


def check_defaults(cls: type) -> None:
    """Every default of a settings dataclass satisfies its own type and range (tests call this)."""
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            convert_field(f"{cls.__qualname__} default", cls, f.name, f.default)
