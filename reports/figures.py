"""Figures from stored results (matplotlib, Agg; each saved as PNG and PDF).

* ``dice_per_organ``: per-organ Dice bars per method, organs ordered by their voxel share in
  the labeled training data (largest first) - the imbalance made visible;
* ``dice_vs_labeled``: mean Dice against the labeled share, one line per method;
* ``training_curves``: training loss and validation Dice against the step, one line per run
  (from each run folder's ``log.jsonl``);
* ``time_memory``: train s/iter, inference s/case and peak memory per method.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.core.labels import abbreviation
from bench.core.metrics import nanmean
from reports.table import Table, timing_frame


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    # names come from records: a "$" in one must print as itself, not start math text
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _label(name: object, limit: int = 40) -> str:
    """A legend or tick label: a name from a record cut to ``limit`` characters."""
    s = str(name)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _save(fig, out: Path, name: str) -> list[Path]:
    import io

    from bench.core.store import atomic_write_bytes

    paths = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=130, bbox_inches="tight")
        atomic_write_bytes(out / f"{name}.{ext}", buf.getvalue())
        paths.append(out / f"{name}.{ext}")
    _plt().close(fig)
    return paths


def organ_order(runs: Sequence) -> list[str]:
    """Organs by mean labeled voxel share, largest first (label order when unknown)."""
    organs = list(runs[0].organs)
    shares = {o: nanmean([r.metrics.labeled_voxel_share.get(o) for r in runs]) for o in organs}
    if all(math.isnan(v) for v in shares.values()):
        return organs
    return sorted(organs, key=lambda o: -(shares[o] if not math.isnan(shares[o]) else -1))


def dice_per_organ(table: Table, runs: Sequence, out: Path) -> list[Path]:
    """Bar chart of per-organ Dice of every measured row (organs ordered by voxel share); PNG and PDF."""
    plt = _plt()
    organs = organ_order(runs)
    rows = [i for i in table.mean.index if table.rows.at[i, "kind"] == "measured"]
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(organs) * max(1, len(rows)) / 2), 4))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(organs))
    for k, row in enumerate(rows):
        m = table.mean.loc[row, organs].to_numpy(dtype=float)
        s = table.std.loc[row, organs].to_numpy(dtype=float)
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, np.nan_to_num(m), width, yerr=np.where(np.isfinite(s), s, 0), label=_label(row), capsize=2)
    shares = {o: nanmean([r.metrics.labeled_voxel_share.get(o) for r in runs]) for o in organs}
    ax.set_xticks(x, [f"{abbreviation(o)}\n{100 * shares[o]:.1f}%" if not math.isnan(shares[o]) else abbreviation(o) for o in organs])
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-organ Dice; organs by labeled voxel share (largest first)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out, "dice_per_organ")


def dice_vs_labeled(table: Table, out: Path) -> list[Path]:
    """Mean Dice against the labeled share, one line per method; PNG and PDF."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    measured = table.rows[table.rows.kind == "measured"]
    series: dict[str, list[tuple[float, float, float]]] = {}
    for label, row in measured.iterrows():
        name = label.split(" @")[0]
        if isinstance(row["group"], (int, float)):  # runs of an unknown share are left out
            series.setdefault(name, []).append((100 * row["group"], table.mean.at[label, "Dice"], table.std.at[label, "Dice"]))
    for name, pts in series.items():
        pts.sort()
        xs, ys, ss = zip(*pts)
        ax.errorbar(xs, ys, yerr=[s if np.isfinite(s) else 0 for s in ss], marker="o", capsize=3, label=_label(name))
    ax.set_xlabel("labeled share (%)")
    ax.set_ylabel("mean Dice (%)")
    ax.legend(fontsize=7)
    return _save(fig, out, "dice_vs_labeled")


def training_curves(runs: Sequence, out: Path) -> list[Path]:
    """Training loss and validation Dice over steps of every run (from log.jsonl); PNG and PDF."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for r in runs:
        path = r.path / "log.jsonl"
        if not path.exists():
            continue
        steps, loss, vsteps, vdice = [], [], [], []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "loss" in rec:
                steps.append(rec["step"])
                loss.append(rec["loss"])
            if "val_dice" in rec:
                vsteps.append(rec["step"])
                vdice.append(100 * rec["val_dice"])
        label = f"{r.variant} s{r.seed}"
        if steps:
            a1.plot(steps, loss, lw=1, label=_label(label))
        if vsteps:
            a2.plot(vsteps, vdice, marker=".", lw=1, label=_label(label))
    a1.set_xlabel("step")
    a1.set_ylabel("training loss")
    a2.set_xlabel("step")
    a2.set_ylabel("validation Dice (%)")
    a2.legend(fontsize=6)
    return _save(fig, out, "training_curves")


def time_memory(runs: Sequence, out: Path) -> list[Path]:
    """Train s/iter, inference s/case and peak memory per method and device; PNG and PDF."""
    plt = _plt()
    df = timing_frame(runs)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    labels = [f"{_label(m)}\n{_label(d)}" for m, d in zip(df["Method"], df["Device"])]
    for ax, col in zip(axes, ("Train s/iter", "Infer s/case", "Peak MB")):
        ax.bar(range(len(df)), df[col].fillna(0))
        ax.set_xticks(range(len(df)), labels, rotation=60, ha="right", fontsize=6)
        ax.set_title(col)
    return _save(fig, out, "time_memory")
