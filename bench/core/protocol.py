"""The :class:`Protocol` record: preprocessing, grids and metric conventions of one evaluation
protocol, and the nearest / trilinear resizing it uses. The named protocols themselves
(``default``, ``dhc``, ``ga``) are registered in ``datasets/protocols.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bench.core.errors import UserError


@dataclass
class ProtocolOptions:
    """Switches of the protocol a run is scored under (``[protocol_options]`` in a config file,
    ``--set key=value`` on the command line); the same for every method of a run."""

    #: score an organ absent from prediction and label as DHC's released evaluation does (Dice
    #: 0.01: 1 on its x100 scale) instead of 1.0; ``dhc`` protocol only (docs/fidelity.md)
    released_empty_dice: bool = False
    #: score a prediction with no foreground at all 0 on every metric of every organ, as TAK's
    #: and GA's released test does (utils/test_amos.py:42-43); ``ga`` protocol only
    released_all_background: bool = False


@dataclass(frozen=True)
class Protocol:
    """Preprocessing and metric conventions. Patch size and iterations come from the preset
    or a published config (``configs/``), never from the protocol.

    ``resample``: ``None`` (native grid), ``("scale", (sD, sH, sW))`` or ``("shape", (D, H, W))``.
    ``eval_grid``: ``"native"`` (the prediction is brought back to the label's own grid) or
    ``"protocol"`` (the ground truth is resized to the protocol grid, or to ``eval_shape``).
    ``empty_rule``: ``"nan"`` (ours), ``"dhc"`` (0 / 128 and both-empty = 1) or ``"dhc_released"``
    (both-empty = 0.01, DHC's scale bug; :meth:`released_empty_dice`).
    ``stride`` / ``fusion``: test-time sliding window (per-axis stride in voxels; fusion of
    overlapping windows: averaged logits or averaged softmax probabilities).
    """

    name: str
    version: str
    window: tuple[float, float] = (-125.0, 275.0)
    norm: Literal["window", "minmax"] = "window"  # "window": (clip - lo) / (hi - lo); "minmax": clip, then per-volume min-max
    resample: tuple | None = None
    eval_grid: Literal["native", "protocol"] = "native"
    eval_shape: tuple[int, int, int] | None = None
    overlap: float = 0.5
    #: test-time window stride in voxels per axis (D, H, W), as the released pipelines give it;
    #: overrides ``overlap`` when set
    stride: tuple[int, int, int] | None = None
    sw_mode: Literal["gaussian", "constant"] = "gaussian"
    #: how overlapping windows are fused: "logits" (ours) or "softmax" (DHC, GALoss, TAK average
    #: softmax probabilities)
    fusion: Literal["logits", "softmax"] = "logits"
    distance_unit: Literal["mm", "voxel"] = "mm"
    empty_rule: Literal["nan", "dhc", "dhc_released"] = "nan"
    #: the order of the intensity steps: "normalize_first" (clip and normalise on the native grid,
    #: then resample; ours) or "resample_first" (resample the raw HU, then clip and normalise:
    #: DHC's AMOS preprocessing, preprocess_amos.py:36-49)
    order: Literal["normalize_first", "resample_first"] = "normalize_first"
    #: a prediction with no foreground at all: "per_organ" (each organ by ``empty_rule``) or
    #: "zero" (every metric of every organ 0: TAK / GA's released test)
    all_background: Literal["per_organ", "zero"] = "per_organ"

    def with_options(self, options: ProtocolOptions) -> Protocol:
        """This protocol with the run's protocol options applied (:class:`ProtocolOptions`).

        Raises:
            UserError: an option this protocol does not have.
        """
        out = self.released_empty_dice() if options.released_empty_dice else self
        if options.released_all_background:
            if self.name != "ga":
                raise UserError(f"released_all_background applies to the ga protocol (TAK's and GA's test), not to {self.name!r}; "
                                "use --protocol ga or drop the switch")
            out = dataclasses.replace(out, all_background="zero")
        return out

    def released_empty_dice(self) -> Protocol:
        """This protocol scoring an organ absent from prediction and label as DHC's released
        evaluation does: 1 on its x100 scale, i.e. Dice 0.01 (``--set released_empty_dice=true``)."""
        if self.empty_rule != "dhc" or self.name != "dhc":
            raise UserError(f"released_empty_dice applies to the dhc protocol (DHC's evaluation), not to {self.name!r}; "
                            "use --protocol dhc or drop the switch")
        return dataclasses.replace(self, empty_rule="dhc_released")

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
        """Normalised image on the protocol grid (D', H', W') float32 (in the protocol's ``order``)."""
        g = self.grid_shape(image.shape)
        if self.order == "resample_first":
            raw = np.asarray(image, dtype=np.float32)
            if not np.isfinite(raw).all():
                raise UserError(f"{name} contains NaN or infinite values; fix or re-export that image")
            return self.normalize(raw if g == raw.shape else resize(raw, g, "trilinear"), name)
        img = self.normalize(image, name)
        return img if g == img.shape else resize(img, g, "trilinear")

    def prepare_label(self, label: np.ndarray) -> np.ndarray:
        """Label map on the protocol grid (nearest)."""
        g = self.grid_shape(label.shape)
        return np.asarray(label) if g == label.shape else resize(label, g, "nearest")

    def to_native(self, pred: np.ndarray, shape) -> np.ndarray:
        """A prediction on the protocol grid (D', H', W') -> label map on the native grid ``shape``.

        Nearest upsampling, with one guarantee: every native voxel that the evaluation's own
        nearest resize (native -> evaluation grid) samples holds exactly the grid prediction,
        so scoring the native map under this protocol reproduces scoring the grid prediction
        wherever the evaluation grid is not finer than the native one.
        """
        shape = tuple(int(s) for s in shape)
        if tuple(pred.shape) == shape:
            return np.asarray(pred)
        out = resize(pred, shape, "nearest")
        if self.eval_grid == "protocol" and tuple(self.eval_shape or self.grid_shape(shape)) == tuple(pred.shape):
            idx = [nearest_source_index(n, g) for n, g in zip(shape, pred.shape)]
            out[np.ix_(*idx)] = pred
        return out

    def evaluation_pair(self, pred: np.ndarray, gt: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray, tuple]:
        """(prediction, ground truth, spacing for distances) on the grid metrics use.

        ``pred`` and ``gt`` are label maps on the native grid, ``spacing`` is native (mm).
        """
        gt = np.asarray(gt)
        if tuple(pred.shape) != tuple(gt.shape):
            raise UserError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(gt.shape)}; "
                            f"a prediction must be on its label's grid")
        shape, sp = self.evaluation_grid(gt.shape, spacing)
        p = pred if tuple(pred.shape) == shape else resize(pred, shape, "nearest")
        g = gt if tuple(gt.shape) == shape else resize(gt, shape, "nearest")
        return p, g, sp

    def evaluation_grid(self, shape, spacing) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """(shape, spacing in the distance unit) of the grid metrics use, for a label of native
        ``shape`` (D, H, W) and ``spacing`` (mm)."""
        shape = tuple(int(n) for n in shape)
        if self.eval_grid == "native":
            grid, sp = shape, tuple(float(s) for s in spacing)
        else:
            grid = tuple(self.eval_shape or self.grid_shape(shape))
            sp = tuple(float(s) * a / b for s, a, b in zip(spacing, shape, grid))
        return grid, ((1.0, 1.0, 1.0) if self.distance_unit == "voxel" else sp)

    def window_overlap(self, patch) -> float | tuple[float, ...]:
        """The overlap to give MONAI's sliding window for ``patch``: per axis where the protocol
        has a stride (MONAI's step is ``int(patch * (1 - overlap))``, so 1 - stride / patch
        computed in floats can land one voxel short: 1 - 16/96 gives 15), else ``overlap``."""
        if self.stride is None:
            return self.overlap
        return tuple(max(0.0, 1.0 - (s + 0.5) / p) if s < p else 0.0 for s, p in zip(self.stride, patch))

    def describe(self) -> dict:
        """Every field as plain JSON data (tuples as lists), in field order: what a run's config
        records and hashes, so a new field always enters the hash."""
        def plain(v):
            return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


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


def nearest_source_index(n: int, g: int) -> np.ndarray:
    """Indices into an axis of length ``n`` that :func:`resize` (nearest) samples for length ``g``."""
    import torch
    import torch.nn.functional as F

    ramp = torch.arange(n, dtype=torch.float32)[None, None]
    return F.interpolate(ramp, size=int(g), mode="nearest")[0, 0].numpy().astype(np.int64)
