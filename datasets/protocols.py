"""Evaluation protocols: named, versioned bundles of preprocessing and metric conventions.

A protocol fixes what happens between the stored CT (HU, native grid, RAS) and a number in a
table: intensity window and normalisation, resampling of the training/inference grid, the
grid on which metrics are computed, distance units, the empty-organ rule and the
sliding-window overlap. Factories receive the dataset name, because published pipelines
resample Synapse and AMOS differently.

* ``default`` (ours): window [-125, 275] HU scaled to [0, 1], native resolution, metrics on the
  native label grid in mm; organ empty on both sides = NaN (not counted), one side empty =
  Dice 0 and no distance (NaN).
* ``dhc`` (DHC / GenericSSL, so DHC's numbers can be matched): clip [-75, 275] then min-max;
  Synapse halves H and W (trilinear / nearest), AMOS volumes are resized to 80x160x160;
  metrics on that grid, ASD in voxels (medpy without spacing); one side empty: Dice 0,
  ASD 128; both empty: Dice 1. Sliding window stride (16, 32, 32) on a 64x128x128 patch =
  overlap 0.75, plain averaging. DHC's AMOS evaluation resizes the ground truth to
  72x144x144, which does not match its own 80x160x160 predictions (a defect); here both are
  on the 80x160x160 grid.
* ``ga`` (GALoss / MagicNet / TAK): clip [-125, 275], (x + 125) / 400; native grid for
  training and inference (96^3 patches, stride 16 = overlap 5/6, plain averaging); prediction
  and ground truth nearest-resized to 80x160x160 (TAK: "as DHC"); medpy Dice and ASD in
  voxels; the 0 / 128 rule for one empty side, Dice 1 when both are empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.errors import UserError
from bench.registry import register_protocol

#: the published empty-organ rule of DHC and TAK: distance when one side is empty
DHC_EMPTY_DISTANCE = 128.0


@dataclass(frozen=True)
class Protocol:
    """Preprocessing and metric conventions. Patch size and iterations come from the preset
    or a published config (``configs/``).

    ``resample``: ``None`` (native grid), ``("scale", (sD, sH, sW))`` or ``("shape", (D, H, W))``.
    ``eval_grid``: ``"native"`` (the prediction is brought back to the label's own grid) or
    ``"protocol"`` (the ground truth is resized to the protocol grid, or to ``eval_shape``).
    ``empty_rule``: ``"nan"`` (ours) or ``"dhc"`` (0 / 128 and both-empty = 1).
    """

    name: str
    version: str
    window: tuple[float, float] = (-125.0, 275.0)
    norm: str = "window"  # "window": (clip - lo) / (hi - lo); "minmax": clip, then per-volume min-max
    resample: tuple | None = None
    eval_grid: str = "native"
    eval_shape: tuple[int, int, int] | None = None
    overlap: float = 0.5
    sw_mode: str = "gaussian"
    distance_unit: str = "mm"
    empty_rule: str = "nan"
    patch: tuple[int, int, int] | None = None  # the published patch (informative; configs set it)

    # -- intensities ----------------------------------------------------------------------
    def normalize(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Clip to the window and scale; (D, H, W) float32."""
        lo, hi = self.window
        if not np.isfinite(image).all():
            raise UserError(f"{name} contains NaN or infinite values; fix or re-export that image")
        out = np.clip(np.asarray(image, dtype=np.float32), lo, hi)
        if self.norm == "minmax":
            mn, mx = float(out.min()), float(out.max())
            return ((out - mn) / max(mx - mn, 1e-8)).astype(np.float32)
        return ((out - lo) / (hi - lo)).astype(np.float32)

    # -- grids ----------------------------------------------------------------------------
    def grid_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Shape of the training / inference grid for a native ``shape`` (D, H, W)."""
        if self.resample is None:
            return tuple(int(s) for s in shape)  # type: ignore[return-value]
        kind, value = self.resample
        if kind == "scale":
            return tuple(max(1, int(round(s * f))) for s, f in zip(shape, value))  # type: ignore[return-value]
        return tuple(int(v) for v in value)  # type: ignore[return-value]

    def grid_spacing(self, shape, spacing) -> tuple[float, float, float]:
        g = self.grid_shape(shape)
        return tuple(float(sp) * s / n for sp, s, n in zip(spacing, shape, g))  # type: ignore[return-value]

    def prepare_image(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Normalised image on the protocol grid (D', H', W') float32."""
        img = self.normalize(image, name)
        g = self.grid_shape(img.shape)
        return img if g == img.shape else resize(img, g, "trilinear")

    def prepare_label(self, label: np.ndarray) -> np.ndarray:
        """Label map on the protocol grid (nearest)."""
        g = self.grid_shape(label.shape)
        return np.asarray(label) if g == label.shape else resize(label, g, "nearest")

    def evaluation_pair(self, pred: np.ndarray, gt: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray, tuple]:
        """(prediction, ground truth, spacing for distances) on the grid metrics use.

        ``pred`` is on the protocol grid, ``gt`` and ``spacing`` are native.
        """
        gt = np.asarray(gt)
        if self.eval_grid == "native":
            p = pred if pred.shape == gt.shape else resize(pred, gt.shape, "nearest")
            g, sp = gt, tuple(spacing)
        else:
            shape = self.eval_shape or self.grid_shape(gt.shape)
            p = pred if pred.shape == tuple(shape) else resize(pred, shape, "nearest")
            g = gt if gt.shape == tuple(shape) else resize(gt, shape, "nearest")
            sp = tuple(float(s) * a / b for s, a, b in zip(spacing, gt.shape, shape))
        if self.distance_unit == "voxel":
            sp = (1.0, 1.0, 1.0)
        return p, g, sp

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "window": list(self.window),
            "norm": self.norm,
            "resample": None if self.resample is None else [self.resample[0], list(self.resample[1])],
            "eval_grid": self.eval_grid,
            "eval_shape": None if self.eval_shape is None else list(self.eval_shape),
            "overlap": self.overlap,
            "sw_mode": self.sw_mode,
            "distance_unit": self.distance_unit,
            "empty_rule": self.empty_rule,
            "patch": None if self.patch is None else list(self.patch),
        }


