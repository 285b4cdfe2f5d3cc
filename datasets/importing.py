"""Importing labelled CT from disk (NIfTI or npy) into the memory-mapped case cache.

An import reads each case once (reoriented to RAS, layout (D, H, W), spacing kept, see
:mod:`datasets.nifti`), checks it (readable, image and label of one shape, label values in the
label set after the optional label map) and writes the cache atomically under
``$BENCH_CACHE/imported/<name>-<key>/``. The key hashes the source paths, sizes and mtimes,
the label map and the options, so a changed source is re-imported and an unchanged one is
opened in milliseconds. Any error leaves nothing behind.

Label maps (``bench-label-map/1`` JSON) turn a source's label values into the organs of a
target label set, e.g. TotalSegmentator's 117 classes into the 13 BTCV organs::

    {"format": "bench-label-map/1", "target": "btcv", "unmapped": "background",
     "map": {"1": "spleen", "2": "right kidney", ...}}

``unmapped``: ``"background"`` (values not in the map become 0) or ``"error"``. Built-in maps
(``datasets/label_maps/``): ``totalseg_to_btcv``, ``totalseg_to_amos``; any other value is
read as a file path.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bench.core.errors import UserError
from bench.core.labels import LABEL_SETS, canonical_organ, check_label_count
from bench.core.store import cache_root, inside, read_json, safe_name
from datasets.base import Dataset, DatasetWriter
from datasets.nifti import as_label, read_nifti, same_grid, source_affine

IMPORT_VERSION = 3  # 2: dataset.json keeps each source image's affine; DHC npy arrays are no longer transposed; 3: import key and per-array sha256 stored
LABEL_MAP_DIR = Path(__file__).parent / "label_maps"


@dataclass(frozen=True)
class LabelMap:
    """Source label value -> target class index (in ``labels``)."""

    name: str
    labels: tuple[str, ...]
    table: dict[int, int]
    unmapped: str = "background"

    @classmethod
    def load(cls, spec: str) -> "LabelMap":
        path = LABEL_MAP_DIR / f"{spec}.json" if (LABEL_MAP_DIR / f"{spec}.json").exists() else Path(spec)
        builtin = ", ".join(sorted(p.stem for p in LABEL_MAP_DIR.glob("*.json")))
        fix = f"give a bench-label-map/1 JSON file or a built-in map ({builtin})"
        data = read_json(path, f"label map {spec}", fix, fix)
        if not isinstance(data, dict) or data.get("format") != "bench-label-map/1" or not isinstance(data.get("map"), dict):
            raise UserError(f"label map {path} is not a bench-label-map/1 file (needs 'format', 'target', 'map'); {fix}")
        target = data.get("target")
        labels = LABEL_SETS.get(str(target).lower()) if isinstance(target, str) else tuple(target or ())
        check_label_count(f"label map {path}: target", len(labels))
        if not labels:
            raise UserError(f"label map {path}: unknown target '{target}'; use one of {', '.join(LABEL_SETS)} or a list of names")
        unmapped = data.get("unmapped", "background")
        if unmapped not in ("background", "error"):
            raise UserError(f"label map {path}: 'unmapped' must be 'background' or 'error', not {unmapped!r}")
        index = {canonical_organ(n): i for i, n in enumerate(labels)}
        table: dict[int, int] = {}
        for src, organ in data["map"].items():
            try:
                value = int(src)
            except ValueError:
                raise UserError(f"label map {path}: source value {src!r} is not an integer")
            if not 0 <= value < 2**31:
                raise UserError(f"label map {path}: source value {value} is outside 0..2^31-1; a label map maps non-negative label ids")
            key = canonical_organ(str(organ))
            if key not in index:
                raise UserError(f"label map {path}: organ '{organ}' is not in the target label set ({', '.join(labels[1:])})")
            table[value] = index[key]
        return cls(name=str(path), labels=tuple(labels), table=table, unmapped=unmapped)

    def apply(self, label: np.ndarray, source: str) -> np.ndarray:
        """``label`` (any shape, integer ids) -> uint8 class indices; the lookup is sized by the
        distinct values present, never by the largest value (a label 2^31 costs no memory)."""
        values, inverse = np.unique(label, return_inverse=True)
        if values.size and values.min() < 0:
            raise UserError(f"{source} holds negative label {int(values.min())}; a label map must hold class ids >= 0")
        if self.unmapped == "error":
            extra = sorted(int(v) for v in values if v != 0 and int(v) not in self.table)
            if extra:
                raise UserError(f"{source} holds label(s) {extra[:5]} that the label map {self.name} does not map; add them or set \"unmapped\": \"background\"")
        mapped = np.array([self.table.get(int(v), 0) for v in values], dtype=np.uint8)
        return mapped[inverse].reshape(label.shape)

    def digest(self) -> str:
        return json.dumps({"labels": self.labels, "table": sorted(self.table.items()), "unmapped": self.unmapped})


@dataclass
class SourceCase:
    """One case to import: ``image`` / ``label`` are file paths or callables returning
    ``(array (D, H, W), spacing)``; ``label=None`` for unlabelled cases."""

    case_id: str
    image: Path | Callable[[], tuple[np.ndarray, tuple]]
    label: Path | Callable[[], tuple[np.ndarray, tuple]] | None = None


def _read(src) -> tuple[np.ndarray, tuple]:
    if callable(src):
        return src()
    return read_nifti(src)


def _fingerprint_source(src) -> list:
    if src is None:
        return [None]
    if callable(src):
        path = getattr(src, "path", None)
        if path is None:
            return ["callable"]
        src = path
    p = Path(src)
    try:
        st = p.stat()
        return [str(p.resolve()), st.st_size, int(st.st_mtime)]
    except OSError:
        return [str(p), None, None]


def check_label(label: np.ndarray, num_classes: int, source: str, labels: Sequence[str]) -> np.ndarray:
    """Label values must lie in 0..C-1 (the error names the file, the value and the fix)."""
    lo, hi = int(label.min(initial=0)), int(label.max(initial=0))
    if lo < 0 or hi >= num_classes:
        bad = hi if hi >= num_classes else lo
        raise UserError(
            f"{source} holds label {bad}, outside 0..{num_classes - 1} of the label set ({', '.join(labels[1:4])}, ...); "
            f"fix the labels, the dataset.json 'labels', or pass a label map (--label-map)"
        )
    return label.astype(np.uint8)


def import_dataset(
    name: str,
    labels: Sequence[str],
    cases: Sequence[SourceCase],
    partition: dict[str, list[str]] | None = None,
    label_map: LabelMap | None = None,
    options: dict | None = None,
    progress: bool = False,
) -> Dataset:
    """Import ``cases`` (or open the cached import) and return the :class:`Dataset`."""
    if not cases:
        raise UserError(f"dataset '{name}': no cases found; check --data-root")
    labels = tuple(label_map.labels if label_map else labels)
    body = json.dumps(
        {
            "v": IMPORT_VERSION,
            "name": name,
            "labels": labels,
            "cases": [[c.case_id, _fingerprint_source(c.image), _fingerprint_source(c.label)] for c in cases],
            "map": label_map.digest() if label_map else None,
            "options": options or {},
            "partition": partition or {},
        },
        sort_keys=True,
        default=str,
    )
    key = hashlib.sha256(body.encode()).hexdigest()[:12]
    safe_name(name, "dataset name", "fix 'name' in the dataset's dataset.json")
    root = inside(cache_root() / "imported" / f"{name}-{key}", cache_root(), "dataset cache folder")
    if (root / "dataset.json").exists():
        return Dataset.open(root, key)
    writer = DatasetWriter(root, name, labels)
    it = cases
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(cases, desc=f"importing {name}", unit="case", leave=False)
    try:
        for case in it:
            image, spacing = _read(case.image)
            if not np.issubdtype(image.dtype, np.number):
                raise UserError(f"image of case '{case.case_id}' is not numeric ({image.dtype}); re-export it")
            label = None
            if case.label is not None:
                raw, lsp = _read(case.label)
                src = str(getattr(case.label, "path", case.label))
                if raw.shape != image.shape:
                    raise UserError(f"case '{case.case_id}': label shape {raw.shape} differs from image shape {image.shape}; the files do not belong together")
                if not callable(case.label) and not callable(case.image) and not same_grid(case.image, case.label):
                    raise UserError(f"case '{case.case_id}': image and label affines differ (origin / spacing / direction); "
                                    f"{src} was not drawn on {case.image}'s grid - resample or re-export it")
                raw = as_label(raw, src)
                if label_map is not None:
                    raw = label_map.apply(raw, src)
                label = check_label(raw, len(labels), src, labels)
            affine = None if callable(case.image) else source_affine(case.image)
            writer.add(case.case_id, image.astype(np.float32), label, spacing, affine)
        return writer.commit(key=key, partition=partition or {}, source=name, options=options or {},
                             label_map=label_map.name if label_map else None)
    except BaseException:
        writer.abort()
        raise


def default_partition(case_ids: Sequence[str], seed: int = 0) -> dict[str, list[str]]:
    """Deterministic 70 / 10 / 20 train / eval / test partition for datasets that define none
    (at least one eval and one test case when there are three or more cases)."""
    ids = sorted(case_ids)
    if len(ids) < 3:
        return {"train": ids, "eval": [], "test": []}
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    n_test = max(1, int(round(0.2 * len(ids))))
    n_eval = max(1, int(round(0.1 * len(ids))))
    return {"train": sorted(order[n_test + n_eval :]), "eval": sorted(order[n_test : n_test + n_eval]), "test": sorted(order[:n_test])}
