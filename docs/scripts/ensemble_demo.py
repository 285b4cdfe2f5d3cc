"""An ensemble of two seeds against each seed alone, on the phantom's test split, through the
user's path: the test cases written as NIfTI (images in HU, labels), ``bench predict`` with one
run and with both (mean of the softmax probabilities), each scored by ``bench evaluate`` under
the runs' protocol.

    python docs/scripts/ensemble_demo.py --runs RUNS/phantom/default/labeled_10p/dhc/<hash> --out DIR

writes ``DIR/summary.json`` (mean Dice and NSD of each seed alone and of the ensemble, and each
seed's own metrics.json mean Dice, which the single-seed predictions must reproduce) and one
metrics record per row under ``DIR/<row>/metrics.json``. Needs the phantom in the cache
(``BENCH_CACHE``) that trained the runs, and their checkpoints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from bench.cli import main as bench
from bench.runner import load_dataset
from datasets.nifti import write_nifti


def _ras_image(image: np.ndarray, spacing) -> nib.Nifti1Image:
    """A (D, H, W) image as a RAS NIfTI with ``spacing`` (sD, sH, sW) (what write_nifti does for labels)."""
    ras = np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 1, 0))
    return nib.Nifti1Image(ras, np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", required=True, help="a method's config-hash folder holding seed_<n> run folders")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    seeds = sorted(Path(args.runs).glob("seed_*"))
    if len(seeds) < 2:
        raise SystemExit(f"{args.runs}: needs two seed folders, found {len(seeds)}")
    config = json.loads((seeds[0] / "config.json").read_text())
    metrics = [json.loads((s / "metrics.json").read_text()) for s in seeds]
    out = Path(args.out)
    ds = load_dataset(config["dataset"], config["preset"], None)
    test = list(metrics[0]["cases"])
    images, labels = out / "images", out / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for cid in test:  # no affine of their own: RAS grids with the cases' spacing
        nib.save(_ras_image(ds.load_image(cid), ds.spacing(cid)), str(images / f"{cid}.nii.gz"))
        write_nifti(labels / f"{cid}.nii.gz", ds.load_label(cid), ds.spacing(cid))
    # row folders are not named seed_<n>: bench report must never count these scores as runs
    rows = {f"alone_{s.name}": [s] for s in seeds[:2]} | {"ensemble": seeds[:2]}
    summary = {"runs": [str(s) for s in seeds[:2]], "method": metrics[0]["method"], "test_cases": len(test),
               "protocol": config["protocol"]["name"], "rows": {}}
    for name, members in rows.items():
        pred = out / name / "labels"
        argv = ["predict", "--input", str(images), "--out", str(pred), "--device", "cpu"]
        for m in members:
            argv += ["--run", str(m)]
        assert bench(argv) == 0
        assert bench(["evaluate", "--pred", str(pred), "--gt", str(labels), "--protocol", config["protocol"]["name"],
                      "--out", str(out / name / "metrics.json")]) == 0
        rec = json.loads((out / name / "metrics.json").read_text())
        summary["rows"][name] = {"dice": rec["mean"]["dice"], "nsd": rec["mean"].get("nsd"),
                                 "per_organ_dice": {o: v["dice"] for o, v in rec["per_organ"].items()}}
    for s, m in zip(seeds[:2], metrics):
        summary["rows"][f"alone_{s.name}"]["run_metrics_dice"] = m["mean"]["dice"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for name, r in summary["rows"].items():
        own = f" (its run's metrics.json: {100 * r['run_metrics_dice']:.2f} %)" if "run_metrics_dice" in r else ""
        print(f"{name}: mean Dice {100 * r['dice']:.2f} %, NSD {100 * r['nsd']:.2f} %{own}")


if __name__ == "__main__":
    main()
