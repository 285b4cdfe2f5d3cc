"""A&D (``methods/ad.py``): hand-computed values of its formulas and the method contract on CPU.

Values against GenericSSL's released code: tests/test_released_genericssl.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench.core.registry import METHODS
from methods import ad
from tests.helpers import random_batch, tiny_context

E = math.exp


# ----------------------------------------------------------------------------- schedule
B1 = 1e-4 + (0.02 - 1e-4) / 999  # beta_1 of linspace(1e-4, 0.02, 1000)


@pytest.mark.parametrize("t, beta, alpha_bar", [
    (0, 1e-4, 1 - 1e-4),
    (1, B1, (1 - 1e-4) * (1 - B1)),
    (999, 0.02, None),
])
def test_linear_schedule_by_hand(t, beta, alpha_bar):
    d = ad.Diffusion(1000)
    assert d.betas[t] == pytest.approx(beta, rel=1e-12)
    if alpha_bar is not None:
        assert d.alphas_cumprod[t] == pytest.approx(alpha_bar, rel=1e-12)
        assert d.sqrt_ab[t] == pytest.approx(math.sqrt(alpha_bar), rel=1e-12)
        assert d.sqrt_1m_ab[t] == pytest.approx(math.sqrt(1 - alpha_bar), rel=1e-9)


def test_schedule_scales_with_the_step_count():
    """use_scale: T = 100 steps run from 1e-3 to 0.2 (x 1000 / T)."""
    d = ad.Diffusion(100, 10)
    assert (d.betas[0], d.betas[-1]) == pytest.approx((1e-3, 0.2), rel=1e-12)


def test_q_sample_by_hand():
    """t = 0: sqrt(0.9999) x0 + 0.01 eps; t = 1: sqrt(ab_1) x0 + sqrt(1 - ab_1) eps."""
    d = ad.Diffusion(1000)
    x0 = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    eps = torch.tensor([[0.5, -2.0], [0.5, -2.0]])
    got = d.q_sample(x0, torch.tensor([0, 1]), eps)
    ab1 = (1 - 1e-4) * (1 - B1)
    a0, s0, a1, s1 = math.sqrt(0.9999), 0.01, math.sqrt(ab1), math.sqrt(1 - ab1)
    want = torch.tensor([[a0 + 0.5 * s0, -a0 - 2 * s0], [a1 + 0.5 * s1, -a1 - 2 * s1]])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("steps, count, want", [(1000, 10, [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]),
                                                (1000, 2, [0, 999]), (100, 3, [0, 50, 99]), (1000, 1, [0])])
def test_space_timesteps_by_hand(steps, count, want):
    """Stride (steps - 1) / (count - 1) rounded: 999 / 9 = 111; 99 / 2 = 49.5 -> round(49.5) = 50 (ties to even)."""
    assert ad.space_timesteps(steps, count) == want


def test_timestep_embedding_by_hand():
    """dim 4: frequencies 1 and 10000^(-1) -> [sin t, sin(t/1e4), cos t, cos(t/1e4)]."""
    got = ad.timestep_embedding(torch.tensor([0, 1, 3]), 4)
    want = torch.tensor([[0.0, 0.0, 1.0, 1.0], [math.sin(1), math.sin(1e-4), math.cos(1), math.cos(1e-4)],
                         [math.sin(3), math.sin(3e-4), math.cos(3), math.cos(3e-4)]])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_ddim_two_steps_by_hand():
    """Kept timesteps {0, 999}; a model returning its input: x0 = clip(x_T); eps = (x_T / sqrt(ab) - x0)
    / sqrt(1/ab - 1) with ab = alpha-bar_999; x' = sqrt(0.9999) x0 + 0.01 eps; the result is clip(x')."""
    d = ad.Diffusion(1000, 2)
    ab = 1.0
    for k in range(1000):
        ab *= 1 - (1e-4 + (0.02 - 1e-4) * k / 999)
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return x

    x_T = torch.tensor([[0.3, 1.7, -0.4]], dtype=torch.float64)
    x0 = x_T.clamp(-1, 1)
    eps = (x_T / math.sqrt(ab) - x0) / math.sqrt(1 / ab - 1)
    want = (math.sqrt(0.9999) * x0 + 0.01 * eps).clamp(-1, 1)
    torch.testing.assert_close(d.ddim_x0(model, x_T), want, rtol=1e-6, atol=1e-7)
    assert seen == [999, 0]


# ----------------------------------------------------------------------------- smoothing, weights, ramps
def test_gaussian_kernel_and_smoothing_by_hand():
    """1-D weights (e^-1/2, 1, e^-1/2) / (1 + 2 e^-1/2); a centred delta in a 3^3 volume returns the
    kernel; a constant 1 keeps c^3 + ... = 1 at the centre and loses the padded share at a corner."""
    a = E(-0.5) / (1 + 2 * E(-0.5))
    c = 1 / (1 + 2 * E(-0.5))
    k = ad.gaussian_kernel(3, 1.0)
    assert float(k[1, 1, 1]) == pytest.approx(c ** 3, rel=1e-6)
    assert float(k[0, 0, 0]) == pytest.approx(a ** 3, rel=1e-6)
    assert float(k[0, 1, 1]) == pytest.approx(a * c * c, rel=1e-6)
    delta = torch.zeros(1, 2, 3, 3, 3)
    delta[0, :, 1, 1, 1] = 1
    torch.testing.assert_close(ad.smooth(delta, k)[0, 1], k)
    ones = ad.smooth(torch.ones(1, 1, 3, 3, 3), k)
    assert float(ones[0, 0, 1, 1, 1]) == pytest.approx(1.0, rel=1e-6)
    assert float(ones[0, 0, 0, 0, 0]) == pytest.approx((a + c) ** 3, rel=1e-6)


def _dice(tp, fp, fn, s=1e-8):
    return (2 * tp + s) / (2 * tp + fp + fn + s + 1e-8)


def test_difficulty_two_classes_by_hand():
    """C = 2, K = 50 (m = 0.98), label [0, 0, 1, 1].
    Step 1, prediction [0, 1, 1, 1]: d = (2/3, 4/5) up from 1e-8: learn = 0.02 d log(d / 1e-8),
    unlearn = 0; w = 2 (1e-8 / (learn + 1e-8))^(1/5) (0.98 + 0.02 (1 - d)).
    Step 2, prediction [0, 0, 0, 1]: d = (4/5, 2/3): class 0 learns again, class 1 unlearns.
    No normalisation by the maximum (DHC's DiffDW has one)."""
    y = torch.tensor([0, 0, 1, 1]).view(1, 1, 1, 4)

    def logits(pred):
        return torch.nn.functional.one_hot(torch.tensor(pred), 2).float().T.reshape(1, 2, 1, 1, 4)

    s = ad.Difficulty(2, accumulate_iters=50)
    m = 0.98
    d1 = torch.tensor([_dice(1, 0, 1), _dice(2, 1, 0)], dtype=torch.float64)
    w1 = s.update(logits([0, 1, 1, 1]), y)
    learn = (1 - m) * d1 * torch.log(d1 / 1e-8)
    dw = m + (1 - m) * (1 - d1)
    want1 = 2 * torch.pow(1e-8 / (learn + 1e-8), 0.2) * dw
    torch.testing.assert_close(w1.double(), want1, rtol=1e-5, atol=0)
    d2 = torch.tensor([_dice(2, 1, 0), _dice(1, 0, 1)], dtype=torch.float64)
    w2 = s.update(logits([0, 0, 0, 1]), y)
    delta = d2 - d1
    ratio = torch.log(d2 / d1)
    learn = m * learn + (1 - m) * torch.where(delta > 0, delta * ratio, torch.zeros(2, dtype=torch.float64))
    unlearn = (1 - m) * torch.where(delta <= 0, delta * ratio, torch.zeros(2, dtype=torch.float64))
    dw = m * dw + (1 - m) * (1 - d2)
    want2 = 2 * torch.pow((unlearn + 1e-8) / (learn + 1e-8), 0.2) * dw
    torch.testing.assert_close(w2.double(), want2, rtol=1e-4, atol=0)
    assert float(w2[1]) > float(w2[0])  # the class that got worse weighs more


def test_aggregation_by_hand():
    """theta <- 0.99 theta + 0.01 (xi + psi) / 2: 1 -> 0.99 + 0.01 * 4 = 1.03; buffers untouched."""
    def dec(v):
        d = ad.Decoder(2, 3, "batchnorm", 0.0, False, temb=False)
        for p in d.parameters():
            p.data.fill_(v)
        for b in d.buffers():
            b.fill_(v) if b.dtype.is_floating_point else None
        return d

    theta, xi, psi = dec(1.0), dec(3.0), dec(5.0)
    ad.aggregate(theta, xi, psi, 0.99)
    assert all(torch.allclose(p, torch.full_like(p, 1.03)) for p in theta.parameters())
    assert all(torch.equal(b, torch.full_like(b, 1.0)) for b in theta.buffers() if b.dtype.is_floating_point)


def test_aggregation_matches_decoders_with_and_without_time_layers():
    """D_xi's extra time-embedding layers are skipped; every D_theta parameter has a D_xi / D_psi twin."""
    net = ad.ADNet(1, 3, 2)
    xi = {n for n, _ in net.dec_xi.named_parameters()}
    theta = {n for n, _ in net.dec_theta.named_parameters()}
    assert theta < xi and all(".temb." in n for n in xi - theta)


@pytest.mark.parametrize("schedule, step, want", [
    # iterations 30, epoch length 3: "epoch" uses the epoch before (steps 0-5: epoch 0; 6-8: step 3)
    ("epoch", 4, 10 * E(-5.0)),
    ("epoch", 7, 10 * E(-5 * (1 - 3 / 30) ** 2)),
    ("step", 7, 10 * E(-5 * (1 - 7 / 30) ** 2)),
    ("step", 30, 10.0),
])
def test_mu_ramp_by_hand(schedule, step, want):
    ctx = tiny_context(n_unlabeled=6, unlabeled_bs=2)
    ctx.iterations = 30
    m = METHODS.get("ad")(ctx, schedule=schedule)
    assert m.unsup_weight(step) == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- the method on CPU
@pytest.fixture
def method():
    torch.manual_seed(0)
    ctx = tiny_context(patch=(16, 16, 32), width=4)
    return METHODS.get("ad")(ctx)


def test_cpu_step_unsup_reaches_theta_and_encoder_only(method):
    """L_u trains D_theta, the image stem and the shared encoder; D_xi, D_psi and the diffusion
    stem / time MLP get nothing from it (the pseudo-labels are made without gradient)."""
    lab, unl = random_batch(method.ctx)
    method.train()
    losses = method.training_step(lab, unl, 5)
    assert set(losses.parts) == {"deno", "diff", "unsup", "w_unsup"}
    net = method.networks["net"]
    names = [n for n, _ in net.named_parameters()]
    grads = torch.autograd.grad(losses.parts["unsup"], list(net.parameters()), allow_unused=True, retain_graph=True)
    got = {n.split(".")[0] for n, g in zip(names, grads) if g is not None and g.abs().sum() > 0}
    assert got == {"stem", "encoder", "dec_theta"}
    losses.total.backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if n.split(".")[0] in ("dec_xi", "dec_psi", "dec_theta", "time_mlp"))
    assert method.teachers == {}  # D_theta is trained as well as averaged: no gradient-free teacher


