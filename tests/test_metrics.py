import math

import numpy as np
import pytest
from scipy import ndimage

from bench.core.metrics import case_metrics, dice, organ_metrics, summarize, surface_distances


def _line(lo, hi, n=10):
    m = np.zeros((1, 1, n), bool)
    m[0, 0, lo : hi + 1] = True
    return m


def test_hand_computed_line():
    # every voxel of a (1, 1, n) mask is a surface voxel; spacing 2 mm along the line
    p, g = _line(0, 3), _line(2, 5)
    d_pg, d_gp = surface_distances(p, g, (1.0, 1.0, 2.0))
    np.testing.assert_allclose(sorted(d_pg), [0, 0, 2, 4])
    np.testing.assert_allclose(sorted(d_gp), [0, 0, 2, 4])
    m = organ_metrics(p, g, (1.0, 1.0, 2.0))
    assert m["dice"] == pytest.approx(0.5)
    assert m["asd"] == pytest.approx(1.5)
    assert m["assd"] == pytest.approx(1.5)
    assert m["hd95"] == pytest.approx(4.0)


def test_asd_is_directed():
    p, g = _line(0, 0), _line(0, 4)  # pred: one voxel at the end of gt
    m = organ_metrics(p, g, (1, 1, 1))
    assert m["asd"] == 0.0  # pred -> gt
    assert m["assd"] == pytest.approx((0 + 0 + 1 + 2 + 3 + 4) / 6)  # both directions pooled


@pytest.mark.parametrize(
    "a,b,expected",
    [([1, 1, 0, 0], [1, 0, 0, 0], 2 / 3), ([1, 1, 1, 1], [1, 1, 1, 1], 1.0), ([1, 0, 0, 0], [0, 1, 0, 0], 0.0)],
)
def test_dice_hand(a, b, expected):
    assert dice(np.array(a, bool), np.array(b, bool)) == pytest.approx(expected)


def test_empty_policy():
    z = np.zeros((4, 4, 4), bool)
    o = z.copy()
    o[1, 1, 1] = True
    both = organ_metrics(z, z, (1, 1, 1))
    assert all(math.isnan(v) for v in both.values())
    one = organ_metrics(o, z, (1, 1, 1))
    assert one["dice"] == 0.0 and math.isnan(one["hd95"]) and math.isnan(one["asd"])


@pytest.mark.parametrize("rule,both_dice", [("dhc", 1.0), ("dhc_released", 0.01)])
def test_dhc_empty_rules(rule, both_dice):
    z = np.zeros((4, 4, 4), bool)
    o = z.copy()
    o[1, 1, 1] = True
    assert organ_metrics(z, z, (1, 1, 1), rule) == {"dice": both_dice, "hd95": 0.0, "asd": 0.0, "assd": 0.0, "nsd": 1.0}
    one = organ_metrics(z, o, (1, 1, 1), rule)  # missed: Dice 0, NSD 0, the published 128
    assert one["dice"] == 0.0 and one["nsd"] == 0.0 and one["hd95"] == 128 and one["missed"]


def _blob(rng, shape):
    m = ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.52
    return m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_medpy_with_anisotropic_spacing(seed):
    medpy = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(seed)
    shape = (18, 30, 26)
    p, g = _blob(rng, shape), _blob(rng, shape)
    assert p.any() and g.any()
    spacing = (3.0, 0.7, 1.1)
    m = organ_metrics(p, g, spacing)
    assert m["hd95"] == pytest.approx(medpy.hd95(p, g, voxelspacing=spacing), rel=1e-12)
    assert m["asd"] == pytest.approx(medpy.asd(p, g, voxelspacing=spacing), rel=1e-12)
    assert m["assd"] == pytest.approx(medpy.assd(p, g, voxelspacing=spacing), rel=1e-12)
    assert m["dice"] == pytest.approx(medpy.dc(p, g))


def test_equals_medpy_when_touching_the_border():
    medpy = pytest.importorskip("medpy.metric.binary")
    p = np.zeros((6, 7, 8), bool)
    g = p.copy()
    p[0:3, 0:4, 2:8] = True  # touches three faces of the array
    g[1:5, 0:3, 3:8] = True
    spacing = (2.5, 1.0, 0.8)
    m = organ_metrics(p, g, spacing)
    assert m["hd95"] == pytest.approx(medpy.hd95(p, g, voxelspacing=spacing))
    assert m["asd"] == pytest.approx(medpy.asd(p, g, voxelspacing=spacing))


