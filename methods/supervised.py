"""Supervised baselines: the lower bound (labeled cases only) and the upper bound (all labels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bench.core.registry import register_method
from methods.base import Losses, Method, MethodContext
from methods.losses import DiceVariant, ssl4mis_dice_ce_loss
from methods.networks import VNet


@dataclass
class BackboneHparams(Method.Hparams):
    """Backbone choice shared by the V-Net baselines (width comes from the preset: ``width``).

    DHC's V-Net uses BatchNorm with Dropout3d(0.5); dropout is off by default here because at
    the narrow CPU widths it halves an 8-channel map and stalls learning (``--set dropout=true``
    and the ``dhc`` configs turn it on).
    """

    normalization: Literal["batchnorm", "instancenorm", "groupnorm", "none"] = "batchnorm"
    dropout: bool = False
    #: backbone initialisation (``methods.networks.VNet``): DHC and SSL4MIS use Kaiming-normal
    init: Literal["kaiming", "xavier", "default"] = "kaiming"


def build_vnet(ctx: MethodContext, hp: BackboneHparams, init: str | None = None) -> VNet:
    """The V-Net of a method with :class:`BackboneHparams` (normalisation, dropout, init) for ``ctx``."""
    return VNet(ctx.in_channels, ctx.num_classes, ctx.width, hp.normalization, hp.dropout, init or hp.init)


@register_method("supervised")
class Supervised(Method):
    """V-Net trained on the labeled cases only, (CE + Dice) / 2 - the lower bound."""

    family = "baseline"
    paper = "V-Net on the labeled cases only (lower bound; Milletari et al., V-Net, 3DV 2016)"
    code = ""

    uses_unlabeled = False
    ddp_compatible = True  # training_step calls its network only as self.networks[k](x) (bench.distributed)

    @dataclass
    class Hparams(BackboneHparams):
        #: Dice of the (CE + Dice) / 2 loss (``methods.losses.DICE_VARIANTS``); the suite's own
        #: lower bound (DHC's ``train_fully.py`` uses DC_and_CE_loss instead: docs/fidelity.md)
        dice: DiceVariant = "linear"

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        self.networks["net"] = build_vnet(ctx, self.hp)

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        logits = self.networks["net"](labeled["image"])
        sup = ssl4mis_dice_ce_loss(logits, labeled["label"], dice=self.hp.dice)
        return Losses(sup, {"sup": sup})

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.networks["net"](x)


@register_method("fully")
class Fully(Supervised):
    """V-Net trained with the labels of every training case - the upper bound."""

    family = "baseline"
    paper = "V-Net with every training case labeled (upper bound)"
    code = ""

    label_policy = "all"