def test_aggregation_runs_before_the_forward_and_carries_no_graph(method):
    net = method.networks["net"]
    before = [p.detach().clone() for p in net.dec_theta.parameters()]
    xi = dict(net.dec_xi.named_parameters())
    psi = dict(net.dec_psi.named_parameters())
    want = [0.99 * b + 0.01 * (xi[n].detach() + psi[n].detach()) / 2 for b, (n, _) in zip(before, net.dec_theta.named_parameters())]
    method.aggregate()
    for p, w in zip(net.dec_theta.parameters(), want):
        torch.testing.assert_close(p.detach(), w)
        assert p.grad_fn is None and p.requires_grad


def test_labeled_only_step_has_no_unsup(method):
    lab, _ = random_batch(method.ctx)
    losses = method.training_step(lab, None, 0)
    assert set(losses.parts) == {"deno", "diff"}
    torch.testing.assert_close(losses.total, losses.parts["deno"] + losses.parts["diff"])


def test_total_is_deno_plus_diff_plus_mu_unsup(method):
    lab, unl = random_batch(method.ctx)
    got = method.training_step(lab, unl, 3)
    assert float(got.parts["w_unsup"]) == pytest.approx(method.unsup_weight(3))
    torch.testing.assert_close(got.total, got.parts["deno"] + got.parts["diff"] + got.parts["w_unsup"] * got.parts["unsup"])


