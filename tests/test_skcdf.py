"""SKCDF (``methods/skcdf.py``): hand-computed values of its formulas (keep ratios, masks, the
loss with masked logits, the decoder blends, the schedules), the attention against direct
per-matrix references, the data flow (which loss reaches which decoder), inference and running
state. Its agreement with the released code is ``tests/test_released_skcdf.py``."""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import TrainConfig
from bench.core.errors import UserError
from bench.core.registry import METHODS
from methods.skcdf import (
    SKCDF,
    GlobalAttention,
    LocalAttention,
    LocalAttentionBlock,
    annealed_keep_ratio,
    balance_mask,
    dc_ce,
    depth_to_space,
    keep_ratio,
)
from tests.helpers import random_batch, tiny_context

PATCH = (32, 32, 32)


def _method(**hp):
    ctx = tiny_context(patch=PATCH, width=2, n_unlabeled=4, unlabeled_bs=2)
    ctx.iterations = 20
    torch.manual_seed(0)
    return METHODS.get("skcdf")(ctx, **hp), ctx


# ----------------------------------------------------------------------------- formulas
@pytest.mark.parametrize(
    "counts, want",
    [
        ([100, 50, 25], [0.25, 0.5, 1.0]),  # min 25: 25/100, 25/50, 25/25
        ([10, 0, 40], [1.0, 1.0, 0.25]),  # an absent class is kept and left out of the minimum
        ([0, 0], [1.0, 1.0]),
    ],
)
def test_keep_ratio_hand_computed(counts, want):
    got = keep_ratio(counts)
    assert got.dtype == torch.float64 and torch.allclose(got, torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize("progress, want", [(0.0, [1.0, 1.0]), (0.4, [0.7, 1.0]), (1.0, [0.25, 1.0])])
def test_annealed_keep_ratio_hand_computed(progress, want):
    # 1 - p (1 - r): r = 0.25 -> 1 - 0.4 x 0.75 = 0.7; r = 1 stays 1
    got = annealed_keep_ratio(torch.tensor([0.25, 1.0], dtype=torch.float64), progress)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64))


def test_balance_mask_keeps_each_class_with_its_ratio():
    label = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]]).view(2, 4, 1, 1)
    mask = balance_mask(torch.tensor([0.0, 1.0], dtype=torch.float64), label)
    assert mask.shape == (2, 1, 4, 1, 1) and mask.dtype == torch.float64
    assert torch.equal(mask[:, 0], label.double())  # ratio 0 drops class 0, ratio 1 keeps class 1
    torch.manual_seed(0)
    big = balance_mask(torch.tensor([0.3, 1.0], dtype=torch.float64), torch.zeros(1, 100, 100, 10, dtype=torch.long))
    assert float(big.mean()) == pytest.approx(0.3, abs=0.01)


def test_dc_ce_hand_computed():
    # two voxels, 2 classes, uniform logits, targets 0 and 1: CE ln 2; class 1: tp 1/2, fp 1/2, fn 1/2
    # -> Dice (1 + 1) / (1 + 1/2 + 1/2 + 1) = 2/3; loss = ln 2 + 1 - 2/3
    logits = torch.zeros(1, 2, 2, 1, 1)
    target = torch.tensor([0, 1]).view(1, 2, 1, 1)
    assert float(dc_ce(logits, target)) == pytest.approx(math.log(2) + 1 / 3, rel=1e-6)


