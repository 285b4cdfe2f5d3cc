"""The co-training family: CPS, DHC and its ablations, as one shared base.

Two V-Nets A and B (DHC's: BatchNorm; dropout off at CPU widths, see ``supervised.py``) see the
same labeled + unlabeled batch. Loss = sup_A + sup_B + w(t) [CE_A(A, argmax B) + CE_B(B, argmax A)]
with the cross terms over labeled and unlabeled images, w(t) = ``cps_w`` sigmoid_rampup(t, T)
(DHC ramps over the whole run). Supervised terms are (weighted) CE + soft Dice (DHC's
``DC_and_CE_loss``: batch Dice over foreground classes, smooth 1, summed with CE). Each network
has a class-weighting strategy (``methods/class_weighting.py``) whose weights enter its CE and
Dice; inference averages both networks' logits (DHC's "AB" test mode).

Deviations from the released code, on purpose: its mixed precision cannot be switched off
(``store_true, default=True``) - here AMP follows the engine's ``amp`` setting (CUDA only); its
evaluation mixes Dice scales (1 vs 100 for absent organs) - evaluation here is the suite's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses, Method, MethodContext
from methods.class_weighting import CReST, DiffDW, DistDW, SimiS, Weighting
from methods.losses import dhc_dc_ce_loss
from methods.ramps import DHCEpochSchedule, sigmoid_rampup
from methods.supervised import BackboneHparams, build_vnet


class CoTraining(DHCEpochSchedule, Method):
    """Base of the two-network methods; subclasses choose the weighting strategies."""

    family = "co-training (CPS)"
    code = "xmed-lab/DHC"
    ddp_compatible = True  # training_step calls networks A and B only as self.networks[k](x) (bench.distributed)

    train_defaults = {"weight_decay": 3e-5}

    @dataclass
    class Hparams(BackboneHparams):
        cps_w: float = setting(0.1, ge=0.0)
        cps_rampup: float = setting(1.0, ge=0.0)
        #: "epoch": as DHC's loops, lr and cps weight change once per epoch (one pass over the
        #: unlabeled batches) and epoch e runs with the values of epoch e - 1, set at the end of
        #: e - 1 (train_dhc.py:359-362); "step": each step's own value (the suite's earlier)
        schedule: Literal["epoch", "step"] = "epoch"
        #: initialisation of network B (network A: ``init``); DHC: Kaiming for both, except Adsh / CLD
        init_b: Literal["kaiming", "xavier", "default"] = "kaiming"
        weighted_dice: bool = True

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        self.networks["A"] = self.build_network(ctx, self.hp.init)
        self.networks["B"] = self.build_network(ctx, self.hp.init_b)
        self.weight_A, self.weight_B = self.make_weighting(ctx)

    def build_network(self, ctx: MethodContext, init: str) -> torch.nn.Module:
        """Hook: one of the two networks, initialised with ``init`` (DHC's V-Net by default)."""
        return build_vnet(ctx, self.hp, init)

    def make_weighting(self, ctx: MethodContext) -> tuple[Weighting, Weighting]:
        return Weighting(ctx.num_classes), Weighting(ctx.num_classes)

    def update_weights(self, out_A: torch.Tensor, out_B: torch.Tensor, label: torch.Tensor, n_l: int) -> None:
        """Hook: update the strategies from this batch (before the losses). The first ``n_l``
        images of ``out_A`` / ``out_B`` (B, C, ...) are labeled, the rest unlabeled."""

    def cps_weight(self, step: int) -> float:
        return self.hp.cps_w * sigmoid_rampup(self.schedule_step(step), self.hp.cps_rampup * self.ctx.iterations)

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        y = labeled["label"]
        n_l = y.shape[0]
        x = torch.cat([labeled["image"], unlabeled["image"]]) if unlabeled is not None else labeled["image"]
        out_A, out_B = self.networks["A"](x), self.networks["B"](x)
        with torch.no_grad():
            self.update_weights(out_A.detach(), out_B.detach(), y, n_l)
        wA, wB = self.weight_A.weights, self.weight_B.weights
        uniform = type(self.weight_A) is Weighting
        sup = dhc_dc_ce_loss(out_A[:n_l], y, None if uniform else wA) + dhc_dc_ce_loss(out_B[:n_l], y, None if uniform else wB)
        cps = self.cps_loss(out_A, out_B, None if uniform else wA.to(x.device), None if uniform else wB.to(x.device), n_l)
        w = self.cps_weight(step)
        return Losses(sup + w * cps, {"sup": sup, "unsup": cps, "w_unsup": torch.tensor(w)})

    def cps_loss(self, out_A, out_B, wA, wB, n_l: int) -> torch.Tensor:
        """CE(A, argmax B; class weights wA) + CE(B, argmax A; wB) over the whole batch."""
        max_A, max_B = out_A.detach().argmax(1), out_B.detach().argmax(1)
        return F.cross_entropy(out_A.float(), max_B, weight=wA) + F.cross_entropy(out_B.float(), max_A, weight=wB)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self.networks["A"](x) + self.networks["B"](x)) / 2

    def running_state(self) -> dict:
        return {"A": self.weight_A.state_dict(), "B": self.weight_B.state_dict()}

    def load_running_state(self, state: dict) -> None:
        self.weight_A.load_state_dict(state["A"])
        self.weight_B.load_state_dict(state["B"])

    @staticmethod
    def search_space(trial) -> dict:
        return {**Method.search_space(trial), "cps_w": trial.suggest_float("cps_w", 0.01, 1.0, log=True)}