def test_running_state_round_trip(method):
    lab, unl = random_batch(method.ctx)
    method.training_step(lab, unl, 0)
    state = method.running_state()
    other = METHODS.get("ad")(method.ctx)
    other.load_running_state(state)
    for k in ("weights", "last_dice", "learn", "unlearn", "dice_weight"):
        torch.testing.assert_close(getattr(other.difficulty, k), getattr(method.difficulty, k))
    method.difficulty.weights.add_(1.0)  # the copy is independent
    assert not torch.equal(other.difficulty.weights, method.difficulty.weights)


def test_predict_is_d_theta_and_deterministic(method):
    method.train(False)
    x = random_batch(method.ctx)[0]["image"]
    with torch.no_grad():
        a, b = method.predict(x), method.predict(x)
        theta = method.networks["net"].theta(x)
    assert a.shape == (2, method.ctx.num_classes, *method.ctx.patch_size)
    assert torch.equal(a, b) and torch.equal(a, theta)


def test_pseudo_labels_follow_the_seed(method):
    method.train()
    x = random_batch(method.ctx)[1]["image"]
    torch.manual_seed(1)
    a = method.pseudo_label(x)
    torch.manual_seed(1)
    b = method.pseudo_label(x)
    assert torch.equal(a, b) and a.shape == (2, *method.ctx.patch_size)
