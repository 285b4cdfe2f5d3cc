"""Typed settings: the dataclass fields of engine settings (``bench.config.TrainConfig``) and of
method hyperparameters (``Method.Hparams``), converted and validated in one place.

A field's annotation gives its type (``int``, ``float``, ``bool``, ``str``, a tuple, a dict,
``Literal[...]`` for a choice, ``X | Literal["mode"]`` for a number or a named mode, ``X | None``,
or ``Annotated[X, parser]`` for a value with its own spelling: :data:`SHARE`, :data:`NAMES`,
:data:`SEEDS`); :func:`setting` adds a range where one means something::

    ema_decay: float = setting(0.99, ge=0.0, le=1.0)
    loss: Literal["ga", "dice_ce"] = "dice_ce"
    overlap: float | Literal["protocol"] = setting("protocol", ge=0.0, lt=1.0)

TOML has no null, so a mode that means "not set" is a word (``overlap = "protocol"``), never a
sentinel number.

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


def setting(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, what: str | None = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a default, an allowed range (bounds are inclusive for ge / le) and,
    optionally, ``what`` a value looks like in error messages (else derived from the type)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"range": (ge, gt, le, lt), "what": what})


def _hints(cls: type) -> dict[str, Any]:
    # each base class's annotations are resolved in its own module (Hparams inherit fields)
    return typing.get_type_hints(cls, include_extras=True)


class Parser:
    """A value with its own spelling (``Annotated[X, parser]``): ``parse(raw)`` returns the value
    or raises ``ValueError``; ``what`` says what it takes, in error messages."""

    def __init__(self, what: str, parse):
        self.what, self.parse = what, parse

    def __repr__(self) -> str:
        return f"Parser({self.what!r})"


def parse_share(raw: Any) -> float:
    """A share of the training cases: ``"10%"``, ``"0.1"``, ``0.1`` or ``10`` (percent when > 1)
    -> 0.1, in (0, 1].

    >>> parse_share("5%")
    0.05

    Raises:
        ValueError: not a number, or outside (0, 100%].
    """
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(raw)
    text = str(raw).strip()
    value = float(text.rstrip("%"))
    if text.endswith("%") or value > 1:
        value /= 100.0
    if not (0.0 < value <= 1.0) or not math.isfinite(value):
        raise ValueError(raw)
    return value


def split_names(value: Any) -> list[str]:
    """Names from ``"a, b"`` or a list, stripped, empty ones left out."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def parse_names(raw: Any) -> tuple[str, ...]:
    """Names from ``"a, b"`` or a list: stripped, each once, empty ones left out; at least one.

    Raises:
        ValueError: no name, or a list holding something other than text.
    """
    if not isinstance(raw, (list, tuple, str)) or (not isinstance(raw, str) and not all(isinstance(v, str) for v in raw)):
        raise ValueError(raw)
    out = tuple(dict.fromkeys(split_names(raw)))
    if not out:
        raise ValueError(raw)
    return out


def parse_seeds(raw: Any) -> tuple[int, ...]:
    """Seeds from ``"0,1,2"``, ``[0, 1]`` or ``3``: integers in 0..2^31-1, each once.

    Raises:
        ValueError: no seed, or one that is not such an integer.
    """
    items = raw if isinstance(raw, (list, tuple)) else [raw] if isinstance(raw, int) else str(raw).split(",")
    out = []
    for s in items:
        if isinstance(s, bool) or isinstance(s, float) or (isinstance(s, str) and not s.strip()):
            if isinstance(s, str):
                continue
            raise ValueError(raw)
        v = int(s.strip()) if isinstance(s, str) else int(s)
        if not 0 <= v < 2**31:
            raise ValueError(raw)
        out.append(v)
    if not out:
        raise ValueError(raw)
    return tuple(dict.fromkeys(out))


