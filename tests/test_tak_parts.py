"""TAK's reusable parts on tiny hand-computed cases: GA loss, contrastive loss, text head, cubes."""

import math

import pytest
import torch

from methods.contrastive import sample_anchors, supcon, voxel_text_contrastive
from methods.cube_mixing import OrganClassLogger, cross_image_indices, cubes_of, grid, location_labels, mix, unmix, unmix_cubes
from methods.ga_loss import ga_ce, ga_dice
from methods.magicnet import pick_cube
from methods.text_head import TextDrivenHead


def test_ga_dice_hand_case():
    # 2 classes, 2 voxels; class 1 absent from the target -> suppression term
    probs = torch.tensor([[0.8, 0.3], [0.2, 0.7]]).reshape(1, 2, 1, 1, 2)
    target = torch.zeros(1, 1, 1, 2, dtype=torch.long)
    present = 1 - 2 * (0.8 + 0.3) / ((0.64 + 0.09) + 2)
    absent = (0.2 * 0.2 + 0.7 * 0.7) / 2  # beta = p / sum(1 - y) = p / 2
    assert float(ga_dice(probs, target)) == pytest.approx((present + absent) / 2, rel=1e-6)
    # MagicNet's DiceLoss: the absent class scores 1 - 1e-10 / (0.04 + 0.49 + 1e-10) ~ 1
    absent_plain = 1 - 1e-10 / (0.2**2 + 0.7**2 + 1e-10)
    assert float(ga_dice(probs, target, gradient_aware=False)) == pytest.approx((present + absent_plain) / 2, rel=1e-6)


def test_ga_dice_suppression_gradient_is_stopgrad_weighted():
    p = torch.tensor([[1.0, 1.0], [0.2, 0.7]]).reshape(1, 2, 1, 1, 2).requires_grad_(True)
    ga_dice(p, torch.zeros(1, 1, 1, 2, dtype=torch.long)).backward()
    # d/dp of sum(stopgrad(p / 2) * p) / C = p / 2 / 2
    torch.testing.assert_close(p.grad[0, 1].flatten(), torch.tensor([0.2, 0.7]) / 4)


def test_ga_ce_hand_case():
    # per-voxel CE: ln2, log(1+e^2), log(1+e), log(1+e^-3); keep the top 50% = voxels 1 and 2
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 2.0, -1.0, 3.0]]).reshape(1, 2, 1, 1, 4)
    target = torch.tensor([0, 0, 1, 1]).reshape(1, 1, 1, 4)
    expected = (math.log(1 + math.e**2) + math.log(1 + math.e)) / math.sqrt(2)  # n_c = 1 each, K = 2
    assert float(ga_ce(logits, target, k=50)) == pytest.approx(expected, rel=1e-5)


def test_supcon_hand_case():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    expected = -(2 * (-math.log(1 + math.exp(-1))) / (1 + 1e-5)) / 3  # third anchor has no positive
    assert float(supcon(a, labels, temperature=1.0)) == pytest.approx(expected, rel=1e-5)
    assert float(supcon(a[:2], labels[:2], temperature=0.07)) == pytest.approx(0.0, abs=1e-6)


def test_sample_anchors_caps_per_class_and_skips_ignored():
    feats = torch.arange(10.0).reshape(1, 10, 1)
    labels = torch.tensor([[0, 0, 0, 0, 0, 1, 1, -1, -1, 2]])
    torch.manual_seed(0)
    anc, lab = sample_anchors(feats, labels, n_view=2)
    assert sorted(lab.tolist()) == [0, 0, 1, 1, 2]
    assert all(int(labels[0, int(f)]) == int(c) for f, c in zip(anc[:, 0], lab))


