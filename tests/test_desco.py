"""DeSCO (methods/desco.py): every formula on hand-computed 2-3 voxel examples, the schedules,
the sequential two-network step through the engine, the unsupervised term's gradient and the
sparse (two-slice) supervision mode."""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import TrainConfig, resolve_method
from bench.core.registry import METHODS
from bench.step import TrainStep, make_optimizers
from bench.train import Trainer
from methods.desco import DeSCO, cosine_rampdown, desco_dice, desco_wce, mean_entropy, view_weight
from tests.helpers import random_batch, tiny_context, tiny_spec

EPS = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ctx(iterations: int = 10, **kw):
    """``tests.helpers.tiny_context`` with ``iterations`` set."""
    ctx = tiny_context(**kw)
    ctx.iterations = iterations
    return ctx


def vox(*columns) -> torch.Tensor:
    """(1, C, 1, 1, V) logits from per-class rows."""
    return torch.tensor(columns, dtype=torch.float32).view(1, len(columns), 1, 1, -1)


# three voxels, two classes: softmax rows p = (0.5, 0.5), (0.75, 0.25), (0.2, 0.8)
LOGITS = vox([0.0, math.log(3.0), 0.0], [0.0, 0.0, math.log(4.0)])
TARGET = torch.tensor([0, 0, 1]).view(1, 1, 1, 3)
WEIGHT = torch.tensor([1.0, 0.5, 0.0]).view(1, 1, 1, 3)


# ----------------------------------------------------------------------------- losses
def test_wce_three_voxels():
    # Σ w log p_y = 1 ln 0.5 + 0.5 ln 0.75 + 0 ln 0.8 ; Σ w = 1.5
    s = math.log(0.5) + 0.5 * math.log(0.75)
    assert desco_wce(LOGITS, TARGET, WEIGHT).item() == pytest.approx(-(s - EPS) / (1.5 + EPS), rel=1e-6)
    # repeated over K = 2 channels (the release's maskzz): (2 s - 1e-5) / (3 + 1e-5)
    assert desco_wce(LOGITS, TARGET, WEIGHT, channels=2).item() == pytest.approx(-(2 * s - EPS) / (3 + EPS), rel=1e-6)


def test_wce_averages_per_sample_ratios():
    # sample 0: the three voxels above; sample 1: weights (0, 0, 1) -> only ln 0.8 / 1
    logits = torch.cat([LOGITS, LOGITS])
    target = torch.cat([TARGET, TARGET])
    weight = torch.cat([WEIGHT, torch.tensor([0.0, 0.0, 1.0]).view(1, 1, 1, 3)])
    s0 = (math.log(0.5) + 0.5 * math.log(0.75) - EPS) / (1.5 + EPS)
    s1 = (math.log(0.8) - EPS) / (1 + EPS)
    assert desco_wce(logits, target, weight).item() == pytest.approx(-(s0 + s1) / 2, rel=1e-6)


def test_wce_with_an_empty_mask_is_one_and_sends_no_gradient():
    z = LOGITS.clone().requires_grad_(True)
    v = desco_wce(z, TARGET, torch.zeros_like(WEIGHT), channels=2)
    assert v.item() == pytest.approx(1.0, abs=1e-9)  # -(0 - 1e-5) / (0 + 1e-5) negated
    v.backward()
    assert z.grad.abs().sum() == 0


def test_dice_two_classes_three_voxels():
    p = torch.softmax(LOGITS, 1)  # class-1 probabilities 0.5, 0.25, 0.8; class-1 label only at voxel 3
    # weights (1, 0.5, 0): inter 0, Σ y² w = 0, Σ p² w = 0.25 + 0.0625 * 0.5 = 0.28125
    assert desco_dice(p, TARGET, WEIGHT).item() == pytest.approx(1 - EPS / (0.28125 + EPS), rel=1e-6)
    # weights 1: inter 0.8, Σ y² = 1, Σ p² = 0.25 + 0.0625 + 0.64 = 0.9525
    ones = torch.ones_like(WEIGHT)
    assert desco_dice(p, TARGET, ones).item() == pytest.approx(1 - (1.6 + EPS) / (1.9525 + EPS), rel=1e-6)


