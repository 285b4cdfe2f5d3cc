"""Dataset fingerprint: the facts a researcher checks before trusting a number.

Spacings and shapes (median, min, max per axis), foreground intensity percentiles (0.5, 50,
99.5 % of HU inside any organ) and the per-organ voxel share over the labelled cases - the
class imbalance the benchmark is about. Computed once and cached as ``fingerprint.json`` in
the dataset's cache folder (written atomically).
"""

from __future__ import annotations

import numpy as np

from bench.core.store import atomic_write_json, read_json
from datasets.base import Dataset

FINGERPRINT_VERSION = 1


def compute_fingerprint(ds: Dataset, max_samples_per_case: int = 20000, seed: int = 0) -> dict:
    """Spacings, shapes, foreground HU percentiles (sampled, at most ``max_samples_per_case`` voxels per
    case) and the per-organ voxel share of a dataset.
    """
    rng = np.random.default_rng(seed)
    spacings = np.array([ds.spacing(c) for c in ds.case_ids()], dtype=np.float64)
    shapes = np.array([ds.cases[c]["shape"] for c in ds.case_ids()], dtype=np.int64)
    counts = np.zeros(ds.num_classes, dtype=np.int64)
    samples = []
    for cid in ds.case_ids():
        if not (ds.root / "labels" / f"{cid}.npy").exists():
            continue
        lab = np.asarray(ds.load_label(cid))
        counts += np.bincount(lab.ravel(), minlength=ds.num_classes)[: ds.num_classes]
        fg = np.flatnonzero(lab.ravel() > 0)
        if fg.size:
            pick = rng.choice(fg, size=min(fg.size, max_samples_per_case), replace=False)
            samples.append(np.asarray(ds.load_image(cid)).ravel()[pick])
    hu = np.concatenate(samples) if samples else np.zeros(1)
    fg_total = max(int(counts[1:].sum()), 1)

    def stats(a):
        return {"median": np.median(a, 0).tolist(), "min": a.min(0).tolist(), "max": a.max(0).tolist()}

    return {
        "version": FINGERPRINT_VERSION,
        "dataset": ds.name,
        "cases": len(ds.case_ids()),
        "spacing_mm": stats(spacings),
        "shape": stats(shapes),
        "foreground_hu_percentiles": {p: float(np.percentile(hu, float(p))) for p in ("0.5", "50", "99.5")},
        "voxel_share": {o: float(counts[i + 1] / fg_total) for i, o in enumerate(ds.organs)},
        "foreground_share_of_volume": float(counts[1:].sum() / max(counts.sum(), 1)),
    }


def fingerprint(ds: Dataset) -> dict:
    """The cached fingerprint of ``ds`` (computed on first use)."""
    path = ds.root / "fingerprint.json"
    if path.exists():
        data = read_json(path, str(path), "delete it to recompute")
        if isinstance(data, dict) and data.get("version") == FINGERPRINT_VERSION:
            return data
    data = compute_fingerprint(ds)
    atomic_write_json(path, data)
    return data


def format_fingerprint(fp: dict) -> str:
    """The fingerprint as indented lines for ``bench list datasets --details``."""
    sp, sh = fp["spacing_mm"], fp["shape"]
    hu = fp["foreground_hu_percentiles"]
    lines = [
        f"  cases {fp['cases']}; spacing mm (D, H, W) median {_v(sp['median'])} [min {_v(sp['min'])}, max {_v(sp['max'])}]",
        f"  shape median {_v(sh['median'], 0)} [min {_v(sh['min'], 0)}, max {_v(sh['max'], 0)}]",
        f"  organ HU p0.5 / p50 / p99.5: {hu['0.5']:.0f} / {hu['50']:.0f} / {hu['99.5']:.0f}; organs fill {100 * fp['foreground_share_of_volume']:.1f}% of the volume",
        "  voxel share of the foreground (imbalance):",
    ]
    for organ, share in sorted(fp["voxel_share"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {organ:30s} {100 * share:7.3f}%")
    return "\n".join(lines)


def _v(values, nd: int = 2) -> str:
    return "x".join(f"{v:.{nd}f}" for v in values)
