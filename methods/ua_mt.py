"""UA-MT (Yu et al., MICCAI 2019): uncertainty-aware mean teacher, as in SSL4MIS / DHC's
``train_uamt.py``.

Mean Teacher (``methods/mean_teacher.py``: EMA 0.99 with warm start, noisy teacher input,
softmax-MSE consistency, (CE + Dice) / 2 supervision) whose consistency is masked by the
teacher's uncertainty: the unlabeled batch is passed ``T`` (8) times through the teacher with
noise ``clamp(0.1 N, ±0.2)``; u = entropy of the mean softmax (natural log, eps 1e-6); voxels
with ``u < ln 2 (0.75 + 0.25 sigmoid_rampup(t, T_run))`` enter

    L_u = Σ mask (softmax_s - softmax_t)^2 / (2 Σ mask + 1e-16)

(sum over classes in the numerator, voxels in the denominator: the released formula, written
for two classes and kept as is). As in DHC's script, the supervised Dice is its foreground-only
``SoftDiceLoss(smooth=1e-8)`` and the EMA warm start counts epochs (``ema_warmup``); the ramps
below are sampled every step (DHC updates them once an epoch: the same curve, in steps).

The threshold is a fraction (0.75 -> 1) of the maximum entropy, as the paper defines it. The
released code was written for binary LA segmentation and hard-codes that maximum as ln 2; DHC's
script keeps ln 2 for 14 classes, where almost every voxel of an untrained network (entropy up
to ln 14 = 2.64) is masked and the consistency stays silent early on. ``entropy_max="classes"``
(default) uses ln C; ``--set entropy_max=ln2`` reproduces the released scripts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses
from methods.ema import teacher_noise
from methods.losses import DiceVariant, ssl4mis_dice_ce_loss
from methods.mean_teacher import DHCMeanTeacher
from methods.ramps import sigmoid_rampup


def mean_entropy(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Entropy of the class distribution ``probs`` (B, C, ...) -> (B, 1, ...)."""
    return -(probs * torch.log(probs + eps)).sum(1, keepdim=True)


def masked_consistency(student_probs: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """UA-MT's ``Σ mask (p_s - p_t)^2 / (2 Σ mask + 1e-16)``; mask (B, 1, ...) broadcasts over C."""
    dist = (student_probs - teacher_probs) ** 2
    return (mask * dist).sum() / (2 * mask.sum() + 1e-16)


@register_method("ua_mt")
class UAMT(DHCMeanTeacher):
    """UA-MT: mean teacher with an entropy-masked consistency from T noisy teacher passes."""

    family = "mean teacher"
    paper = "Yu et al., UA-MT, MICCAI 2019"
    code = "xmed-lab/DHC"
    ddp_compatible = True  # training_step calls the student only as self.networks[k](x) (bench.distributed)
    #: DHC's train_uamt.py:164-170: SGD with Nesterov (the engine default, not SSL4MIS' plain
    #: momentum), weight decay 3e-5
    train_defaults = {"weight_decay": 3e-5}

    @dataclass
    class Hparams(DHCMeanTeacher.Hparams):
        passes: int = setting(8, ge=1)
        entropy_max: Literal["classes", "ln2"] = "classes"  # "classes": ln C; "ln2": as released (binary)
        #: DHC's train_uamt.py: SoftDiceLoss(smooth=1e-8), foreground classes only
        dice: DiceVariant = "foreground"
        #: DHC's train_uamt.py:217-218 leaves its Kaiming init commented out: PyTorch's default
        init: Literal["kaiming", "xavier", "default"] = "default"
        #: the EMA warm start min(1 - 1/(t + 1), decay) counts epochs in DHC's train_uamt.py
        #: (``update_ema_variables(..., epoch_num)``): the teacher copies the student for the
        #: whole first epoch; "step" counts steps (SSL4MIS, the suite's earlier behaviour)
        ema_warmup: Literal["epoch", "step"] = "epoch"

    def after_step(self, step: int) -> None:
        # MeanTeacher's EMA update, its warm start counted in epochs or steps
        super().after_step(step // self.ctx.epoch_length if self.hp.ema_warmup == "epoch" else step)

    def uncertainty_threshold(self, step: int) -> float:
        u_max = math.log(self.ctx.num_classes) if self.hp.entropy_max == "classes" else math.log(2)
        return (0.75 + 0.25 * sigmoid_rampup(step, self.ctx.iterations)) * u_max

    def uncertainty(self, x_u: torch.Tensor) -> torch.Tensor:
        """Entropy of the mean softmax over ``passes`` noisy teacher passes: (B, 1, ...)."""
        teacher = self.teachers["teacher"]
        mean = 0.0
        reps = max(1, self.hp.passes // 2)
        for _ in range(reps):  # as released: two noisy copies of the batch per pass
            p = torch.softmax(teacher(teacher_noise(x_u.repeat(2, 1, 1, 1, 1))).float(), 1)
            mean = mean + p[: x_u.shape[0]] + p[x_u.shape[0] :]
        return mean_entropy(mean / (2 * reps))

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        student, teacher = self.networks["net"], self.teachers["teacher"]
        n_l = labeled["image"].shape[0]
        if unlabeled is None:
            return super().training_step(labeled, unlabeled, step)
        x = torch.cat([labeled["image"], unlabeled["image"]])
        logits = student(x)
        sup = ssl4mis_dice_ce_loss(logits[:n_l], labeled["label"], dice=self.hp.dice)
        with torch.no_grad():
            t_probs = torch.softmax(teacher(teacher_noise(unlabeled["image"])).float(), 1)
            mask = (self.uncertainty(unlabeled["image"]) < self.uncertainty_threshold(step)).float()
        cons = masked_consistency(torch.softmax(logits[n_l:].float(), 1), t_probs, mask)
        w = self.consistency_weight(step)
        return Losses(sup + w * cons, {"sup": sup, "unsup": cons, "w_unsup": torch.tensor(w), "certain": mask.mean()})