def test_masked_dc_ce_hand_computed():
    """A masked voxel (logits x 0, label 0) adds a constant CE ln 2 and fp 1/2 to every foreground
    Dice, and no gradient."""
    logits = torch.tensor([[0.0, 5.0], [math.log(3.0), 1.0]]).view(1, 2, 2, 1, 1).requires_grad_(True)
    target = torch.tensor([1, 1]).view(1, 2, 1, 1)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 2, 1, 1)
    v = dc_ce(logits * mask, target * mask[:, 0].long())
    # voxel 1: logits (0, ln 3), label 1: p1 = 3/4; voxel 2: logits (0, 0), label 0: p = 1/2
    ce = (-math.log(0.75) + math.log(2)) / 2
    dice = (2 * 0.75 + 1) / (2 * 0.75 + 0.5 + 0.25 + 1)  # tp 3/4, fp 1/2 (the masked voxel), fn 1/4
    assert float(v.detach()) == pytest.approx(ce + 1 - dice, rel=1e-6)
    v.backward()
    assert torch.all(logits.grad[:, :, 1] == 0) and torch.any(logits.grad[:, :, 0] != 0)


def test_depth_to_space_puts_sub_voxel_s_at_offset_p1_p2_p3():
    t = torch.arange(16.0).view(2, 8, 1, 1, 1)  # batch 1, 2 channels
    out = depth_to_space(t, 1)
    assert out.shape == (1, 2, 2, 2, 2)
    assert torch.equal(out[0, 0], torch.arange(8.0).view(2, 2, 2))  # s = 4 p1 + 2 p2 + p3
    assert torch.equal(out[0, 1], torch.arange(8.0, 16.0).view(2, 2, 2))


def test_decoder_blends_hand_computed():
    m, _ = _method()
    net = m.networks["net"]
    with torch.no_grad():
        for p in net.dec_l.parameters():
            p.zero_()
        net.dec_l.out_conv.weight.fill_(1.0)
        for p in net.dec_u.parameters():
            p.fill_(2.0)
        net.dec_u.dec[0][1].running_mean.fill_(7.0)
    net.blend_decoders(0.5)
    # dec_l.out_conv: 0.5 x 1 + 0.5 x 0 = 0.5; dec_u.out_conv: 0.5 x 2 + 0.5 x 0.5 = 1.25, then
    # 0.5 x 1.25 + 0.5 x dec_u.out_conv_abc (0.5 x 2 + 0.5 x 0 = 1) = 1.125; the rest of dec_u: 1
    assert torch.all(net.dec_l.out_conv.weight == 0.5) and torch.all(net.dec_l.out_conv_abc.weight == 0)
    assert torch.all(net.dec_u.out_conv.weight == 1.125) and torch.all(net.dec_u.out_conv_abc.weight == 1.0)
    assert torch.all(net.dec_u.dec[0][0].weight == 1.0) and torch.all(net.dec_u.up[0][0].bias == 1.0)
    assert torch.all(net.dec_u.dec[0][1].running_mean == 7.0)  # buffers are not blended


@pytest.mark.parametrize("schedule, step, progress, ramp_step", [("epoch", 5, 0.2, 2), ("epoch", 1, 0.0, 0), ("step", 5, 0.25, 5)])
def test_progress_and_weight_schedules(schedule, step, progress, ramp_step):
    # 20 iterations, epochs of 2: step 5 is epoch 2 (anneal 2/10; weight and lr of epoch 1 = step 2)
    m, _ = _method(schedule=schedule, cps_w=10.0)
    assert m.progress(step) == pytest.approx(progress)
    assert m.cps_weight(step) == pytest.approx(10.0 * math.exp(-5 * (1 - ramp_step / 20) ** 2))


def test_check_settings_rejects_patches_and_batches_it_cannot_run():
    SKCDF.check_settings(SKCDF.Hparams(), TrainConfig(patch=(32, 64, 96), unlabeled_bs=2))
    with pytest.raises(UserError, match="multiples of 32"):
        SKCDF.check_settings(SKCDF.Hparams(), TrainConfig(patch=(16, 32, 32)))
    with pytest.raises(UserError, match="unlabeled_bs"):
        SKCDF.check_settings(SKCDF.Hparams(), TrainConfig(patch=(32, 32, 32), unlabeled_bs=0))


