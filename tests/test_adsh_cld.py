"""Adsh's adaptive thresholds and CLD's confidence bank / sampling, on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from methods.adsh import Adsh, ThresholdBank, adaptive_thresholds
from methods.class_weighting import InverseFrequency
from methods.cld import CLD, ConfidenceBank, sampling_mask, sampling_rate
from tests.helpers import random_batch, tiny_context


def test_inverse_frequency_cube_root():
    w = InverseFrequency(3).init([1000, 125, 8])
    assert torch.allclose(w, torch.tensor([1.0, 2.0, 5.0]), atol=1e-5)


def test_sampling_rate_hand_case():
    r = sampling_rate(torch.tensor([0.9, 0.5, 0.0]))
    # 1 - conf = [0.1, 0.5, 1.0], / max = same, ^0.5
    assert torch.allclose(r, torch.tensor([0.1, 0.5, 1.0]).sqrt(), atol=1e-6)


def test_sampling_mask_follows_the_predicted_class_rate():
    logits = torch.zeros(1, 2, 4, 4, 4)
    logits[:, 1, :2] = 5.0  # first half predicted class 1
    m = sampling_mask(logits, torch.tensor([0.0, 1.0]), torch.Generator().manual_seed(0))
    assert m.shape == (1, 4, 4, 4)
    assert m[:, :2].eq(1).all() and m[:, 2:].eq(0).all()


def test_confidence_bank_first_block_replaces_then_ema():
    bank = ConfidenceBank(torch.tensor([0.3, 0.3]), momentum=0.5, update_iter=2)
    big = 20.0
    logits = torch.tensor([[big, 0.0], [0.0, big]]).T.reshape(1, 2, 2, 1, 1)  # voxel 0: class 0, voxel 1: class 1, both sure
    label = torch.tensor([0, 0]).reshape(1, 2, 1, 1)  # voxel 1 is wrong: p_0 = 0
    bank.record(logits, label)
    assert torch.allclose(bank.confs, torch.tensor([0.3, 0.3]))  # block not complete
    bank.record(logits, label)
    # class 0: mean p_0 on its voxels = (1 + 0) / 2 = 0.5; class 1: no voxel -> 0
    assert torch.allclose(bank.confs, torch.tensor([0.5, 0.0]), atol=1e-6)
    label1 = torch.tensor([0, 1]).reshape(1, 2, 1, 1)
    bank.record(logits, label1)
    bank.record(logits, label1)
    # second block: [1, 1]; EMA with momentum 0.5
    assert torch.allclose(bank.confs, torch.tensor([0.75, 0.5]), atol=1e-6)


def test_adaptive_thresholds_hand_case():
    p1 = torch.tensor([0.99, 0.96, 0.7, 0.2])
    scores = torch.stack([1 - p1, p1]).reshape(1, 2, 4, 1, 1)
    # argmax counts: class 0: 1 voxel, class 1 (majority): 3; voxels with p1 > 0.95: 2 -> rho = 2/3
    # class 1: floor(2/3 * 3) = 2 -> 3rd largest p1 = 0.7; class 0: floor(2/3) = 0 -> max p0 = 0.8
    thr = adaptive_thresholds(scores, 0.95)
    assert torch.allclose(thr, torch.tensor([0.8, 0.7]), atol=1e-6)


def test_threshold_bank_stores_then_recalibrates_like_dhc():
    bank = ThresholdBank(2, capacity=4, thresh_major=0.95)
    logits = torch.randn(2, 2, 2, 2, 2)
    assert bank.update(logits).eq(0).all() and bank.filled == 2
    assert bank.update(logits).eq(0).all() and bank.filled == 4
    thr = bank.update(logits)  # full: recalibrate, empty
    assert bank.filled == 0 and (thr > 0).all()
    mask = bank.mask(logits)
    assert mask.shape == logits.shape and set(mask.unique().tolist()) <= {0.0, 1.0}


def test_adsh_masks_the_logits_of_classes_below_threshold():
    ctx = tiny_context(num_classes=3, n_unlabeled=8)
    m = Adsh(ctx)
    assert m.banks["A"].capacity == 2  # a quarter of the unlabeled cases
    m.banks["B"].thresholds = torch.tensor([2.0, 2.0, 2.0])  # nothing passes -> B's mask is all zero
    out = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    loss = m.cps_loss(out, out.detach().clone(), None, None, 1)
    # A's logits are all zeroed by B's mask: its CE is log(3) everywhere; B's logits unmasked
    import math

    ce_b = torch.nn.functional.cross_entropy(out.detach(), out.detach().argmax(1))
    assert loss.item() == pytest.approx(math.log(3) + ce_b.item(), rel=1e-5)


def test_cld_state_roundtrip_and_step():
    torch.manual_seed(0)
    ctx = tiny_context(num_classes=4, patch=(16, 16, 16))
    m = CLD(ctx)
    assert torch.equal(m.banks["A"].confs, m.banks["B"].confs)  # B starts as a copy of A
    lab, unl = random_batch(ctx)
    losses = m.training_step(lab, unl, 5)
    assert torch.isfinite(losses.total)
    state = m.running_state()
    m2 = CLD(ctx)
    m2.load_running_state(state)
    assert torch.equal(m2.banks["A"].total, m.banks["A"].total) and m2.banks["A"].records == 1
