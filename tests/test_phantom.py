import numpy as np
import pytest

from bench.core.labels import AMOS_15, BTCV_13
from datasets.phantom import build_phantom, generate_case

SHAPE = (40, 80, 80)


@pytest.fixture(scope="module")
def btcv_case():
    return generate_case(BTCV_13, SHAPE, seed=3)


def test_deterministic_per_seed(btcv_case):
    img, lab, sp = generate_case(BTCV_13, SHAPE, seed=3)
    np.testing.assert_array_equal(img, btcv_case[0])
    np.testing.assert_array_equal(lab, btcv_case[1])
    img2, lab2, _ = generate_case(BTCV_13, SHAPE, seed=4)
    assert not np.array_equal(lab, lab2)


def test_all_organs_present_and_in_range(btcv_case):
    img, lab, spacing = btcv_case
    assert img.dtype == np.float32 and lab.dtype == np.uint8
    assert set(np.unique(lab)) == set(range(len(BTCV_13)))
    assert -1100 < img.min() < -900 and 300 < img.max() < 600  # air and bone in HU
    assert len(spacing) == 3 and all(s > 0 for s in spacing)


def test_voxel_share_imbalance(btcv_case):
    lab = btcv_case[1]
    counts = np.bincount(lab.ravel(), minlength=14)
    liver, radr, ladr = counts[BTCV_13.index("liver")], counts[12], counts[13]
    assert liver > 100 * max(radr, ladr)  # hundreds of times the adrenals


def _centroid(lab, idx):
    return np.argwhere(lab == idx).mean(0)  # (z, y, x) index; x increases to the patient's right


def test_organs_sit_where_they_sit(btcv_case):
    lab = btcv_case[1]
    c = {name: _centroid(lab, i) for i, name in enumerate(BTCV_13) if i}
    mid_x = lab.shape[2] / 2
    assert c["liver"][2] > mid_x > c["spleen"][2]  # liver right, spleen left
    assert c["right kidney"][2] > mid_x > c["left kidney"][2]
    assert c["right kidney"][1] < c["liver"][1]  # kidneys posterior
    assert c["aorta"][1] < c["stomach"][1]
    assert c["right adrenal gland"][0] > c["right kidney"][0]  # on top of the kidney
    assert c["left adrenal gland"][0] > c["left kidney"][0]
    assert c["gallbladder"][0] < c["liver"][0]  # under the liver


def test_amos_variant_has_15_organs_in_amos_order():
    img, lab, _ = generate_case(AMOS_15, (48, 64, 64), seed=1)
    assert lab.max() == 15
    c_bladder = _centroid(lab, AMOS_15.index("bladder"))
    c_liver = _centroid(lab, AMOS_15.index("liver"))
    assert c_bladder[0] < c_liver[0]  # pelvis below the liver


def test_build_is_cached_and_partitioned(tiny_dataset):
    again = build_phantom("btcv", "tiny")
    assert again.root == tiny_dataset.root
    p = tiny_dataset.partition
    assert len(p["train"]) == 6 and len(p["eval"]) == 2 and len(p["test"]) == 2
    assert tiny_dataset.labels == BTCV_13
    assert isinstance(tiny_dataset.load_image(p["train"][0]), np.memmap)