@register_method("cps")
class CPS(CoTraining):
    """Cross Pseudo Supervision (Chen et al., 2021): two V-Nets trained on each other's argmax."""

    paper = "Chen et al., CPS, CVPR 2021"

    @dataclass
    class Hparams(CoTraining.Hparams):
        init_b: Literal["kaiming", "xavier", "default"] = "xavier"  # DHC initialises network B with Xavier-normal


@register_method("dhc")
class DHC(CoTraining):
    """DHC (Wang & Li, MICCAI 2023): co-training with DiffDW (network A) and DistDW (network B)."""

    paper = "Wang & Li, DHC, MICCAI 2023"

    def make_weighting(self, ctx):
        a, b = DiffDW(ctx.num_classes, accumulate_iters=50), DistDW(ctx.num_classes, momentum=0.99)
        b.init(_labeled_counts(ctx))
        return a, b

    def update_weights(self, out_A, out_B, label, n_l) -> None:
        self.weight_A.update(out_A[:n_l], label)
        if out_B.shape[0] > n_l:
            self.weight_B.update(out_B[n_l:])


def _labeled_counts(ctx: MethodContext):
    return ctx.labeled_voxel_counts if ctx.labeled_voxel_counts is not None else torch.ones(ctx.num_classes).numpy()


def _initialised_pair(ctx: MethodContext, strategy: type) -> tuple[Weighting, Weighting]:
    """Two strategies of one kind, each initialised from the labeled voxel counts."""
    pair = strategy(ctx.num_classes), strategy(ctx.num_classes)
    for s in pair:
        s.init(_labeled_counts(ctx))
    return pair


class _UnlabeledUpdatedPair(CoTraining):
    """A pair of one strategy, initialised from the labeled voxel counts, each updated from its
    own network's predictions on the unlabeled images."""

    strategy: type = Weighting

    def make_weighting(self, ctx):
        return _initialised_pair(ctx, self.strategy)

    def update_weights(self, out_A, out_B, label, n_l) -> None:
        if out_A.shape[0] > n_l:
            self.weight_A.update(out_A[n_l:])
            self.weight_B.update(out_B[n_l:])


@register_method("crest")
class CReSTCPS(_UnlabeledUpdatedPair):
    """CReST class-rebalancing weights (Wei et al., 2021) on the CPS pair, as in DHC's code."""

    paper = "Wei et al., CReST, CVPR 2021"

    strategy = CReST

    @dataclass
    class Hparams(CoTraining.Hparams):
        init_b: Literal["kaiming", "xavier", "default"] = "xavier"  # DHC initialises network B with Xavier-normal


@register_method("simis")
class SimiSCPS(CoTraining):
    """SimiS frequency-gap weights (Chen et al., 2022) on the CPS pair, as in DHC's code."""

    paper = "Chen et al., SimiS, arXiv 2022"

    @dataclass
    class Hparams(CoTraining.Hparams):
        init_b: Literal["kaiming", "xavier", "default"] = "xavier"  # DHC initialises network B with Xavier-normal

    def make_weighting(self, ctx):
        return _initialised_pair(ctx, SimiS)

    def update_weights(self, out_A, out_B, label, n_l) -> None:
        self.weight_A.update(out_A)  # DHC updates SimiS from the whole batch
        self.weight_B.update(out_B)