# ----------------------------------------------------------------------------- attention references
def _norm_softmax(a: torch.Tensor) -> torch.Tensor:
    """InstanceNorm over the whole matrix (biased variance, eps 1e-5), softmax over rows."""
    return torch.softmax((a - a.mean()) / torch.sqrt(a.var(unbiased=False) + 1e-5), -1)


def test_global_self_attention_against_per_head_reference():
    torch.manual_seed(0)
    c, heads, E = 3, 2, 5
    att = GlobalAttention(c, heads, 0.0).eval()
    emb = torch.randn(2, E, c)
    got = att(emb, "unlabeled", 1)
    q, k, v = att.q(emb), att.k(emb), att.v(emb)  # (B, E, c heads), head h = channels h c .. h c + c - 1
    for b in range(2):
        merged = torch.zeros(E, c * heads)
        for h in range(heads):
            s = slice(h * c, (h + 1) * c)
            a = _norm_softmax(q[b, :, s].T @ k[b, :, s])  # (c, c)
            o = a @ v[b, :, s].T  # (c, E)
            for ch in range(c):
                merged[:, ch * heads + h] = o[ch]  # out reads channel c of head h at c heads + h
        assert torch.allclose(got[b], att.out(merged), atol=1e-5)


def test_global_cross_attention_against_reference():
    torch.manual_seed(1)
    c, heads, E, n_l = 3, 2, 4, 2
    att = GlobalAttention(c, heads, 0.0).eval()
    emb = torch.randn(4, E, c)
    got = att(emb, "labeled", n_l)

    def cross(qs, kvs):  # queries of one half, keys / values of every image of the other, concatenated
        K = torch.cat([att.k(x) for x in kvs], 1)  # (E, n CH)
        V = torch.cat([att.v(x) for x in kvs], 1)
        return torch.stack([att.out((_norm_softmax(att.q(x).T @ K) @ V.T).T) for x in qs])

    assert torch.allclose(got[:n_l], cross(emb[:n_l], emb[n_l:]), atol=1e-5)  # l2u
    assert torch.allclose(got[n_l:], cross(emb[n_l:], emb[:n_l]), atol=1e-5)  # u2l


def test_local_cross_attention_one_position_against_reference():
    """One 2x2x2 neighbourhood (grid 1x1x1): the 8 sub-voxels are the tokens; output voxel (p1, p2, p3) = sub-voxel s."""
    torch.manual_seed(2)
    c, heads = 3, 2
    att = LocalAttention(c, heads, 0.0).eval()
    emb = torch.randn(4, 8, c)
    got = att(emb, "labeled", 2, (1, 1, 1))  # (4, 8 voxels, c)
    K = torch.cat([att.k(x) for x in emb[2:]], 1)  # (8, 2 CH)
    V = torch.cat([att.v(x) for x in emb[2:]], 1)
    want = att.out((_norm_softmax(att.q(emb[0]).T @ K) @ V.T).T)  # (8, c): sub-voxel order = voxel order
    assert torch.allclose(got[0], want, atol=1e-5)


def test_labeled_mode_mixes_the_halves_and_detaches_the_unlabeled_side():
    torch.manual_seed(3)
    block = LocalAttentionBlock(4, 2, 0.0).eval()
    x = torch.randn(4, 4, 2, 2, 2, requires_grad=True)
    y = block(x, "labeled", 2)
    (g,) = torch.autograd.grad(y[:2].sum(), x)
    assert torch.all(g[2:] == 0) and g[:2].abs().sum() > 0  # labeled rows: no gradient to the unlabeled images
    x2 = x.detach().clone()
    x2[2:] += torch.randn(2, 4, 2, 2, 2)  # not a constant: LayerNorm over channels would remove it
    assert not torch.allclose(block(x2, "labeled", 2)[:2], y[:2].detach())  # but they read them
    # "unlabeled" mode: each image attends to itself only
    y_self = block(x.detach(), "unlabeled", 2)
    assert torch.allclose(block(x2, "unlabeled", 2)[:2], y_self[:2])


