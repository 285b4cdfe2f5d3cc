"""Ramp-up schedules used by consistency-based methods."""

from __future__ import annotations

import math


def sigmoid_rampup(current: float, length: float) -> float:
    """exp(-5 (1 - t)^2) with t = clip(current / length, 0, 1) (Laine & Aila, 2017).

    >>> sigmoid_rampup(0, 10), sigmoid_rampup(10, 10)
    (0.006737946999085467, 1.0)
    """
    if length == 0:
        return 1.0
    t = min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))
