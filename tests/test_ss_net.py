"""SS-Net (``methods/ss_net.py``): every formula on hand-computed examples, one CPU step, the
unsupervised part's gradients, the running state (feature memory) round trip.

The released code is checked separately (``tests/test_released_ssnet.py``)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from bench.config import TrainConfig
from bench.core.registry import METHODS
from bench.core.settings import check_defaults
from bench.step import TrainStep, make_optimizers
from methods.ss_net import FeatureMemory, SSNet, SSNetVNet, class_separation, l2_normalize, soft_dice_distance, vat_loss
from tests.helpers import random_batch, tiny_context

LN3 = math.log(3.0)


def linear(w: list[float], b: float = 0.0) -> nn.Linear:
    """A selector stand-in: one Linear(len(w), 1) with the given weights."""
    lin = nn.Linear(len(w), 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([w]))
        lin.bias.fill_(b)
    return lin


def test_hparam_defaults_satisfy_their_ranges():
    check_defaults(SSNet.Hparams)
    hp = SSNet.Hparams()
    assert (hp.init, hp.released_memory_rank, hp.released_memory_weights) == ("default", False, False)


# ----------------------------------------------------------------------------- formulas
@pytest.mark.parametrize("d, expected", [
    # (3, 4) has norm 5: (0.6, 0.8) (the 1e-8 moves it by ~1e-9); an all-zero sample stays zero
    ([[3.0, 4.0], [0.0, 0.0]], [[0.6, 0.8], [0.0, 0.0]]),
    # (1, 1, 1, 1) has norm 2: 0.5 each; (0, -2, 0, 0) has norm 2
    ([[1.0, 1.0, 1.0, 1.0], [0.0, -2.0, 0.0, 0.0]], [[0.5, 0.5, 0.5, 0.5], [0.0, -1.0, 0.0, 0.0]]),
])
def test_l2_normalize_per_sample_over_all_voxels(d, expected):
    t = torch.tensor(d).view(2, 1, 1, 1, -1)  # (B, 1, D, H, W)
    out = l2_normalize(t)
    assert out.shape == t.shape
    assert torch.allclose(out.view(2, -1), torch.tensor(expected), atol=1e-7)


# p (2 voxels, 2 classes): voxel 0 (0.8, 0.2), voxel 1 (0.4, 0.6)
_P = torch.tensor([[0.8, 0.4], [0.2, 0.6]]).view(1, 2, 1, 1, 2)


@pytest.mark.parametrize("target, expected", [
    # labels (0, 1): class 0 tp 0.8 fp 0.4 fn 0.2 -> 1.6 / 2.2 = 8/11; class 1 tp 0.6 fp 0.2 fn 0.4
    # -> 1.2 / 1.8 = 2/3; 1 - (8/11 + 2/3) / 2 = 10/33
    (torch.tensor([0, 1]).view(1, 1, 1, 2), 10 / 33),
    # soft target = p itself (VAT's target): class 0 tp 0.64 + 0.16 = 0.8, fp = fn = 0.16 + 0.24 = 0.4
    # -> 1.6 / 2.4 = 2/3; class 1 tp 0.04 + 0.36 = 0.4, fp = fn = 0.4 -> 0.8 / 1.6 = 1/2; 1 - 7/12 = 5/12
    (_P.clone(), 5 / 12),
    # perfect one-hot prediction of the labels: every dice 1 -> 0
    (torch.tensor([0, 1]).view(1, 1, 1, 2), None),
])
def test_soft_dice_distance_hand(target, expected):
    if expected is None:
        probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 1, 2)
        assert float(soft_dice_distance(probs, target)) == pytest.approx(0.0, abs=1e-7)
    else:
        assert float(soft_dice_distance(_P, target)) == pytest.approx(expected, rel=1e-6)


def _separation_case():
    """3 voxels: f1 = (2, 0) and f2 = (0, 3) of class 1, f3 of class 0 (no memory); memory of
    class 1: (2, 0), (0, 2). Selector logits ln3 x[0]: features (raw) ln 9, 0 -> sigmoid 0.9, 0.5;
    memory (normalised (1, 0), (0, 1)) ln 3, 0 -> sigmoid 0.75, 0.5."""
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0], [5.0, 5.0]], requires_grad=True)
    labels = torch.tensor([1, 1, 0])
    memory = [None, torch.tensor([[2.0, 0.0], [0.0, 2.0]])]
    sel = [linear([0.0, 0.0]), linear([LN3, 0.0])]
    msel = [linear([0.0, 0.0]), linear([LN3, 0.0])]
    return feats, labels, memory, sel, msel


@pytest.mark.parametrize("released, expected, grad_f1_y", [
    # a = 2 (0.9, 0.5) / 1.4 = (9/7, 5/7); distances 1 - f̂ . m̂ = [[0, 1], [1, 0]].
    # fix: b = 2 (0.75, 0.5) / 1.25 = (1.2, 0.8): mean(0, 9/7 0.8, 5/7 1.2, 0) = (13.2/7) / 4;
    # / C = 2 -> 33/140. d/df1 of (1 - f̂1 . m̂2) = -(m̂2 - (f̂1 . m̂2) f̂1) / |f1| = (0, -1/2), so
    # grad f1 = a1 b2 (0, -1/2) / 8 = (0, -9/140) (a from the detached features: no gradient).
    (False, 33 / 140, -9 / 140),
    # released: b = w / w = 1: mean(0, 9/7, 5/7, 0) / 2 = 1/4; grad f1 = (9/7)(0, -1/2) / 8 = (0, -9/112)
    (True, 1 / 4, -9 / 112),
])
def test_class_separation_hand(released, expected, grad_f1_y):
    feats, labels, memory, sel, msel = _separation_case()
    loss = class_separation(feats, labels, memory, sel, msel, released_memory_weights=released)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.allclose(feats.grad[0], torch.tensor([0.0, grad_f1_y]), atol=1e-7)
    assert torch.equal(feats.grad[2], torch.zeros(2))  # class 0 has no memory: no term
    assert sel[1].weight.grad.abs().sum() > 0  # the features' selector learns
    mem_grad = float(msel[1].weight.grad.abs().max())
    assert (mem_grad < 1e-7) if released else (mem_grad > 1e-3)  # released w / w: no gradient


def test_class_separation_skips_single_rows():
    """A class with one feature or one memory row adds 0 (the release's ``> 1`` conditions)."""
    feats, labels, memory, sel, msel = _separation_case()
    assert float(class_separation(feats[[0, 2]], labels[[0, 2]], memory, sel, msel)) == 0.0
    assert float(class_separation(feats, labels, [None, memory[1][:1]], sel, msel)) == 0.0


@pytest.mark.parametrize("lowest, kept", [
    (False, [[3.0, 0.0], [2.0, 0.0]]),  # the fix: the two highest-ranked, highest first
    (True, [[1.0, 0.0], [2.0, 0.0]]),  # as released: ascending sort, the two lowest
])
def test_memory_update_hand(lowest, kept):
    """Size 2; class 1 has three rows ranked by their first coordinate (selector logit x[0]),
    class 2 one row (kept as is), class 3 none (its earlier rows stay), class 0 none (stays None)."""
    mem = FeatureMemory(num_classes=4, size=2, lowest=lowest)
    mem.memory[3] = torch.tensor([[9.0, 9.0], [8.0, 8.0]])
    feats = torch.tensor([[1.0, 0.0], [0.0, 7.0], [3.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([1, 2, 1, 1])
    mem.update(feats, labels, [linear([1.0, 0.0])] * 4)
    assert mem.memory[0] is None
    assert torch.equal(mem.memory[1], torch.tensor(kept))
    assert torch.equal(mem.memory[2], torch.tensor([[0.0, 7.0]]))
    assert torch.equal(mem.memory[3], torch.tensor([[9.0, 9.0], [8.0, 8.0]]))


@pytest.mark.parametrize("xi, eps", [(10.0, 10.0), (1.0, 0.5)])
def test_vat_perturbation_sizes_and_direction_hand(xi, eps):
    """A toy network whose class-1 logit depends on voxel 0 only (3 x0; voxel 1: 0.5): the
    power iteration's gradient is 0 at voxel 1, so the final perturbation is (±eps, 0); the
    first perturbed input is x + xi d with |d| = 1; the first input is x itself."""
    seen = []

    def toy(x):
        seen.append(x.detach().clone())
        z1 = torch.cat([3 * x[..., :1], torch.full_like(x[..., 1:], 0.5)], dim=-1)
        return torch.cat([torch.zeros_like(z1), z1], dim=1)  # (1, 2, 1, 1, 2)

    x = torch.tensor([0.5, 0.2]).view(1, 1, 1, 1, 2)
    torch.manual_seed(0)
    lds = vat_loss(toy, x, xi=xi, eps=eps)
    assert len(seen) == 3 and torch.equal(seen[0], x)
    assert float((seen[1] - x).norm()) == pytest.approx(xi, rel=1e-6)
    r = (seen[2] - x).view(-1)
    assert abs(float(r[0])) == pytest.approx(eps, rel=1e-6) and float(r[1]) == 0.0
    # L_lds = D(softmax(toy(x + eps r)), softmax(toy(x)))
    exp = soft_dice_distance(torch.softmax(toy(seen[2]), 1), torch.softmax(toy(x), 1))
    assert float(lds) == pytest.approx(float(exp), rel=1e-6)


def test_vat_updates_batchnorm_statistics_from_the_clean_pass_only():
    """Released ``VAT3d``: the clean forward (no gradient) updates BatchNorm's running statistics;
    the two perturbed forwards run with them frozen. Afterwards tracking is on again."""
    torch.manual_seed(0)
    net = SSNetVNet(1, 3, 2, "batchnorm").train()
    ref = SSNetVNet(1, 3, 2, "batchnorm").train()
    ref.load_state_dict(net.state_dict())
    x = torch.rand(2, 1, 16, 16, 16)
    vat_loss(net, x)
    with torch.no_grad():
        ref(x)  # one clean train-mode pass
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    assert all(m.track_running_stats for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert int(net.enc[0][1].num_batches_tracked) == 1


@pytest.mark.parametrize("schedule, step, expected", [
    ("step", 5, 0.1 * math.exp(-5 * 0.5**2)),  # 0.1 exp(-1.25): step 5 of 10
    ("epoch", 5, 0.1 * math.exp(-5 * 0.6**2)),  # one step per epoch: epoch 5 runs with epoch 4's value
    ("epoch", 0, 0.1 * math.exp(-5.0)),
    ("epoch", 11, 0.1),  # epoch 10's value: the ramp is complete
])
def test_unsupervised_weight_ramp_hand(schedule, step, expected):
    m = METHODS.get("ss_net")(tiny_context(), cps_w=0.1, schedule=schedule)  # 10 iterations, epoch length 1
    assert m.cps_weight(step) == pytest.approx(expected, rel=1e-12)
    flat = METHODS.get("ss_net")(tiny_context(), cps_w=0.1, cps_rampup=0.0, schedule=schedule)
    assert flat.cps_weight(step) == pytest.approx(0.1, rel=1e-12)


# ----------------------------------------------------------------------------- the method
def _method(**hp):
    torch.manual_seed(0)
    ctx = tiny_context(patch=(16, 16, 16), width=4, num_classes=4)
    m = METHODS.get("ss_net")(ctx, **hp)
    m.train()
    return m, ctx


def _fill_memory(m, ctx, seed: int = 1):
    """Memory rows (3 per class) so that every class-separation term is active."""
    g = torch.Generator().manual_seed(seed)
    m.memory.memory = [torch.randn(3, 2 * ctx.width, generator=g) for _ in range(ctx.num_classes)]


def test_one_cpu_step_parts_and_update():
    m, ctx = _method(cps_w=0.5, cps_rampup=0.0)
    _fill_memory(m, ctx)
    labeled, unlabeled = random_batch(ctx)
    ts = TrainStep(m, make_optimizers(m, TrainConfig(lr=0.01, iterations=10)), torch.device("cpu"), amp=False)
    before = [p.detach().clone() for p in m.parameters()]
    losses = ts(labeled, unlabeled, 0)
    p = {k: float(v.detach()) for k, v in losses.parts.items()}
    assert all(math.isfinite(v) for v in p.values())
    assert p["unsup"] == pytest.approx(p["lds"] + 0.1 * (p["sep_l"] + p["sep_u"]), rel=1e-6)
    assert float(losses.total.detach()) == pytest.approx(p["sup"] + 0.5 * p["unsup"], rel=1e-6)
    assert p["sep_l"] > 0 and p["sep_u"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def _groups(net: SSNetVNet) -> dict[str, list[nn.Parameter]]:
    heads = ("projection_head", "prediction_head", "selectors", "memory_selectors")
    out = {h: list(getattr(net, h).parameters()) for h in heads}
    out["backbone"] = [p for n, p in net.named_parameters() if not n.startswith(heads)]
    return out


@pytest.mark.parametrize("released", [False, True])
def test_unsup_reaches_every_part_of_the_network(released):
    """The unsupervised part sends gradients to the backbone, both heads and the feature
    selectors; to the memory selectors only with the fix (released: w / w)."""
    m, ctx = _method(released_memory_weights=released)
    _fill_memory(m, ctx)
    labeled, unlabeled = random_batch(ctx)
    losses = m.training_step(labeled, unlabeled, 0)
    for name, params in _groups(m.networks["net"]).items():
        grads = torch.autograd.grad(losses.parts["unsup"], params, allow_unused=True, retain_graph=True)
        size = max((float(g.abs().max()) for g in grads if g is not None), default=0.0)
        if name == "memory_selectors" and released:
            assert size < 1e-6, name
        else:
            assert size > 1e-8, name


def test_running_state_round_trips():
    """The memory is the state: saved (torch.save, weights_only load as the engine's checkpoint),
    restored into a fresh method with the same weights, the next step's losses are the same."""
    m, ctx = _method()
    _fill_memory(m, ctx)
    labeled, unlabeled = random_batch(ctx)
    m.training_step(labeled, unlabeled, 0)
    buf = io.BytesIO()
    torch.save(m.running_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other, _ = _method()
    other.networks["net"].load_state_dict(m.networks["net"].state_dict())
    assert not all(o is not None for o in other.memory.memory)  # fresh: empty
    other.load_running_state(state)
    for a, b in zip(m.memory.memory, other.memory.memory):
        assert (a is None and b is None) or torch.equal(a, b)
    state["memory"]["memory"][1].add_(1.0)  # the method holds copies
    assert not torch.equal(other.memory.memory[1], state["memory"]["memory"][1])
    torch.manual_seed(3)
    la = m.training_step(labeled, unlabeled, 1)
    torch.manual_seed(3)
    lb = other.training_step(labeled, unlabeled, 1)
    for k in ("sup", "sep_l", "sep_u", "lds"):
        assert float(la.parts[k].detach()) == pytest.approx(float(lb.parts[k].detach()), rel=1e-6), k


def test_predict_is_the_eval_logits_and_labeled_only_steps_work():
    m, ctx = _method()
    labeled, _ = random_batch(ctx, n_u=0)
    losses = m.training_step(labeled, None, 0)
    assert float(losses.parts["sep_u"]) == 0.0 and math.isfinite(float(losses.total.detach()))
    m.train(False)
    with torch.no_grad():
        y = m.predict(labeled["image"])
        z, emb = m.networks["net"].features(labeled["image"])
    assert y.shape == (2, ctx.num_classes, *ctx.patch_size) and torch.equal(y, z)
    assert emb.shape == (2, ctx.width, *ctx.patch_size)
