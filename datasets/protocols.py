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

from bench.core.protocol import Protocol
from bench.core.registry import register_protocol


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
