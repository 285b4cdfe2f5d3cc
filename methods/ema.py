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
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int) -> None:
    """teacher = a * teacher + (1 - a) * student with a = min(1 - 1/(step + 1), decay).

    The warm start (true average for the first steps) follows Mean Teacher / SSL4MIS. Buffers
    (BatchNorm running statistics) are copied from the student.
    """
    alpha = min(1.0 - 1.0 / (step + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def teacher_noise(x: torch.Tensor, std: float = 0.1, clip: float = 0.2) -> torch.Tensor:
    """The teacher's input perturbation of SSL4MIS / DHC / MagicNet: ``x + clamp(std N(0, 1), +-clip)``
    (same shape as ``x``)."""
    return x + torch.clamp(torch.randn_like(x) * std, -clip, clip)
