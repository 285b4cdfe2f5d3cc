"""SKCDF (Zhang, Yin et al., CVPR 2025) as its released ``SKCDF/code/train_skcdf.py`` and
``SKCDF/code/models/SKCDF.py`` (yinguanchun/SKCDF, built on DHC / GenericSSL) train it.

One network (:class:`SKCDFNet`): a DHC V-Net encoder, two attention blocks on the bottleneck
x5 (B, 16n, D/16, H/16, W/16) - :class:`LocalAttentionBlock` then :class:`GlobalAttentionBlock` -
and two decoders ``dec_l`` / ``dec_u``, each with a main 1x1x1 head ``out_conv`` and an auxiliary
balanced head ``out_conv_abc``. The blocks run in one of two modes: ``"labeled"`` (the batch is
[labeled; unlabeled]; channel attention *across* the halves: queries of one half, keys and values
of the other, the unlabeled side detached) feeding ``dec_l``, and ``"unlabeled"`` (multi-head
channel self-attention per image) feeding ``dec_u``. Per step, with ``n_l`` labeled images::

    blend (no gradient, before the step): dec_l.out_conv <- a dec_l.out_conv + (1-a) dec_l.out_conv_abc
                                          dec_u          <- a dec_u + (1-a) dec_l   (parameters)
                                          dec_u.out_conv <- a dec_u.out_conv + (1-a) dec_u.out_conv_abc
    z, z_abc   = net([x_l; x_u], "labeled")                       (dec_l)
    M_l        ~ Bernoulli(r[y])                r_c = min_k N_k / N_c (labeled voxel counts)
    sup        = DCCE(z[:n_l], y) + DCCE(z_abc[:n_l] M_l, y M_l)
    M_u        ~ Bernoulli(r_t[argmax z_abc[n_l:]]),  r_t = 1 - (e / E)(1 - r)   (e: current epoch)
    u, u_abc   = net(x_u, "unlabeled")                            (dec_u)
    unsup      = DCCE(u, argmax z[n_l:]) + DCCE(u_abc M_u, argmax z_abc[n_l:] M_u)
    loss       = sup + w(e) unsup,   w(e) = cps_w sigmoid_rampup(e - 1, E)  (DHC's epoch lag)

``DCCE`` is the release's ``DC_and_CE_loss`` (unweighted: ``w_ce+dice`` is built without
weights): CE + 1 - mean foreground batch soft Dice (smooth 1). ``a`` = ``ema_w``. Masked logits
are zero (uniform softmax) with background targets: they carry no gradient. Inference: the main
head of ``dec_u`` in ``"unlabeled"`` mode (test.py ``test_single_case``).

Generalised from the release (identical at its 64x128x128 patch, 2 + 2 images): the global token
learner's kernel and size are the bottleneck's (release: fixed 4x8x8 -> 256), the local block's
positions and both halves' sizes come from the input (release: ``b=2, d=2, h=4, w=4``); the
labeled / unlabeled split is at ``n_l`` (release: half the batch). The release's unused
``TokenLearner.map_in`` convolutions are left out, and its eval-mode batch doubling
(``torch.cat((x, x))``, a no-op for per-image self-attention) is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.errors import UserError
from bench.core.registry import register_method
from bench.core.settings import setting
from methods.base import Losses, Method, MethodContext, RunningState
from methods.losses import dhc_dc_ce_loss
from methods.networks import conv_block, decoder_stages, down_block, init_weights, up_block
from methods.ramps import DHCEpochSchedule, sigmoid_rampup
from methods.supervised import BackboneHparams

Mode = Literal["labeled", "unlabeled"]


def depth_to_space(t: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch * ch, 8, d, h, w) -> (batch, ch, 2d, 2h, 2w): sub-voxel s = (p1, p2, p3) goes to
    offset (p1, p2, p3) - the release's ``(d h w) (p1 p2 p3) -> (d p1 h p2 w p3)`` rearrange."""
    n, _, d, h, w = t.shape
    t = t.reshape(batch, n // batch, 2, 2, 2, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return t.reshape(batch, n // batch, 2 * d, 2 * h, 2 * w)


def instance_norm_softmax(a: torch.Tensor, drop: nn.Module) -> torch.Tensor:
    """psi / softmax / dropout of the release's attention: each (N, K, X, Y) matrix normalised
    (InstanceNorm2d, no affine, eps 1e-5), softmax over Y, dropout."""
    return drop(torch.softmax(F.instance_norm(a, eps=1e-5), dim=3))


class _QKV(nn.Module):
    """q, k, v: Linear(c -> c heads, no bias) and out: Linear(c heads -> c, no bias), Xavier-uniform
    (the release's ``_init_weights``)."""

    def __init__(self, channels: int, heads: int, dropout: float):
        super().__init__()
        self.c, self.heads = channels, heads
        self.q, self.k, self.v = (nn.Linear(channels, channels * heads, bias=False) for _ in range(3))
        self.out = nn.Linear(channels * heads, channels, bias=False)
        self.attn_dropout, self.proj_dropout = nn.Dropout(dropout), nn.Dropout(dropout)
        for m in (self.q, self.k, self.v, self.out):
            nn.init.xavier_uniform_(m.weight)


class LocalAttention(_QKV):
    """Channel attention within 2x2x2 neighbourhoods. Tokens ``emb`` (B P, 8, c): P positions
    of the half-resolution grid (d h w order), 8 sub-voxels, c channels. Returns (B, D H W, c)
    in voxel order (d p1 h p2 w p3)."""

    def forward(self, emb: torch.Tensor, mode: Mode, n_l: int, grid: Sequence[int]) -> torch.Tensor:
        P = grid[0] * grid[1] * grid[2]
        B = emb.shape[0] // P
        if mode == "labeled":
            emb_l, emb_u = emb[: n_l * P], emb[n_l * P:]
            u2l = self._cross(emb_u.detach(), emb_l, grid)  # queries unlabeled, keys / values labeled
            l2u = self._cross(emb_l, emb_u.detach(), grid)
            return torch.cat([l2u, u2l], 0)
        CH = self.c * self.heads
        q = self.q(emb).reshape(B * P, 8, self.c, self.heads).permute(0, 3, 2, 1)  # (BP, heads, c, 8)
        k = self.k(emb).reshape(B * P, 8, self.c, self.heads).permute(0, 3, 1, 2)  # (BP, heads, 8, c)
        v = self.v(emb).reshape(B * P, 8, self.c, self.heads).permute(0, 3, 2, 1)
        a = instance_norm_softmax(q @ k, self.attn_dropout) @ v  # (BP, heads, c, 8)
        a = a.reshape(B, P, self.heads, self.c, 8).permute(0, 3, 2, 4, 1)  # (B, c, heads, 8, P): (c heads)
        a = depth_to_space(a.reshape(B * CH, 8, *grid), B).flatten(2).transpose(1, 2)
        return self.out(a)  # the release applies no proj_dropout here

    def _cross(self, q_src: torch.Tensor, kv_src: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        P = grid[0] * grid[1] * grid[2]
        bq, bk, CH = q_src.shape[0] // P, kv_src.shape[0] // P, self.c * self.heads
        q = self.q(q_src).transpose(1, 2).reshape(bq, P, CH, 8)
        k = self.k(kv_src).reshape(bk, P, 8, CH).permute(1, 2, 0, 3).reshape(P, 8, bk * CH)
        v = self.v(kv_src).reshape(bk, P, 8, CH).permute(1, 0, 3, 2).reshape(P, bk * CH, 8)
        a = instance_norm_softmax((q @ k).reshape(bq * P, 1, CH, bk * CH), self.attn_dropout)
        a = a.reshape(bq, P, CH, bk * CH) @ v  # (bq, P, CH, 8)
        a = depth_to_space(a.permute(0, 2, 3, 1).reshape(bq * CH, 8, *grid), bq).flatten(2).transpose(1, 2)
        return self.proj_dropout(self.out(a))


class GlobalAttention(_QKV):
    """Channel attention over the whole bottleneck. ``emb`` (B, E, c), E tokens. Returns (B, E, c)."""

    def forward(self, emb: torch.Tensor, mode: Mode, n_l: int) -> torch.Tensor:
        if mode == "labeled":
            emb_l, emb_u = emb[:n_l], emb[n_l:]
            u2l = self._cross(emb_u.detach(), emb_l)
            l2u = self._cross(emb_l, emb_u.detach())
            return torch.cat([l2u, u2l], 0)
        B, E, _ = emb.shape
        q = self.q(emb).reshape(B, E, self.heads, self.c).permute(0, 2, 3, 1)  # (B, heads, c, E): heads outer
        k = self.k(emb).reshape(B, E, self.heads, self.c).transpose(1, 2)  # (B, heads, E, c)
        v = self.v(emb).reshape(B, E, self.heads, self.c).permute(0, 2, 3, 1)
        a = instance_norm_softmax(q @ k, self.attn_dropout) @ v  # (B, heads, c, E)
        a = a.permute(0, 3, 2, 1).reshape(B, E, self.c * self.heads)  # out reads (c heads), as released
        return self.proj_dropout(self.out(a))

    def _cross(self, q_src: torch.Tensor, kv_src: torch.Tensor) -> torch.Tensor:
        bq, E, _ = q_src.shape
        bk, CH = kv_src.shape[0], self.c * self.heads
        q = self.q(q_src).transpose(1, 2).unsqueeze(1)  # (bq, 1, CH, E)
        k = self.k(kv_src).transpose(0, 1).reshape(E, bk * CH)
        v = self.v(kv_src).transpose(0, 1).reshape(E, bk * CH).t()
        a = instance_norm_softmax(q @ k, self.attn_dropout) @ v  # (bq, 1, CH, E)
        return self.proj_dropout(self.out(a.permute(0, 3, 2, 1).reshape(bq, E, CH)))


class LocalAttentionBlock(nn.Module):
    """Token learner (Conv3d 1 -> 8, kernel 2, stride 2, per channel), LayerNorm, local attention,
    residual, LayerNorm, 1x1x1 conv + GELU: (B, c, D, H, W) -> same (D, H, W even)."""

    def __init__(self, channels: int, heads: int, dropout: float):
        super().__init__()
        self.token = nn.Conv3d(1, 8, 2, stride=2)
        self.attn_norm, self.ffn_norm = nn.LayerNorm(channels, eps=1e-6), nn.LayerNorm(channels, eps=1e-6)
        self.attn = LocalAttention(channels, heads, dropout)
        self.map_out = nn.Sequential(nn.Conv3d(channels, channels, 1), nn.GELU())

    def forward(self, x: torch.Tensor, mode: Mode, n_l: int) -> torch.Tensor:
        B, c, D, H, W = x.shape
        t = self.token(x.reshape(B * c, 1, D, H, W))  # (B c, 8, D/2, H/2, W/2)
        grid = t.shape[2:]
        res = depth_to_space(t, B).flatten(2).transpose(1, 2)  # (B, D H W, c)
        emb = t.reshape(B, c, 8, -1).permute(0, 3, 2, 1).reshape(-1, 8, c)  # (B P, 8, c)
        y = self.ffn_norm(self.attn(self.attn_norm(emb), mode, n_l, grid) + res)
        return self.map_out(y.transpose(1, 2).reshape(B, c, D, H, W))


class GlobalAttentionBlock(nn.Module):
    """Token learner (Conv3d 1 -> E over the whole bottleneck, per channel; E = D H W), LayerNorm,
    global attention, residual, LayerNorm, 1x1x1 conv + GELU: (B, c, D, H, W) -> same."""

    def __init__(self, channels: int, bottleneck: Sequence[int], heads: int, dropout: float):
        super().__init__()
        e = bottleneck[0] * bottleneck[1] * bottleneck[2]
        self.token = nn.Conv3d(1, e, tuple(bottleneck), stride=tuple(bottleneck))
        self.attn_norm, self.ffn_norm = nn.LayerNorm(channels, eps=1e-6), nn.LayerNorm(channels, eps=1e-6)
        self.attn = GlobalAttention(channels, heads, dropout)
        self.map_out = nn.Sequential(nn.Conv3d(channels, channels, 1), nn.GELU())

    def forward(self, x: torch.Tensor, mode: Mode, n_l: int) -> torch.Tensor:
        B, c, D, H, W = x.shape
        emb = self.token(x.reshape(B * c, 1, D, H, W)).reshape(B, c, D * H * W).transpose(1, 2)  # (B, E, c)
        y = self.ffn_norm(self.attn(self.attn_norm(emb), mode, n_l) + emb)
        return self.map_out(y.transpose(1, 2).reshape(B, c, D, H, W))


class TwoHeadDecoder(nn.Module):
    """A V-Net decoder (``up`` / ``dec`` as :class:`methods.networks.VNet`) with two 1x1x1 heads:
    encoder maps x1..x5 -> (main, abc) logits, each (B, C, D, H, W)."""

    def __init__(self, num_classes: int, n: int, normalization: str, dropout: bool):
        super().__init__()
        self.up = nn.ModuleList([up_block(c, c // 2, normalization) for c in (16 * n, 8 * n, 4 * n, 2 * n)])
        self.dec = nn.ModuleList([conv_block(3, 8 * n, 8 * n, normalization), conv_block(3, 4 * n, 4 * n, normalization),
                                  conv_block(2, 2 * n, 2 * n, normalization), conv_block(1, n, n, normalization)])
        self.has_dropout = dropout
        self.dropout = nn.Dropout3d(p=0.5)
        self.out_conv, self.out_conv_abc = nn.Conv3d(n, num_classes, 1), nn.Conv3d(n, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = decoder_stages(self.up, self.dec, feats)[-1]
        if self.has_dropout and self.training:
            x = self.dropout(x)
        return self.out_conv(x), self.out_conv_abc(x)


class SKCDFNet(nn.Module):
    """The release's ``VNet_Decouple_Attention_ABC``: V-Net encoder (``enc`` / ``down``, the
    suite's names), local then global attention on x5, decoders ``dec_l`` ("labeled" mode) and
    ``dec_u`` ("unlabeled"). ``forward(x, mode, n_l)``: (B, 1, D, H, W) -> (main, abc) logits
    (B, C, D, H, W); in "labeled" mode the first ``n_l`` images are labeled. D, H, W: multiples of 32."""

    def __init__(self, in_channels: int, num_classes: int, n_filters: int, patch: Sequence[int], normalization: str = "batchnorm",
                 dropout: bool = False, heads: int = 2, attn_dropout: float = 0.1, init: str = "xavier"):
        super().__init__()
        n = n_filters
        self.enc = nn.ModuleList([conv_block(1, in_channels, n, normalization), conv_block(2, 2 * n, 2 * n, normalization),
                                  conv_block(3, 4 * n, 4 * n, normalization), conv_block(3, 8 * n, 8 * n, normalization),
                                  conv_block(3, 16 * n, 16 * n, normalization)])
        self.down = nn.ModuleList([down_block(c, 2 * c, normalization) for c in (n, 2 * n, 4 * n, 8 * n)])
        self.has_dropout = dropout
        self.dropout = nn.Dropout3d(p=0.5)
        self.local_attn = LocalAttentionBlock(16 * n, heads, attn_dropout)
        self.global_attn = GlobalAttentionBlock(16 * n, [s // 16 for s in patch], heads, attn_dropout)
        self.dec_l = TwoHeadDecoder(num_classes, n, normalization, dropout)
        self.dec_u = TwoHeadDecoder(num_classes, n, normalization, dropout)
        init_weights(self, init)  # train_skcdf.py:183: every Conv3d of the model, attention blocks included

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

    def forward(self, x: torch.Tensor, mode: Mode = "unlabeled", n_l: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n_l = x.shape[0] // 2 if n_l is None else n_l
        feats = self.encode(x)
        x5 = self.global_attn(self.local_attn(feats[4], mode, n_l), mode, n_l)
        return (self.dec_l if mode == "labeled" else self.dec_u)([*feats[:4], x5])

    @torch.no_grad()
    def blend_decoders(self, a: float) -> None:
        """The release's three blends at the start of each iteration (train_skcdf.py:221-238), in
        its order, parameters only: dec_l main head toward its abc head, dec_u toward dec_l, dec_u
        main head toward its abc head."""
        for name in ("weight", "bias"):
            p = getattr(self.dec_l.out_conv, name)
            p.copy_(a * p + (1 - a) * getattr(self.dec_l.out_conv_abc, name))
        lp = dict(self.dec_l.named_parameters())
        for name, p in self.dec_u.named_parameters():
            p.copy_(a * p + (1 - a) * lp[name])
        for name in ("weight", "bias"):
            p = getattr(self.dec_u.out_conv, name)
            p.copy_(a * p + (1 - a) * getattr(self.dec_u.out_conv_abc, name))


def keep_ratio(counts) -> torch.Tensor:
    """(C,) voxel counts -> ``min_k N_k / N_c`` (float64; train_skcdf.py:205): the probability of
    keeping a voxel of class c in the balanced head's loss (1 for the rarest class). Classes
    without voxels get 1 and are left out of the minimum (the release would divide 0 by 0)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    present = n > 0
    if not present.any():
        return torch.ones_like(n)
    return torch.where(present, n[present].min() / n.clamp_min(1), torch.ones_like(n))


def annealed_keep_ratio(ratio: torch.Tensor, progress: float) -> torch.Tensor:
    """``1 - progress (1 - ratio)`` (train_skcdf.py:267): every voxel kept at the start, ``ratio`` at the end."""
    return 1 - progress * (1 - ratio)


def balance_mask(ratio: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Bernoulli(ratio[label]) (B, 1, D, H, W) float64 for labels (B, D, H, W), drawn as the
    release draws it (one float64 ``torch.bernoulli`` over the label-shaped probabilities)."""
    return torch.bernoulli(ratio.to(label.device)[label].unsqueeze(1))


def dc_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SKCDF's ``DC_and_CE_loss``: CE + 1 - mean foreground batch soft Dice (smooth 1); DHC's
    (``dhc_dc_ce_loss``) without the 1. logits (B, C, D, H, W), target (B, D, H, W)."""
    return dhc_dc_ce_loss(logits, target) + 1.0


class KeepRatio(RunningState):
    """The balanced heads' keep ratio ``ratio`` (C,) float64, from the labeled voxel counts."""

    def __init__(self, counts):
        self.ratio = keep_ratio(counts)


@register_method("skcdf")
class SKCDF(DHCEpochSchedule, Method):
    """SKCDF (Zhang, Yin et al., CVPR 2025): one encoder, labeled / unlabeled decoders bridged by
    cross-attention on the bottleneck, auxiliary balanced heads trained on Bernoulli class masks."""

    family = "decoupled decoders (SKCDF)"
    paper = "Zhang, Yin et al., SKCDF, CVPR 2025"
    code = "yinguanchun/SKCDF"

    #: train_skcdf.py:139-145: SGD momentum 0.9, Nesterov, weight decay 3e-5; fp32 (its
    #: ``--mixed_precision`` flag is never read: there is no autocast)
    train_defaults = {"weight_decay": 3e-5, "amp": False}

    @dataclass
    class Hparams(BackboneHparams):
        init: Literal["kaiming", "xavier", "default"] = "xavier"  # train_skcdf.py:183 xavier_normal_init_weight
        #: README / train_skcdf.py:26: -w 10
        cps_w: float = setting(10.0, ge=0.0)
        #: share of the run the weight ramps over (consistency_rampup None -> max_epoch: the whole run)
        cps_rampup: float = setting(1.0, ge=0.0)
        #: "epoch": lr and weight set once per epoch from the previous one (train_skcdf.py:302-303),
        #: the keep-ratio anneal from the current epoch (:267); "step": each step's own value
        schedule: Literal["epoch", "step"] = "epoch"
        #: decoder blend factor a (README / train_skcdf.py:23: ema_w 0.99)
        ema_w: float = setting(0.99, ge=0.0, le=1.0)
        #: attention heads and dropout (models/SKCDF.py:725, 740-745: num_heads 2, 0.1)
        heads: int = setting(2, ge=1)
        attn_dropout: float = setting(0.1, ge=0.0, lt=1.0)

    def __init__(self, ctx: MethodContext, **hparams):
        super().__init__(ctx, **hparams)
        hp = self.hp
        self.networks["net"] = SKCDFNet(ctx.in_channels, ctx.num_classes, ctx.width, ctx.patch_size, hp.normalization,
                                        hp.dropout, hp.heads, hp.attn_dropout, hp.init)
        counts = ctx.labeled_voxel_counts if ctx.labeled_voxel_counts is not None else [1] * ctx.num_classes
        self.balance = KeepRatio(counts)

    @classmethod
    def check_settings(cls, hp, train) -> None:
        """The local attention needs an even bottleneck (patch axes multiples of 32) and the
        cross-attention unlabeled images."""
        if any(int(s) % 32 for s in train.patch):
            raise UserError(f"skcdf needs patch axes that are multiples of 32 (got {tuple(train.patch)}); set e.g. patch = [64, 128, 128]")
        if train.unlabeled_bs < 1:
            raise UserError("skcdf attends across labeled and unlabeled images; set unlabeled_bs >= 1")

    def cps_weight(self, step: int) -> float:
        """w = cps_w sigmoid_rampup(schedule step, cps_rampup x iterations)."""
        return self.hp.cps_w * sigmoid_rampup(self.schedule_step(step), self.hp.cps_rampup * self.ctx.iterations)

    def progress(self, step: int) -> float:
        """e / E of the keep-ratio anneal: the current epoch over the run's epochs ("epoch"), or step / iterations."""
        if self.hp.schedule == "step":
            return min(step / max(1, self.ctx.iterations), 1.0)
        length = self.ctx.epoch_length
        return min((step // length) / max(1, self.ctx.iterations // length), 1.0)

    def training_step(self, labeled: dict, unlabeled: dict | None, step: int) -> Losses:
        """labeled image (B_l, 1, D, H, W) + label (B_l, D, H, W); unlabeled image (B_u, 1, D, H, W)."""
        if unlabeled is None:
            raise UserError("skcdf needs unlabeled images in every step (unlabeled_bs >= 1)")
        net = self.networks["net"]
        net.blend_decoders(self.hp.ema_w)
        y, x_u = labeled["label"], unlabeled["image"]
        n_l = y.shape[0]
        z, z_abc = net(torch.cat([labeled["image"], x_u]), "labeled", n_l)
        ratio = self.balance.ratio
        m_l = balance_mask(ratio, y)
        sup_main = dc_ce(z[:n_l], y)
        sup_abc = dc_ce(z_abc[:n_l] * m_l.to(z_abc.dtype), y * m_l[:, 0].long())
        pseudo, pseudo_abc = z[n_l:].detach().argmax(1), z_abc[n_l:].detach().argmax(1)
        m_u = balance_mask(annealed_keep_ratio(ratio, self.progress(step)), pseudo_abc)
        u, u_abc = net(x_u, "unlabeled")
        unsup_main = dc_ce(u, pseudo)
        unsup_abc = dc_ce(u_abc * m_u.to(u_abc.dtype), pseudo_abc * m_u[:, 0].long())
        sup, unsup = sup_main + sup_abc, unsup_main + unsup_abc
        w = self.cps_weight(step)
        return Losses(sup + w * unsup, {
            "sup": sup, "unsup": unsup, "sup_main": sup_main, "sup_abc": sup_abc, "unsup_main": unsup_main,
            "unsup_abc": unsup_abc, "w_unsup": torch.tensor(w), "keep_l": m_l.float().mean(), "keep_u": m_u.float().mean()})

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Main head of ``dec_u`` (B, C, D, H, W), "unlabeled" mode (test.py / utils test_single_case)."""
        return self.networks["net"](x, "unlabeled")[0]

    def running_state(self) -> dict:
        return {"balance": self.balance.state_dict()}

    def load_running_state(self, state: dict) -> None:
        self.balance.load_state_dict(state["balance"])

    @staticmethod
    def search_space(trial) -> dict:
        return {**Method.search_space(trial), "cps_w": trial.suggest_float("cps_w", 0.1, 30.0, log=True),
                "ema_w": trial.suggest_float("ema_w", 0.9, 0.999)}
