"""Pictures of a segmentation where it matters most: axial slices through the smallest organs.

numpy only (no torch, no dataset code), so the engine (a run's ``overlays.npz``, a tracker's
image at each validation) and the reports (best / median / worst case per method) share it.

A run with ``--save-predictions`` keeps, per test case, up to :data:`SLICES` axial slices: for
each of the smallest organs present in the label (fewest voxels), the slice where its area is
largest, cropped to a :data:`CROP` x :data:`CROP` window centred on it. Stored per slice: the
image windowed to uint8, the label and the prediction (uint8), the organ and the slice index.
Arrays are in the suite's layout (D, H, W) = (inferior->superior, posterior->anterior,
left->right, RAS+); :func:`render` shows them in the radiological view (anterior up, the
patient's right on the viewer's left).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: the file a run keeps its slices in (``--save-predictions``)
OVERLAY_FILE = "overlays.npz"
#: slices kept per case (one per organ, smallest organs first)
SLICES = 3
#: side of the square crop around each organ, in voxels of the grid the slices come from
CROP = 128
#: abdominal soft-tissue window (HU) for CT; an image without air-like values (MR) is scaled by
#: its own 1st-99th percentiles instead
HU_WINDOW = (-175.0, 250.0)

#: one colour per class index (0 = background, unused), matplotlib's tab20 order, as RGB 0-255
PALETTE = np.array([
    (0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150),
    (197, 176, 213), (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229), (127, 127, 127),
], dtype=np.uint8)


def pick_slices(label: np.ndarray, num: int = SLICES) -> list[tuple[int, int]]:
    """``[(organ class, axial index d), ...]`` for the ``num`` smallest organs of ``label`` (D, H,
    W) that are present, smallest first; ``d`` is where the organ's area is largest (the lowest
    such d on ties)."""
    counts = np.bincount(np.asarray(label).ravel(), minlength=2)
    present = [c for c in range(1, len(counts)) if counts[c] > 0]
    picks = []
    for c in sorted(present, key=lambda c: (counts[c], c))[:num]:
        area = (np.asarray(label) == c).sum(axis=(1, 2))
        picks.append((c, int(np.argmax(area))))
    return picks


def crop_box(mask: np.ndarray, size: int = CROP) -> tuple[slice, slice]:
    """A ``size`` x ``size`` window (smaller where the slice is) centred on the mask's centroid
    and shifted to stay inside the slice. ``mask``: (H, W) bool with at least one True."""
    out = []
    for axis, n in enumerate(mask.shape):
        s = min(size, n)
        centre = int(round(np.nonzero(mask)[axis].mean()))
        start = min(max(centre - s // 2, 0), n - s)
        out.append(slice(start, start + s))
    return out[0], out[1]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Image values to 0-255: the CT window :data:`HU_WINDOW` where the image has air (< -500,
    i.e. HU), else its own 1st-99th percentiles."""
    image = np.asarray(image, dtype=np.float32)
    if image.size and image.min() < -500:
        lo, hi = HU_WINDOW
    else:
        lo, hi = (np.percentile(image, [1, 99]) if image.size else (0.0, 1.0))
    return np.round(np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def extract(image: np.ndarray, label: np.ndarray, pred: np.ndarray, num: int = SLICES, size: int = CROP) -> dict:
    """The slices of one case (see the module doc). ``image``, ``label``, ``pred``: (D, H, W) on one
    grid. Returns arrays ``image`` / ``label`` / ``pred`` (K, h, w) uint8 (K <= num, crops of
    one size per case where the slice allows), ``organ`` (K,) and ``slice`` (K,) int; K = 0 for
    a label without organs."""
    image, label, pred = np.asarray(image), np.asarray(label), np.asarray(pred)
    if not image.shape == label.shape == pred.shape:
        raise ValueError(f"image {image.shape}, label {label.shape} and prediction {pred.shape} must share one grid")
    picks = pick_slices(label, num)
    side = (min(size, label.shape[1]), min(size, label.shape[2]))
    out = {k: np.zeros((len(picks), *side), np.uint8) for k in ("image", "label", "pred")}
    for i, (c, d) in enumerate(picks):
        rows, cols = crop_box(label[d] == c, size)
        out["image"][i] = to_uint8(image[d, rows, cols])
        out["label"][i] = label[d, rows, cols]
        out["pred"][i] = pred[d, rows, cols]
    out["organ"] = np.array([c for c, _ in picks], np.int64)
    out["slice"] = np.array([d for _, d in picks], np.int64)
    return out


def write_overlays(path: str | Path, cases: dict[str, dict], organs: list[str]) -> None:
    """Write ``{case id: extract(...)}`` and the organ names (class c = organs[c - 1]) as one
    compressed ``.npz`` (atomically: a temporary file renamed)."""
    path = Path(path)
    arrays = {"case_ids": np.array(list(cases), dtype=str), "organs": np.array(list(organs), dtype=str)}
    for i, slices in enumerate(cases.values()):
        arrays.update({f"{i}/{k}": v for k, v in slices.items()})
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def read_overlays(path: str | Path) -> tuple[dict[str, dict], list[str]]:
    """``({case id: slices}, organs)`` of a file written by :func:`write_overlays` (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        ids, organs = [str(c) for c in z["case_ids"]], [str(o) for o in z["organs"]]
        cases = {cid: {k: z[f"{i}/{k}"] for k in ("image", "label", "pred", "organ", "slice")} for i, cid in enumerate(ids)}
    return cases, organs


def _blend(gray: np.ndarray, label: np.ndarray, alpha: float) -> np.ndarray:
    rgb = np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)
    mask = label > 0
    colours = PALETTE[np.clip(label, 0, len(PALETTE) - 1)].astype(np.float32)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colours[mask]
    return rgb


def render(image: np.ndarray, label: np.ndarray, pred: np.ndarray, alpha: float = 0.5, gap: int = 2) -> np.ndarray:
    """One slice as an RGB picture (h, 3 w + 2 gap, 3) uint8: the image, the label over it, the
    prediction over it, in the radiological view (anterior up, patient's right on the left);
    class c in ``PALETTE[c]``. ``image`` uint8, ``label`` / ``pred`` integer, all (h, w) in the
    suite's layout (H = posterior->anterior, W = left->right)."""
    view = lambda a: np.asarray(a)[::-1, ::-1]  # noqa: E731 - anterior up, patient's right on the left
    gray, lab, prd = view(image), view(label), view(pred)
    panels = [np.repeat(gray[..., None], 3, axis=-1).astype(np.float32), _blend(gray, lab, alpha), _blend(gray, prd, alpha)]
    h = gray.shape[0]
    spacer = np.full((h, gap, 3), 255, np.float32)
    row = np.concatenate([panels[0], spacer, panels[1], spacer, panels[2]], axis=1)
    return np.round(row).astype(np.uint8)


def render_case(slices: dict, gap: int = 2) -> np.ndarray:
    """All slices of one case (``extract``'s output) stacked top to bottom: (K h + (K-1) gap, W, 3)."""
    rows = [render(slices["image"][i], slices["label"][i], slices["pred"][i]) for i in range(len(slices["organ"]))]
    if not rows:
        return np.zeros((1, 1, 3), np.uint8)
    spacer = np.full((gap, rows[0].shape[1], 3), 255, np.uint8)
    out = [rows[0]]
    for r in rows[1:]:
        out += [spacer, r]
    return np.concatenate(out, axis=0)
