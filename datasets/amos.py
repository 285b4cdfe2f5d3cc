"""``amos``: AMOS 2022 (CT ids < 500, MRI ids >= 500; 15 organs).

``--data-root`` points at the AMOS folder: ``imagesTr/ labelsTr/ imagesVa/ labelsVa/`` with
``amos_0001.nii.gz`` files (and its ``dataset.json``). The default partition is the one DHC,
GALoss and TAK share: train 216 + eval 24 from imagesTr, test 120 = imagesVa. The published
pipelines keep the MRI cases and apply the CT window to them; ``--dataset-opt modality=ct``
drops them (ids >= 500) from the import and from every split. Published splits:
``--split dhc_2p | dhc_5p | dhc_10p | dhc_20p_noleak`` (the published 20% lists put eval cases
into training; see that file's ``meta``).
"""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UserError
from bench.core.labels import AMOS_15
from bench.core.registry import register_dataset
from datasets.base import Dataset
from datasets.importing import SourceCase, import_dataset
from datasets.splits import published_split

MRI_FROM = 500


def is_mri(case_id: str) -> bool:
    """AMOS case ids from 500 on are MRI scans (ids that are not numbers: CT)."""
    try:
        return int(case_id.split("_")[-1]) >= MRI_FROM
    except ValueError:
        return False


def amos_cases(root: Path, modality: str) -> list[SourceCase]:
    """The labelled cases of an AMOS 2022 folder (``imagesTr``/``labelsTr`` and ``imagesVa``/
    ``labelsVa``; an image without a label file is left out); ``modality`` ``ct`` drops the MRI cases.

    Raises:
        UserError: the folder has no ``imagesTr``.
    """
    if not (root / "imagesTr").is_dir():
        found = ", ".join(sorted(p.name for p in root.iterdir())[:6]) if root.is_dir() else "not a folder"
        raise UserError(f"--data-root {root} has no imagesTr/ (found: {found}); point it at the AMOS 2022 folder "
                        f"(imagesTr, labelsTr, imagesVa, labelsVa)")
    cases = []
    for images, labels in (("imagesTr", "labelsTr"), ("imagesVa", "labelsVa")):
        for img in sorted((root / images).glob("amos_*.nii*")):
            cid = img.name.split(".")[0]
            if modality == "ct" and is_mri(cid):
                continue
            lab = root / labels / img.name
            cases.append(SourceCase(cid, img, lab if lab.exists() else None))
    return [c for c in cases if c.label is not None]


@register_dataset("amos")
def amos(preset: str = "quick", data_root: str | None = None, progress: bool = False, modality: str = "all", **options) -> Dataset:
    """AMOS 2022, 15 organs (--data-root: imagesTr/labelsTr/imagesVa/labelsVa; --dataset-opt modality=ct|all)."""
    if options:
        raise UserError(f"dataset 'amos' has no option(s) {', '.join(options)}; known: modality")
    if modality not in ("all", "ct"):
        raise UserError(f"--dataset-opt modality={modality}: choose 'all' (as published) or 'ct'")
    if not data_root:
        raise UserError("dataset 'amos' needs --data-root DIR (the AMOS 2022 folder)")
    cases = amos_cases(Path(data_root), modality)
    ids = {c.case_id for c in cases}
    ref = published_split("amos", "dhc_2p")
    part = {"train": [c for c in ref.train if c in ids], "eval": [c for c in ref.eval if c in ids], "test": [c for c in ref.test if c in ids]}
    name = "amos" if modality == "all" else "amos_ct"
    return import_dataset(name, AMOS_15, cases, part, None, {"modality": modality}, progress)
