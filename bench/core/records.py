"""The results format: typed, versioned records of a run, written and read here only.

A run folder holds three records (DESIGN.md, "Results on disk"):

* :class:`MetricsRecord` (``metrics.json``): per case and organ ``dice``, ``hd95``, ``asd``,
  ``assd``, ``nsd`` (since version 3); their means per organ and over organs; what was run (method, dataset, protocol,
  split, labeled fraction, seed, prompts / text encoder).
* :class:`TimingRecord` (``timing.json``): train s/iter, data-wait share, inference s/case,
  peak memory, device.
* :class:`ConfigRecord` (``config.json``): the fully resolved run config, provenance.

Each carries ``schema_version``. A file without one was written before versioning (read as
version 1); a file of a newer version than this code knows is refused in one line, because its
fields may mean something this code does not know. Versions:

* 1: the first format.
* 2: the labeled share is stored once, as a number, in ``metrics.json`` (``config.json`` of
  version 1 repeated it; reports read it there only for version-1 records whose metrics lack it);
  ``config.json`` is the serialised run plan (``bench.core.plan.RunPlan.config``) with provenance.
* 3: ``metrics.json`` scores NSD per case and organ (``nsd``, tolerance ``nsd_tolerance``);
  records of versions 1 and 2 are read as before and simply have no NSD (reports show "-").
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from bench.core.errors import UserError
from bench.core.metrics import NSD_TOLERANCE, summarize
from bench.core.store import atomic_write_json, read_json

#: the version this code writes and the newest it reads
SCHEMA_VERSION = 3


class FutureRecordError(UserError):
    """A record written by a newer version of the suite."""


def _check_version(data: dict, path: Path | str) -> int:
    v = data.get("schema_version", 1)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise UserError(f"{path}: schema_version {v!r} is not a positive integer; the file is not a bench record")
    if v > SCHEMA_VERSION:
        raise FutureRecordError(f"{path} has schema_version {v}, newer than this suite's {SCHEMA_VERSION}; "
                                f"update the suite (pip install -e . in a newer checkout) to read it")
    return v


def _known_fields(cls, data: Any, path: Path | str, what: str, defaults: dict) -> dict:
    """The fields of ``cls`` found in ``data`` (a parsed record), ``defaults`` for missing ones
    (records written before a field existed), the schema version checked."""
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; it is not a bench {what}")
    _check_version(data, path)
    known = {f.name for f in fields(cls)}
    kw = {k: v for k, v in data.items() if k in known}
    for k, v in defaults.items():
        kw.setdefault(k, v)
    _check_types(cls, kw, path, what)
    kw["schema_version"] = SCHEMA_VERSION
    return kw


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether a parsed JSON ``value`` has the kind ``annotation`` asks for (containers by their
    outer kind only; ``null`` where the field allows None, or for a number: NaN is stored so)."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    base = origin or annotation
    if base is float:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is bool:
        return isinstance(value, bool)
    if base is str:
        return isinstance(value, str)
    if base in (dict, list):
        return isinstance(value, base)
    if base in (Sequence,):
        return isinstance(value, list)
    return True


@functools.cache
def _hints(cls) -> dict:
    """The resolved field annotations of a record class (once per class: a report reads
    thousands of records)."""
    import typing

    return typing.get_type_hints(cls)


def _check_types(cls, kw: dict, path: Path | str, what: str) -> None:
    """One line naming the file and the first field of the wrong kind (a record written by hand
    or damaged): ``method: 123``, ``mean: null``, ``seed: "abc"``, ``per_organ: []``, ..."""
    hints = _hints(cls)
    for k, v in kw.items():
        if k in hints and not _accepts(hints[k], v):
            raise UserError(f"{path}: field '{k}' holds {json_kind(v)}, not what a bench {what} stores; "
                            f"delete it or pass --skip-broken")


def json_kind(v: Any) -> str:
    """A parsed JSON value's kind in words (``null``, ``a number``, ``a list``, ...)."""
    if v is None:
        return "null"
    return {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list", dict: "an object"}.get(type(v), "a value")


def _nan(v: Any) -> Any:
    """JSON ``null`` (how NaN is stored) back to NaN inside metric tables."""
    if v is None:
        return math.nan
    if isinstance(v, dict):
        return {k: _nan(x) for k, x in v.items()}
    return v


@dataclass
class MetricsRecord:
    """``metrics.json``: the test scores of one run (or of one ``bench evaluate``)."""

    method: str
    dataset: str
    protocol: str
    protocol_version: str
    split: str
    seed: int
    organs: list[str]
    #: {organ: {metric: mean over cases}} and {metric: mean over organs}; NaN excluded
    per_organ: dict[str, dict[str, float]]
    mean: dict[str, float]
    #: {case: {organ: {metric: value}}}; ``missed`` (bool) where the organ is in the label and
    #: absent from the prediction
    cases: dict[str, dict[str, dict[str, float]]]
    #: labeled share of the training cases (0.1 = 10 %), None where nothing was trained
    labeled_fraction: float | None = None
    prompts: str | None = None
    text_encoder: str | None = None
    #: per organ, its share of the labeled foreground voxels the run was trained on
    labeled_voxel_share: dict[str, float] = field(default_factory=dict)
    checkpoint_step: int | None = None
    val_dice: float | None = None
    #: {case: diagonal of its evaluation grid in the protocol's distance unit}: the distance a
    #: missed organ gets under ``bench report --missed-distance penalty``
    penalty_distance: dict[str, float] = field(default_factory=dict)
    #: the NSD tolerance of ``nsd`` in the protocol's distance unit (None: recorded before NSD)
    nsd_tolerance: float | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def build(cls, *, protocol, organs: Sequence[str], cases: dict, **kw) -> "MetricsRecord":
        """A record from per-case scores; the means are computed here (one summary for all)."""
        summary = summarize(cases, list(organs))
        kw.setdefault("nsd_tolerance", NSD_TOLERANCE)
        return cls(protocol=protocol.name, protocol_version=protocol.version, organs=list(organs), cases=cases,
                   per_organ=summary["per_organ"], mean=summary["mean"], **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.prompts is None:  # runs without text priors store no prompt fields
            d.pop("prompts"), d.pop("text_encoder")
        return d

    @classmethod
    def from_dict(cls, data: dict, path: Path | str = "metrics.json") -> "MetricsRecord":
        kw = _known_fields(cls, data, path, "result", {"protocol": "?", "protocol_version": "?", "dataset": "?", "split": "?", "seed": 0})
        missing = [k for k in REQUIRED_METRICS if k not in kw]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)}; it is not a bench result - delete it or pass --skip-broken")
        for k in ("per_organ", "mean", "cases"):
            kw[k] = _nan(kw[k])
        return cls(**kw)


