"""DST: Debiased Self-Training (Chen et al., NeurIPS 2022) on the CPS pair, as DHC's released
``code/train_dst.py`` and ``code/models/vnet_dst.py`` train it (the DHC paper's DST rows).

Each of the two networks A (Kaiming init) and B (Xavier init) is a V-Net whose encoder feeds
three decoders (:class:`DecoupledVNet`): the main head (supervised, used at inference), a
pseudo head, and a worst-case head that reads the encoder maps through a gradient reversal
layer (:class:`GradientReversal`, coefficient warm-started from 0 to 0.1 over the steps,
:func:`grl_coefficient`). Per step, with ``n_l`` labeled images first in the batch::

    loss = sup_A + sup_B + w(e) [cps + worst_A + worst_B]
    sup_X   = DC_and_CE(main_X[:n_l], y)                         (DHC's, unweighted)
    cps     = CE(consumer_A, argmax producer_B; mask conf_B > 0.95)
            + CE(consumer_B, argmax producer_A; mask conf_A > 0.95)  (mean over all voxels)
    worst_X = 2 CE(worst_X[:n_l], argmax main_X[:n_l])
              + NLL(log(1 - softmax(worst_X[n_l:]) + 1e-6), argmax main_X[n_l:])

with w(e) = ``cps_w`` sigmoid_rampup over the run, set once per epoch as DHC's loops do.

**Released bug, fixed here** (``released_pseudo_targets=true`` restores it): the release takes
the pseudo-labels from the *pseudo* heads and trains the *main* heads on them
(train_dst.py:237-248); the pseudo heads' outputs then reach the loss only through an argmax and
a detached mask, so the pseudo decoders never get a gradient and stay at their random init for
the whole run. DST's decoupling (Chen et al. 2022, Sec. 3.1) is the opposite: pseudo-labels are
*generated* by the main head and *used* only to train the pseudo head, which shares the
encoder. The default here does that across the pair: producer = the other network's main head,
consumer = this network's pseudo head (our reading of the paper; the release has no version of
it). Shapes: images (B, 1, D, H, W), logits (B, C, D, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses, MethodContext
from methods.cps import CoTraining
from methods.losses import dhc_dc_ce_loss
from methods.networks import VNet, conv_block, decoder_stages, init_weights, up_block


def grl_coefficient(step: int, lo: float = 0.0, hi: float = 0.1, alpha: float = 1.0, max_iters: int = 500) -> float:
    """The gradient-reversal coefficient at ``step`` (the number of completed optimiser steps):
    ``2 (hi - lo) / (1 + exp(-alpha step / max_iters)) - (hi - lo) + lo`` - DHC's
    ``WarmStartGradientReverseLayer`` (models/vnet_dst.py), stepped once per iteration.

    >>> grl_coefficient(0), round(grl_coefficient(500), 6)
    (0.0, 0.046212)
    """
    return 2.0 * (hi - lo) / (1.0 + math.exp(-alpha * step / max_iters)) - (hi - lo) + lo


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x * 1.0

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.neg() * ctx.coeff, None


def reverse_gradient(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward; the gradient multiplied by ``-coeff`` backward."""
    return _Reverse.apply(x, coeff)


