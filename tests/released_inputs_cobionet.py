"""Deterministic inputs and name maps shared by ``docs/scripts/released/cobionet_goldens.py``
(which runs Co-BioNet's released code, himashi92/Co-BioNet ``code/``) and
``tests/test_released_cobionet.py`` (which runs the suite's ``co_bionet``).

Nothing here is released code: seeds, shapes, the name maps between the released networks
(``code/networks/VNet.py`` VNet, ``code/networks/critic.py`` Discriminator) and the suite's
(``methods/networks.py`` VNet, ``methods/co_bionet.py`` Critic). Weights come from
``tests/released_inputs_dhc.py``'s :func:`tensor_for` (a function of a seed and the suite name),
so no weights are stored in the golden file.
"""

from __future__ import annotations

import torch

from tests.released_inputs_dhc import (  # noqa: F401 - re-exported for the golden script and the test
    VNET_PREFIX_MAP,
    _gen,
    checksum,
    grads_checksum,
    state_checksum,
    tensor_for,
)
from tests.released_inputs_dhc import suite_name as _dhc_suite_name

NUM_CLASSES = 2  # the release is binary: one sigmoid output channel (class_num=num_classes - 1)
PATCH = (16, 16, 16)  # smallest V-Net patch
WIDTH = 4  # n_filters of the step / forward tests (released: 16)
N_L, N_U = 2, 2  # labeled_bs 2, batch_size 4 (train_cobionet_semi.py:33-34)
LR = 0.01  # --base_lr
#: iter_num of the golden step after its increment: 6000 // 150 = 40 = consistency_rampup, so the
#: consistency weight is 1.0 and the unsupervised terms weigh in the gradients
ITER_NUM = 6000
#: cosine schedule checked over this many scheduler steps with this T_max (past T_max: rising again)
COSINE_T_MAX, COSINE_STEPS = 7, 30
#: iter_num values of the consistency weight check (train_cobionet_semi.py:233)
RAMP_ITERS = (1, 149, 150, 151, 299, 300, 1500, 3000, 4499, 4500, 5999, 6000, 6001, 9000)
#: seeds of the networks of the step: segmenters 1 / 2, critics 1 / 2
SEED_S1, SEED_S2, SEED_C1, SEED_C2 = 11, 12, 21, 22


def released_vnet_name(released: str) -> str:
    """The suite's key of a released Co-BioNet VNet key: ``encoder.`` / ``decoder1.`` dropped,
    then DHC's V-Net prefix map (same blocks, same Sequential order)."""
    for head in ("encoder.", "decoder1."):
        if released.startswith(head):
            return _dhc_suite_name(released[len(head):])
    raise KeyError(released)


def released_critic_name(released: str) -> str:
    """The suite's key of a released critic key: ``conv{i}.{j}.x`` -> ``layers.{i-1}.{j}.x``."""
    head, rest = released.split(".", 1)
    if not head.startswith("conv"):
        raise KeyError(released)
    return f"layers.{int(head[4:]) - 1}.{rest}"


def critic_tensor(name: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    """Deterministic value of the suite critic tensor ``name`` (1x1x1 convs: fan-in = channels)."""
    if name.endswith("num_batches_tracked"):
        return torch.zeros_like(like)
    r = torch.randn(tuple(like.shape), generator=_gen("critic", name, seed), dtype=torch.float64)
    if name.endswith("running_var"):
        return (0.5 + r.abs()).to(like.dtype)
    if name.endswith("running_mean"):
        return (0.1 * r).to(like.dtype)
    if like.dim() == 5:
        return (r * (2.0 / like.shape[1]) ** 0.5).to(like.dtype)
    if name.endswith("weight"):
        return (1.0 + 0.1 * r).to(like.dtype)
    return (0.05 * r).to(like.dtype)


def fill(net: torch.nn.Module, seed: int, map_name=None, critic: bool = False) -> None:
    """Set every parameter / buffer of ``net`` from ``seed`` and its suite name (``map_name`` maps
    a released name to it)."""
    sd = net.state_dict()
    make = critic_tensor if critic else tensor_for
    net.load_state_dict({k: make(map_name(k) if map_name else k, v, seed) for k, v in sd.items()})


def delta_checksum(net: torch.nn.Module, seed: int, map_name=None, critic: bool = False) -> dict:
    """Checksum of (parameters - their :func:`fill` values at ``seed``), sorted by suite name."""
    make = critic_tensor if critic else tensor_for
    items = sorted(((map_name(n) if map_name else n), p) for n, p in net.named_parameters())
    return checksum(torch.cat([(p.detach() - make(n, p, seed)).reshape(-1) for n, p in items]))


def binary_labels(n: int, seed: int) -> torch.Tensor:
    """(n, *PATCH) 0/1 labels: a sphere-ish foreground blob plus 10 % flipped voxels."""
    g = _gen("labels", n, seed)
    zz, yy, xx = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in PATCH], indexing="ij")
    out = []
    for _ in range(n):
        c = torch.rand(3, generator=g) * 6 + 5
        r = 3 + torch.rand(1, generator=g) * 3
        blob = ((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < r ** 2
        flip = torch.rand(PATCH, generator=g) < 0.1
        out.append((blob ^ flip).long())
    return torch.stack(out)


def step_batch(seed: int = 0) -> dict:
    """One batch: ``image_l`` (N_L, 1, *PATCH), ``label_l`` (N_L, *PATCH) 0/1, ``image_u``
    (N_U, 1, *PATCH); images brighter inside the labels."""
    g = _gen("batch", seed)
    label = binary_labels(N_L, seed)
    image = torch.rand(N_L + N_U, 1, *PATCH, generator=g)
    image[:N_L, 0] += 0.5 * label
    return {"image_l": image[:N_L].clone(), "label_l": label, "image_u": image[N_L:].clone()}


def loss_inputs() -> dict:
    """Probabilities for the loss pieces: ``p1`` / ``p2`` (N_U, 1, *PATCH) in (0, 1), critic
    confidences ``c`` (N_U, 1, *PATCH), ``p_all`` / ``c_real`` (N_L + N_U / N_L, 1, *PATCH),
    labels ``y`` (N_L, *PATCH)."""
    g = _gen("loss")
    return {
        "p1": torch.sigmoid(2 * torch.randn(N_U, 1, *PATCH, generator=g)),
        "p2": torch.sigmoid(2 * torch.randn(N_U, 1, *PATCH, generator=g)),
        "c": torch.rand(N_U, 1, *PATCH, generator=g),
        "p_l": torch.sigmoid(2 * torch.randn(N_L, 1, *PATCH, generator=g)),
        "y": binary_labels(N_L, 77),
        "d_fake": torch.rand(N_L + N_U, 1, *PATCH, generator=g) * 0.98 + 0.01,
        "d_real": torch.rand(N_L, 1, *PATCH, generator=g) * 0.98 + 0.01,
    }
