"""Text-driven segmentation head (CLIP-Driven Universal Model style, as TAK releases it).

Per class c, the view embeddings t_{v,c} (dimension d, any encoder) go through a shared
``Linear(d -> 256) + ReLU``; the V results are concatenated and mapped by
``Linear(256 V -> 256) + ReLU`` to the class embedding e_c. The image condition g is the mean
of three global-pooling branches (GroupNorm, ReLU, average pool, 1x1 conv to 256) on the
encoder maps x3, x4, x5. A controller ``Conv3d(512 -> 153, k=1)`` on [g ‖ e_c] yields the
weights and biases of a per-class 1x1x1 head 8 -> 8 -> 8 -> 1 (ReLU between layers) applied to
``GN -> ReLU -> Conv(n -> 8)`` of the decoder output. The C outputs are the class logits
(softmax over classes). The per-class heads run as batched matrix products (equal to TAK's
grouped convolution, and much faster on CPUs), over voxel chunks, with a hand-written backward
that recomputes each chunk's hidden activations instead of storing them (``DynamicHead``): the
(B, 8C, DHW) intermediates never exist in full, which makes the head about 2x faster on a CPU
and saves their memory.
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
        # voxels per chunk on CPUs: cache-sized intermediates; the sizes that measured fastest
        # (docs/performance.md, "TAK's head at inference")
        self.chunk = 512
        self.backward_chunk = 2048

    def text_hidden(self) -> torch.Tensor:
        """Shared projection of every view embedding: (V * C, hidden)."""
        return self.text_to_hidden(self.prior)

    def class_embedding(self) -> torch.Tensor:
        """(C, hidden): views concatenated per class, then ``text_to_vision``."""
        t = self.text_hidden().reshape(self.n_views, self.num_classes, -1)
        return self.text_to_vision(torch.cat(list(t), dim=1))

    def condition(self) -> torch.Tensor:
        """The head's per-class condition for a step: :meth:`class_embedding` (C, hidden)."""
        return self.class_embedding()

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
        if x.device.type == "cpu":
            chunks = (self.chunk, self.backward_chunk)
        else:  # GPUs: one pass, still no stored intermediates
            chunks = (x.shape[2], x.shape[2])
        return dynamic_head(x, *ws, b, c, *chunks).reshape(b, c, d, h, w)


def _hidden(x, b1, w1, b2, w2, b: int, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden activations of the per-class heads for voxels x (B, 8, n): (B C, 8, n) twice."""
    h1 = torch.baddbmm(b1, w1, x).relu_().view(b * c, HEAD_CH, -1)
    return h1, torch.baddbmm(b2, w2, h1).relu_()


class DynamicHead(torch.autograd.Function):
    """The per-class 1x1x1 convolutions 8 -> 8 -> 8 -> 1 (ReLU between layers) over voxel chunks.

    Shapes: x (B, 8, n); b1 (B, 8C, 1), w1 (B, 8C, 8), b2 (BC, 8, 1), w2 (BC, 8, 8),
    b3 (BC, 1, 1), w3 (BC, 1, 8) -> logits (B, C, n). Forward keeps only the inputs; backward
    recomputes each chunk's hidden activations and accumulates the weight gradients (the same
    values as autograd through ``baddbmm``, tested). The forward pass runs over chunks of
    ``chunk`` voxels, the backward pass over chunks of ``backward_chunk`` (the best sizes differ;
    docs/performance.md).
    """

    @staticmethod
    def forward(ctx, x, b1, w1, b2, w2, b3, w3, b: int, c: int, chunk: int, backward_chunk: int):
        with torch.autocast(x.device.type, enabled=False):
            n = x.shape[2]
            out = x.new_empty(b * c, 1, n)
            for i in range(0, n, chunk):
                _, h2 = _hidden(x[:, :, i : i + chunk], b1, w1, b2, w2, b, c)
                out[:, :, i : i + chunk] = torch.baddbmm(b3, w3, h2)
        ctx.save_for_backward(x, b1, w1, b2, w2, b3, w3)
        ctx.sizes = (b, c, backward_chunk)
        return out.view(b, c, n)

    @staticmethod
    def backward(ctx, grad):
        x, b1, w1, b2, w2, b3, w3 = ctx.saved_tensors
        b, c, chunk = ctx.sizes
        n = x.shape[2]
        with torch.autocast(x.device.type, enabled=False):
            grad = grad.reshape(b * c, 1, n).to(x.dtype)
            gx = torch.empty_like(x)
            gb1, gw1, gb2, gw2, gb3, gw3 = (torch.zeros_like(t) for t in (b1, w1, b2, w2, b3, w3))
            w1t, w2t, w3t = w1.transpose(1, 2), w2.transpose(1, 2), w3.transpose(1, 2)
            for i in range(0, n, chunk):
                xc, gc = x[:, :, i : i + chunk], grad[:, :, i : i + chunk]
                h1, h2 = _hidden(xc, b1, w1, b2, w2, b, c)
                gw3.baddbmm_(gc, h2.transpose(1, 2))
                gb3 += gc.sum(2, keepdim=True)
                g2 = torch.ops.aten.threshold_backward(torch.bmm(w3t, gc), h2, 0)  # (BC, 8, n)
                gw2.baddbmm_(g2, h1.transpose(1, 2))
                gb2 += g2.sum(2, keepdim=True)
                g1 = torch.ops.aten.threshold_backward(torch.bmm(w2t, g2), h1, 0).view(b, c * HEAD_CH, -1)
                gw1.baddbmm_(g1, xc.transpose(1, 2))
                gb1 += g1.sum(2, keepdim=True)
                gx[:, :, i : i + chunk] = torch.bmm(w1t, g1)
        return gx, gb1, gw1, gb2, gw2, gb3, gw3, None, None, None, None


def dynamic_head(x, b1, w1, b2, w2, b3, w3, b: int, c: int, chunk: int = 512, backward_chunk: int | None = None) -> torch.Tensor:
    """Per-class heads on x (B, 8, n) -> (B, C, n); see ``DynamicHead`` (``backward_chunk``
    defaults to ``chunk``)."""
    return DynamicHead.apply(x, b1, w1, b2, w2, b3, w3, b, c, chunk, backward_chunk or chunk)


def reference_dynamic_head(x, b1, w1, b2, w2, b3, w3, b: int, c: int) -> torch.Tensor:
    """The same heads with plain autograd (stores every intermediate): the test reference."""
    h = torch.baddbmm(b1, w1, x).relu().reshape(b * c, HEAD_CH, -1)
    h = torch.baddbmm(b2, w2, h).relu()
    return torch.baddbmm(b3, w3, h).reshape(b, c, -1)