def test_contrastive_gradient_reaches_features_and_text():
    torch.manual_seed(0)
    feats = [torch.randn(2, 4, 4, 4, 4, requires_grad=True) for _ in range(3)]
    text = torch.randn(6, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 8, 8, 8))
    labels[0, 0, :4] = -1
    loss = voxel_text_contrastive(feats, labels, [text] * 3, torch.arange(3).repeat(2), (4, 2, 1))
    loss.backward()
    assert loss.item() > 0
    assert all(f.grad.abs().sum() > 0 for f in feats) and text.grad.abs().sum() > 0


def _head(num_classes=3, d=5, views=2):
    torch.manual_seed(0)
    prior = torch.randn(views * num_classes, d)
    return TextDrivenHead(prior, num_classes, feat_channels=(8, 16, 32), dec_channels=4, hidden=16), prior


def _feats(b=2):
    torch.manual_seed(1)
    return [torch.randn(b, 8, 4, 4, 4), torch.randn(b, 16, 2, 2, 2), torch.randn(b, 32, 1, 2, 2)], torch.randn(b, 4, 8, 8, 8)


def test_text_head_shape_and_parameter_count():
    head, _ = _head()
    feats, dec = _feats()
    assert head(feats, dec).shape == (2, 3, 8, 8, 8)
    assert head.controller.out_channels == 153  # 8*8 + 8*8 + 8 weights + 8 + 8 + 1 biases


def test_changing_one_class_embedding_changes_only_that_class():
    head, prior = _head()
    head.eval()
    feats, dec = _feats()
    before = head(feats, dec)
    new_prior = prior.clone()
    new_prior[1] += 3.0  # view 0 of class 1
    new_prior[3 + 1] -= 2.0  # view 1 of class 1
    head.prior.copy_(new_prior)
    after = head(feats, dec)
    assert not torch.allclose(before[:, 1], after[:, 1])
    torch.testing.assert_close(before[:, 0], after[:, 0])
    torch.testing.assert_close(before[:, 2], after[:, 2])


def test_text_head_equals_grouped_convolution():
    """The batched-matmul head computes what TAK's grouped conv3d does."""
    import torch.nn.functional as F

    head, _ = _head()
    feats, dec = _feats(b=1)
    out = head(feats, dec)
    e = head.class_embedding()
    g = head.image_condition(feats)
    params = head.controller(torch.cat([g.expand(3, -1), e], 1)[..., None, None, None]).flatten(1)
    w1, w2, w3, b1, b2, b3 = torch.split(params, [64, 64, 8, 8, 8, 1], dim=1)
    x = head.precls(dec).repeat(3, 1, 1, 1, 1).reshape(1, -1, 8, 8, 8)
    x = F.relu(F.conv3d(x, w1.reshape(24, 8, 1, 1, 1), b1.reshape(-1), groups=3))
    x = F.relu(F.conv3d(x, w2.reshape(24, 8, 1, 1, 1), b2.reshape(-1), groups=3))
    x = F.conv3d(x, w3.reshape(3, 8, 1, 1, 1), b3.reshape(-1), groups=3)
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-5)


def test_text_head_accepts_any_encoder_width_and_gradients_reach_it():
    for d in (384, 512, 7):
        head = TextDrivenHead(torch.randn(2 * 3, d), 3, (8, 16, 32), 4, hidden=16)
        feats, dec = _feats()
        head(feats, dec).sum().backward()
        assert head.text_to_hidden[0].weight.grad.abs().sum() > 0
        assert head.controller.weight.grad.abs().sum() > 0


def test_cross_image_partition_then_recovery_is_identity():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 32, 64, 96)
    n = grid((32, 64, 96), 32)
    ind = cross_image_indices(4, n)
    mixed = mix(x, ind)
    assert not torch.equal(mixed, x)
    torch.testing.assert_close(unmix(mixed, ind), x)
    f = torch.randn(4, 3, 2, 4, 6)  # the same partition seen at 1/16 scale
    torch.testing.assert_close(unmix(mix(f, ind), ind), f)
    # every cube of the mixed batch comes from one image, each image's cubes all present once
    assert sorted(ind[:, 0, 1, 2].tolist()) == [0, 1, 2, 3]


