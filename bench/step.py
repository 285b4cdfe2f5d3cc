"""The one training step, shared by the training loop (``bench.train``) and ``bench perf``.

A step: the method's ``training_step`` under autocast, a finiteness check, backward (through a
GradScaler for fp16), gradient averaging across processes, optional clipping, the optimiser
step and the method's ``after_step`` (EMA teachers, running statistics). The AMP dtype and the
optimiser are chosen here and nowhere else.
"""

from __future__ import annotations

from typing import Callable

import torch

from bench.config import TrainConfig


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 where the GPU supports it, else fp16 (CUDA only)."""
    return torch.bfloat16 if (device.type == "cuda" and torch.cuda.is_bf16_supported()) else torch.float16


def amp_enabled(device: torch.device, amp: bool) -> bool:
    """AMP runs on CUDA only (a CPU run stays fp32)."""
    return bool(amp and device.type == "cuda")


def make_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    """SGD with the run's momentum, weight decay and Nesterov setting."""
    return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                           nesterov=train.nesterov and train.momentum > 0)


class TrainStep:
    """One optimisation step of ``method``.

    ``check(losses, step)`` runs after the forward pass (the loop stops on a non-finite loss
    there); ``average(params)`` after backward (distributed gradient averaging).
    """

    def __init__(self, method, optimizer: torch.optim.Optimizer, device: torch.device, amp: bool = True,
                 grad_clip: float = 0.0, check: Callable | None = None, average: Callable | None = None):
        self.method, self.optimizer, self.device = method, optimizer, device
        self.amp = amp_enabled(device, amp)
        self.dtype = amp_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.dtype == torch.float16)
        self.grad_clip, self.check, self.average = grad_clip, check, average

    def __call__(self, labeled: dict, unlabeled: dict | None, step: int):
        """Run step ``step`` on one batch; returns the method's ``Losses``."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
            losses = self.method.training_step(labeled, unlabeled, step)
        if self.check is not None:
            self.check(losses, step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.total).backward()
        if self.average is not None:
            self.average(self.method.parameters())
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step(step)
        return losses