#: a labeled share: ``10%`` or ``0.1``, stored as the number 0.1
SHARE = Parser('a labeled share in (0, 100%] such as "10%" or 0.1', parse_share)
#: a list of names: ``"a,b"`` or ``["a", "b"]``
NAMES = Parser('a list of names, e.g. "a,b" or ["a", "b"]', parse_names)
#: a list of seeds: ``"0,1,2"`` or ``[0, 1, 2]``
SEEDS = Parser("integers in 0..2^31-1 separated by commas, e.g. 0,1,2", parse_seeds)


def field_types(cls: type) -> dict[str, Any]:
    """``{name: resolved annotation}`` of a settings dataclass (string annotations resolved)."""
    hints = _hints(cls)
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}


def describe_type(annotation: Any) -> str:
    """What a value of ``annotation`` looks like, for error messages ("one of a, b", "an integer", ...)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        parser = next((m for m in annotation.__metadata__ if isinstance(m, Parser)), None)
        return parser.what if parser else describe_type(typing.get_args(annotation)[0])
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        words = [describe_type(a) for a in args if a is not type(None)]
        literals = [str(x) for a in args if typing.get_origin(a) is Literal for x in typing.get_args(a)]
        words = [w for w in words if not w.startswith("one of ")] + literals
        return " or ".join(words) + (" or none" if type(None) in args else "")
    if annotation is dict or origin is dict:
        return "a table of options"
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


def convert(where: str, key: str, raw: Any, annotation: Any, rng=None, what: str | None = None) -> Any:
    """``raw`` as a value of ``annotation``, within ``rng``; ``where`` names the source in errors
    (``--set``, a flag such as ``--labeled``, or ``config x.toml [method.tak]``), ``what`` what
    a good value looks like (default: from the type)."""
    value = _convert(raw, annotation)
    if value is _BAD:
        shown = raw if not isinstance(raw, str) else repr(raw) if " " in raw or not raw else raw
        raise UserError(f"{_at(where, key, shown)}: expected {what or describe_type(annotation)}")
    if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        ge, gt, le, lt = rng
        bad = ((ge is not None and not value >= ge) or (gt is not None and not value > gt)
               or (le is not None and not value <= le) or (lt is not None and not value < lt))
        if bad or (isinstance(value, float) and math.isnan(value)):
            raise UserError(f"{_at(where, key, raw)}: must be {_range_text(rng)}")
    return value


_BAD = object()


def _at(where: str, key: str, value: Any) -> str:
    """``--set key=value``, ``--flag value`` or ``config x.toml [train]: key = value``."""
    if where.endswith("--set"):
        return f"{where} {key}={value}"
    return f"{where} {value}" if where.startswith("--") else f"{where}: {key} = {value}"


def _convert(raw: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        parser = next((m for m in annotation.__metadata__ if isinstance(m, Parser)), None)
        if parser is None:
            return _convert(raw, typing.get_args(annotation)[0])
        try:
            return parser.parse(raw)
        except (TypeError, ValueError):
            return _BAD
    if origin is Literal:
        choices = typing.get_args(annotation)
        for c in choices:
            if raw == c or (isinstance(raw, str) and str(c) == raw.strip()):
                return c
        return _BAD
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if type(None) in typing.get_args(annotation) and (raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null"))):
            return None
        # the first alternative that takes the value (a number before a named mode)
        return next((v for v in (_convert(raw, a) for a in args) if v is not _BAD), _BAD)
    if annotation is dict or origin is dict:
        return {str(k): v for k, v in raw.items()} if isinstance(raw, dict) else _BAD
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
            return raw if isinstance(raw, str) else _BAD
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
    return convert(where, key, raw, field_types(cls)[key], f.metadata.get("range"), f.metadata.get("what"))


def check_defaults(cls: type) -> None:
    """Every default of a settings dataclass satisfies its own type and range (tests call this)."""
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            convert_field(f"{cls.__qualname__} default", cls, f.name, f.default)
