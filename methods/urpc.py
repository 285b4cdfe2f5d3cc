"""URPC (Luo et al., MICCAI 2021): uncertainty-rectified pyramid consistency, as in SSL4MIS /
DHC's ``train_urpc.py``.

One network with deep supervision: 1x1x1 heads on the four decoder stages (scales 1, 1/2, 1/4,
1/8) upsampled (trilinear) to full size, each stage after Dropout3d (p = 0.1, 0.2, 0.3, 0.5
from fine to coarse, as in the released 3D network). Supervised loss = mean over the four
outputs of (CE + soft Dice) / 2 on the labeled images. On the unlabeled images, with p_s the
softmax of output s and p̄ their mean:

    v_s = KL(p̄ || p_s) summed over classes (B, 1, ...)
    L_s = mean((p̄ - p_s)^2 exp(-v_s)) / (mean(exp(-v_s)) + 1e-8) + mean(v_s)

and L_u = mean_s L_s, weighted by ``consistency * sigmoid_rampup(t, T)``. Inference uses the
full-resolution output only.

Deviation: the pyramid is built on the suite's V-Net decoder (the same backbone and width as
the other baselines) rather than DHC's separate 3D U-Net, so that backbone capacity is equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses, Method, MethodContext
from methods.losses import DiceVariant, ssl4mis_dice_ce_loss
from methods.networks import VNet
from methods.ramps import DHCEpochSchedule, sigmoid_rampup
from methods.supervised import BackboneHparams

DROPOUT = (0.5, 0.3, 0.2, 0.1)  # coarse (1/8) to fine (1)


class PyramidVNet(nn.Module):
    """V-Net with deep-supervision heads: training forward returns [out_1, out_1/2, out_1/4,
    out_1/8], each (B, C, D, H, W) at full size; eval forward returns out_1 only."""

    def __init__(self, ctx: MethodContext, normalization: str = "batchnorm", init: str = "kaiming"):
        super().__init__()
        n = ctx.width
        self.vnet = VNet(ctx.in_channels, None, n, normalization, dropout=False, init=init)
        self.heads = nn.ModuleList([nn.Conv3d(ch, ctx.num_classes, 1) for ch in (8 * n, 4 * n, 2 * n, n)])
        self.drops = nn.ModuleList([nn.Dropout3d(p) for p in DROPOUT])

    def forward(self, x: torch.Tensor):
        stages = self.vnet.decode_stages(self.vnet.encode(x))
        if not self.training:
            return self.heads[-1](stages[-1])
        outs = []
        for stage, drop, head in zip(stages, self.drops, self.heads):
            y = head(drop(stage))
            if y.shape[2:] != x.shape[2:]:
                y = F.interpolate(y, size=x.shape[2:], mode="trilinear", align_corners=False)
            outs.append(y)
        return outs[::-1]


def rectified_consistency(probs: list[torch.Tensor]) -> torch.Tensor:
    """URPC's consistency over softmax maps ``probs`` (each (B, C, ...)), averaged over scales."""
    mean = sum(probs) / len(probs)
    total = 0.0
    for p in probs:
        var = (mean * (torch.log(mean + 1e-12) - torch.log(p + 1e-12))).sum(1, keepdim=True)  # KL(mean || p)
        w = torch.exp(-var)
        total = total + torch.mean((mean - p) ** 2 * w) / (torch.mean(w) + 1e-8) + torch.mean(var)
    return total / len(probs)


@register_method("urpc")
class URPC(DHCEpochSchedule, Method):
    """URPC: deep-supervision pyramid with uncertainty-rectified consistency across scales."""

    family = "pyramid consistency"
    paper = "Luo et al., URPC, MICCAI 2021"
    code = "xmed-lab/DHC"
    ddp_compatible = True  # training_step calls its pyramid network only as self.networks[k](x) (bench.distributed)

    @dataclass
    class Hparams(BackboneHparams):
        consistency: float = setting(0.1, ge=0.0)
        consistency_rampup: float = setting(1.0, ge=0.0)
        #: lr and consistency weight once per epoch, one epoch late, as DHC's train_urpc.py
        #: (:319-320); "step": each step's own value (the suite's earlier)
        schedule: Literal["epoch", "step"] = "epoch"
        #: DHC's train_urpc.py: SoftDiceLoss(smooth=1e-8), foreground classes only
        dice: DiceVariant = "foreground"

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        self.networks["net"] = PyramidVNet(ctx, self.hp.normalization, self.hp.init)

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        n_l = labeled["image"].shape[0]
        x = torch.cat([labeled["image"], unlabeled["image"]]) if unlabeled is not None else labeled["image"]
        outs = self.networks["net"](x)
        sup = sum(ssl4mis_dice_ce_loss(o[:n_l], labeled["label"], dice=self.hp.dice) for o in outs) / len(outs)
        if unlabeled is None:
            return Losses(sup, {"sup": sup})
        cons = rectified_consistency([torch.softmax(o[n_l:].float(), 1) for o in outs])
        w = self.consistency_weight(step)
        return Losses(sup + w * cons, {"sup": sup, "unsup": cons, "w_unsup": torch.tensor(w)})

    def consistency_weight(self, step: int) -> float:
        """``consistency`` sigmoid_rampup over the run, at the step whose value is in force."""
        return self.hp.consistency * sigmoid_rampup(self.schedule_step(step), self.hp.consistency_rampup * self.ctx.iterations)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        out = self.networks["net"](x)
        return out[0] if isinstance(out, list) else out

    @staticmethod
    def search_space(trial) -> dict:
        return {**Method.search_space(trial), "consistency": trial.suggest_float("consistency", 0.01, 1.0, log=True)}
