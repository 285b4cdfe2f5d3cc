"""The dataset interface and the on-disk case cache shared by all datasets.

A dataset is a set of cases, each an image (float32 Hounsfield units) and, for labelled
cases, an integer label map, in one canonical array layout ``(D, H, W)`` =
(inferior->superior, posterior->anterior... as stored, see each dataset) with per-axis voxel
spacing in millimetres ``(sD, sH, sW)``.

Cases are stored as ``.npy`` files that are opened memory-mapped: listing or reading one case
does not read the others. (The training loop itself keeps its normalised training volumes in
memory, on the protocol grid, so that sampling a patch never waits on the disk.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.core import owner
from bench.core.errors import UserError
from bench.core.store import read_json, safe_name


@dataclass
class Dataset:
    """A folder of cases in the project's cache layout.

    ``root/dataset.json`` holds ``name``, ``labels`` (names in label order, background
    first), ``cases`` (``{id: {"spacing": [...], "shape": [...]}}``) and ``partition``
    (``train`` / ``eval`` / ``test`` id lists, where the dataset defines them);
    ``root/images/<id>.npy`` and ``root/labels/<id>.npy`` hold the arrays; ``checksums``
    (``{id: {"image": sha256, "label": sha256}}``, written by :class:`DatasetWriter`) are checked
    the first time a process loads each array, so a cache file changed since it was written is
    refused instead of used.
    """

    name: str
    root: Path
    labels: tuple[str, ...]
    cases: dict[str, dict]
    partition: dict[str, list[str]] = field(default_factory=dict)
    checksums: dict[str, dict[str, str]] = field(default_factory=dict)
    key: str | None = None

    @classmethod
    def open(cls, root: Path, key: str | None = None) -> "Dataset":
        """The dataset in ``root``; with ``key``, the import key its ``dataset.json`` must carry
        (a folder renamed or replaced by another import is refused)."""
        meta_path = Path(root) / "dataset.json"
        fix = f"the dataset folder is incomplete or corrupt: delete {root} and run again"
        meta = read_json(meta_path, str(meta_path), fix, fix)
        if key is not None and meta.get("key", key) != key:  # caches written before keys were stored carry none
            raise UserError(f"cached dataset {root} was written for import key {meta.get('key')!r}, not {key!r}; {fix}")
        return cls(
            name=meta["name"],
            root=Path(root),
            labels=tuple(meta["labels"]),
            cases=meta["cases"],
            partition=meta.get("partition", {}),
            checksums=meta.get("checksums", {}),
            key=meta.get("key"),
        )

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.labels)

    @property
    def organs(self) -> tuple[str, ...]:
        return self.labels[1:]

    def case_ids(self) -> list[str]:
        return list(self.cases)

    def spacing(self, case_id: str) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.cases[case_id]["spacing"])  # type: ignore[return-value]

    def affine(self, case_id: str) -> np.ndarray | None:
        """The source image's stored 4x4 affine (NIfTI imports), or None (generated data)."""
        a = self.cases[case_id].get("affine")
        return None if a is None else np.asarray(a, dtype=np.float64)

    def _check(self, case_id: str) -> None:
        if case_id not in self.cases:
            raise UserError(f"case '{case_id}' is not in dataset '{self.name}' ({self.root}); fix the split file")

    def load_image(self, case_id: str) -> np.ndarray:
        """Image (D, H, W) float32 in HU, memory-mapped."""
        self._check(case_id)
        return self._load(case_id, "image", self.root / "images" / f"{case_id}.npy")

    def load_label(self, case_id: str) -> np.ndarray:
        """Label map (D, H, W) uint8, memory-mapped; values in ``[0, num_classes)``."""
        self._check(case_id)
        return self._load(case_id, "label", self.root / "labels" / f"{case_id}.npy")

    def _load(self, case_id: str, kind: str, path: Path) -> np.ndarray:
        want = self.checksums.get(case_id, {}).get(kind)
        if want is not None and (str(path), want) not in _VERIFIED:
            try:
                got = file_sha256(path)
            except FileNotFoundError:
                got = None
            if got is not None and got != want:
                raise UserError(f"{path} differs from the array written at import (sha256 {got[:12]} != {want[:12]}); "
                                f"delete {self.root} and run again to re-import")
            if got is not None:
                _VERIFIED.add((str(path), want))
        return _load_npy(path)


