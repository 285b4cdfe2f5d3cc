"""Backbones: the V-Net used by DHC (BatchNorm, dropout) and by MagicNet/GA/TAK (InstanceNorm).

Both are the same 5-stage V-Net (1/2/3/3/3 convs per encoder stage, stride-2 conv
downsampling, transposed-conv upsampling with additive skips) at width ``n_filters``
(channels n, 2n, 4n, 8n, 16n); only normalisation, dropout and the output layer differ.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm3d(ch)
    if kind == "instancenorm":
        return nn.InstanceNorm3d(ch)
    if kind == "groupnorm":
        return nn.GroupNorm(min(16, ch), ch)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalization '{kind}'")


def conv_block(n_stages: int, cin: int, cout: int, norm: str) -> nn.Sequential:
    """``n_stages`` x (3x3x3 conv, norm, ReLU): ``cin`` -> ``cout`` channels, same size."""
    layers: list[nn.Module] = []
    for i in range(n_stages):
        layers += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), _norm(norm, cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def down_block(cin: int, cout: int, norm: str) -> nn.Sequential:
    """2x2x2 conv with stride 2, norm, ReLU: halves each spatial axis."""
    return nn.Sequential(nn.Conv3d(cin, cout, 2, stride=2), _norm(norm, cout), nn.ReLU(inplace=True))


def up_block(cin: int, cout: int, norm: str) -> nn.Sequential:
    """2x2x2 transposed conv with stride 2, norm, ReLU: doubles each spatial axis."""
    return nn.Sequential(nn.ConvTranspose3d(cin, cout, 2, stride=2), _norm(norm, cout), nn.ReLU(inplace=True))


class VNet(nn.Module):
    """V-Net.

    Args:
        in_channels: image channels (1 for CT).
        num_classes: output classes incl. background; ``None`` = no output conv, the network
            returns the ``n_filters``-channel full-resolution decoder map (TAK's head input).
        n_filters: base width (DHC 32, MagicNet/TAK 16; CPU presets use less).
        normalization: ``batchnorm`` (DHC), ``instancenorm`` (MagicNet/TAK), ``groupnorm``, ``none``.
        dropout: Dropout3d(0.5) on the bottleneck and the last decoder map, in training.
        init: the weights of every ``Conv3d``: ``kaiming`` (Kaiming-normal: DHC's network A,
            SSL4MIS), ``xavier`` (Xavier-normal: DHC's network B of CPS, CReST, SimiS, DePL, Adsh,
            CLD) or ``default`` (PyTorch's own: MagicNet, GALoss, TAK, UA-MT call no
            initialiser). Biases and transposed convolutions keep PyTorch's default, as in DHC.

    Shapes: input (B, in_channels, D, H, W) with D, H, W divisible by 16; output
    (B, num_classes, D, H, W). :meth:`encode` returns the five encoder maps
    x1..x5 at scales 1, 1/2, 1/4, 1/8, 1/16 with channels n, 2n, 4n, 8n, 16n.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int | None = 14,
        n_filters: int = 16,
        normalization: str = "batchnorm",
        dropout: bool = False,
        init: str = "kaiming",
    ):
        super().__init__()
        n = n_filters
        self.n_filters = n
        self.has_dropout = dropout
        self.enc = nn.ModuleList(
            [
                conv_block(1, in_channels, n, normalization),
                conv_block(2, 2 * n, 2 * n, normalization),
                conv_block(3, 4 * n, 4 * n, normalization),
                conv_block(3, 8 * n, 8 * n, normalization),
                conv_block(3, 16 * n, 16 * n, normalization),
            ]
        )
        self.down = nn.ModuleList([down_block(c, 2 * c, normalization) for c in (n, 2 * n, 4 * n, 8 * n)])
        self.up = nn.ModuleList([up_block(c, c // 2, normalization) for c in (16 * n, 8 * n, 4 * n, 2 * n)])
        self.dec = nn.ModuleList(
            [
                conv_block(3, 8 * n, 8 * n, normalization),
                conv_block(3, 4 * n, 4 * n, normalization),
                conv_block(2, 2 * n, 2 * n, normalization),
                conv_block(1, n, n, normalization),
            ]
        )
        self.dropout = nn.Dropout3d(p=0.5)
        self.out_conv = nn.Conv3d(n, num_classes, 1) if num_classes else None
        init_weights(self, init)


    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.enc):
            x = block(x)
            if i == 4 and self.has_dropout and self.training:
                x = self.dropout(x)
            feats.append(x)
            if i < 4:
                x = self.down[i](x)
        return feats

    def decode_stages(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The four decoder stage maps, coarse to fine: scales 1/8, 1/4, 1/2, 1 with channels
        8n, 4n, 2n, n (no dropout applied; URPC's pyramid reads them)."""
        return decoder_stages(self.up, self.dec, feats)

    def decode(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Full-resolution decoder map (B, n_filters, D, H, W)."""
        x = self.decode_stages(feats)[-1]
        if self.has_dropout and self.training:
            x = self.dropout(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.decode(self.encode(x))
        return self.out_conv(y) if self.out_conv is not None else y


def decoder_stages(up: Sequence[nn.Module], dec: Sequence[nn.Module], feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A V-Net decoder's four stage maps (coarse to fine) from the encoder maps ``feats``
    (x1..x5): stage i upsamples with ``up[i]``, adds the skip ``feats[3 - i]`` and runs ``dec[i]``."""
    x, out = feats[4], []
    for i in range(4):
        x = up[i](x) + feats[3 - i]
        x = dec[i](x)
        out.append(x)
    return out


INITS = ("kaiming", "xavier", "default")


def init_weights(net: nn.Module, init: str) -> None:
    """Re-initialise the weight of every ``nn.Conv3d`` of ``net`` as DHC's
    ``kaiming_normal_init_weight`` / ``xavier_normal_init_weight`` do (code/utils/__init__.py:22-37):
    biases and transposed convolutions keep PyTorch's default init (see :class:`VNet`)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    if init == "default":
        return
    fn = nn.init.kaiming_normal_ if init == "kaiming" else nn.init.xavier_normal_
    for m in net.modules():
        if type(m) is nn.Conv3d:  # not ConvTranspose3d (a sibling class in torch, named here for the reader)
            fn(m.weight)


def kaiming_all(net: nn.Module) -> None:
    """What TAK's defined-but-never-called ``kaiming_normal_init_weight`` does to a whole network
    (TAK-Semi train_AMOS_MagicNet_GA_TAK.py:67-72): every ``nn.Conv3d`` - backbone, head,
    controller, projections - gets Kaiming-normal weights and zero biases; ``Linear``,
    ``ConvTranspose3d`` and norm layers keep their init."""
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