class Decoder(nn.Module):
    """A V-Net decoder (the same blocks as :class:`methods.networks.VNet`'s ``up`` / ``dec`` /
    ``out_conv``): encoder maps x1..x5 -> logits (B, C, D, H, W)."""

    def __init__(self, num_classes: int, n_filters: int, normalization: str, dropout: bool):
        super().__init__()
        n = n_filters
        self.up = nn.ModuleList([up_block(c, c // 2, normalization) for c in (16 * n, 8 * n, 4 * n, 2 * n)])
        self.dec = nn.ModuleList(
            [conv_block(3, 8 * n, 8 * n, normalization), conv_block(3, 4 * n, 4 * n, normalization),
             conv_block(2, 2 * n, 2 * n, normalization), conv_block(1, n, n, normalization)]
        )
        self.has_dropout = dropout
        self.dropout = nn.Dropout3d(p=0.5)
        self.out_conv = nn.Conv3d(n, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = decoder_stages(self.up, self.dec, feats)[-1]
        if self.has_dropout and self.training:
            x = self.dropout(x)
        return self.out_conv(x)


class DecoupledVNet(VNet):
    """DHC's ``VNet_Decoupled``: a V-Net (encoder + main decoder, the suite's parameter names)
    with two more decoders on the same encoder maps, ``pseudo`` and ``worst``; ``worst`` reads
    them through a gradient reversal layer. ``forward`` returns the main logits (inference);
    :meth:`heads` all three."""

    def __init__(self, in_channels: int, num_classes: int, n_filters: int, normalization: str, dropout: bool, init: str):
        super().__init__(in_channels, num_classes, n_filters, normalization, dropout, init="default")
        self.pseudo = Decoder(num_classes, n_filters, normalization, dropout)
        self.worst = Decoder(num_classes, n_filters, normalization, dropout)
        init_weights(self, init)  # every Conv3d of the three decoders, as the release's initialiser

    def heads(self, x: torch.Tensor, grl_coeff: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Main, pseudo and worst-case logits, each (B, C, D, H, W)."""
        feats = self.encode(x)
        main = self.out_conv(self.decode(feats))
        return main, self.pseudo(feats), self.worst([reverse_gradient(f, grl_coeff) for f in feats])


def masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DHC's ``Onehot_WeightedCrossEntropyLoss`` with a weight map: per-voxel CE times the
    (detached) mask, averaged over all voxels. logits (B, C, ...), target and mask (B, ...)."""
    return (F.cross_entropy(logits.float(), target, reduction="none") * mask.detach()).mean()


def worst_case_loss(main_l: torch.Tensor, worst_l: torch.Tensor, main_u: torch.Tensor | None,
                    worst_u: torch.Tensor | None, labeled_w: float = 2.0) -> torch.Tensor:
    """DST's worst-case estimation loss as DHC's ``WorstCaseEstimationLoss``: the worst head
    agrees with the main head's argmax on labeled images (CE, weight ``labeled_w``) and disagrees
    on unlabeled ones (NLL of log(1 - softmax + 1e-6), clamped at log 1). (B, C, ...) logits."""
    loss = labeled_w * F.cross_entropy(worst_l.float(), main_l.detach().argmax(1))
    if main_u is not None and main_u.shape[0] > 0:
        not_p = torch.clamp(1.0 - torch.softmax(worst_u.float(), 1) + 1e-6, max=1.0)
        loss = loss + F.nll_loss(torch.log(not_p), main_u.detach().argmax(1))
    return loss


@register_method("dst")
class DST(CoTraining):
    """Debiased Self-Training (Chen et al., 2022) on the CPS pair, as in DHC's code: decoupled
    pseudo heads and a worst-case head behind a gradient reversal layer."""

    paper = "Chen et al., Debiased Self-Training, NeurIPS 2022"

    @dataclass
    class Hparams(CoTraining.Hparams):
        init_b: Literal["kaiming", "xavier", "default"] = "xavier"  # train_dst.py: model_B Xavier-normal
        #: pseudo-labels used where their softmax confidence exceeds this (train_dst.py: 0.95)
        threshold: float = setting(0.95, ge=0.0, le=1.0)
        #: weight of the labeled term of the worst-case loss (WorstCaseEstimationLoss: 2)
        worst_labeled_w: float = setting(2.0, ge=0.0)
        #: gradient reversal warm start (vnet_dst.py Decoder: alpha 1, lo 0, hi 0.1, max_iters 500)
        grl_hi: float = setting(0.1, ge=0.0)
        grl_max_iters: int = setting(500, ge=1)
        #: True: the release's pseudo-label direction (pseudo heads produce, main heads consume:
        #: the pseudo decoders never train); False: DST's (main heads produce, pseudo heads consume)
        released_pseudo_targets: bool = False

    def build_network(self, ctx: MethodContext, init: str) -> nn.Module:
        hp = self.hp
        return DecoupledVNet(ctx.in_channels, ctx.num_classes, ctx.width, hp.normalization, hp.dropout, init)

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        y = labeled["label"]
        n_l = y.shape[0]
        x = torch.cat([labeled["image"], unlabeled["image"]]) if unlabeled is not None else labeled["image"]
        coeff = grl_coefficient(step, hi=self.hp.grl_hi, max_iters=self.hp.grl_max_iters)
        main, pseudo, worst = {}, {}, {}
        for k in ("A", "B"):
            main[k], pseudo[k], worst[k] = self.networks[k].heads(x, coeff)
        sup = dhc_dc_ce_loss(main["A"][:n_l], y) + dhc_dc_ce_loss(main["B"][:n_l], y)
        producer, consumer = (pseudo, main) if self.hp.released_pseudo_targets else (main, pseudo)
        targets, masks = {}, {}
        with torch.no_grad():
            for k in ("A", "B"):
                conf, targets[k] = torch.softmax(producer[k].detach().float(), 1).max(1)
                masks[k] = (conf > self.hp.threshold).float()
        cps = masked_ce(consumer["A"], targets["B"], masks["B"]) + masked_ce(consumer["B"], targets["A"], masks["A"])
        wc = sum(
            worst_case_loss(main[k][:n_l], worst[k][:n_l], main[k][n_l:], worst[k][n_l:], self.hp.worst_labeled_w)
            for k in ("A", "B")
        )
        w = self.cps_weight(step)
        return Losses(
            sup + w * (cps + wc),
            {"sup": sup, "unsup": cps + wc, "cps": cps, "worst": wc, "w_unsup": torch.tensor(w),
             "mask": (masks["A"].mean() + masks["B"].mean()) / 2, "grl": torch.tensor(coeff)},
        )

    @staticmethod
    def search_space(trial) -> dict:
        return {**CoTraining.search_space(trial), "threshold": trial.suggest_float("threshold", 0.7, 0.99)}
