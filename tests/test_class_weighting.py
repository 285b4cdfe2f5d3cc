import math

import numpy as np
import pytest
import torch

from methods.class_weighting import DiffDW, DistDW, ema
from methods.losses import dhc_dc_ce_loss


def test_distdw_on_counts_1000_100_10():
    w = DistDW(3).init(np.array([1000, 100, 10]))
    # log(1000/N) / log(1000/10) * 3 = [0, 1/2, 1] * 3
    torch.testing.assert_close(w, torch.tensor([0.0, 1.5, 3.0]), atol=1e-6, rtol=1e-6)


def test_distdw_ema_update_from_predictions():
    s = DistDW(3, momentum=0.99)
    s.init(np.array([1000, 100, 10]))
    logits = torch.zeros(1, 3, 1, 1, 4)
    logits[0, 0, ..., :2] = 5  # argmax: class 0 twice, class 1 once, class 2 once
    logits[0, 1, ..., 2] = 5
    logits[0, 2, ..., 3] = 5
    w = s.update(logits)
    cur = torch.tensor([0.0, 1.0, 1.0]) * 3  # log(2/1)/log(2/1) for classes 1, 2
    torch.testing.assert_close(w, 0.99 * torch.tensor([0.0, 1.5, 3.0]) + 0.01 * cur, atol=1e-5, rtol=1e-5)


def test_diffdw_two_steps_by_hand():
    s = DiffDW(2, accumulate_iters=50)
    m = 49 / 50
    d1 = torch.tensor([0.5, 0.2])
    w1 = s.update_from_dice(d1)
    # step 1: last dice 1e-8, delta > 0 for both -> learn = (1-m) * delta * log(d/1e-8), unlearn = 0
    learn1 = (1 - m) * (d1 - 1e-8) * torch.log(d1 / 1e-8)
    torch.testing.assert_close(s.learn, learn1)
    assert torch.equal(s.unlearn, torch.zeros(2))
    dw1 = m * 1 + (1 - m) * (1 - d1)
    w_raw = torch.pow(1e-8 / (learn1 + 1e-8), 0.2) * dw1
    torch.testing.assert_close(w1, w_raw / w_raw.max() * 2)
    # step 2: class 0 forgets (0.5 -> 0.4), class 1 learns (0.2 -> 0.3)
    d2 = torch.tensor([0.4, 0.3])
    w2 = s.update_from_dice(d2)
    delta = d2 - d1
    ratio = torch.log(d2 / d1)
    learn2 = m * learn1 + (1 - m) * torch.tensor([0.0, float(delta[1] * ratio[1])])
    unlearn2 = (1 - m) * torch.tensor([float(delta[0] * ratio[0]), 0.0])
    torch.testing.assert_close(s.learn, learn2)
    torch.testing.assert_close(s.unlearn, unlearn2)
    dw2 = m * dw1 + (1 - m) * (1 - d2)
    raw2 = torch.pow((unlearn2 + 1e-8) / (learn2 + 1e-8), 0.2) * dw2
    torch.testing.assert_close(w2, raw2 / raw2.max() * 2)
    assert w2.max() == pytest.approx(2.0) and (w2 > 0).all()


def test_diffdw_hard_dice():
    logits = torch.zeros(1, 2, 1, 1, 4)
    logits[0, 1, ..., :2] = 1  # prediction [1, 1, 0, 0]
    label = torch.tensor([1, 0, 0, 0]).reshape(1, 1, 1, 4)
    d = DiffDW.hard_dice(logits, label)
    torch.testing.assert_close(d, torch.tensor([2 * 2 / (2 + 3), 2 * 1 / (2 + 1)]), atol=1e-6, rtol=1e-6)


def test_distdw_without_imbalance_is_uniform():
    torch.testing.assert_close(DistDW(3).init(np.array([5, 5, 5])), torch.full((3,), 3.0))


def test_ema_direction():
    assert float(ema(torch.tensor(1.0), torch.tensor(0.0), 0.9)) == pytest.approx(0.1)


def test_dc_ce_loss_hand_case():
    logits = torch.log(torch.tensor([[0.75, 0.25], [0.25, 0.75]])).T.reshape(1, 2, 1, 1, 2)
    target = torch.tensor([0, 1]).reshape(1, 1, 1, 2)
    ce = -math.log(0.75)
    tp, fp, fn = 0.75, 0.25, 0.25  # class 1
    dc = (2 * tp + 1) / (2 * tp + fp + fn + 1 + 1e-8)
    assert float(dhc_dc_ce_loss(logits, target)) == pytest.approx(ce - dc, rel=1e-5)
    w = torch.tensor([1.0, 3.0])
    ce_w = -math.log(0.75)  # weighted mean of equal per-voxel losses is unchanged
    assert float(dhc_dc_ce_loss(logits, target, w)) == pytest.approx(ce_w - 3 * dc, rel=1e-5)


def test_crest_swaps_majority_and_minority():
    from methods.class_weighting import CReST

    w = CReST(3).init(np.array([1000, 125, 8]))  # mu = [1, 0.5, 0.2]
    torch.testing.assert_close(w, torch.tensor([0.2, 0.5, 1.0]), atol=1e-6, rtol=1e-6)


def test_simis_frequency_gap_and_ema_init():
    from methods.class_weighting import SimiS

    s = SimiS(3, momentum=0.99)
    torch.testing.assert_close(s.formula(np.array([600, 300, 100])), torch.tensor([0.0, 0.9, 1.5]), atol=1e-6, rtol=1e-6)
    w = s.init(np.array([600, 300, 100]))
    torch.testing.assert_close(w, 0.99 * 3 + 0.01 * torch.tensor([0.0, 0.9, 1.5]), atol=1e-6, rtol=1e-6)


def test_depl_logit_adjustment_and_prior_update():
    from methods.cps import DePL
    from tests.helpers import random_batch, tiny_context

    ctx = tiny_context(num_classes=3, patch=(16, 16, 16), width=2)
    m = DePL(ctx)
    # hand check of the debiasing: q = [0.5, 0.25, 0.25] at a voxel, logits equal -> argmax is a minority class
    q = torch.tensor([0.5, 0.25, 0.25])
    debiased = torch.softmax(torch.zeros(3) - 1.0 * torch.log(q), 0)
    torch.testing.assert_close(debiased, torch.tensor([0.2, 0.4, 0.4]))
    labeled, unlabeled = random_batch(ctx)
    before = m.qhat["A"].clone()
    losses = m.training_step(labeled, unlabeled, 3)
    assert torch.isfinite(losses.total)
    assert not torch.equal(before, m.qhat["A"])
    torch.testing.assert_close(m.qhat["A"].sum(0), torch.ones(16, 16, 16))  # still a distribution per voxel