#: (path, sha256) pairs this process has verified: each array is hashed once per process
_VERIFIED: set[tuple[str, str]] = set()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in chunks)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise UserError(f"missing array {path}; delete its dataset cache folder and run again")
    except ValueError as e:
        raise UserError(f"unreadable array {path} ({e}); delete its dataset cache folder and run again")


def _remove_orphans(root: Path) -> None:
    """Temporary folders of earlier writes next to ``root`` whose writer is gone
    (:func:`owner.sweep_orphans`): of this dataset and of any other key (a killed import whose
    source files changed since would otherwise stay forever)."""
    owner.sweep_orphans(root.parent, ".*.tmp-*")


class DatasetWriter:
    """Writes a dataset into a temporary folder and moves it into place in one rename.

    A crash midway leaves only the temporary folder (a random name, with the writer's identity
    in ``.owner``; removed by the next writer of the same dataset once that writer is provably
    gone or the folder was untouched for a day); readers never see a half-written dataset.
    """

    def __init__(self, root: Path, name: str, labels: Sequence[str]):
        self.root = Path(root)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(self.root)
        self.tmp = owner.make_owned_dir(self.root.parent, f".{self.root.name}.tmp-{os.getpid()}-")  # .owner: for other workers
        (self.tmp / "images").mkdir()
        (self.tmp / "labels").mkdir()
        self.meta: dict = {"name": name, "labels": list(labels), "cases": {}, "partition": {}, "checksums": {}}

    def add(self, case_id: str, image: np.ndarray, label: np.ndarray | None, spacing: Sequence[float], affine=None) -> None:
        safe_name(case_id, "case id", "rename the case's files")
        sp = [float(s) for s in spacing]
        if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
            raise UserError(f"case '{case_id}': voxel spacing {sp} is not three positive finite numbers; fix the image header")
        if label is not None and np.asarray(label).size:
            lo, hi = np.min(label), np.max(label)
            if lo < 0 or hi > 255:
                raise UserError(f"case '{case_id}': label values {lo}..{hi} do not fit 0..255 (stored as uint8, a value 260 "
                                f"would become 4); map them with --label-map")
        np.save(self.tmp / "images" / f"{case_id}.npy", np.ascontiguousarray(image, dtype=np.float32))
        sums = self.meta["checksums"][case_id] = {"image": file_sha256(self.tmp / "images" / f"{case_id}.npy")}
        if label is not None:
            np.save(self.tmp / "labels" / f"{case_id}.npy", np.ascontiguousarray(label, dtype=np.uint8))
            sums["label"] = file_sha256(self.tmp / "labels" / f"{case_id}.npy")
        self.meta["cases"][case_id] = {"spacing": [float(s) for s in spacing], "shape": list(image.shape)}
        if affine is not None:  # the source file's stored affine: predictions are written back onto it
            self.meta["cases"][case_id]["affine"] = np.asarray(affine, dtype=np.float64).tolist()

    def commit(self, **extra: object) -> Dataset:
        self.meta.update(extra)
        (self.tmp / "dataset.json").write_text(json.dumps(self.meta, indent=1))
        (self.tmp / ".owner").unlink(missing_ok=True)  # a finished dataset has no writer
        try:
            os.rename(self.tmp, self.root)
        except OSError:
            # another process finished first: keep its copy, drop ours
            shutil.rmtree(self.tmp, ignore_errors=True)
        return Dataset.open(self.root, self.meta.get("key"))

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
