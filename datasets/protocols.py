"""Evaluation protocols: named, versioned bundles of preprocessing and metric conventions.

A protocol fixes what happens between the stored CT (HU, native grid, RAS) and a number in a
table: intensity window and normalisation, resampling of the training/inference grid, the
grid on which metrics are computed, distance units, the empty-organ rule and the
sliding-window overlap. Factories receive the dataset name, because published pipelines
resample Synapse and AMOS differently.

* ``default`` (ours): window [-125, 275] HU scaled to [0, 1], native resolution, metrics on the
  native label grid in mm; organ empty on both sides = NaN (not counted), one side empty =
  Dice 0 and no distance (NaN).
* ``dhc`` (DHC, so DHC's numbers can be matched; GenericSSL evaluates Synapse on 80x160x160
  instead): clip [-75, 275] then min-max; Synapse halves H and W (trilinear / nearest), AMOS
  volumes are resized to 80x160x160 for training and inference; metrics on the Synapse grid /
  on 72x144x144 for AMOS (DHC's evaluation resizes the AMOS ground truth to 72x144x144, and
  medpy's Dice would fail on 80x160x160 predictions, so its published AMOS numbers come from
  that grid: the prediction is nearest-resized to it too - an assumption about its pipeline,
  docs/fidelity.md); ASD in voxels (medpy without spacing); one side empty: Dice 0, ASD 128;
  both empty: Dice 1 (DHC writes 1 on its x100 scale, a scale bug we do not copy). Test-time
  sliding window: stride 16 along D, 32 in-plane, softmax probabilities averaged with equal
  weights, as DHC's test.py.
* ``genericssl`` (GenericSSL's A&D, same authors as DHC): the whole volume resized to
  80x160x160 from raw HU (trilinear / nearest, preprocess_synapse.py), then clip [-75, 275] and
  min-max (utils/__init__.py read_data); training, inference and metrics on that grid (its
  evaluate.py reads the resized labels); test stride 4 along D and 16 in-plane (test.py
  ``--speed 0``: (16, 4), z along D after its transpose), softmax averaged; DHC's ASD in voxels
  and 0/128 rule.
* ``ga`` (GALoss / MagicNet / TAK): clip [-125, 275], (x + 125) / 400; native grid for
  training and inference (96^3 patches; test stride 16 along D and 32 in-plane, softmax
  probabilities averaged, as TAK's test); prediction and ground truth nearest-resized to
  80x160x160 (TAK: "as DHC"); medpy Dice and ASD in voxels; the 0 / 128 rule for one empty
  side, Dice 1 when both are empty. GA ships pre-built h5 files: its intensity step for
  Synapse and its AMOS grid are assumptions (docs/fidelity.md).
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
    amos = _kind(dataset) == "amos"
    resample = ("shape", (80, 160, 160)) if amos else ("scale", (1.0, 0.5, 0.5))
    # AMOS: DHC resizes the raw HU to 80x160x160, then clips and min-max normalises
    # (preprocess_amos.py:36-49, data_loaders.py:48-49); its Synapse order is not public (ours)
    return Protocol(name="dhc", version="3" if amos else "2", window=(-75.0, 275.0), norm="minmax", resample=resample,
                    eval_grid="protocol", eval_shape=(72, 144, 144) if amos else None, overlap=0.75,
                    stride=(16, 32, 32), sw_mode="constant", fusion="softmax", distance_unit="voxel", empty_rule="dhc",
                    order="resample_first" if amos else "normalize_first")


@register_protocol("genericssl")
def genericssl_protocol(dataset: str | None = None) -> Protocol:
    """GenericSSL's pipeline (A&D): resize to 80x160x160, clip [-75, 275] + min-max, metrics on that grid in voxels."""
    return Protocol(name="genericssl", version="1", window=(-75.0, 275.0), norm="minmax", resample=("shape", (80, 160, 160)),
                    eval_grid="protocol", eval_shape=None, overlap=0.75, stride=(4, 16, 16), sw_mode="constant",
                    fusion="softmax", distance_unit="voxel", empty_rule="dhc", order="resample_first")


@register_protocol("ga")
def ga_protocol(dataset: str | None = None) -> Protocol:
    """GALoss/TAK's pipeline: clip [-125, 275] / 400, native grid, 96^3 patches, evaluation at 80x160x160 in voxels."""
    return Protocol(name="ga", version="2", window=(-125.0, 275.0), norm="window", resample=None,
                    eval_grid="protocol", eval_shape=(80, 160, 160), overlap=1 - 16 / 96, stride=(16, 32, 32), sw_mode="constant",
                    fusion="softmax", distance_unit="voxel", empty_rule="dhc")
