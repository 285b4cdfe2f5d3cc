"""Deterministic inputs and weights shared by ``docs/scripts/released/dhc_goldens.py`` (which runs
DHC's released code, xmed-lab/DHC) and ``tests/test_released_dhc.py`` (which runs the suite).

Nothing here is released code: only seeds, shapes, the name map between the released V-Net
(``code/models/vnet.py``) and the suite's (``methods/networks.py``), and checksum helpers. Every
tensor is a function of a seed and, for network weights, of the suite's parameter name, so no
weights are stored in the golden file.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

NUM_CLASSES = 14  # DHC's Config("synapse").num_cls (its CReST reads config.num_cls)
PATCH = (16, 16, 16)  # smallest V-Net patch (four stride-2 downsamplings)
WIDTH = 4  # n_filters of the step / forward tests
INIT_WIDTH = 4  # n_filters of the init-statistics networks
N_L, N_U = 2, 2  # labeled / unlabeled images per step (DHC: batch_size 2 each)
LR = 0.05
WEIGHT_DECAY = 3e-5
CPS_W = 0.1
STEPS = 3  # optimiser steps of the smooth SGD check
#: co-training steps compared: from the 2nd step on, float noise (~1e-7) is amplified by the
#: train-mode BatchNorm of the tiny bottleneck (few values per channel) and by argmax flips of
#: near-tied pseudo-labels, so later steps do not reproduce across implementations
CO_STEPS = 1

#: released parameter-name prefix (code/models/vnet.py, VNet) -> suite prefix (methods/networks.py, VNet).
#: Inside a block both keep the same Sequential order (conv, norm, ReLU, ...), so the index after
#: the prefix is the same.
VNET_PREFIX_MAP = {
    "block_one.conv.": "enc.0.",
    "block_two.conv.": "enc.1.",
    "block_three.conv.": "enc.2.",
    "block_four.conv.": "enc.3.",
    "block_five.conv.": "enc.4.",
    "block_one_dw.conv.": "down.0.",
    "block_two_dw.conv.": "down.1.",
    "block_three_dw.conv.": "down.2.",
    "block_four_dw.conv.": "down.3.",
    "block_five_up.conv.": "up.0.",
    "block_six_up.conv.": "up.1.",
    "block_seven_up.conv.": "up.2.",
    "block_eight_up.conv.": "up.3.",
    "block_six.conv.": "dec.0.",
    "block_seven.conv.": "dec.1.",
    "block_eight.conv.": "dec.2.",
    "block_nine.conv.": "dec.3.",
    "out_conv.": "out_conv.",
}


def suite_name(released_name: str) -> str:
    """The suite's state-dict key of a released V-Net state-dict key."""
    hits = [p for p in VNET_PREFIX_MAP if released_name.startswith(p)]
    if len(hits) != 1:
        raise KeyError(f"no unique prefix for released parameter {released_name!r}: {hits}")
    return VNET_PREFIX_MAP[hits[0]] + released_name[len(hits[0]):]


def _gen(*keys) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(keys).encode()))


