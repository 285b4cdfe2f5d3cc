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


def dhc_schedule_step(step: int, epoch_length: int, schedule: str = "epoch") -> int:
    """The step whose lr / consistency weight DHC's loops have in force at ``step``: they set
    both once per epoch, at the end of epoch e - 1 from e - 1 (train_dhc.py:359-362 and every
    train_*.py of DHC), so epochs 0 and 1 run with epoch 0's values. ``schedule="step"``: ``step``.

    >>> [dhc_schedule_step(t, 3) for t in range(10)]
    [0, 0, 0, 0, 0, 0, 3, 3, 3, 6]
    """
    if schedule == "step":
        return step
    return max(step // epoch_length - 1, 0) * epoch_length


class DHCEpochSchedule:
    """Mixin of the methods that follow DHC's loops: :meth:`schedule_step` (used by the engine's
    poly lr and by the method's consistency weight) is :func:`dhc_schedule_step` of the method's
    ``schedule`` hyperparameter ("epoch" as released, "step" each step's own value)."""

    def schedule_step(self, step: int) -> int:
        return dhc_schedule_step(step, self.ctx.epoch_length, self.hp.schedule)  # type: ignore[attr-defined]
