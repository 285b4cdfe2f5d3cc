"""Finding and reading stored results (``metrics.json`` + ``config.json`` + ``timing.json``
of each run folder). Reports are built from these files alone; nothing here imports torch."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import UserError


@dataclass
class Run:
    """One finished run, as stored."""

    path: Path
    metrics: dict
    config: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.metrics["method"]

    @property
    def variant(self) -> str:
        """Row label: the method, plus its prompt set and text encoder when it has them."""
        p, e = self.metrics.get("prompts"), self.metrics.get("text_encoder")
        return f"{self.method} [{p} x {e}]" if p else self.method

    @property
    def config_hash(self) -> str:
        return str(self.config.get("config_hash", self.path.parent.name))

    def settings(self) -> dict:
        """Flat method hyperparameters + engine settings of the run (for telling configs apart)."""
        flat = {f"train.{k}": v for k, v in (self.config.get("train") or {}).items()}
        flat.update(self.config.get("hparams") or {})
        return flat

    @property
    def protocol(self) -> str:
        return f"{self.metrics.get('protocol', '?')}/{self.metrics.get('protocol_version', '?')}"

    @property
    def labeled(self) -> str:
        """Labeled share as text ('10%'), from the split's name or stored fraction."""
        return labeled_from_split(self.metrics.get("split", ""), self.config)

    @property
    def organs(self) -> tuple[str, ...]:
        return tuple(self.metrics["organs"])

    @property
    def seed(self) -> int:
        return int(self.metrics.get("seed", 0))


def labeled_from_split(name: str, config: dict | None = None) -> str:
    m = re.search(r"(\d+(?:_\d+)?)p(?:_|$)", name or "")
    if m:
        return m.group(1).replace("_", ".") + "%"
    frac = ((config or {}).get("split") or {}).get("fraction")
    return f"{100 * frac:g}%" if frac else (name or "?")


def _read(path: Path, what: str, skip_broken: bool) -> dict | None:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as e:
        if skip_broken:
            print(f"warning: skipped {path} ({what} unreadable: {e})", file=sys.stderr)
            return None
        raise UserError(f"{path} is not a readable {what} ({type(e).__name__}: {' '.join(str(e).split())[:80]}); "
                        f"delete that run folder and run it again, or pass --skip-broken")


REQUIRED = ("method", "organs", "per_organ", "mean", "cases")


def collect(runs_dir: str | Path, skip_broken: bool = False) -> list[Run]:
    """Every finished run under ``runs_dir`` (a folder with a ``metrics.json``), sorted by path."""
    root = Path(runs_dir)
    if not root.exists():
        raise UserError(f"--runs {root} does not exist; point it at the folder that `bench run --out` wrote")
    out = []
    for mpath in sorted(root.rglob("metrics.json")):
        metrics = _read(mpath, "metrics.json", skip_broken)
        if metrics is None:
            continue
        missing = [k for k in REQUIRED if k not in metrics]
        if missing:
            if skip_broken:
                print(f"warning: skipped {mpath} (lacks {', '.join(missing)})", file=sys.stderr)
                continue
            raise UserError(f"{mpath} lacks {', '.join(missing)}; it is not a bench result - delete it or pass --skip-broken")
        cfg = (_read(mpath.parent / "config.json", "config.json", True) or {}) if (mpath.parent / "config.json").exists() else {}
        tim = (_read(mpath.parent / "timing.json", "timing.json", True) or {}) if (mpath.parent / "timing.json").exists() else {}
        out.append(Run(mpath.parent, metrics, cfg, tim))
    if not out:
        raise UserError(f"no results (metrics.json) found under {root.resolve()}; run `python -m bench run ...` first "
                        f"or point --runs at its --out folder")
    return out


def check_one_label_set(runs: list[Run]) -> tuple[str, ...]:
    sets = {r.organs for r in runs}
    if len(sets) > 1:
        a, b = sorted(sets, key=len)[:2]
        raise UserError(f"results of different label sets cannot share one table ({len(a)} vs {len(b)} organs, e.g. "
                        f"{runs[0].path}); report each dataset separately with --runs <folder of one dataset>")
    return next(iter(sets))
