"""CLD (Lin et al., 2022: "Calibrating label distribution for class-imbalanced barely-supervised
knee segmentation") on the CPS pair, as in DHC's ``train_cld.py``.

Each network keeps a confidence bank: conf_c = mean softmax probability of class c on the
labeled voxels of class c, accumulated over ``confs_iter`` (8) steps, then the first estimate
replaces the (random) initial one and later ones enter an EMA (momentum 0.999). The sampling
rate is ``r_c = ((1 - conf_c) / max_c' (1 - conf_c'))^gamma`` (gamma 0.5): poorly learnt classes
are sampled more. A voxel predicted as class c by a network enters that network's
cross-pseudo CE (against the other's argmax) with probability r_c (a Bernoulli mask). Both the
supervised Dice + CE and the cross CE carry the static weight ``(N_max / N_c)^(1/3)`` of the
labeled voxel counts (:class:`methods.class_weighting.InverseFrequency`).

As released: the masked CE is averaged over all voxels (masked ones count as zeros); network
B's bank starts as a copy of A's random initial confidences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import MethodContext, RunningState
from methods.class_weighting import InverseFrequency
from methods.cps import CoTraining, _initialised_pair


class ConfidenceBank(RunningState):
    """Per-class mean confidence on ground-truth voxels, block-averaged then EMA-smoothed.

    ``confs`` (C,) starts at ``initial``; ``record(logits, label)`` adds a batch
    (logits (B, C, ...), label (B, ...)); every ``update_iter`` records the block mean becomes
    the estimate (first block) or enters ``m confs + (1 - m) block`` (later blocks).
    """

    def __init__(self, initial: torch.Tensor, momentum: float = 0.999, update_iter: int = 8):
        self.confs = initial.clone().float()
        self.momentum = momentum
        self.update_iter = update_iter
        self.records = 0
        self.total = torch.zeros_like(self.confs)
        self.count = torch.zeros_like(self.confs)

    def record(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        c = logits.shape[1]
        prob = torch.softmax(logits.detach().float(), 1).movedim(1, -1).reshape(-1, c)
        lab = label.reshape(-1).long()
        self.total += torch.zeros(c, dtype=torch.float64, device=prob.device).index_add_(0, lab, prob.gather(1, lab[:, None])[:, 0].double()).float().cpu()
        self.count += torch.bincount(lab, minlength=c)[:c].float().cpu()
        self.records += 1
        if self.records % self.update_iter == 0:
            block = self.total / (self.count + 1e-12)
            self.confs = block if self.records <= self.update_iter else self.momentum * self.confs + (1 - self.momentum) * block
            self.total.zero_()
            self.count.zero_()


def sampling_rate(confs: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """``((1 - conf) / max(1 - conf))^gamma`` (C,)."""
    r = 1 - confs
    return (r / (r.max() + 1e-12)) ** gamma


def sampling_mask(logits: torch.Tensor, rate: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep each voxel predicted as class c with probability ``rate[c]``: (B, ...) float 0/1."""
    pred = logits.argmax(1)
    u = torch.rand(pred.shape, generator=generator, device=pred.device)
    return (u < rate.to(pred.device)[pred]).float()


@register_method("cld")
class CLD(CoTraining):
    """CLD: confidence-bank class-wise sampling of the cross-pseudo CE, on the CPS pair."""

    paper = "Lin et al., CLD, MICCAI 2022"

    @dataclass
    class Hparams(CoTraining.Hparams):
        init_b: Literal["kaiming", "xavier", "default"] = "xavier"  # DHC initialises its network B with Xavier-normal
        gamma: float = setting(0.5, ge=0.0)
        confs_iter: int = setting(8, ge=1)
        confs_momentum: float = setting(0.999, ge=0.0, le=1.0)

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        initial = torch.rand(ctx.num_classes)  # as released: random until the first block is in
        self.banks = {k: ConfidenceBank(initial, self.hp.confs_momentum, self.hp.confs_iter) for k in ("A", "B")}

    def make_weighting(self, ctx):
        return _initialised_pair(ctx, InverseFrequency)  # static: never updated

    def update_weights(self, out_A, out_B, label, n_l) -> None:
        self.banks["A"].record(out_A[:n_l], label)
        self.banks["B"].record(out_B[:n_l], label)

    def cps_loss(self, out_A, out_B, wA, wB, n_l: int) -> torch.Tensor:
        with torch.no_grad():
            mask_A = sampling_mask(out_A.detach(), sampling_rate(self.banks["A"].confs, self.hp.gamma))
            mask_B = sampling_mask(out_B.detach(), sampling_rate(self.banks["B"].confs, self.hp.gamma))
        max_A, max_B = out_A.detach().argmax(1), out_B.detach().argmax(1)
        ce_a = F.cross_entropy(out_A.float(), max_B, weight=wA, reduction="none") * mask_A
        ce_b = F.cross_entropy(out_B.float(), max_A, weight=wB, reduction="none") * mask_B
        return ce_a.mean() + ce_b.mean()

    def running_state(self) -> dict:
        return {**super().running_state(), "banks": {k: b.state_dict() for k, b in self.banks.items()}}

    def load_running_state(self, state: dict) -> None:
        super().load_running_state(state)
        for k, b in self.banks.items():
            b.load_state_dict(state["banks"][k])