@register_method("dist_dw")
class DistDWOnly(_UnlabeledUpdatedPair):
    """DHC ablation: DistDW on both networks (each updated from its own unlabeled predictions)."""

    paper = "DHC ablation: DistDW on both networks (Wang & Li, MICCAI 2023)"

    strategy = DistDW


@register_method("diff_dw")
class DiffDWOnly(CoTraining):
    """DHC ablation: DiffDW on both networks (each from its own labeled Dice)."""

    paper = "DHC ablation: DiffDW on both networks (Wang & Li, MICCAI 2023)"

    def make_weighting(self, ctx):
        return DiffDW(ctx.num_classes), DiffDW(ctx.num_classes)

    def update_weights(self, out_A, out_B, label, n_l) -> None:
        self.weight_A.update(out_A[:n_l], label)
        self.weight_B.update(out_B[:n_l], label)


@register_method("depl")
class DePL(CoTraining):
    """DePL (Wang et al., 2022) on the CPS pair: debiased pseudo-labels by logit adjustment.

    As in DHC's ``train_depl.py``: each network keeps q̂, a per-voxel (patch-shaped) EMA
    (momentum 0.99) of its mean softmax on the unlabeled images; the other network learns from
    ``argmax softmax(logits - τ log q̂)`` where that probability is >= 0.9 (masked CE averaged
    over all voxels). The script calls the adjustment with τ = 1.0 (the function's default 0.5
    is overridden), so ``tau`` defaults to 1.0. Its extra adjustment of the unlabeled logits
    (``output_A_u + τ log q̂_B``) never reaches a loss there, so it is not reproduced. Supervised
    terms are unweighted CE + Dice.
    """

    paper = "Wang et al., DePL, CVPR 2022"
    ddp_compatible = True  # training_step calls networks A and B only as self.networks[k](x) (bench.distributed)

    @dataclass
    class Hparams(CoTraining.Hparams):
        tau: float = setting(1.0, gt=0.0)
        threshold: float = setting(0.9, ge=0.0, le=1.0)
        qhat_momentum: float = setting(0.99, ge=0.0, le=1.0)
        init_b: Literal["kaiming", "xavier", "default"] = "xavier"  # DHC's train_depl.py:195: network B Xavier-normal

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        q = torch.full((ctx.num_classes, *ctx.patch_size), 1.0 / ctx.num_classes)
        self.qhat = {"A": q.clone(), "B": q.clone()}

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        y = labeled["label"]
        n_l = y.shape[0]
        x = torch.cat([labeled["image"], unlabeled["image"]]) if unlabeled is not None else labeled["image"]
        out = {"A": self.networks["A"](x), "B": self.networks["B"](x)}
        sup = dhc_dc_ce_loss(out["A"][:n_l], y) + dhc_dc_ce_loss(out["B"][:n_l], y)
        targets, masks = {}, {}
        with torch.no_grad():
            for k in ("A", "B"):
                q = self.qhat[k].to(x.device)
                debiased = torch.softmax(out[k].detach().float() - self.hp.tau * torch.log(q), 1)
                conf, targets[k] = debiased.max(1)
                masks[k] = (conf >= self.hp.threshold).float()
                if x.shape[0] > n_l:
                    mean_prob = torch.softmax(out[k][n_l:].detach().float(), 1).mean(0)
                    self.qhat[k] = (self.hp.qhat_momentum * q + (1 - self.hp.qhat_momentum) * mean_prob).cpu()
        ce_a = F.cross_entropy(out["A"].float(), targets["B"], reduction="none") * masks["B"]
        ce_b = F.cross_entropy(out["B"].float(), targets["A"], reduction="none") * masks["A"]
        cps = ce_a.mean() + ce_b.mean()
        w = self.cps_weight(step)
        return Losses(sup + w * cps, {"sup": sup, "unsup": cps, "w_unsup": torch.tensor(w)})

    def running_state(self) -> dict:
        return {"qhat": {k: v.clone() for k, v in self.qhat.items()}}

    def load_running_state(self, state: dict) -> None:
        self.qhat = {k: v.clone() for k, v in state["qhat"].items()}