def test_dice_is_the_mean_over_foreground_classes():
    # three classes, two voxels: p = (0.5, 0.25, 0.25) and (0.2, 0.2, 0.6) (logits = log p); labels 1, 2
    z = vox([math.log(0.5), math.log(0.2)], [math.log(0.25), math.log(0.2)], [math.log(0.25), math.log(0.6)])
    y = torch.tensor([1, 2]).view(1, 1, 1, 2)
    w = torch.ones(1, 1, 1, 2)
    d1 = 1 - (2 * 0.25 + EPS) / (0.25**2 + 0.2**2 + 1 + EPS)  # class 1: inter 0.25, y at voxel 1
    d2 = 1 - (2 * 0.6 + EPS) / (0.25**2 + 0.6**2 + 1 + EPS)  # class 2: inter 0.6, y at voxel 2
    assert desco_dice(torch.softmax(z, 1), y, w).item() == pytest.approx((d1 + d2) / 2, rel=1e-5)


def test_mean_entropy_and_mask():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).T.reshape(1, 2, 1, 1, 2)  # two voxels
    u = mean_entropy(p).flatten()
    assert u[0].item() == pytest.approx(-math.log(0.5 + 1e-6), rel=1e-6)
    assert u[1].item() == pytest.approx(-(0.9 * math.log(0.9 + 1e-6) + 0.1 * math.log(0.1 + 1e-6)), rel=1e-5)
    m = METHODS.get("desco")(_ctx(num_classes=2, iterations=10), entropy_max="ln2")
    thr = m.uncertainty_threshold(0)  # (0.75 + 0.25 e^-5) ln 2 = 0.5222: voxel 2 (0.325) passes, voxel 1 (0.693) not
    assert thr == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2), rel=1e-12)
    assert ((u < thr).float()).tolist() == [0.0, 1.0]


def test_uncertainty_of_a_constant_network_is_its_entropy():
    """T noisy passes of a network whose output ignores its input: entropy of its softmax."""

    class Const(torch.nn.Module):
        def forward(self, x):
            z = torch.tensor([math.log(0.9), math.log(0.1)]).view(1, 2, 1, 1, 1)
            return z.expand(x.shape[0], 2, *x.shape[2:]) + 0 * x

    m = METHODS.get("desco")(tiny_context(num_classes=2, patch=(2, 2, 2)))
    u = m.uncertainty(Const(), torch.rand(3, 1, 2, 2, 2))
    assert u.shape == (3, 1, 2, 2, 2)
    exp = -(0.9 * math.log(0.9 + 1e-6) + 0.1 * math.log(0.1 + 1e-6))
    assert torch.allclose(u, torch.full_like(u, exp), rtol=1e-5)


# ----------------------------------------------------------------------------- weight maps
def test_view_weight_axial_and_coronal():
    # (D, H, W) = (3, 3, 1), slice weight 0.5, centres d = 1, h = 1
    ax = view_weight((3, 3, 1), "axial", 0.5)[..., 0]
    assert ax.tolist() == [[0.5, 1.0, 0.5], [1.0, 1.0, 1.0], [0.5, 1.0, 0.5]]  # rows d, columns h; coronal h = 1 set to 1
    co = view_weight((3, 3, 1), "coronal", 0.5)[..., 0]
    assert co.tolist() == [[0.5, 1.0, 0.5], [1.0, 1.0, 1.0], [0.5, 1.0, 0.5]]  # by symmetry of the 3 x 3 case
    ax4 = view_weight((4, 2, 1), "axial", 0.5)[..., 0]  # centre d = 2, h = 1: distances 2, 1, 0, 1
    assert ax4.tolist() == [[0.25, 1.0], [0.5, 1.0], [1.0, 1.0], [0.5, 1.0]]
    co4 = view_weight((2, 4, 1), "coronal", 0.5)[..., 0]  # centre h = 2, d = 1
    assert co4.tolist() == [[0.25, 0.5, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0]]


