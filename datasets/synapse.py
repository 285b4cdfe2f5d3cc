"""``synapse``: the BTCV / Synapse multi-organ CT (30 labelled cases, 13 organs).

``--data-root`` points at either layout:

* BTCV RawData: ``img/img0001.nii.gz`` + ``label/label0001.nii.gz`` (also found under
  ``Training/`` or ``RawData/Training/``); case ids ``0001``...;
* DHC's preprocessed npy: ``npy/0001_image.npy`` + ``npy/0001_label.npy`` (or those files in
  the root). DHC writes them from SimpleITK arrays, which are already (z, y, x) = (D, H, W):
  they are used as stored (no transpose; the in-plane axes are the last two, which the
  ``dhc`` protocol halves) and, lacking spacing, get 1 mm (distances are then in voxels, as
  DHC reports them). Prefer the RawData layout for the ``default`` protocol.

Labels: the 13 BTCV organs in BTCV order (the 8-organ "Synapse" subset is a table choice, not
a different dataset). The default partition is the DHC / GenericSSL one (20 train, 4 eval,
6 test); published splits: ``--split dhc_20p`` (DHC), ``ga_10p`` / ``ga_20p`` (GALoss, TAK).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.core.errors import UserError
from bench.core.labels import BTCV_13
from bench.core.registry import register_dataset
from datasets.base import Dataset
from datasets.importing import SourceCase, import_dataset
from datasets.splits import published_split


class NpyArray:
    """Callable loading a DHC npy array, already (D, H, W) = SimpleITK's (z, y, x), with 1 mm spacing."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self):
        try:
            a = np.load(self.path)
        except Exception as e:
            raise UserError(f"{self.path} is not a readable .npy array ({type(e).__name__}); re-run DHC's preprocessing")
        if a.ndim != 3:
            raise UserError(f"{self.path} has {a.ndim} dimensions; expected a 3D volume")
        return np.ascontiguousarray(a), (1.0, 1.0, 1.0)


def synapse_cases(root: Path) -> tuple[list[SourceCase], str]:
    """``(cases, layout)`` of a Synapse / BTCV folder: ``img/`` + ``label/`` (also under ``Training/``
    or ``RawData/Training/``) or DHC's preprocessed ``npy/``.

    Raises:
        UserError: neither layout is found.
    """
    for base in (root, root / "Training", root / "RawData" / "Training"):
        if (base / "img").is_dir():
            cases = []
            for img in sorted((base / "img").glob("img*.nii*")):
                cid = img.name[3:].split(".")[0]
                label = next(iter(sorted((base / "label").glob(f"label{cid}.nii*"))), base / "label" / f"label{cid}.nii.gz")
                cases.append(SourceCase(cid, img, label))
            return cases, "rawdata"
    for base in (root / "npy", root):
        imgs = sorted(base.glob("*_image.npy"))
        if imgs:
            cases = []
            for img in imgs:
                cid = img.name[: -len("_image.npy")]
                cases.append(SourceCase(cid, NpyArray(img), NpyArray(base / f"{cid}_label.npy")))
            return cases, "dhc-npy"
    found = ", ".join(sorted(p.name for p in root.iterdir())[:6]) if root.is_dir() else "not a folder"
    raise UserError(f"--data-root {root} holds neither the BTCV layout (img/img0001.nii.gz, label/label0001.nii.gz) "
                    f"nor DHC's npy layout (npy/0001_image.npy) - found: {found}; point it at one of them")


@register_dataset("synapse")
def synapse(preset: str = "quick", data_root: str | None = None, progress: bool = False, **options) -> Dataset:
    """BTCV / Synapse abdominal CT, 13 organs (--data-root: RawData or DHC's npy folder)."""
    if options:
        raise UserError(f"dataset 'synapse' has no option(s) {', '.join(options)}")
    if not data_root:
        raise UserError("dataset 'synapse' needs --data-root DIR (BTCV RawData or DHC's preprocessed npy folder)")
    cases, layout = synapse_cases(Path(data_root))
    dhc = published_split("synapse", "dhc_20p")
    ids = {c.case_id for c in cases}
    part = {"train": [c for c in dhc.train if c in ids], "eval": [c for c in dhc.eval if c in ids], "test": [c for c in dhc.test if c in ids]}
    return import_dataset("synapse", BTCV_13, cases, part, None, {"layout": layout}, progress)
