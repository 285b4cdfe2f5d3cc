"""The one scorer: a prediction against its label under a protocol.

Used by the run's test (``bench.train``), by ``bench evaluate`` and by anything else that
scores, so a number means the same wherever it was computed. Both maps are on the label's
native grid (the geometry of the source image, as ``bench run --save-predictions`` writes
them); the protocol decides the grid metrics use, distance units and the empty-organ rule.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from bench.core.metrics import case_metrics
from bench.core.protocol import Protocol


def score_case(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], protocol: Protocol,
               organs: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{organ: {"dice", "hd95", "asd", "assd", "nsd"}}`` of one case.

    ``pred``, ``gt``: (D, H, W) integer label maps on the label's grid (classes 0..len(organs));
    ``spacing``: that grid's (sD, sH, sW) in mm.
    """
    p, g, sp = protocol.evaluation_pair(np.asarray(pred), np.asarray(gt), spacing)
    if protocol.all_background == "zero" and not p.any():
        # TAK / GA's released test (utils/test_amos.py:42-43): an all-background prediction scores
        # 0 on every metric of every organ (no 128 distances, no Dice 1 for absent organs)
        return {o: {"dice": 0.0, "hd95": 0.0, "asd": 0.0, "assd": 0.0, "nsd": 0.0, "missed": bool((g == c).any())}
                for c, o in enumerate(organs, start=1)}
    per = case_metrics(p, g, sp, len(organs) + 1, empty_rule=protocol.empty_rule)
    return {organs[c - 1]: m for c, m in per.items()}


def penalty_distance(shape: Sequence[int], spacing: Sequence[float], protocol: Protocol) -> float:
    """The diagonal of a case's evaluation grid, in the protocol's distance unit (mm, or voxels):
    the distance ``bench report --missed-distance penalty`` gives an organ a prediction missed.

    ``shape``, ``spacing``: the label's native grid (D, H, W) and its spacing in mm.
    """
    grid, sp = protocol.evaluation_grid(shape, spacing)
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(grid, sp)))
