"""Figures from stored results (matplotlib, Agg; each saved as PNG and PDF).

* ``dice_per_organ``: per-organ Dice bars per method, organs ordered by their voxel share in
  the labeled training data (largest first) - the imbalance made visible;
* ``dice_vs_labeled``: mean Dice against the labeled share, one line per method;
* ``training_curves``: training loss and validation Dice against the step, one line per
  variant (the mean over its seeds, at the steps every seed logged; from ``log.jsonl``);
* ``time_memory``: train s/iter, inference s/case and peak memory per method.

A figure shows at most :data:`MAX_SERIES` rows / methods / variants (:data:`MAX_BARS` bars in
``time_memory``): the first ones in table order, and its title says "k of n" when it leaves
some out; the tables always hold every row. Thousands of runs give figures of fixed size.
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


#: most series (bar groups, lines) one figure shows; the table holds the rest
MAX_SERIES = 12
#: most bars of the time / memory panels
MAX_BARS = 30


def _first(items: list, limit: int, what: str) -> tuple[list, str]:
    """The first ``limit`` of ``items`` and a title suffix saying how many were left out."""
    if len(items) <= limit:
        return items, ""
    return items[:limit], f" (first {limit} of {len(items)} {what}; every one is in the table)"


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
    rows, cut = _first([i for i in table.mean.index if table.rows.at[i, "kind"] == "measured"], MAX_SERIES, "rows")
    fig, ax = plt.subplots(figsize=(min(24, max(8, 0.7 * len(organs) * max(1, len(rows)) / 2)), 4))
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
    ax.set_title("Per-organ Dice; organs by labeled voxel share (largest first)" + cut, fontsize=9 if cut else None)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out, "dice_per_organ")


#: section titles of the figures in report.html (by file stem)
TITLES = {"dice_per_organ": "Dice per organ", "dice_vs_labeled": "Mean Dice against the labeled share",
          "training_curves": "Training curves", "time_memory": "Time and memory per method"}


def dice_vs_labeled(table: Table, out: Path) -> list[Path]:
    """Mean Dice against the labeled share, one line per method; PNG and PDF. Drawn only where
    the measured rows span two or more labeled shares (one share is one x value: no curve)."""
    measured = table.rows[table.rows.kind == "measured"]
    series: dict[str, list[tuple[float, float, float]]] = {}
    for label, row in measured.iterrows():
        name = label.split(" @")[0]
        if isinstance(row["group"], (int, float)):  # runs of an unknown share are left out
            series.setdefault(name, []).append((100 * row["group"], table.mean.at[label, "Dice"], table.std.at[label, "Dice"]))
    if len({x for pts in series.values() for x, _, _ in pts}) < 2:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names, cut = _first(list(series), MAX_SERIES, "methods")
    for name in names:
        pts = sorted(series[name])
        xs, ys, ss = zip(*pts)
        ax.errorbar(xs, ys, yerr=[s if np.isfinite(s) else 0 for s in ss], marker="o", capsize=3, label=_label(name))
    ax.set_xlabel("labeled share (%)")
    ax.set_ylabel("mean Dice (%)")
    if cut:
        ax.set_title(cut.strip(" ()"), fontsize=7)
    ax.legend(fontsize=7)
    return _save(fig, out, "dice_vs_labeled")


def _curves(path: Path) -> tuple[dict[int, float], dict[int, float]]:
    """(step -> training loss, step -> validation Dice %) of one ``log.jsonl``."""
    loss, val = {}, {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            continue
        if isinstance(rec.get("loss"), (int, float)):
            loss[rec["step"]] = float(rec["loss"])
        if isinstance(rec.get("val_dice"), (int, float)):
            val[rec["step"]] = 100 * float(rec["val_dice"])
    return loss, val


def _mean_curve(curves: list[dict[int, float]]) -> tuple[list[int], list[float]]:
    """The mean of several step -> value curves at the steps all of them have."""
    curves = [c for c in curves if c]
    if not curves:
        return [], []
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return steps, [float(np.mean([c[s] for c in curves])) for s in steps]


def training_curves(runs: Sequence, out: Path) -> list[Path]:
    """Training loss and validation Dice over steps, one line per variant (the mean over its
    seeds' ``log.jsonl``, labelled with the seed count); PNG and PDF."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
    by_variant: dict[str, list] = {}
    for r in runs:
        by_variant.setdefault(r.variant, []).append(r)
    variants, cut = _first(list(by_variant), MAX_SERIES, "variants")
    for variant in variants:
        logs = [_curves(r.path / "log.jsonl") for r in by_variant[variant] if (r.path / "log.jsonl").exists()]
        if not logs:
            continue
        label = _label(f"{variant} ({len(logs)} seed{'s' if len(logs) > 1 else ''})")
        steps, loss = _mean_curve([lg[0] for lg in logs])
        vsteps, vdice = _mean_curve([lg[1] for lg in logs])
        if steps:
            a1.plot(steps, loss, lw=1, label=label)
        if vsteps:
            a2.plot(vsteps, vdice, marker=".", lw=1, label=label)
    a1.set_xlabel("step")
    a1.set_ylabel("training loss (mean over seeds)")
    a2.set_xlabel("step")
    a2.set_ylabel("validation Dice (%, mean over seeds)")
    if cut:
        fig.suptitle(cut.strip(" ()"), fontsize=8)
    a2.legend(fontsize=6)
    return _save(fig, out, "training_curves")


def time_memory(runs: Sequence, out: Path) -> list[Path]:
    """Train s/iter, inference s/case and peak memory per method and device; PNG and PDF."""
    plt = _plt()
    df = timing_frame(runs)
    cut = ""
    if len(df) > MAX_BARS:
        cut = f"first {MAX_BARS} of {len(df)} rows; every one is in timing.csv"
        df = df.iloc[:MAX_BARS]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    if cut:
        fig.suptitle(cut, fontsize=8)
    labels = [f"{_label(m)}\n{_label(d)}" for m, d in zip(df["Method"], df["Device"])]
    for ax, col in zip(axes, ("Train s/iter", "Infer s/case", "Peak MB")):
        ax.bar(range(len(df)), df[col].fillna(0))
        ax.set_xticks(range(len(df)), labels, rotation=60, ha="right", fontsize=6)
        ax.set_title(col)
    return _save(fig, out, "time_memory")


def _case_dice(organs: dict) -> float:
    """A test case's mean Dice over its organs (the run's scores; NaN: no organ scored)."""
    return nanmean([(m or {}).get("dice") for m in organs.values()])


def pick_cases(runs: Sequence) -> list[tuple[str, object, str, float]]:
    """Best, median and worst test case of one row's runs that kept overlays (``--save-predictions``),
    by the case's mean Dice over organs, pooled over the runs' seeds: ``[(which, run, case id,
    Dice), ...]`` (fewer when fewer cases; none without overlay files)."""
    from reports.overlays import OVERLAY_FILE

    pool = sorted(((_case_dice(organs), r.seed, cid, r) for r in runs if (r.path / OVERLAY_FILE).exists()
                   for cid, organs in r.metrics.cases.items() if _case_dice(organs) == _case_dice(organs)),
                  key=lambda t: (t[0], t[1], t[2]))
    if not pool:
        return []
    picks = {"best": len(pool) - 1, "median": (len(pool) - 1) // 2, "worst": 0}
    seen, out = set(), []
    for which, i in picks.items():
        if i not in seen:
            seen.add(i)
            d, _, cid, r = pool[i]
            out.append((which, r, cid, d))
    return out


def segmentations(runs: Sequence, out: Path) -> list[Path]:
    """Per table row with overlay files: its best, median and worst test case, each as axial
    slices through its smallest organs (image | label | prediction; radiological view);
    ``segmentations_<row>.png``/``.pdf``. Reads only the runs' ``overlays.npz`` and metrics."""
    from reports.overlays import OVERLAY_FILE, PALETTE, read_overlays, render_case

    rows: dict[str, list] = {}
    for r in runs:
        rows.setdefault(r.variant, []).append(r)
    paths = []
    for variant, members in rows.items():
        picks = pick_cases(members)
        if not picks:
            continue
        plt = _plt()
        fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.6), squeeze=False)
        shown: dict[int, str] = {}
        files = {run.path: read_overlays(run.path / OVERLAY_FILE) for _, run, _, _ in picks}  # each file read once
        for ax, (which, run, cid, d) in zip(axes[0], picks):
            cases, organs = files[run.path]
            slices = cases.get(cid)
            ax.axis("off")
            if slices is None or not len(slices["organ"]):
                ax.set_title(f"{which}: {_label(cid, 24)} (no slices kept)", fontsize=9)
                continue
            ax.imshow(render_case(slices), interpolation="nearest")
            for c in np.unique(np.concatenate([slices["label"].ravel(), slices["pred"].ravel()])):
                if 0 < c <= len(organs):
                    shown[int(c)] = abbreviation(organs[int(c) - 1])
            names = ", ".join(abbreviation(organs[c - 1]) for c in slices["organ"])
            ax.set_title(f"{which}: {_label(cid, 24)}, seed {run.seed}\nmean Dice {100 * d:.1f}%; slices through {names}", fontsize=9)
        handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[c % len(PALETTE)] / 255) for c in sorted(shown)]
        if handles:
            fig.legend(handles, [shown[c] for c in sorted(shown)], loc="lower center", ncol=min(len(handles), 13), fontsize=8, frameon=False)
        fig.suptitle(f"{_label(variant, 60)}: image | label | prediction (anterior up, patient's right on the left)", fontsize=10)
        paths += _save(fig, out, segmentation_stem(variant))
    return paths


def segmentation_stem(variant: str) -> str:
    """The file stem of a row's segmentation figure: ``segmentations_tak_anatomy_x_minilm``."""
    import re

    return "segmentations_" + (re.sub(r"[^A-Za-z0-9_.+=-]+", "_", variant).strip("_.")[:100] or "row")