# ----------------------------------------------------------------------------- the method
def test_losses_reach_the_decoders_as_released():
    """sup trains dec_l (not dec_u), unsup trains dec_u (not dec_l); both reach encoder and attention."""
    m, ctx = _method(cps_rampup=0.0, cps_w=0.5)
    labeled, unlabeled = random_batch(ctx)
    losses = m.training_step(labeled, unlabeled, 7)
    net = m.networks["net"]
    p = losses.parts
    assert float(losses.total.detach()) == pytest.approx(float((p["sup"] + 0.5 * p["unsup"]).detach()), rel=1e-6)
    assert float(p["unsup"].detach()) == pytest.approx(float((p["unsup_main"] + p["unsup_abc"]).detach()), rel=1e-6)

    def reached(loss, module):
        grads = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True, retain_graph=True)
        return any(g is not None and g.abs().sum() > 0 for g in grads)

    assert reached(p["sup"], net.dec_l) and not reached(p["sup"], net.dec_u)
    assert reached(p["unsup"], net.dec_u) and not reached(p["unsup"], net.dec_l)
    for part in (net.enc, net.local_attn, net.global_attn):
        assert reached(p["unsup"], part) and reached(p["sup"], part)
    assert m.teachers == {}  # dec_u is blended from dec_l but also trained: not a teacher


def test_training_step_blends_before_the_forward():
    m, ctx = _method()
    net = m.networks["net"]
    before = net.dec_u.out_conv.weight.detach().clone()
    expect_u = 0.99 * before + 0.01 * (0.99 * net.dec_l.out_conv.weight + 0.01 * net.dec_l.out_conv_abc.weight).detach()
    expect_u = 0.99 * expect_u + 0.01 * (0.99 * net.dec_u.out_conv_abc.weight + 0.01 * net.dec_l.out_conv_abc.weight).detach()
    labeled, unlabeled = random_batch(ctx)
    m.training_step(labeled, unlabeled, 0)
    assert torch.allclose(net.dec_u.out_conv.weight, expect_u, atol=1e-7)


def test_one_engine_step_on_cpu_changes_weights():
    from bench.step import TrainStep, make_optimizers

    m, ctx = _method(dropout=True)
    train = TrainConfig(lr=0.05, weight_decay=3e-5, iterations=20)
    ts = TrainStep(m, make_optimizers(m, train), torch.device("cpu"), amp=False)
    before = [p.detach().clone() for p in m.parameters()]
    labeled, unlabeled = random_batch(ctx)
    losses = ts(labeled, unlabeled, 0)
    assert torch.isfinite(losses.total)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert 0 < float(losses.parts["keep_l"]) < 1 and float(losses.parts["keep_u"]) == 1.0  # epoch 0 keeps every pseudo-label


def test_predict_is_the_unlabeled_decoders_main_head():
    m, _ = _method()
    m.train(False)
    x = torch.rand(1, 1, *PATCH)
    with torch.no_grad():
        main_u, _ = m.networks["net"](x, "unlabeled")
        main_l, _ = m.networks["net"](torch.cat([x, x]), "labeled", 1)
        assert torch.equal(m.predict(x), main_u)
        assert not torch.allclose(m.predict(x), main_l[:1])


def test_running_state_round_trips():
    m, _ = _method()
    state = m.running_state()
    saved = m.balance.ratio.clone()
    m.balance.ratio = torch.zeros_like(saved)
    m.load_running_state(state)
    assert torch.equal(m.balance.ratio, saved) and m.balance.ratio is not state["balance"]["ratio"]


def test_keep_ratio_comes_from_the_labeled_voxel_counts():
    m, ctx = _method()
    n = torch.as_tensor(ctx.labeled_voxel_counts, dtype=torch.float64)
    assert torch.allclose(m.balance.ratio, n.min() / n)
