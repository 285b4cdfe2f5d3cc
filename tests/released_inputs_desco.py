"""Deterministic inputs shared by ``docs/scripts/released/desco_goldens.py`` (which runs DeSCO's
released code, HengCai-NJU/DeSCO) and ``tests/test_released_desco.py`` (which runs the suite).

Nothing here is released code: seeds, shapes and the slice maps fed to both sides. The V-Net
name map, the weight filler and the checksum helpers are those of ``tests/released_inputs_dhc.py``
(DeSCO's ``code/networks/vnet.py`` VNet has the same parameter names as DHC's ``models/vnet.py``).
"""

from __future__ import annotations

import zlib

import torch

from tests.released_inputs_dhc import (  # noqa: F401  (re-exported for the golden script and the test)
    VNET_PREFIX_MAP,
    checksum,
    delta_checksum,
    fill_released_vnet,
    fill_suite_vnet,
    grads_checksum,
    layer_type_stats,
    state_checksum,
    suite_name,
    tensor_for,
)

NUM_CLASSES = 2  # train_desco.py:63 (binary LA / KiTS / LiTS); its step hard-codes 2 class channels
PATCH = (16, 16, 16)  # cubic: the release's MC buffer is shaped (patch[0], patch[0], patch[2])
WIDTH = 4
INIT_WIDTH = 4
N_L, N_U = 2, 2  # the release's wce takes labeled_bs as the unlabeled batch size: n_l = n_u
LR = 0.01  # --base_lr
MAX_ITERATIONS = 6000  # --max_iterations
#: the iteration of the compared step: late enough that the consistency weight (0.1 sigmoid_rampup(
#: 36, 40) = 0.095) and the threshold ramp are far from 0, after two lr decays of optimizer1
STEP_ITER = 5400
#: iterations at which the schedules are compared
ITERS = (0, 1, 149, 150, 999, 1000, 1001, 2499, 2500, 2501, 3000, 4999, 5000, 5400, 5999, 6000)
#: volume / patch of the weight-map check: LARandomCrop1/2 crop at offset 0 (randint(0, 1)) and
#: the release's fixed annotated slices (axis 2 index 43, axis 1 index 17 // 2) fall on the
#: patch centre (86 // 2, 16 // 2); release axes (x, y, z) = suite axes (W, H, D)
WEIGHT_VOLUME = (17, 17, 87)
WEIGHT_PATCH = (16, 16, 86)
SLICE_WEIGHTS = (0.95, 0.5, 0.0)


def _gen(*keys) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(("desco",) + keys).encode()))


def step_batch(seed: int = 0) -> dict:
    """``image_l`` (N_L, 1, *PATCH), binary ``label_l`` (N_L, *PATCH) (a blob plus noise) and ``image_u``."""
    g = _gen("batch", seed)
    image = torch.rand(N_L + N_U, 1, *PATCH, generator=g)
    zz, yy, xx = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in PATCH], indexing="ij")
    blob = ((zz - 8) ** 2 + (yy - 7) ** 2 + (xx - 9) ** 2 < 30).long()
    flip = (torch.rand(N_L, *PATCH, generator=g) < 0.1).long()
    return {"image_l": image[:N_L].clone(), "label_l": (blob.unsqueeze(0) ^ flip).long(), "image_u": image[N_L:].clone()}


def loss_inputs() -> dict:
    """Logits (N, 2, *PATCH), labels (N, *PATCH), a soft weight map in [0, 1] and a 0/1 mask (N, *PATCH)."""
    g = _gen("loss")
    n = N_L
    return {
        "logits": torch.randn(n, NUM_CLASSES, *PATCH, generator=g, dtype=torch.float64).float(),
        "label": (torch.rand(n, *PATCH, generator=g) < 0.3).long(),
        "weight": torch.rand(n, *PATCH, generator=g),
        "mask": (torch.rand(n, *PATCH, generator=g) < 0.6).float(),
    }


def central_slices(shape=PATCH) -> torch.Tensor:
    """(D, H, W) map: 1 on the central axial (D // 2) and coronal (H // 2) slices, else 0 - the
    weight map a sparse (two-slice) labeled patch gives both networks, fed to the release's step."""
    d, h, w = shape
    m = torch.zeros(shape)
    m[d // 2] = 1.0
    m[:, h // 2] = 1.0
    return m


STEP_MODES = ("full", "sparse")


def sup_weight(mode: str) -> torch.Tensor:
    """(N_L, *PATCH) supervised weight map of the released step per suite ``supervision`` mode."""
    w = torch.ones(PATCH) if mode == "full" else central_slices()
    return w.expand(N_L, *PATCH).clone()

