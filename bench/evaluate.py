"""``python -m bench evaluate``: score any folder of NIfTI predictions against labels.

Every prediction ``<case>.nii.gz`` is scored against the label file of the same name, or the
one whose name is a non-digit prefix followed by the case id (Synapse: ``label0001.nii.gz``
for case ``0001``); label files without a prediction (training cases) are left out. Both are reoriented to RAS and must share one voxel grid; the label's header gives
the spacing. Scores come from :func:`bench.core.scoring.score_case`, the function that scores
a run's test cases, so ``bench run --save-predictions`` followed by ``bench evaluate`` on its
``predictions/`` folder reproduces the run's metrics.json.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from bench.core.errors import UserError
from bench.core.labels import read_labels_json
from bench.core.records import MetricsRecord, write_record
from bench.core.scoring import penalty_distance, score_case
from datasets.nifti import read_nifti, same_grid


def _cases(folder: Path) -> dict[str, Path]:
    out = {}
    for f in sorted(folder.iterdir()):
        for ext in (".nii.gz", ".nii"):
            if f.name.endswith(ext) and f.is_file():
                out[f.name[: -len(ext)]] = f
    return out


def match_cases(preds: dict[str, Path], gts: dict[str, Path]) -> dict[str, tuple[Path, Path]]:
    """``{case: (prediction, label)}``: same name, or label name = non-digit prefix + case id."""
    out = {}
    for stem, g in gts.items():
        if stem in preds:
            out[stem] = (preds[stem], g)
            continue
        m = re.fullmatch(r"([^\d]+)(\d.*)", stem)
        if m and m.group(2) in preds:
            out[m.group(2)] = (preds[m.group(2)], g)
    return out


def _check_labels(arr: np.ndarray, path: Path, n: int, labels_json: str | None = None) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise UserError(f"{path} holds non-integer values; a label map must hold class ids")
        arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n:
        fix = (f"the label set of --labels {labels_json} has {n} ids: check that it belongs to these files" if labels_json
               else "the default label set is BTCV's 13 organs: pass --labels dataset.json with yours")
        raise UserError(f"{path} holds label {hi if hi >= n else lo}, outside 0..{n - 1} of the label set; {fix}")
    return arr


def evaluate_folders(pred: str, gt: str, labels_json: str | None, protocol: str = "default", out: str | None = None,
                     dataset: str | None = None, released_empty_dice: bool = False) -> dict:
    """``bench evaluate``: score every prediction in ``pred`` against the label of the same name in
    ``gt`` with the one scorer under ``protocol``; writes the metrics record and returns it as a dict.

    Raises:
        UserError: a missing folder, unreadable or mismatched files, labels outside the label set.
    """
    from bench.core.registry import PROTOCOLS

    pdir, gdir = Path(pred), Path(gt)
    for d, flag in ((pdir, "--pred"), (gdir, "--gt")):
        if not d.is_dir():
            raise UserError(f"{flag} {d} is not a folder; give the folder that holds the .nii.gz files")
    target = Path(out) if out else pdir / "metrics.json"
    if target.is_dir():
        raise UserError(f"--out {target} is a folder; give a file name such as {target / 'metrics.json'}")
    # published protocols resample Synapse and AMOS differently: the dataset kind picks the grid
    proto = PROTOCOLS.get(protocol)(dataset or str(gdir.resolve()))
    if released_empty_dice:
        proto = proto.released_empty_dice()
    labels = read_labels_json(labels_json)
    gts = _cases(gdir)
    if not gts:
        raise UserError(f"--gt {gdir} holds no .nii / .nii.gz files")
    preds = _cases(pdir)
    if not preds:
        raise UserError(f"--pred {pdir} holds no .nii / .nii.gz files")
    pairs = match_cases(preds, gts)
    if len(pairs) < len(preds):  # every prediction is scored; labels without one (e.g. training cases) are not
        missing = sorted(set(preds) - set(pairs))
        raise UserError(f"no label in {gdir} for {len(missing)} prediction(s), e.g. '{missing[0]}' (looked for "
                        f"{missing[0]}.nii.gz or <prefix>{missing[0]}.nii.gz); give the folder of their labels")
    organs = list(labels[1:])
    cases, penalty = {}, {}
    for cid, (ppath, gpath) in sorted(pairs.items()):
        g, spacing = read_nifti(gpath)
        p, p_spacing = read_nifti(ppath)
        if p.shape != g.shape:
            raise UserError(f"case '{cid}': prediction shape {p.shape} differs from label shape {g.shape}")
        if not np.allclose(p_spacing, spacing, rtol=1e-3, atol=1e-3) or not same_grid(ppath, gpath):
            raise UserError(f"case '{cid}': {ppath} is not on the voxel grid of {gpath} (spacing {p_spacing} vs {spacing}); "
                            f"resample the prediction onto its label's grid")
        cases[cid] = score_case(_check_labels(p, ppath, len(labels), labels_json), _check_labels(g, gpath, len(labels), labels_json),
                                 spacing, proto, organs)
        penalty[cid] = penalty_distance(g.shape, spacing, proto)
    record = MetricsRecord.build(method=pdir.name, dataset=gdir.name, protocol=proto, split="evaluate", seed=0,
                                 organs=organs, cases=cases, penalty_distance=penalty)
    write_record(target, record)
    from reports.render import to_markdown
    from reports.table import summary_table

    print(to_markdown(summary_table([record])))
    print(f"\n{len(pairs)} case(s) scored ({len(gts) - len(pairs)} label file(s) without a prediction left out); "
          f"metrics written to {target}", file=sys.stderr)
    return record.to_dict()
