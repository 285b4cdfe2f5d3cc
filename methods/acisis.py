"""ACISIS (Basak et al., "Addressing class imbalance in semi-supervised image segmentation: a
study on cardiac MRI", MICCAI 2022), as in DHC's ``train_acisis.py``.

A mean teacher (EMA 0.99 with warm start; the teacher sees the clean unlabeled images) whose
student learns the teacher's argmax on the unlabeled images through a voxel-sampled CE. The
sampling rate of each class comes from three indicators measured on the labeled batch and
accumulated over ``update_iter`` steps (DHC: one epoch = unlabeled cases / unlabeled batch):

* entropy-like  e_c = mean over voxels of class c of  p_c Σ_k log p_k,
* confidence    q_c = mean p_c on voxels of class c,
* variance      v_c = mean (max_k p_k - p_c) on voxels of class c.

With R = softmax over classes of the three (3, C) averages, the Gompertz ranks
``G = 1 - exp(-exp(-2 R))`` are kept for each indicator's ``top_m`` (12) smallest values and
replaced by the penalty 0.632 elsewhere (K); the fuzzy-rank fusion is
``CC = (1 - Σ_i R'_i / 3) Σ_i K_i`` with R' = R where K kept it and 0 elsewhere; CC / max CC
enters an EMA (momentum 0.99, from 0) and the sampling rate is
``((1 - CC) / max(1 - CC))^2.5`` (starts at 1). A voxel predicted (by the student) as class c
is kept with that class's rate, and its CE weight is ``max_k p_k^1.5``; the masked CE is
averaged over all voxels. Supervision: DHC's Dice + CE (``methods.losses.dhc_dc_ce_loss``).

The indicators are computed per image. DHC's ``record_data`` multiplies (B, D, H, W) maps by a
(B, 1, D, H, W) label mask, which broadcasts to (B, B, ...): every image is paired with every
label map and the sums grow about B-fold (a released bug; ``--set released_acisis_broadcast=true``
reproduces it). Deviation: DHC passes the epoch, not the step, to the EMA warm start (so its
teacher copies the student for the whole first epoch); the step is used here, as in SSL4MIS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses, MethodContext, RunningState
from methods.losses import dhc_dc_ce_loss
from methods.mean_teacher import DHCMeanTeacher

P_FR = 0.632  # penalty rank
P_CCF = 0.0  # penalty confidence factor


def fuzzy_rank_fusion(indicators: torch.Tensor, top_m: int = 12) -> torch.Tensor:
    """ACISIS's fusion of normalised indicators ``indicators`` (H, C) -> CC (C,) (not yet / max)."""
    gomp = 1 - torch.exp(-torch.exp(-2.0 * indicators.double()))
    top = min(top_m, indicators.shape[1])
    kth = torch.sort(gomp, dim=1).values[:, top - 1 : top]  # the top_m-th smallest per row
    kept = gomp <= kth
    k = torch.where(kept, gomp, torch.full_like(gomp, P_FR))
    cf = torch.where(kept, indicators.double(), torch.full_like(gomp, P_CCF))
    cfs = 1 - cf.sum(0) / indicators.shape[0]
    return (cfs * k.sum(0)).float()


