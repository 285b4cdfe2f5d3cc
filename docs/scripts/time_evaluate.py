"""The scorer's cost end to end (docs/performance.md, 2026-11-30): marginal `bench evaluate` time
per 13-organ 80x160x160 case (11 vs 1 cases), our metrics alone, and MONAI's HD95 + ASD on the
same masks. Run from the repository root: `python docs/scripts/time_evaluate.py`."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from monai.networks.utils import one_hot

os.environ.setdefault("BENCH_CACHE", str(Path(tempfile.gettempdir()) / "bench-cache"))
from bench.core.metrics import case_metrics  # noqa: E402
from bench.core.protocol import resize  # noqa: E402
from datasets.phantom import build_phantom  # noqa: E402

SPACING = (2.5, 0.8, 0.8)


def main() -> None:
    ds = build_phantom("btcv", "quick")
    root = Path(tempfile.mkdtemp()) / "data"
    masks = []
    for i, cid in enumerate(ds.case_ids()[:11]):
        lab = resize(np.asarray(ds.load_label(cid)), (80, 160, 160), "nearest")
        pred = np.roll(lab, 1, axis=2)  # a prediction one voxel off along W
        masks.append((pred, lab))
        for n in (1, 11):
            if i < n:
                aff = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
                for kind, arr in (("gt", lab), ("pred", pred)):
                    (root / f"{kind}{n}").mkdir(parents=True, exist_ok=True)
                    nib.save(nib.Nifti1Image(arr.transpose(2, 1, 0).copy(), aff), str(root / f"{kind}{n}" / f"c{i}.nii.gz"))

    def evaluate(n: int, proto: str) -> float:
        code = (f"import io, sys; from bench.evaluate import evaluate_folders; sys.stdout = sys.stderr = io.StringIO(); "
                f"evaluate_folders('{root}/pred{n}', '{root}/gt{n}', None, '{proto}', '{root}/m{n}.json')")
        best = []
        for _ in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            best.append(time.perf_counter() - t)
        return min(best)

    for proto in ("default", "ga"):
        a, b = evaluate(1, proto), evaluate(11, proto)
        print(f"{proto}: evaluate 1 case {a:.2f} s, 11 cases {b:.2f} s -> marginal {(b - a) / 10:.3f} s/case")
    t = time.perf_counter()
    for p, g in masks:
        case_metrics(p, g, SPACING, 14)
    print(f"metrics alone: {(time.perf_counter() - t) / len(masks):.3f} s/case")
    p, g = masks[0]
    hot = [one_hot(torch.from_numpy(x[None, None].astype(np.int64)), 14) for x in (p, g)]
    t = time.perf_counter()
    compute_hausdorff_distance(*hot, include_background=False, percentile=95, spacing=SPACING)
    compute_average_surface_distance(*hot, include_background=False, spacing=SPACING)
    print(f"MONAI HD95 + ASD: {time.perf_counter() - t:.3f} s/case")


if __name__ == "__main__":
    main()
