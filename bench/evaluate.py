"""``python -m bench evaluate``: score any folder of NIfTI predictions against labels.

Files are matched by name (``case.nii.gz`` in both folders). Both are reoriented to the
closest canonical (RAS) orientation, spacing comes from the label's header, and metrics are
those of :mod:`bench.metrics` (the same code as after training).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.errors import UserError
from bench.metrics import case_metrics, summarize
from bench.store import atomic_write_json, read_json
from datasets.labels import BTCV_13, names_by_id
from datasets.nifti import read_nifti


def read_labels_json(path: str | None) -> tuple[str, ...]:
    if path is None:
        return BTCV_13
    p = Path(path)
    meta = read_json(p, f"--labels {p}")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not labels:
        raise UserError(f"--labels {p} has no 'labels' entry; write {{\"labels\": {{\"background\": 0, \"liver\": 1, ...}}}}")
    if isinstance(labels, list):
        return tuple(str(x) for x in labels)
    if not isinstance(labels, dict):
        raise UserError(f"--labels {p}: 'labels' must map names to integers (nnU-Net style)")
    return names_by_id(labels, f"--labels {p}")


def _cases(folder: Path) -> dict[str, Path]:
    out = {}
    for f in sorted(folder.iterdir()):
        for ext in (".nii.gz", ".nii"):
            if f.name.endswith(ext):
                out[f.name[: -len(ext)]] = f
    return out


def evaluate_folders(pred: str, gt: str, labels_json: str | None, protocol: str = "default", out: str | None = None) -> dict:
    from bench.registry import PROTOCOLS

    proto = PROTOCOLS.get(protocol)(Path(gt).name)
    pdir, gdir = Path(pred), Path(gt)
    for d, flag in ((pdir, "--pred"), (gdir, "--gt")):
        if not d.is_dir():
            raise UserError(f"{flag} {d} is not a folder; give the folder that holds the .nii.gz files")
    labels = read_labels_json(labels_json)
    preds, gts = _cases(pdir), _cases(gdir)
    if not gts:
        raise UserError(f"--gt {gdir} holds no .nii / .nii.gz files")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise UserError(f"no prediction for {len(missing)} case(s) in {pdir}, e.g. '{missing[0]}'; predict every case of --gt")
    organs = list(labels[1:])
    cases = {}
    for cid, gpath in gts.items():
        g, spacing = read_nifti(gpath)
        p, _ = read_nifti(preds[cid])
        if p.shape != g.shape:
            raise UserError(f"case '{cid}': prediction shape {p.shape} differs from label shape {g.shape}")
        for arr, path in ((g, gpath), (p, preds[cid])):
            if not np.issubdtype(arr.dtype, np.integer):
                if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                    raise UserError(f"{path} holds non-integer values; a label map must hold class ids")
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= len(labels):
                raise UserError(f"{path} holds label {hi if hi >= len(labels) else lo}, outside 0..{len(labels) - 1} of the label set; pass --labels dataset.json")
        per = case_metrics(p.astype(np.int32), g.astype(np.int32), (1.0, 1.0, 1.0) if proto.distance_unit == "voxel" else spacing, len(labels),
                           empty_rule=proto.empty_rule)
        cases[cid] = {organs[c - 1]: m for c, m in per.items()}
    summary = summarize(cases, organs)
    result = {"method": pdir.name, "dataset": gdir.name, "protocol": proto.name, "protocol_version": proto.version,
              "split": "evaluate", "seed": 0, "organs": organs, **summary, "cases": cases}
    target = Path(out) if out else pdir / "metrics.json"
    atomic_write_json(target, result)
    from reports.tables import frame_markdown, per_organ_frame

    print(frame_markdown(per_organ_frame([result])))
    print(f"\nmetrics written to {target}", file=sys.stderr)
    return result