def tensor_for(name: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    """Deterministic value of the suite parameter / buffer ``name`` (shape and dtype of ``like``)."""
    shape = tuple(like.shape)
    if name.endswith("num_batches_tracked"):
        return torch.zeros_like(like)
    g = _gen("w", name, seed)
    r = torch.randn(shape, generator=g, dtype=torch.float64)
    if name.endswith("running_var"):
        return (0.5 + r.abs()).to(like.dtype)
    if name.endswith("running_mean"):
        return (0.1 * r).to(like.dtype)
    if len(shape) == 5:  # (transposed) conv weight
        k = math.prod(shape[2:])
        fan_in = shape[0] if name.startswith("up.") else shape[1] * k
        return (r * math.sqrt(2.0 / fan_in)).to(like.dtype)
    if name.endswith("weight"):  # BatchNorm scale
        return (1.0 + 0.1 * r).to(like.dtype)
    return (0.05 * r).to(like.dtype)  # biases


def fill_suite_vnet(net: torch.nn.Module, seed: int) -> None:
    """Set every parameter and buffer of a suite V-Net from ``seed`` and its name."""
    sd = net.state_dict()
    net.load_state_dict({k: tensor_for(k, v, seed) for k, v in sd.items()})


def fill_released_vnet(net: torch.nn.Module, seed: int) -> None:
    """Set a released V-Net to the same values as :func:`fill_suite_vnet` (names mapped)."""
    sd = net.state_dict()
    net.load_state_dict({k: tensor_for(suite_name(k), v, seed) for k, v in sd.items()})


def skewed_labels(n: int, seed: int) -> torch.Tensor:
    """(n, *PATCH) labels with imbalanced classes (probability ~ 1 / (c + 1)^1.5)."""
    g = _gen("labels", n, seed)
    p = 1.0 / (torch.arange(NUM_CLASSES, dtype=torch.float64) + 1) ** 1.5
    flat = torch.multinomial(p, n * math.prod(PATCH), replacement=True, generator=g)
    return flat.reshape(n, *PATCH).long()


def step_batch(step: int, seed: int = 0) -> dict:
    """One co-training batch: ``image_l`` (N_L, 1, *PATCH), ``label_l`` (N_L, *PATCH), ``image_u``."""
    g = _gen("batch", step, seed)
    image = torch.rand(N_L + N_U, 1, *PATCH, generator=g)
    return {"image_l": image[:N_L].clone(), "label_l": skewed_labels(N_L, 1000 * seed + step), "image_u": image[N_L:].clone()}


def labeled_set_labels() -> list[np.ndarray]:
    """Label volumes of a fake labeled set (DistDW / CReST / SimiS initialisation)."""
    return [skewed_labels(1, 500 + i)[0].numpy() for i in range(3)]


def labeled_counts() -> np.ndarray:
    """Voxel count per class of :func:`labeled_set_labels` (what ``ctx.labeled_voxel_counts`` holds)."""
    return sum(np.bincount(lab.reshape(-1), minlength=NUM_CLASSES) for lab in labeled_set_labels()).astype(np.int64)


#: agreement strength of the fake predictions with the labels, one per fake batch
AGREEMENT = (0.5, 2.0, 1.0, 3.0)


def weighting_batches() -> list[dict]:
    """Fake batches for the class-weighting strategies: ``logits_l`` (N_L, C, *PATCH) that agree
    with ``label_l`` to a varying degree, and ``logits_u`` (N_U, C, *PATCH) with a class bias."""
    out = []
    for k, a in enumerate(AGREEMENT):
        g = _gen("weighting", k)
        label = skewed_labels(N_L, 700 + k)
        onehot = torch.nn.functional.one_hot(label, NUM_CLASSES).movedim(-1, 1).float()
        logits_l = torch.randn(N_L, NUM_CLASSES, *PATCH, generator=g) + a * onehot
        bias = torch.linspace(1.5, -1.5, NUM_CLASSES).roll(k).view(1, -1, 1, 1, 1)
        logits_u = torch.randn(N_U, NUM_CLASSES, *PATCH, generator=g) + bias
        out.append({"logits_l": logits_l, "label_l": label, "logits_u": logits_u})
    return out


def loss_inputs() -> dict:
    """Logits of two networks (N_L + N_U images), labels of the first N_L, two class-weight vectors."""
    g = _gen("loss")
    label = skewed_labels(N_L, 900)
    return {
        "out_A": torch.randn(N_L + N_U, NUM_CLASSES, *PATCH, generator=g, dtype=torch.float64).float(),
        "out_B": torch.randn(N_L + N_U, NUM_CLASSES, *PATCH, generator=g, dtype=torch.float64).float(),
        "label_l": label,
        "w_A": 0.5 + torch.rand(NUM_CLASSES, generator=g) * NUM_CLASSES,
        "w_B": 0.5 + torch.rand(NUM_CLASSES, generator=g) * NUM_CLASSES,
    }


_SAMPLES = 6


def checksum(t: torch.Tensor) -> dict:
    """sum, sum of squares and a few evenly spaced values of ``t`` (flattened)."""
    f = t.detach().double().reshape(-1)
    idx = torch.linspace(0, f.numel() - 1, _SAMPLES).round().long()
    return {"sum": float(f.sum()), "sumsq": float((f * f).sum()), "samples": [float(v) for v in f[idx]]}


def grads_checksum(named_params, map_name=None) -> dict:
    """Checksum of all gradients of ``named_params`` (name, parameter), concatenated in sorted
    suite-name order (None gradients counted as zeros)."""
    items = sorted(((map_name(n) if map_name else n), p) for n, p in named_params)
    return checksum(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for _, p in items]))


def state_checksum(net: torch.nn.Module, map_name=None) -> dict:
    """Checksums of a V-Net's parameters and buffers, keyed by suite name, concatenated in
    sorted suite-name order (so released and suite networks compare)."""
    sd = {(map_name(k) if map_name else k): v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    params = {n for n, _ in net.named_parameters()}
    params = {(map_name(k) if map_name else k) for k in params}
    keys = sorted(sd)
    return {
        "params": checksum(torch.cat([sd[k].reshape(-1).double() for k in keys if k in params])),
        "buffers": checksum(torch.cat([sd[k].reshape(-1).double() for k in keys if k not in params])),
    }


def delta_checksum(net: torch.nn.Module, seed: int, map_name=None) -> dict:
    """Checksum of (parameters - their :func:`tensor_for` values at ``seed``): what the optimiser
    changed, concatenated in sorted suite-name order."""
    items = sorted(((map_name(n) if map_name else n), p) for n, p in net.named_parameters())
    return checksum(torch.cat([(p.detach() - tensor_for(n, p, seed)).reshape(-1) for n, p in items]))


def layer_type_stats(net: torch.nn.Module) -> dict:
    """Init statistics per layer type and tensor: pooled mean, E[w^2 fan_in] (Kaiming-normal: 2;
    PyTorch's default: 1/3), E[w^2 (fan_in + fan_out) / 2] (Xavier-normal: 1) and the share of
    exact zeros. fan_in / fan_out as ``torch.nn.init`` computes them for the weight."""
    acc: dict[str, list] = {}
    for m in net.modules():
        kind = type(m).__name__
        if kind not in ("Conv3d", "ConvTranspose3d", "BatchNorm3d"):
            continue
        fi, fo = torch.nn.init._calculate_fan_in_and_fan_out(m.weight) if m.weight.dim() > 1 else (1, 1)
        for pname in ("weight", "bias"):
            p = getattr(m, pname)
            if p is None:
                continue
            v = p.detach().double().reshape(-1)
            a = acc.setdefault(f"{kind}.{pname}", [0.0, 0.0, 0.0, 0, 0])
            a[0] += float(v.sum())
            a[1] += float((v * v).sum()) * fi
            a[2] += float((v * v).sum()) * (fi + fo) / 2
            a[3] += int((v == 0).sum())
            a[4] += v.numel()
    return {k: {"mean": a[0] / a[4], "m2_fan_in": a[1] / a[4], "m2_fan_avg": a[2] / a[4], "zero_share": a[3] / a[4], "n": a[4]}
            for k, a in sorted(acc.items())}