def test_sparse_weight_is_the_two_central_slices():
    for view in ("axial", "coronal"):
        w = view_weight((3, 4, 2), view, 0.0)
        exp = torch.zeros(3, 4, 2)
        exp[1] = 1.0
        exp[:, 2] = 1.0
        assert torch.equal(w, exp), view


def test_supervision_weight_per_mode():
    ctx = tiny_context(num_classes=3, patch=(3, 4, 2))
    y = torch.zeros(2, 3, 4, 2, dtype=torch.long)
    full = METHODS.get("desco")(ctx).supervision_weight("seg1", y, 0)
    assert full.shape == y.shape and bool((full == 1).all())
    sparse = METHODS.get("desco")(ctx, supervision="sparse")
    assert int(sparse.supervision_weight("seg2", y, 0).sum()) == 2 * (4 * 2 + 3 * 2 - 2)  # two planes, shared line
    weighted = METHODS.get("desco")(ctx, supervision="weighted")
    w1 = weighted.supervision_weight("seg1", y, 0)
    assert w1[0, 0, 0, 0].item() == pytest.approx(0.95)  # d = 0 is 1 slice from the centre d = 1, h = 0 off the coronal slice


# ----------------------------------------------------------------------------- schedules
def test_ramps_by_hand():
    assert cosine_rampdown(20, 40) == pytest.approx(0.5)
    assert cosine_rampdown(50, 40) == 0.0  # clipped (the release asserts)
    m = METHODS.get("desco")(_ctx(iterations=6000))
    assert m.consistency_weight(0) == pytest.approx(0.1 * math.exp(-5))
    assert m.consistency_weight(3000) == pytest.approx(0.1 * math.exp(-5 * 0.25))  # 3000 // 150 = 20 of 40
    assert m.consistency_weight(3149) == m.consistency_weight(3000)  # staircase of 150 steps
    assert m.consistency_weight(6000) == pytest.approx(0.1)
    run = METHODS.get("desco")(_ctx(iterations=100), consistency_epoch="run")
    assert run.consistency_weight(50) == pytest.approx(0.1 * math.exp(-5 * 0.25))


def test_slice_weight_schedule_by_hand():
    m = METHODS.get("desco")(_ctx(iterations=6000), supervision="weighted")
    assert m.slice_weight_at(999) == 0.95
    assert m.slice_weight_at(1000) == pytest.approx(0.5 * (math.cos(math.pi * 6 / 40) + 1))  # 1000 // 150 = 6
    assert m.slice_weight_at(3999) == pytest.approx(0.5)  # refreshed at 3000: 20 of 40


def test_lr_schedules_by_hand():
    train = resolve_method("desco", METHODS.get("desco"), []).train
    assert (train.lr, train.momentum, train.weight_decay, train.nesterov) == (0.01, 0.9, 1e-4, False)
    opts = make_optimizers(METHODS.get("desco")(_ctx()), train)
    assert sorted(opts) == ["seg1", "seg2"]
    for k in opts:
        assert [opts[k][1](t) for t in (0, 2499, 2500, 5000)] == pytest.approx([0.01, 0.01, 0.001, 0.0001])
    bug = make_optimizers(METHODS.get("desco")(_ctx(), released_lr_decay_seg1_only=True), train)
    assert [bug["seg2"][1](t) for t in (0, 2500, 5000)] == [0.01, 0.01, 0.01]
    assert bug["seg1"][1](5000) == pytest.approx(0.0001)


# ----------------------------------------------------------------------------- the step
def _method(**hp):
    torch.manual_seed(0)
    ctx = _ctx(num_classes=3, patch=(16, 16, 16))
    return METHODS.get("desco")(ctx, **hp), ctx


