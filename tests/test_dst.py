"""DST (``methods/dst.py``): hand-computed values of its formulas, the pseudo-label direction of
the default and of ``released_pseudo_targets``, the gradient reversal, inference. Its agreement
with DHC's released code is ``tests/test_released_dst.py``."""

from __future__ import annotations

import math

import pytest
import torch

from bench.core.registry import METHODS
from methods.dst import DecoupledVNet, grl_coefficient, masked_ce, reverse_gradient, worst_case_loss
from tests.helpers import random_batch, tiny_context


@pytest.mark.parametrize(
    "step, want",
    [
        (0, 0.0),
        # 0.2 / (1 + e^-1) - 0.1 = 0.2 x 0.7310586 - 0.1
        (500, 0.2 * 0.7310585786300049 - 0.1),
        # 0.2 / (1 + e^-2) - 0.1 = 0.2 x 0.8807971 - 0.1
        (1000, 0.2 * 0.8807970779778823 - 0.1),
        (10**6, 0.1),
    ],
)
def test_grl_coefficient_hand_computed(step, want):
    assert grl_coefficient(step) == pytest.approx(want, abs=1e-12)


def test_grl_coefficient_other_range():
    # lo 0, hi 1, alpha 1, N 10, step 10: 2 / (1 + e^-1) - 1
    assert grl_coefficient(10, hi=1.0, max_iters=10) == pytest.approx(2 / (1 + math.exp(-1)) - 1)


def test_reverse_gradient_is_identity_forward_and_scaled_negation_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 4.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.25, -0.5, -1.0]))


def test_masked_ce_hand_computed():
    # 2 classes, 2 voxels: logits (0, 0) target 0 -> CE ln 2; logits (ln 3, 0) target 1 -> p1 = 1/4, CE ln 4
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]]).view(1, 2, 2, 1, 1)
    target = torch.tensor([0, 1]).view(1, 2, 1, 1)
    assert float(masked_ce(logits, target, torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))) == pytest.approx(math.log(2) / 2)
    assert float(masked_ce(logits, target, torch.ones(1, 2, 1, 1))) == pytest.approx((math.log(2) + math.log(4)) / 2)


def test_worst_case_loss_hand_computed():
    # labeled: main argmax 0, worst logits (0, 0): CE ln 2, weight 2
    main_l = torch.tensor([2.0, 0.0]).view(1, 2, 1, 1, 1)
    worst_l = torch.zeros(1, 2, 1, 1, 1)
    # unlabeled: main argmax 1, worst softmax (3/4, 1/4): -log(1 - 1/4 + 1e-6)
    main_u = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1, 1)
    worst_u = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1, 1)
    got = worst_case_loss(main_l, worst_l, main_u, worst_u)
    assert float(got) == pytest.approx(2 * math.log(2) - math.log(0.75 + 1e-6), rel=1e-6)
    # the clamp: log(1 - p + 1e-6) never exceeds log 1 (p ~ 0 on the target class)
    worst_u = torch.tensor([0.0, -100.0]).view(1, 2, 1, 1, 1)
    assert float(worst_case_loss(main_l, worst_l, main_u, worst_u)) == pytest.approx(2 * math.log(2), abs=1e-6)
    assert float(worst_case_loss(main_l, worst_l, None, None)) == pytest.approx(2 * math.log(2))


def test_worst_head_gradient_reaches_the_encoder_reversed():
    """The encoder's gradient from the worst head is -coeff x the gradient without the reversal."""
    torch.manual_seed(0)
    net = DecoupledVNet(1, 3, 2, "batchnorm", False, "kaiming").eval()
    x = torch.rand(1, 1, 16, 16, 16)
    enc = [p for n, p in net.named_parameters() if n.startswith("enc.")]
    plain = torch.autograd.grad(net.worst(net.encode(x)).square().sum(), enc)
    reversed_ = torch.autograd.grad(net.heads(x, 0.03)[2].square().sum(), enc)
    for a, b in zip(plain, reversed_):
        assert torch.allclose(b, -0.03 * a, rtol=1e-4, atol=1e-9)


