"""Mean Teacher (Tarvainen & Valpola, 2017) as in SSL4MIS ``train_mean_teacher_3D.py``.

* student on labeled + unlabeled images; supervised loss (CE + Dice) / 2 on the labeled half;
* teacher = EMA of the student (decay 0.99, warm start ``min(1 - 1/(t+1), 0.99)``), fed the
  unlabeled images plus noise ``clamp(0.1 N(0, 1), -0.2, 0.2)``;
* consistency = MSE between student and teacher softmax on the unlabeled half, weighted by
  ``consistency * sigmoid_rampup(iter // 150, 200)`` as SSL4MIS (a staircase over its
  30k-iteration run; at the quick preset's 600 steps the weight stays below 0.001, as the
  released script's would); ``consistency_epoch="run"`` ramps continuously over
  ``consistency_rampup`` x the run instead (the suite's earlier ramp);
* the teacher is a second, independently initialised network (SSL4MIS calls its factory twice);
  at step 0 the warm start makes it a copy of the student (``teacher_init="copy"``: a copy from
  the start, the suite's earlier behaviour);
* the lr of step t is the poly value of step t - 1 (SSL4MIS sets it after the step; ``lr_lag=0``
  uses step t's own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bench.core.registry import register_method
from bench.core.settings import setting
from methods import supervised
from methods.base import Losses, MethodContext
from methods.ema import ema_update, make_teacher, teacher_noise
from methods.losses import DiceVariant, softmax_mse, ssl4mis_dice_ce_loss
from methods.ramps import DHCEpochSchedule, sigmoid_rampup
from methods.supervised import BackboneHparams, Supervised


@register_method("mean_teacher")
class MeanTeacher(Supervised):
    """Mean Teacher: EMA teacher, noisy teacher input, sigmoid-ramped softmax-MSE consistency."""

    family = "mean teacher"
    paper = "Tarvainen & Valpola, Mean Teacher, NeurIPS 2017"
    code = "HiLab-git/SSL4MIS"

    uses_unlabeled = True
    ddp_compatible = True  # training_step calls the student only as self.networks[k](x) (bench.distributed)
    #: SSL4MIS train_mean_teacher_3D.py:121: SGD(momentum 0.9, weight_decay 1e-4), no Nesterov
    train_defaults = {"nesterov": False}

    @dataclass
    class Hparams(BackboneHparams):
        ema_decay: float = setting(0.99, ge=0.0, le=1.0)
        consistency: float = setting(0.1, ge=0.0)
        #: with consistency_epoch="run": the fraction of the run the ramp takes
        consistency_rampup: float = setting(1.0, ge=0.0)
        #: the ramp sigmoid_rampup(step // consistency_epoch, consistency_rampup_epochs)
        #: (SSL4MIS train_mean_teacher_3D.py:155: iter // 150, 200), or "run": continuous over
        #: consistency_rampup x the run
        consistency_epoch: int | Literal["run"] = setting(150, ge=1)
        consistency_rampup_epochs: float = setting(200.0, gt=0.0)
        #: "independent": the teacher is a second random init (SSL4MIS :95-96); "copy": a copy of the student
        teacher_init: Literal["independent", "copy"] = "independent"
        #: step t trains with the poly lr of step t - lr_lag (SSL4MIS :164 sets it after the step)
        lr_lag: int = setting(1, ge=0)
        #: SSL4MIS' DiceLoss: squared denominators Σ p² + Σ y² over all classes (released);
        #: "linear" is the suite's earlier loss
        dice: DiceVariant = "squared"
        #: the teacher's BatchNorm statistics: its own (every release averages parameters only)
        #: or "copy" of the student's (the suite's earlier behaviour)
        ema_buffers: Literal["own", "copy"] = "own"

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        independent = self.hp.teacher_init == "independent"
        self.teachers["teacher"] = make_teacher(self.build_teacher_source() if independent else self.networks["net"])

    def build_teacher_source(self) -> torch.nn.Module:
        """A second network built like the student (its own random draws), for the teacher."""
        return supervised.build_vnet(self.ctx, self.hp)

    def consistency_weight(self, step: int) -> float:
        if self.hp.consistency_epoch == "run":
            return self.hp.consistency * sigmoid_rampup(step, self.hp.consistency_rampup * self.ctx.iterations)
        return self.hp.consistency * sigmoid_rampup(step // self.hp.consistency_epoch, self.hp.consistency_rampup_epochs)

    def schedule_step(self, step: int) -> int:
        return max(step - self.hp.lr_lag, 0)

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        student, teacher = self.networks["net"], self.teachers["teacher"]
        n_l = labeled["image"].shape[0]
        x = torch.cat([labeled["image"], unlabeled["image"]]) if unlabeled is not None else labeled["image"]
        logits = student(x)
        sup = ssl4mis_dice_ce_loss(logits[:n_l], labeled["label"], dice=self.hp.dice)
        if unlabeled is None:
            return Losses(sup, {"sup": sup})
        with torch.no_grad():
            t_logits = teacher(teacher_noise(unlabeled["image"]))
        cons = softmax_mse(logits[n_l:], t_logits)
        w = self.consistency_weight(step)
        return Losses(sup + w * cons, {"sup": sup, "unsup": cons, "w_unsup": torch.tensor(w)})

    def after_step(self, step: int) -> None:
        ema_update(self.teachers["teacher"], self.networks["net"], self.hp.ema_decay, step, self.hp.ema_buffers)

    @staticmethod
    def search_space(trial) -> dict:
        return {
            **Supervised.search_space(trial),
            "ema_decay": trial.suggest_float("ema_decay", 0.9, 0.999),
            "consistency": trial.suggest_float("consistency", 0.01, 1.0, log=True),
        }


class DHCMeanTeacher(DHCEpochSchedule, MeanTeacher):
    """Base of DHC's mean-teacher scripts (ua_mt, acisis; not registered): not SSL4MIS' loop -
    no iter // 150 staircase and no one-step lr lag; lr and consistency weight are set once per
    epoch, one epoch late (``schedule``, as the DHC family). Like SSL4MIS they build the EMA
    model as a second network (train_uamt.py:215, train_acisis.py:360-362):
    ``teacher_init="independent"``."""

    @dataclass
    class Hparams(MeanTeacher.Hparams):
        consistency_epoch: int | Literal["run"] = setting("run", ge=1)
        lr_lag: int = setting(0, ge=0)
        schedule: Literal["epoch", "step"] = "epoch"

    def consistency_weight(self, step: int) -> float:
        """DHC's get_current_consistency_weight of the epoch in force (continuous over the run
        with ``schedule="step"``)."""
        return super().consistency_weight(self.schedule_step(step))