def test_unsup_reaches_both_networks_and_only_its_own():
    m, ctx = _method()
    lab, unl = random_batch(ctx)
    losses = m.training_step(lab, unl, 5)
    for k in ("seg1", "seg2"):
        g = torch.autograd.grad(losses.parts["unsup"], list(m.networks[k].parameters()), retain_graph=True, allow_unused=True)
        assert any(x is not None and x.abs().sum() > 0 for x in g), k
    # seg1's consistency reads seg2 only through a detached argmax and mask
    g = torch.autograd.grad(losses.parts["unsup_seg1"], list(m.networks["seg2"].parameters()), retain_graph=True, allow_unused=True)
    assert all(x is None for x in g)
    assert losses.parts["loss_seg1"].item() == pytest.approx(
        (1 - m.consistency_weight(5)) * losses.parts["sup_seg1"].item() + m.consistency_weight(5) * losses.parts["unsup_seg1"].item(), rel=1e-5)


def test_engine_step_is_sequential_seg2_reads_the_updated_seg1():
    m, ctx = _method()
    m.train()
    ts = TrainStep(m, make_optimizers(m, TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=False)),
                   torch.device("cpu"), amp=False)
    ts.set_lr(0)
    seen = []
    hook = m.networks["seg1"].register_forward_pre_hook(
        lambda mod, inp: seen.append([p.detach().clone() for p in mod.parameters()]) if not torch.is_grad_enabled() else None)
    before = {k: [p.detach().clone() for p in n.parameters()] for k, n in m.networks.items()}
    lab, unl = random_batch(ctx)
    losses = ts(lab, unl, 0)
    hook.remove()
    after1 = [p.detach() for p in m.networks["seg1"].parameters()]
    assert seen, "seg2's phase runs seg1 without gradient"
    assert all(torch.equal(a, b) for a, b in zip(seen[-1], after1))  # seg1 already stepped
    assert not all(torch.equal(a, b) for a, b in zip(seen[-1], before["seg1"]))
    for k, n in m.networks.items():
        assert not all(torch.equal(a, b) for a, b in zip(before[k], n.parameters())), k
    assert torch.isfinite(losses.total) and not losses.total.requires_grad


def test_one_cpu_step_through_the_trainer(tiny_dataset, tmp_path):
    spec = tiny_spec(tiny_dataset, "desco", tmp_path / "desco", iterations=1, val_every=0)
    trainer = Trainer(spec)
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in trainer.method.networks.items()}
    trainer.fit()
    assert trainer.step == 1
    for k, net in trainer.method.networks.items():
        assert not all(torch.equal(a, b) for a, b in zip(before[k], net.parameters())), k
        assert all(torch.isfinite(p).all() for p in net.parameters())


def test_sparse_mode_supervises_only_the_central_slices():
    m, ctx = _method(supervision="sparse")
    full, _ = _method()
    lab, _ = random_batch(ctx, n_u=0)
    changed = {"image": lab["image"], "label": lab["label"].clone()}
    changed["label"][:, 0, 0, :] = (changed["label"][:, 0, 0, :] + 1) % 3  # off both central slices (d = 8, h = 8)
    for net in (m, full):
        net.train(False)  # BatchNorm on running statistics: the loss is a function of the labels only
    sup = lambda meth, b: meth.training_step(b, None, 0).parts["sup"].item()  # noqa: E731
    assert sup(m, lab) == sup(m, changed)
    assert sup(full, lab) != sup(full, changed)
    on_slice = {"image": lab["image"], "label": lab["label"].clone()}
    on_slice["label"][:, 8, 0, :] = (on_slice["label"][:, 8, 0, :] + 1) % 3  # on the central axial slice
    assert sup(m, lab) != sup(m, on_slice)


def test_without_unlabeled_images_only_the_supervised_term():
    m, ctx = _method()
    lab, _ = random_batch(ctx, n_u=0)
    losses = m.training_step(lab, None, 0)
    assert losses.parts["unsup"].item() == 0.0
    assert losses.total.item() == pytest.approx((1 - m.consistency_weight(0)) * losses.parts["sup"].item(), rel=1e-6)


def test_predict_seg1_or_mean():
    m, ctx = _method()
    m.train(False)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        a, b = m.networks["seg1"](x), m.networks["seg2"](x)
        assert torch.equal(m.predict(x), a)
        m.hp.predict_with = "mean"
        assert torch.allclose(m.predict(x), (a + b) / 2)
    assert isinstance(m, DeSCO) and m.predict(x).shape == (1, 3, 16, 16, 16)