def resize(array: np.ndarray, shape, mode: str) -> np.ndarray:
    """Resize a (D, H, W) array: ``trilinear`` (images, float32) or ``nearest`` (labels, dtype kept).

    Nearest follows PyTorch's ``F.interpolate(mode="nearest")``, as the published pipelines use.
    """
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if mode == "nearest":
        out = F.interpolate(t, size=tuple(int(s) for s in shape), mode="nearest")[0, 0].numpy()
        return out.astype(np.asarray(array).dtype)
    return F.interpolate(t, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)[0, 0].numpy()


def _kind(dataset: str | None) -> str:
    d = (dataset or "").lower()
    return "amos" if "amos" in d else "synapse"


@register_protocol("default")
def default_protocol(dataset: str | None = None) -> Protocol:
    """Ours: window [-125, 275] HU, native resolution, metrics in mm, empty-on-both = NaN."""
    return Protocol(name="default", version="1")


@register_protocol("dhc")
def dhc_protocol(dataset: str | None = None) -> Protocol:
    """DHC's pipeline: clip [-75, 275] + min-max; Synapse H, W halved / AMOS 80x160x160; ASD in voxels; 0/128 rule."""
    resample = ("shape", (80, 160, 160)) if _kind(dataset) == "amos" else ("scale", (1.0, 0.5, 0.5))
    return Protocol(name="dhc", version="1", window=(-75.0, 275.0), norm="minmax", resample=resample,
                    eval_grid="protocol", overlap=0.75, sw_mode="constant", distance_unit="voxel",
                    empty_rule="dhc", patch=(64, 128, 128))


@register_protocol("ga")
def ga_protocol(dataset: str | None = None) -> Protocol:
    """GALoss/TAK's pipeline: clip [-125, 275] / 400, native grid, 96^3 patches, evaluation at 80x160x160 in voxels."""
    return Protocol(name="ga", version="1", window=(-125.0, 275.0), norm="window", resample=None,
                    eval_grid="protocol", eval_shape=(80, 160, 160), overlap=1 - 16 / 96, sw_mode="constant",
                    distance_unit="voxel", empty_rule="dhc", patch=(96, 96, 96))
