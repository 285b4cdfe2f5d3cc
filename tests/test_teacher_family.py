"""UA-MT's uncertainty mask, URPC's rectified consistency and ACISIS' fuzzy-rank fusion on
hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from methods.acisis import P_FR, ClassIndicators, fuzzy_rank_fusion, sampling_weights
from methods.ua_mt import UAMT, masked_consistency, mean_entropy
from methods.urpc import PyramidVNet, rectified_consistency
from tests.helpers import tiny_context


def _probs(*rows):
    """(1, C, V, 1, 1) from per-voxel class distributions."""
    return torch.tensor(rows, dtype=torch.float32).T.reshape(1, len(rows[0]), len(rows), 1, 1)


def test_entropy_and_uncertainty_mask_hand_case():
    p = _probs([0.5, 0.5], [0.9, 0.1])
    u = mean_entropy(p).flatten()
    assert u[0].item() == pytest.approx(math.log(2), abs=1e-5)
    assert u[1].item() == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), abs=1e-5)
    m = UAMT(tiny_context(num_classes=2, patch=(16, 16, 16)))
    thr = m.uncertainty_threshold(0)  # (0.75 + 0.25 e^-5) ln 2 = 0.5210
    assert thr == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    mask = (mean_entropy(p) < thr).float()
    assert mask.flatten().tolist() == [0.0, 1.0]
    student = _probs([0.6, 0.4], [0.7, 0.3])
    # only voxel 2 counts: (0.2^2 + 0.2^2) / (2 * 1) = 0.04
    assert masked_consistency(student, p, mask).item() == pytest.approx(0.04, abs=1e-6)


def test_uamt_threshold_uses_ln_c_or_ln2_as_released():
    ctx = tiny_context(num_classes=14, patch=(16, 16, 16))
    assert UAMT(ctx).uncertainty_threshold(10**6) == pytest.approx(math.log(14))
    assert UAMT(ctx, entropy_max="ln2").uncertainty_threshold(10**6) == pytest.approx(math.log(2))


def test_urpc_rectified_consistency_hand_case():
    p1, p2 = _probs([0.5, 0.5]), _probs([0.9, 0.1])
    kl1 = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5)  # KL(mean || p1)
    kl2 = 0.7 * math.log(0.7 / 0.9) + 0.3 * math.log(0.3 / 0.1)
    # one voxel: mean((mean - p)^2 w) / mean(w) = mean over classes of 0.2^2 = 0.04, then + v_s
    expected = ((0.04 + kl1) + (0.04 + kl2)) / 2
    assert rectified_consistency([p1, p2]).item() == pytest.approx(expected, rel=1e-5)
    assert rectified_consistency([p1, p1.clone()]).item() == pytest.approx(0.0, abs=1e-6)


def test_urpc_rectification_downweights_disagreeing_voxels():
    # voxel 1: scales agree; voxel 2: they disagree -> larger KL -> weight exp(-v) smaller
    a, b = _probs([0.8, 0.2], [0.99, 0.01]), _probs([0.8, 0.2], [0.01, 0.99])
    mean = (a + b) / 2
    v = (mean * (mean.log() - a.log())).sum(1).flatten()
    w = torch.exp(-v)
    assert w[0] == pytest.approx(1.0) and w[1] < 0.6


def test_pyramid_outputs_full_size_in_training_and_one_map_in_eval():
    ctx = tiny_context(num_classes=3, patch=(16, 16, 16), width=4)
    net = PyramidVNet(ctx)
    x = torch.randn(2, 1, 16, 16, 16)
    outs = net(x)
    assert len(outs) == 4 and all(o.shape == (2, 3, 16, 16, 16) for o in outs)
    net.eval()
    assert net(x).shape == (2, 3, 16, 16, 16)


def test_fuzzy_rank_fusion_hand_case():
    # one indicator, two classes, top_m 1: Gompertz 1 - exp(-exp(-2 r))
    g = [1 - math.exp(-math.exp(-2 * r)) for r in (0.2, 0.8)]  # [0.4885, 0.1828]
    # class 1 has the smallest rank -> kept; class 0 -> penalty 0.632 and its factor -> 0
    cc = fuzzy_rank_fusion(torch.tensor([[0.2, 0.8]]), top_m=1)
    assert cc.tolist() == pytest.approx([(1 - 0.0) * P_FR, (1 - 0.8) * g[1]], rel=1e-5)


def test_class_indicators_refresh_rate_after_update_iter():
    ind = ClassIndicators(2, update_iter=2, momentum=0.5, top_m=12, lam=1.0)
    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0]]).T.reshape(1, 2, 2, 1, 1)
    label = torch.tensor([0, 1]).reshape(1, 2, 1, 1)
    ind.record(logits, label)
    assert ind.rate.tolist() == [1.0, 1.0]
    ind.record(logits, label)
    # symmetric classes -> equal CC -> CC / max = 1 -> EMA from 0 with momentum 0.5 = 0.5 each
    assert ind.cc.tolist() == pytest.approx([0.5, 0.5])
    assert ind.rate.tolist() == pytest.approx([1.0, 1.0])  # (1 - 0.5) / max = 1


def test_acisis_sampling_weights_are_confidence_powered():
    logits = torch.tensor([[2.0, 0.0]]).T.reshape(1, 2, 1, 1, 1)
    w = sampling_weights(logits, torch.tensor([1.0, 1.0]), beta=1.5)
    p = math.exp(2) / (math.exp(2) + 1)
    assert w.item() == pytest.approx(p**1.5, rel=1e-5)
    assert sampling_weights(logits, torch.tensor([0.0, 1.0])).item() == 0.0