def test_within_image_partition_recovery_and_location_labels():
    x = torch.randn(2, 1, 64, 64, 96)
    n = grid((64, 64, 96), 32)
    c = cubes_of(x, 32)
    assert c.shape == (2, 12, 1, 32, 32, 32)
    torch.testing.assert_close(unmix_cubes(c, n), x)
    torch.testing.assert_close(c[:, 1, 0], x[:, 0, 0:32, 0:32, 32:64])  # cube (0, 0, 1)
    loc = location_labels(n)
    # cube (i, j, k) -> i + n0 j + n0 n1 k (MagicNet's x + W y + W H z)
    assert loc[0] == 0 and loc[1] == 2 * 2 * 1 and loc[3] == 2 * 1 and loc[6] == 1
    assert sorted(loc.tolist()) == list(range(12))


def test_pick_cube():
    assert pick_cube((96, 96, 96)) == 32
    assert pick_cube((32, 64, 64)) == 32
    from bench.core.errors import UserError

    with pytest.raises(UserError, match="--set patch=32,64,64"):
        pick_cube((16, 32, 32))


def test_organ_class_logger_weights():
    log = OrganClassLogger(3)
    log.append(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2]))
    assert torch.equal(log.weights(), torch.zeros(3))  # nothing counted yet: no blending
    log.update()
    torch.testing.assert_close(log.weights(), torch.tensor([1.0, 0.5, 1 / 6]))
    torch.testing.assert_close(log.weights(temperature=0.5), torch.tensor([1.0, 0.25, 1 / 36]))


def test_ga_dice_gradient_finite_when_one_class_fills_the_batch():
    # a teacher's first pseudo-label is often one class everywhere: no 0/0 in the backward pass
    p = torch.softmax(torch.randn(2, 3, 2, 2, 2), 1).requires_grad_(True)
    ga_dice(p, torch.zeros(2, 2, 2, 2, dtype=torch.long)).backward()
    assert torch.isfinite(p.grad).all()


def test_text_head_chunked_inference_equals_one_pass():
    torch.manual_seed(0)
    head = TextDrivenHead(torch.randn(28, 48), 14, (16, 32, 64), 4).eval()
    feats = [torch.randn(2, 16, 4, 8, 8), torch.randn(2, 32, 2, 4, 4), torch.randn(2, 64, 1, 2, 2)]
    dec = torch.randn(2, 4, 16, 32, 32)
    with torch.no_grad():
        head.chunk = 10**9
        ref = head(feats, dec)
        head.chunk = 1000  # not a divisor of 16384 voxels: the last chunk is shorter
        assert torch.allclose(head(feats, dec), ref, atol=1e-5)


@pytest.mark.parametrize("chunk,backward_chunk", [(7, 7), (64, 64), (10**9, 10**9), (7, 64), (64, 7)])
def test_dynamic_head_recomputing_backward_equals_autograd(chunk, backward_chunk):
    """The chunked head with its hand-written backward gives autograd's values and gradients
    (chunk 7 does not divide the 100 voxels; ReLUs are active and inactive on random inputs;
    forward and backward chunk sizes may differ)."""
    from methods.text_head import dynamic_head, reference_dynamic_head

    torch.manual_seed(0)
    b, c, n = 2, 3, 100
    shapes = [(b, 8, n), (b, 8 * c, 1), (b, 8 * c, 8), (b * c, 8, 1), (b * c, 8, 8), (b * c, 1, 1), (b * c, 1, 8)]
    inputs = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]
    weight = torch.randn(b, c, n, dtype=torch.float64)
    out = dynamic_head(*inputs, b, c, chunk, backward_chunk)
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    ref = reference_dynamic_head(*inputs, b, c)
    ref_grads = torch.autograd.grad((ref * weight).sum(), inputs)
    assert torch.allclose(out, ref)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r)
    assert torch.autograd.gradcheck(lambda *t: dynamic_head(*t, b, c, chunk, backward_chunk), inputs)
