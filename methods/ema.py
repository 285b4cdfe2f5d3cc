"""Exponential-moving-average teachers."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of ``student`` that receives no gradient (parameters detached, requires_grad off)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int, buffers: str = "own") -> None:
    """teacher = a * teacher + (1 - a) * student with a = min(1 - 1/(step + 1), decay).

    The warm start (true average for the first steps) follows Mean Teacher / SSL4MIS. Parameters
    only, as every release's ``update_ema_variables`` (SSL4MIS train_mean_teacher_3D.py:72-76,
    DHC train_uamt.py:51-55): the teacher's buffers (BatchNorm running statistics) are its own,
    from its own forward passes (``buffers="own"``); ``"copy"`` copies the student's (the
    suite's earlier behaviour). In train mode BatchNorm normalises with batch statistics, so
    the choice changes no training output, only the teacher's running statistics.
    """
    alpha = min(1.0 - 1.0 / (step + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    if buffers == "copy":
        for t, s in zip(teacher.buffers(), student.buffers()):
            t.copy_(s)


def teacher_noise(x: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """The teacher's input perturbation of SSL4MIS / DHC / MagicNet: ``x + clamp(std N(0, 1), +-clip)``
    (same shape as ``x``)."""
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)