class ClassIndicators(RunningState):
    """Accumulates the three per-class indicators on labeled batches; every ``update_iter``
    records it refreshes the sampling rate (see module docstring)."""

    def __init__(self, num_classes: int, update_iter: int, momentum: float = 0.99, top_m: int = 12, lam: float = 2.5,
                 released_broadcast: bool = False):
        self.num_classes, self.update_iter, self.momentum, self.top_m, self.lam = num_classes, max(1, update_iter), momentum, top_m, lam
        self.released_broadcast = released_broadcast
        self.sums = torch.zeros(3, num_classes)
        self.records = 0
        self.cc = torch.zeros(num_classes)
        self.rate = torch.ones(num_classes)

    def record(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        """Add one labeled batch: logits (B, C, D, H, W), label (B, D, H, W)."""
        c = self.num_classes
        lab = label.reshape(-1).long()
        n = torch.bincount(lab, minlength=c)[:c].double() + 1e-12
        if self.released_broadcast:
            self._record_broadcast(logits, label, n)
        else:
            p = torch.softmax(logits.detach().float(), 1).movedim(1, -1).reshape(-1, c)
            pc = p.gather(1, lab[:, None])[:, 0]
            ent = pc * torch.log(p + 1e-12).sum(1)
            var = p.max(1).values - pc
            for row, v in enumerate((ent, pc, var)):
                self.sums[row] += (torch.zeros(c, dtype=torch.float64, device=p.device).index_add_(0, lab, v.double()).cpu() / n.cpu()).float()
        self.records += 1
        if self.records == self.update_iter:
            r = torch.softmax(self.sums / self.records, dim=1)
            cur = fuzzy_rank_fusion(r, self.top_m)
            cur = cur / cur.max()
            self.cc = self.momentum * self.cc + (1 - self.momentum) * cur
            rate = 1 - self.cc
            self.rate = (rate / (rate.max() + 1e-12)) ** self.lam
            self.sums.zero_()
            self.records = 0


    def _record_broadcast(self, logits: torch.Tensor, label: torch.Tensor, n: torch.Tensor) -> None:
        """DHC's sums: sum over image pairs (b, b') of image b's map times image b''s class-c
        mask, i.e. per voxel (sum over images of the map) x (number of images labelled c there)."""
        c = self.num_classes
        b = logits.shape[0]
        p = torch.softmax(logits.detach().float(), 1).movedim(1, -1).reshape(b, -1, c).double()  # (B, V, C)
        masks = torch.nn.functional.one_hot(label.reshape(b, -1).long(), c).double().sum(0)  # (V, C)
        ent = (p * torch.log(p + 1e-12).sum(-1, keepdim=True)).sum(0)  # (V, C): sum_b p_bc sum_k log p_bk
        conf = p.sum(0)
        var = (p.max(-1, keepdim=True).values - p).sum(0)
        for row, v in enumerate((ent, conf, var)):
            self.sums[row] += ((v * masks).sum(0).cpu() / n.cpu()).float()


def sampling_weights(logits: torch.Tensor, rate: torch.Tensor, beta: float = 1.5) -> torch.Tensor:
    """Bernoulli(rate[argmax]) mask times ``max_k p_k^beta``: (B, ...)."""
    p = torch.softmax(logits.detach().float(), 1)
    conf, pred = p.max(1)
    keep = (torch.rand(pred.shape, device=pred.device) < rate.to(pred.device)[pred]).float()
    return keep * conf**beta


@register_method("acisis")
class ACISIS(DHCMeanTeacher):
    """ACISIS: mean teacher with class-wise voxel sampling from fuzzy-rank-fused indicators."""

    family = "mean teacher"
    paper = "Basak et al., ACISIS, MICCAI 2022"
    code = "xmed-lab/DHC"
    ddp_compatible = True  # training_step calls the student only as self.networks[k](x) (bench.distributed)
    #: DHC's train_acisis.py:139-145: SGD with Nesterov (the engine default), weight decay 3e-5
    train_defaults = {"weight_decay": 3e-5}

    @dataclass
    class Hparams(DHCMeanTeacher.Hparams):
        top_m: int = setting(12, ge=1)
        lam: float = 2.5
        beta: float = 1.5
        indicator_momentum: float = setting(0.99, ge=0.0, le=1.0)
        update_iter: int = setting(0, ge=0)  # 0 = one epoch of unlabeled batches (DHC)
        #: DHC's record_data pairs every image with every label map (a released bug, see the module docstring)
        released_acisis_broadcast: bool = False

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        it = self.hp.update_iter or ctx.epoch_length
        self.indicators = ClassIndicators(ctx.num_classes, it, self.hp.indicator_momentum, self.hp.top_m, self.hp.lam,
                                          self.hp.released_acisis_broadcast)

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        student, teacher = self.networks["net"], self.teachers["teacher"]
        n_l = labeled["image"].shape[0]
        x = torch.cat([labeled["image"], unlabeled["image"]]) if unlabeled is not None else labeled["image"]
        logits = student(x)
        sup = dhc_dc_ce_loss(logits[:n_l], labeled["label"])
        with torch.no_grad():
            self.indicators.record(logits[:n_l], labeled["label"])
        if unlabeled is None:
            return Losses(sup, {"sup": sup})
        with torch.no_grad():
            pseudo = teacher(unlabeled["image"]).argmax(1)
            weights = sampling_weights(logits[n_l:], self.indicators.rate, self.hp.beta)
        cons = (F.cross_entropy(logits[n_l:].float(), pseudo, reduction="none") * weights).mean()
        w = self.consistency_weight(step)
        return Losses(sup + w * cons, {"sup": sup, "unsup": cons, "w_unsup": torch.tensor(w)})

    def running_state(self) -> dict:
        return {"indicators": self.indicators.state_dict()}

    def load_running_state(self, state: dict) -> None:
        self.indicators.load_state_dict(state["indicators"])