def test_init_reaches_every_decoder():
    """The initialiser covers the pseudo and worst decoders too (train_dst.py inits the whole
    model): E[w^2 fan_in] of a 3x3x3 conv ~ 2 for Kaiming-normal (PyTorch's default: 1/3)."""
    torch.manual_seed(0)
    net = DecoupledVNet(1, 3, 8, "batchnorm", False, "kaiming")
    for dec in (net.dec, net.pseudo.dec, net.worst.dec):
        w = dec[0][0].weight.detach()  # 64 -> 64 channels, 3x3x3: 110,592 values
        assert float(w.square().mean() * w.shape[1] * 27) == pytest.approx(2.0, rel=0.03)


def _method(**hp):
    ctx = tiny_context(patch=(16, 16, 16), width=2)
    torch.manual_seed(0)
    return METHODS.get("dst")(ctx, threshold=0.0, **hp), ctx  # threshold 0: every voxel passes the mask


def _grads(method, loss, prefix):
    ps = [p for net in method.networks.values() for n, p in net.named_parameters() if n.startswith(prefix)]
    return [g for g in torch.autograd.grad(loss, ps, allow_unused=True, retain_graph=True) if g is not None and g.abs().sum() > 0]


def test_default_trains_the_pseudo_heads_on_the_main_heads_pseudo_labels():
    m, ctx = _method()
    labeled, unlabeled = random_batch(ctx)
    losses = m.training_step(labeled, unlabeled, 0)
    assert _grads(m, losses.parts["cps"], "pseudo."), "the cps term trains the pseudo heads"
    assert not _grads(m, losses.parts["cps"], "out_conv."), "the main heads only produce the pseudo-labels"
    assert _grads(m, losses.total, "pseudo.")


def test_released_switch_leaves_the_pseudo_heads_untrained():
    m, ctx = _method(released_pseudo_targets=True)
    labeled, unlabeled = random_batch(ctx)
    losses = m.training_step(labeled, unlabeled, 0)
    assert not _grads(m, losses.total, "pseudo."), "released: the pseudo heads get no gradient"
    assert _grads(m, losses.parts["cps"], "out_conv."), "released: the main heads learn from the pseudo heads"


def test_loss_is_sup_plus_weighted_cps_and_worst():
    m, ctx = _method(cps_rampup=0.0, cps_w=0.3)
    labeled, unlabeled = random_batch(ctx)
    losses = m.training_step(labeled, unlabeled, 0)
    p, total = losses.parts, losses.total
    assert float(total.detach()) == pytest.approx(float((p["sup"] + 0.3 * (p["cps"] + p["worst"])).detach()), rel=1e-5)
    assert float(p["unsup"].detach()) == pytest.approx(float((p["cps"] + p["worst"]).detach()), rel=1e-6)


def test_predict_averages_the_main_heads_of_both_networks():
    m, ctx = _method()
    m.train(False)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        want = (m.networks["A"].heads(x, 0.0)[0] + m.networks["B"].heads(x, 0.0)[0]) / 2
        assert torch.allclose(m.predict(x), want)


def test_network_b_is_xavier_and_a_kaiming_by_default():
    m, _ = _method()
    wa, wb = m.networks["A"].pseudo.dec[0][0].weight.detach(), m.networks["B"].pseudo.dec[0][0].weight.detach()
    fan_in, fan_out = wa.shape[1] * 27, wa.shape[0] * 27
    # Kaiming: E[w^2] = 2 / fan_in; Xavier: 2 / (fan_in + fan_out) = 1 / fan_in here (square conv)
    assert float(wa.square().mean() * fan_in) == pytest.approx(2.0, rel=0.25)
    assert float(wb.square().mean() * (fan_in + fan_out) / 2) == pytest.approx(1.0, rel=0.25)
