"""Text-driven segmentation head (CLIP-Driven Universal Model style, as TAK releases it).

Per class c, the view embeddings t_{v,c} (dimension d, any encoder) go through a shared
``Linear(d -> 256) + ReLU``; the V results are concatenated and mapped by
``Linear(256 V -> 256) + ReLU`` to the class embedding e_c. The image condition g is the mean
of three global-pooling branches (GroupNorm, ReLU, average pool, 1x1 conv to 256) on the
encoder maps x3, x4, x5. A controller ``Conv3d(512 -> 153, k=1)`` on [g ‖ e_c] yields the
weights and biases of a per-class 1x1x1 head 8 -> 8 -> 8 -> 1 (ReLU between layers) applied to
``GN -> ReLU -> Conv(n -> 8)`` of the decoder output. The C outputs are the class logits
(softmax over classes). The per-class heads run as batched matrix products (equal to TAK's
grouped convolution, and much faster on CPUs).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

HEAD_CH = 8
WEIGHT_NUMS = (HEAD_CH * HEAD_CH, HEAD_CH * HEAD_CH, HEAD_CH * 1)
BIAS_NUMS = (HEAD_CH, HEAD_CH, 1)
N_PARAMS = sum(WEIGHT_NUMS) + sum(BIAS_NUMS)  # 153


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(16, ch), ch)


class TextDrivenHead(nn.Module):
    """Segmentation head whose per-class parameters come from text-prior embeddings.

    Args:
        prior: (V * C, d) embeddings, view-major (all classes of view 0, then view 1, ...).
        num_classes: C (background included).
        feat_channels: channels of the encoder maps x3, x4, x5 (4n, 8n, 16n).
        dec_channels: channels of the decoder output (n).
        hidden: width of the class and image embeddings (256 in TAK).

    Shapes: ``forward(feats, dec)`` with feats = [x3, x4, x5] (B, ch_i, ...) and dec
    (B, n, D, H, W) returns logits (B, C, D, H, W).
    """

    def __init__(self, prior: torch.Tensor, num_classes: int, feat_channels: Sequence[int], dec_channels: int, hidden: int = 256):
        super().__init__()
        if prior.dim() != 2 or prior.shape[0] % num_classes:
            raise ValueError(f"prior of shape {tuple(prior.shape)} is not (n_views * {num_classes}, dim)")
        self.num_classes = num_classes
        self.n_views = prior.shape[0] // num_classes
        self.register_buffer("prior", prior.float().clone(), persistent=False)  # frozen, like TAK's attribute
        d = prior.shape[1]
        self.text_to_hidden = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True))
        self.text_to_vision = nn.Sequential(nn.Linear(hidden * self.n_views, hidden), nn.ReLU(inplace=True))
        self.gap = nn.ModuleList(
            [nn.Sequential(_gn(ch), nn.ReLU(inplace=True), nn.AdaptiveAvgPool3d(1), nn.Conv3d(ch, hidden, 1)) for ch in feat_channels]
        )
        self.controller = nn.Conv3d(2 * hidden, N_PARAMS, 1)
        self.precls = nn.Sequential(_gn(dec_channels), nn.ReLU(inplace=True), nn.Conv3d(dec_channels, HEAD_CH, 1))
        self.chunk = 8192  # voxels per chunk at inference

    def text_hidden(self) -> torch.Tensor:
        """Shared projection of every view embedding: (V * C, hidden)."""
        return self.text_to_hidden(self.prior)

    def class_embedding(self) -> torch.Tensor:
        """(C, hidden): views concatenated per class, then ``text_to_vision``."""
        t = self.text_hidden().reshape(self.n_views, self.num_classes, -1)
        return self.text_to_vision(torch.cat(list(t), dim=1))

    def image_condition(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, hidden): mean of the GAP branches on x3, x4, x5."""
        g = sum(branch(f) for branch, f in zip(self.gap, feats)) / len(self.gap)
        return g.flatten(1)

    def forward(self, feats: Sequence[torch.Tensor], dec: torch.Tensor, class_emb: torch.Tensor | None = None) -> torch.Tensor:
        b, _, d, h, w = dec.shape
        c = self.num_classes
        e = self.class_embedding() if class_emb is None else class_emb  # (C, hidden)
        g = self.image_condition(feats)  # (B, hidden)
        cond = torch.cat([g[:, None].expand(b, c, -1), e[None].expand(b, c, -1)], dim=2)  # (B, C, 2 hidden)
        params = self.controller(cond.reshape(b * c, -1, 1, 1, 1)).reshape(b, c, N_PARAMS)  # (B, C, 153)
        w1, w2, w3, b1, b2, b3 = torch.split(params, list(WEIGHT_NUMS) + list(BIAS_NUMS), dim=2)
        x = self.precls(dec).flatten(2)  # (B, 8, DHW)
        dt = x.dtype
        ws = (b1.reshape(b, c * HEAD_CH, 1).to(dt), w1.reshape(b, c * HEAD_CH, HEAD_CH).to(dt),
              b2.reshape(b * c, HEAD_CH, 1).to(dt), w2.reshape(b * c, HEAD_CH, HEAD_CH).to(dt),
              b3.reshape(b * c, 1, 1).to(dt), w3.reshape(b * c, 1, HEAD_CH).to(dt))
        if torch.is_grad_enabled() or x.shape[2] <= self.chunk:
            return _dynamic_head(x, *ws, b, c).reshape(b, c, d, h, w)
        # inference: voxel chunks keep the (B, 8C, n) intermediates in cache (same result)
        return torch.cat([_dynamic_head(x[:, :, i : i + self.chunk], *ws, b, c) for i in range(0, x.shape[2], self.chunk)],
                         dim=2).reshape(b, c, d, h, w)


def _dynamic_head(x, b1, w1, b2, w2, b3, w3, b: int, c: int) -> torch.Tensor:
    """The per-class 1x1x1 convolutions 8 -> 8 -> 8 -> 1 as batched matrix products with fused
    bias (a grouped conv with B C groups computes the same, but is very slow on CPUs).
    x (B, 8, n) -> (B, C, n)."""
    x = torch.baddbmm(b1, w1, x).relu_()
    x = x.reshape(b * c, HEAD_CH, -1)
    x = torch.baddbmm(b2, w2, x).relu_()
    x = torch.baddbmm(b3, w3, x)
    return x.reshape(b, c, -1)


class StaticHead(nn.Module):
    """The plain 1x1x1 output convolution (MagicNet/GA): logits (B, C, D, H, W) from dec (B, n, ...)."""

    def __init__(self, num_classes: int, dec_channels: int):
        super().__init__()
        self.out_conv = nn.Conv3d(dec_channels, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor], dec: torch.Tensor, class_emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.out_conv(dec)