REQUIRED_METRICS = ("method", "organs", "per_organ", "mean", "cases")


@dataclass
class TimingRecord:
    """``timing.json``: how long the run took and how much memory it needed."""

    device: str
    #: {"median", "p90", "mean", "n"} over the steps after the warm-up
    train_s_per_iter: dict[str, float]
    data_wait_share: float
    infer_s_per_case: dict[str, float]
    train_wall_s: float
    iterations: int
    timing_warmup: int
    amp: bool
    peak_memory_mb: float | None = None
    peak_memory_kind: str | None = None
    #: CPU threads the run used and where they came from (``bench.core.threads.ThreadPlan``:
    #: threads, threads_source, wait_policy, wait_source, usable_cores); empty in older records
    threads: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, path: Path | str = "timing.json") -> "TimingRecord":
        kw = _known_fields(cls, data, path, "timing record", {"device": "?", "data_wait_share": math.nan, "train_wall_s": math.nan,
                                                              "iterations": 0, "timing_warmup": 0, "amp": False})
        for k in ("train_s_per_iter", "infer_s_per_case"):
            kw[k] = _nan(kw.get(k) or {})
        return cls(**kw)


@dataclass
class ConfigRecord:
    """``config.json``: the resolved config of one run (what its hash covers) plus provenance."""

    method: str
    dataset: str
    preset: str
    protocol: dict
    split: dict
    hparams: dict
    train: dict
    seed: int
    #: schema 1 only (read, never written): the labeled share now lives in metrics.json
    labeled_fraction: float | None = None
    config_hash: str | None = None
    prompts: str | None = None
    text_encoder: str | None = None
    #: (prompt set, text encoder) of a method's fixed priors (tak_no_text)
    fixed_priors: list | None = None
    execution: dict = field(default_factory=dict)
    device: str | None = None
    git_commit: str | None = None
    versions: dict = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)
    command: list = field(default_factory=list)
    world_size: int = 1
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["labeled_fraction"] is None:
            d.pop("labeled_fraction")
        return d

    @classmethod
    def from_dict(cls, data: dict, path: Path | str = "config.json") -> "ConfigRecord":
        kw = _known_fields(cls, data, path, "run config", {"method": "?", "dataset": "?", "preset": "?", "protocol": {}, "split": {},
                                                           "hparams": {}, "train": {}, "seed": 0})
        return cls(**kw)


RECORDS = {"metrics": MetricsRecord, "timing": TimingRecord, "config": ConfigRecord}
FILES = {"metrics": "metrics.json", "timing": "timing.json", "config": "config.json"}


def write_record(path: Path, record: MetricsRecord | TimingRecord | ConfigRecord) -> None:
    """Write a record atomically (NaN becomes ``null``)."""
    atomic_write_json(Path(path), record.to_dict())


def read_record(path: Path, kind: str):
    """Read ``metrics`` / ``timing`` / ``config`` from ``path``; one line on a broken or future file."""
    cls = RECORDS[kind]
    return cls.from_dict(read_json(Path(path), f"{FILES[kind]} {path}", corrupt_hint="delete that run folder and run it again"), path)


def read_run(folder: Path) -> tuple[MetricsRecord, TimingRecord | None, ConfigRecord | None]:
    """The three records of a finished run folder (timing and config may be absent)."""
    folder = Path(folder)
    metrics = read_record(folder / "metrics.json", "metrics")
    timing = read_record(folder / "timing.json", "timing") if (folder / "timing.json").exists() else None
    config = read_record(folder / "config.json", "config") if (folder / "config.json").exists() else None
    return metrics, timing, config
