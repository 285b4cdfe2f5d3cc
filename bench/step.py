"""The one training step, shared by the training loop (``bench.train``) and ``bench perf``.

A step: the method's ``training_step`` under autocast, a finiteness check, backward (through a
GradScaler for fp16), gradient averaging across processes, optional clipping, the optimiser
steps and the method's ``after_step`` (EMA teachers, running statistics). The AMP dtype and the
default optimiser are chosen here and nowhere else. Across processes the gradients are averaged
either by DistributedDataParallel during backward (``ddp``: ``training_step`` runs with the
wrapped networks swapped in, :class:`bench.distributed.DDPNetworks`) or by the hand-written
``average`` after it (the reference, and every ``manual_optimization`` method).

Optimisers: by default one SGD over ``method.parameters()`` with the run's poly schedule. A
method may build its own (``Method.optimizers(train)``: named optimisers, each with its own
schedule), and may run backward and the optimiser steps itself (``manual_optimization``:
several backward passes per step, e.g. segmenters and critics), through the
:class:`StepControl` it gets as ``training_step``'s ``opt``; the engine keeps AMP, gradient
averaging, clipping, the finiteness check and the scaler update.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from bench.core.plan import TrainConfig
from methods.base import Losses


def amp_dtype(device: torch.device, amp: bool | str = True) -> torch.dtype:
    """The autocast dtype: fp16 for ``amp="fp16"`` (the released scripts' autocast with a
    GradScaler), else bf16 where the GPU supports it and fp16 where not (CUDA only)."""
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16 if (device.type == "cuda" and torch.cuda.is_bf16_supported()) else torch.float16


def amp_enabled(device: torch.device, amp: bool) -> bool:
    """AMP runs on CUDA only (a CPU run stays fp32)."""
    return bool(amp and device.type == "cuda")


def make_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    """SGD with the run's momentum, weight decay and Nesterov setting."""
    return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                           nesterov=train.nesterov and train.momentum > 0)


def poly_lr(base: float, step: int, horizon: int, power: float) -> float:
    """``base * (1 - step / horizon) ** power``, 0 from the horizon on."""
    return base * max(0.0, 1.0 - step / horizon) ** power


#: named optimisers, each with its schedule (step -> learning rate of all its parameter groups)
Optimizers = dict[str, tuple[torch.optim.Optimizer, Callable[[int], float]]]


def make_optimizers(method, train: TrainConfig) -> Optimizers:
    """The method's own optimisers (``method.optimizers(train)``), else ``{"main": (SGD over its
    parameters, poly schedule of the run)}``."""
    custom = method.optimizers(train)
    if custom is not None:
        if not custom:
            raise ValueError(f"{type(method).__name__}.optimizers() returned no optimiser")
        return dict(custom)
    horizon = train.horizon
    return {"main": (make_optimizer(method.parameters(), train),
                     lambda step: poly_lr(train.lr, method.schedule_step(step), horizon, train.poly_power))}


class TrainStep:
    """One optimisation step of ``method``.

    Args:
        method: the method (``methods.base.Method``).
        optimizers: a ``torch.optim.Optimizer`` (the default SGD: schedules are the caller's) or
            named ``(optimizer, schedule)`` pairs (:func:`make_optimizers`).
        check: ``check(losses, step)`` after the forward pass (the loop stops on a non-finite loss).
        average: ``average(params)`` after backward (distributed gradient averaging).
        ddp: the method's networks wrapped in DistributedDataParallel
            (:class:`bench.distributed.DDPNetworks`, from ``bench.distributed.wrap_networks``):
            ``training_step`` runs with them swapped in, DDP averages their gradients during
            backward, and ``average`` is then applied only to parameters outside them (none for
            the default optimiser), so no gradient is averaged twice. None: ``average`` alone.
    """

    def __init__(self, method, optimizers: torch.optim.Optimizer | Optimizers, device: torch.device, amp: bool | str = True,
                 grad_clip: float = 0.0, check: Callable | None = None, average: Callable | None = None, ddp=None):
        if ddp is not None and method.manual_optimization:
            raise ValueError(f"{type(method).__name__} runs its own backward passes (manual_optimization): "
                             "it trains on the hand-written gradient average, not under DDP")
        self.method, self.device, self.ddp = method, device, ddp
        if isinstance(optimizers, torch.optim.Optimizer):
            optimizers = {"main": (optimizers, lambda step, lr=optimizers.param_groups[0]["lr"]: lr)}
        self.optimizers = {k: o for k, (o, _) in optimizers.items()}
        self.schedules = {k: f for k, (_, f) in optimizers.items()}
        self.amp = amp_enabled(device, amp)
        self.dtype = amp_dtype(device, amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.dtype == torch.float16)
        self.grad_clip, self.check, self.average = grad_clip, check, average

    def set_lr(self, step: int) -> dict[str, float]:
        """Set every optimiser's learning rate for ``step`` by its schedule; returns them by name."""
        lrs = {}
        for name, opt in self.optimizers.items():
            lrs[name] = lr = self.schedules[name](step)
            for g in opt.param_groups:
                g["lr"] = lr
        return lrs

    def _params(self, opt: torch.optim.Optimizer) -> list:
        return [p for g in opt.param_groups for p in g["params"]]

    def _step(self, names) -> None:
        """Average, clip and apply the gradients of the optimisers ``names``."""
        for name in names:
            opt = self.optimizers[name]
            if self.average is not None:
                params = self._params(opt) if self.ddp is None else self.ddp.uncovered(self._params(opt))
                if params:
                    self.average(params)
            if self.grad_clip > 0:
                self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(self._params(opt), self.grad_clip)
            self.scaler.step(opt)

    def _forward(self):
        """Where ``training_step`` runs: with the DDP wrappers swapped in, or as it is."""
        return self.ddp.forward() if self.ddp is not None else contextlib.nullcontext()

    def __call__(self, labeled: dict, unlabeled: dict | None, step: int):
        """Run step ``step`` on one batch; returns the method's ``Losses``."""
        if self.method.manual_optimization:
            control = StepControl(self, step)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
                losses = self.method.training_step(labeled, unlabeled, step, control)
            if self.check is not None:
                self.check(losses, step)
        else:
            with self._forward(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
                losses = self.method.training_step(labeled, unlabeled, step)
            if self.ddp is not None:
                self.ddp.check_called()
            if self.check is not None:
                self.check(losses, step)
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            self.scaler.scale(losses.total).backward()
            self._step(list(self.optimizers))
        self.scaler.update()
        self.method.after_step(step)
        return losses


class StepControl:
    """What a ``manual_optimization`` method gets as ``opt`` in ``training_step``: backward passes
    and optimiser steps that go through the engine's AMP scaler, gradient averaging, clipping
    and finiteness check. Each optimiser steps at most once per training step."""

    def __init__(self, train_step: TrainStep, step: int):
        self._ts, self._step_no = train_step, step

    def zero_grad(self, *names: str) -> None:
        """Clear the gradients of the named optimisers' parameters (all optimisers without names)."""
        for name in names or tuple(self._ts.optimizers):
            self._ts.optimizers[name].zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, name: str = "loss", retain_graph: bool = False) -> None:
        """Check that ``loss`` is finite (named ``name`` in the error), then back-propagate it."""
        if self._ts.check is not None:
            self._ts.check(Losses(loss, {name: loss}), self._step_no)
        self._ts.scaler.scale(loss).backward(retain_graph=retain_graph)

    def step(self, *names: str) -> None:
        """Apply the gradients of the named optimisers (average across processes, clip, step)."""
        self._ts._step(names)
