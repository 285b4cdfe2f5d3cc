"""Finding and reading stored results (``metrics.json`` + ``config.json`` + ``timing.json``
of each run folder). Reports are built from these files alone; nothing here imports torch."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import UserError
from bench.core.records import ConfigRecord, FutureRecordError, MetricsRecord, TimingRecord, read_record
from bench.core.store import absent


@dataclass
class Run:
    """One finished run, as stored."""

    path: Path
    metrics: MetricsRecord
    config: ConfigRecord | None = None
    timing: TimingRecord | None = None

    @classmethod
    def from_record(cls, metrics: MetricsRecord) -> "Run":
        """A run known only by its metrics record (a summary after ``bench run`` / ``evaluate``):
        the seeds of one method share a row."""
        return cls(Path(metrics.method) / "record" / f"seed_{metrics.seed}", metrics)

    @property
    def method(self) -> str:
        return self.metrics.method

    @property
    def variant(self) -> str:
        """Row label: the method, plus its prompt set and text encoder when it has them."""
        p, e = self.metrics.prompts, self.metrics.text_encoder
        return f"{self.method} [{p} x {e}]" if p else self.method

    @property
    def config_hash(self) -> str:
        return str((self.config.config_hash if self.config else None) or self.path.parent.name)

    def settings(self) -> dict:
        """Flat method hyperparameters + engine settings of the run (for telling configs apart)."""
        if self.config is None:
            return {}
        flat = {f"train.{k}": v for k, v in self.config.train.items()}
        flat.update(self.config.hparams)
        return flat

    @property
    def protocol(self) -> str:
        return f"{self.metrics.protocol}/{self.metrics.protocol_version}"

    @property
    def labeled(self) -> float | str:
        """The labeled share of the training cases, the number the run stored (0.1 = 10 %; in
        metrics.json, or config.json in records of schema 1), or "?" where none is stored (e.g.
        ``bench evaluate``). Tables group by it; :func:`share_text` shows it."""
        frac = self.metrics.labeled_fraction
        if frac is None and self.config is not None:
            frac = self.config.labeled_fraction
        return "?" if frac is None else round(float(frac), 9)

    @property
    def organs(self) -> tuple[str, ...]:
        return tuple(self.metrics.organs)

    @property
    def seed(self) -> int:
        return int(self.metrics.seed)


def share_text(share: float | str) -> str:
    """A labeled share as shown in tables: 0.1 -> "10%", 0.025 -> "2.5%"; text as it is."""
    return f"{round(100 * share, 6):g}%" if isinstance(share, (int, float)) else str(share)


def _read(path: Path, kind: str, skip_broken: bool):
    try:
        return read_record(path, kind)
    except FutureRecordError:
        raise
    except UserError as e:
        if skip_broken:
            print(f"warning: skipped {path} ({e})", file=sys.stderr)
            return None
        raise UserError(f"{e}; or pass --skip-broken")


def _metrics_files(root: Path) -> list[Path]:
    """Every ``metrics.json`` under ``root``, sorted; symbolic links to folders are followed (runs
    kept on another disk and linked in count), each real folder once: a link back to a folder
    already visited (a loop) is named on stderr and not entered."""
    found, seen = [], set()
    for top, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            print(f"warning: skipped {top}: a link to {real}, already read (a symbolic-link loop or a second link)", file=sys.stderr)
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        if "metrics.json" in files:
            found.append(Path(top) / "metrics.json")
    return sorted(found)


def collect(runs_dir: str | Path, skip_broken: bool = False) -> list[Run]:
    """Every finished run under ``runs_dir``, sorted by path: a ``metrics.json`` in a folder named
    ``seed_<n>`` (a run folder). Others - ``bench evaluate`` output in a run's predictions/, a
    backup copy ``seed_0.bak`` - are not runs: each is named on stderr and left out."""
    import re

    root = Path(runs_dir)
    if not str(runs_dir).strip():
        raise UserError("--runs is empty; give the folder that `bench run --out` wrote")
    if not root.exists():
        raise UserError(f"--runs {root} {absent(root)}; point it at the folder that `bench run --out` wrote")
    out = []
    for mpath in _metrics_files(root):
        if not re.fullmatch(r"seed_\d+", mpath.parent.name):
            print(f"warning: skipped {mpath}: not in a run folder (seed_<n>)", file=sys.stderr)
            continue
        metrics = _read(mpath, "metrics", skip_broken)
        if metrics is None:
            continue
        cfg = _read(mpath.parent / "config.json", "config", True) if (mpath.parent / "config.json").exists() else None
        tim = _read(mpath.parent / "timing.json", "timing", True) if (mpath.parent / "timing.json").exists() else None
        out.append(Run(mpath.parent, metrics, cfg, tim))
    if not out:
        raise UserError(f"no results (metrics.json) found under {root.resolve()}; run `python -m bench run ...` first "
                        f"or point --runs at its --out folder")
    return out


def check_one_label_set(runs: list[Run]) -> tuple[str, ...]:
    """The organs of the runs, which must be one label set.

    Raises:
        UserError: runs of different label sets.
    """
    sets = {r.organs for r in runs}
    if len(sets) > 1:
        a, b = sorted(sets, key=len)[:2]
        raise UserError(f"results of different label sets cannot share one table ({len(a)} vs {len(b)} organs, e.g. "
                        f"{runs[0].path}); report each dataset separately with --runs <folder of one dataset>")
    return next(iter(sets))
