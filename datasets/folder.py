"""``folder``: any nnU-Net (v1 / v2) or Medical Segmentation Decathlon style folder.

``--data-root DIR`` holds a ``dataset.json`` with

* ``labels``: ``{"0": "background", "1": "liver", ...}`` (MSD / nnU-Net v1) or
  ``{"background": 0, "liver": 1, ...}`` (nnU-Net v2);
* the labelled cases: ``training``: ``[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``
  (paths relative to DIR or absolute; nnU-Net's ``x_0000.nii.gz`` channel files are found
  too), or - nnU-Net v2 without that list - every ``labelsTr/<case><file_ending>`` with its
  ``imagesTr/<case>_0000<file_ending>``;
* optionally ``partition`` (``train`` / ``eval`` / ``test`` case-id lists); without it a
  deterministic 70 / 10 / 20 partition is drawn (seed 0) and stored with the import.

Organ names feed the tables and the prompt matching (aliases such as ``kidney_right`` are
resolved). ``--label-map NAME|FILE`` maps foreign label values to a known label set (e.g.
``totalseg_to_btcv`` for TotalSegmentator output); ``--dataset-opt partition=all-test`` puts
every case in the test partition (evaluation-only folders).
"""

from __future__ import annotations

from pathlib import Path

from bench.core.errors import UserError
from bench.core.labels import canonical_organ, names_by_id
from bench.core.registry import register_dataset
from bench.core.store import read_json
from datasets.base import Dataset
from datasets.importing import LabelMap, SourceCase, default_partition, import_dataset


def _labels(meta: dict, path: Path) -> tuple[str, ...]:
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: 'labels' must map label ids to names (or names to ids); see the nnU-Net dataset.json format")
    names = names_by_id(raw, str(path))
    return tuple("background" if i == 0 else canonical_organ(name) for i, name in enumerate(names))


def _resolve(root: Path, rel: str, channel: bool) -> Path:
    p = Path(rel)
    p = p if p.is_absolute() else (root / p)
    if p.exists() or not channel:
        return p
    for ext in (".nii.gz", ".nii"):
        if p.name.endswith(ext):
            alt = p.with_name(p.name[: -len(ext)] + "_0000" + ext)
            if alt.exists():
                return alt
    return p


def _case_id(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".mha", ".nrrd"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def folder_cases(root: Path) -> tuple[dict, list[SourceCase]]:
    """``(dataset.json, cases)`` of an nnU-Net v1 / v2 or MSD folder: labels from ``labels``, cases
    from the ``training`` list or ``imagesTr``/``labelsTr``.

    Raises:
        UserError: no or malformed ``dataset.json``, a malformed training entry, no labelled case,
            a case id listed twice.
    """
    path = root / "dataset.json"
    if not path.exists():
        raise UserError(f"{root} has no dataset.json; the folder dataset needs an nnU-Net / MSD dataset.json (labels + training list)")
    meta = read_json(path, str(path), "fix its JSON syntax")
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a JSON object with 'labels' and 'training'")
    _labels(meta, path)  # checked first: a broken label list is the more basic error
    cases: list[SourceCase] = []
    if isinstance(meta.get("training"), list):
        for i, entry in enumerate(meta["training"]):
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("label"), str):
                raise UserError(f"{path}: training entry {i} must have 'image' and 'label' paths (texts)")
            label = _resolve(root, entry["label"], channel=False)
            cases.append(SourceCase(_case_id(label), _resolve(root, entry["image"], channel=True), label))
    else:
        ending = meta.get("file_ending", ".nii.gz")
        for label in sorted((root / "labelsTr").glob(f"*{ending}")):
            cid = label.name[: -len(ending)]
            cases.append(SourceCase(cid, root / "imagesTr" / f"{cid}_0000{ending}", label))
    if not cases:
        raise UserError(f"{path} lists no labelled cases ('training' is empty and labelsTr/ has none)")
    ids = [c.case_id for c in cases]
    dup = sorted({c for c in ids if ids.count(c) > 1})
    if dup:
        raise UserError(f"{path}: case id '{dup[0]}' appears twice; give every case a unique file name")
    return meta, cases


@register_dataset("folder")
def folder(preset: str = "quick", data_root: str | None = None, progress: bool = False, label_map: str | None = None,
           partition: str | None = None, **options) -> Dataset:
    """Your own labelled CT: an nnU-Net / MSD folder with dataset.json (--data-root DIR [--label-map M])."""
    if options:
        raise UserError(f"dataset 'folder' has no option(s) {', '.join(options)}; known: label_map, partition")
    if not data_root:
        raise UserError("dataset 'folder' needs --data-root DIR (a folder with dataset.json, imagesTr/, labelsTr/)")
    root = Path(data_root)
    lmap = LabelMap.load(label_map) if label_map else None
    meta, cases = folder_cases(root)
    labels = lmap.labels if lmap else _labels(meta, root / "dataset.json")
    ids = [c.case_id for c in cases]
    if partition == "all-test":
        part = {"train": [], "eval": [], "test": sorted(ids)}
    elif partition is not None:
        raise UserError(f"--dataset-opt partition={partition}: only 'all-test' is known (or define 'partition' in dataset.json)")
    elif isinstance(meta.get("partition"), dict):
        raw = meta["partition"]
        bad = [k for k in ("train", "eval", "test") if not isinstance(raw.get(k, []), list)]
        if bad:
            raise UserError(f"{root / 'dataset.json'}: 'partition' '{bad[0]}' must be a list of case ids")
        part = {k: [str(c) for c in raw.get(k, [])] for k in ("train", "eval", "test")}
    else:
        part = default_partition(ids)
    name = str(meta.get("name") or root.name).lower().replace(" ", "_")
    return import_dataset(f"folder_{name}", labels, cases, part, lmap, {"partition": partition}, progress)