def test_case_metrics_and_summary():
    gt = np.zeros((4, 4, 4), np.int64)
    gt[:2] = 1
    pred = gt.copy()
    per = case_metrics(pred, gt, (1, 1, 1), num_classes=3)
    assert per[1]["dice"] == 1.0 and per[1]["hd95"] == 0.0
    assert math.isnan(per[2]["dice"])  # absent on both sides: excluded
    s = summarize({"c": {"a": per[1], "b": per[2]}}, ["a", "b"])
    assert s["mean"]["dice"] == 1.0


def test_case_metrics_shape_mismatch():
    from bench.core.errors import UserError

    with pytest.raises(UserError, match="differs"):
        case_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1), 2)


def test_our_surface_metrics_equal_monai_and_medpy_on_a_14_class_case():
    """The values behind `bench perf`'s speed ratios: same HD95 / ASD as MONAI and medpy."""
    from bench.perf import metrics_speed

    m = metrics_speed(repeat=1)
    assert m["medpy_max_abs_diff_mm"] < 1e-6
    assert m["monai_max_abs_diff_hd95_mm"] < 1e-4 and m["monai_max_abs_diff_asd_mm"] < 1e-4


def test_nsd_hand_computed():
    """Two 1x1x3 bars side by side along W (spacing 1): every voxel is a surface voxel.
    P = columns 0..2 of row 0, G = columns 1..3 of row 0 shifted one row down (H + 1):
    d(P -> G): (0,0,0) -> (0,1,1) = sqrt 2, (0,0,1) -> 1, (0,0,2) -> 1; d(G -> P) likewise
    1, 1, sqrt 2. Tolerance 1: 4 of 6 within -> 2/3; tolerance 1.5: 6/6; tolerance 0.5: 0."""
    p = np.zeros((1, 2, 4), bool)
    g = np.zeros((1, 2, 4), bool)
    p[0, 0, 0:3] = True
    g[0, 1, 1:4] = True
    assert organ_metrics(p, g, (1, 1, 1), nsd_tolerance=1.0)["nsd"] == pytest.approx(4 / 6)
    assert organ_metrics(p, g, (1, 1, 1), nsd_tolerance=1.5)["nsd"] == 1.0
    assert organ_metrics(p, g, (1, 1, 1), nsd_tolerance=0.5)["nsd"] == 0.0
    # spacing 2 along H: the row step is 2 mm, the diagonal sqrt 5: nothing within 1.5 mm
    assert organ_metrics(p, g, (1, 2, 1), nsd_tolerance=1.5)["nsd"] == 0.0
    assert organ_metrics(p, g, (1, 2, 1), nsd_tolerance=2.0)["nsd"] == pytest.approx(4 / 6)
    # identical masks: 1; the suite's rule for one empty side: 0, both empty: NaN
    assert organ_metrics(p, p, (1, 1, 1))["nsd"] == 1.0
    assert organ_metrics(p, np.zeros_like(p), (1, 1, 1))["nsd"] == 0.0
    assert math.isnan(organ_metrics(np.zeros_like(p), np.zeros_like(p), (1, 1, 1))["nsd"])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tol", [1.0, 2.5])
def test_nsd_equals_monai_with_anisotropic_spacing(seed, tol):
    """Our NSD against MONAI's ``compute_surface_dice`` (voxel counts, ``use_subvoxels=False``)
    on random blobs with spacing (3, 0.8, 1.2) mm."""
    import torch
    from monai.metrics import compute_surface_dice

    rng = np.random.default_rng(seed)
    p, g = _blob(rng, (20, 32, 28)), _blob(rng, (20, 32, 28))
    assert p.any() and g.any()
    spacing = (3.0, 0.8, 1.2)
    ours = organ_metrics(p, g, spacing, nsd_tolerance=tol)["nsd"]

    def onehot(m):
        return torch.from_numpy(np.stack([~m, m]))[None].float()

    theirs = float(compute_surface_dice(onehot(p), onehot(g), class_thresholds=[tol], spacing=spacing)[0, 0])
    # MONAI divides in float32; one voxel more or less within tolerance would move it by ~1e-3
    assert 0.0 < ours < 1.0 and ours == pytest.approx(theirs, rel=1e-6)
