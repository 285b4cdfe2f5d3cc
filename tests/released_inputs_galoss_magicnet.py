"""Deterministic inputs and weights shared by ``docs/scripts/released/galoss_magicnet_goldens.py``
(which runs the released GALoss / MagicNet code on them) and ``tests/test_released_galoss_magicnet.py``
(which runs the suite on them). No weights are stored: every tensor is drawn from a seed and a name.

Weights are drawn per *released* parameter name (the suite's names go through :data:`SUITE_TO_RELEASED`),
uniform in +-1/sqrt(fan_in) (PyTorch's default bound), BatchNorm weight 1 + 0.1 u and bias 0.1 u.
"""

from __future__ import annotations

import zlib

import torch

NUM_CLASSES = 14
PATCH = (64, 64, 64)  # smallest cubic patch with a 2x2x2 grid of 32^3 cubes (cube >= 32: InstanceNorm at the bottleneck)
CUBE = 32
WIDTH = 16  # the released VNet_Magic / FcLayer / nb_chnls=16 only run at width 16
LABELED_BS = 1
BATCH = 2
BASE_LR = 0.01
STEPS = 2
STEP_SEED = 4321
ABSENT = (3, 9, 12)  # classes absent from every label map (GADice's suppression branch)

# -- explicit weight map: released VNet_Magic name prefix -> suite MagicNetwork name prefix -------------
_BLOCKS = {
    "encoder.block_one.conv": "backbone.enc.0",
    "encoder.block_two.conv": "backbone.enc.1",
    "encoder.block_three.conv": "backbone.enc.2",
    "encoder.block_four.conv": "backbone.enc.3",
    "encoder.block_five.conv": "backbone.enc.4",
    "encoder.block_one_dw.conv": "backbone.down.0",
    "encoder.block_two_dw.conv": "backbone.down.1",
    "encoder.block_three_dw.conv": "backbone.down.2",
    "encoder.block_four_dw.conv": "backbone.down.3",
    "decoder.block_five_up.conv": "backbone.up.0",
    "decoder.block_six_up.conv": "backbone.up.1",
    "decoder.block_seven_up.conv": "backbone.up.2",
    "decoder.block_eight_up.conv": "backbone.up.3",
    "decoder.block_six.conv": "backbone.dec.0",
    "decoder.block_seven.conv": "backbone.dec.1",
    "decoder.block_eight.conv": "backbone.dec.2",
    "decoder.block_nine.conv": "backbone.dec.3",
    "decoder.out_conv": "head.out_conv",
    "fc_layer.fc_layer": "fc",
}
# convolutions per block: (conv, InstanceNorm, ReLU) x stages -> conv at Sequential index 0, 3, 6
_STAGES = {"block_one.": 1, "block_two.": 2, "block_three.": 3, "block_four.": 3, "block_five.": 3,
           "block_six.": 3, "block_seven.": 3, "block_eight.": 2, "block_nine.": 1}


def _build_map() -> dict[str, str]:
    m: dict[str, str] = {}
    for rel, ours in _BLOCKS.items():
        if rel.endswith("_dw.conv") or rel.endswith("_up.conv"):
            idx = [0]
        elif rel == "decoder.out_conv":
            m["decoder.out_conv.weight"], m["decoder.out_conv.bias"] = "head.out_conv.weight", "head.out_conv.bias"
            continue
        elif rel == "fc_layer.fc_layer":
            # released Linear(2048, 4096) has a bias, the suite's none (it feeds BatchNorm1d): not mapped
            for r, o in (("0.weight", "0.weight"), ("1.weight", "1.weight"), ("1.bias", "1.bias"), ("3.weight", "3.weight"),
                         ("3.bias", "3.bias")):
                m[f"{rel}.{r}"] = f"{ours}.{o}"
            continue
        else:
            stages = next(v for k, v in _STAGES.items() if f".{k}" in rel + ".")
            idx = [3 * i for i in range(stages)]
        for i in idx:
            for p in ("weight", "bias"):
                m[f"{rel}.{i}.{p}"] = f"{ours}.{i}.{p}"
    return m


#: released parameter name -> suite parameter name (``fc_layer.fc_layer.0.bias`` has no suite counterpart)
RELEASED_TO_SUITE: dict[str, str] = _build_map()
SUITE_TO_RELEASED: dict[str, str] = {v: k for k, v in RELEASED_TO_SUITE.items()}
RELEASED_ONLY = ("fc_layer.fc_layer.0.bias",)


def _gen(name: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed((zlib.crc32(name.encode()) + 7919 * seed) % (2**63))


def param_tensor(name: str, shape, seed: int = 0) -> torch.Tensor:
    """The weight of released parameter ``name``: uniform +-1/sqrt(fan_in); BatchNorm 1 + 0.1u / 0.1u."""
    g = _gen(name, seed)
    u = torch.rand(tuple(shape), generator=g, dtype=torch.float64) * 2 - 1
    if name.startswith("fc_layer.fc_layer.1."):  # BatchNorm1d
        return (1 + 0.1 * u if name.endswith("weight") else 0.1 * u).float()
    if name.endswith("bias"):
        return (0.05 * u).float()
    fan_in = shape[1] if len(shape) == 2 else shape[1] * int(torch.tensor(shape[2:]).prod())
    if ".up.conv." in name or "_up.conv." in name:  # ConvTranspose3d weight (in, out, k..): fan_in of the transposed op
        fan_in = shape[0] * int(torch.tensor(shape[2:]).prod())
    return (u / fan_in**0.5).float()


@torch.no_grad()
def load_released(model: torch.nn.Module, seed: int = 0) -> None:
    """Fill a released ``VNet_Magic`` with the deterministic weights."""
    for name, p in model.named_parameters():
        p.copy_(param_tensor(name, p.shape, seed))


@torch.no_grad()
def load_suite(net: torch.nn.Module, seed: int = 0) -> None:
    """Fill the suite's ``MagicNetwork`` with the same weights (by the explicit name map)."""
    for name, p in net.named_parameters():
        p.copy_(param_tensor(SUITE_TO_RELEASED[name], p.shape, seed))


def image(batch: int, seed: int, shape=PATCH) -> torch.Tensor:
    """(batch, 1, D, H, W) in [0, 1]."""
    return torch.rand(batch, 1, *shape, generator=torch.Generator().manual_seed(seed))


def labels(batch: int, seed: int, shape=PATCH, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(batch, D, H, W) int64: boxes of the present classes on background; :data:`ABSENT` never occur."""
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(batch, *shape, dtype=torch.long)
    present = [c for c in range(1, num_classes) if c not in ABSENT]
    for b in range(batch):
        for c in present:
            lo = [int(torch.randint(0, s - s // 4, (1,), generator=g)) for s in shape]
            ext = [int(torch.randint(2, max(3, s // 4), (1,), generator=g)) for s in shape]
            y[b, lo[0]:lo[0] + ext[0], lo[1]:lo[1] + ext[1], lo[2]:lo[2] + ext[2]] = c
    return y


def logits(shape, seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def step_batch(k: int):
    """Step ``k``'s batch: labeled image (1, 1, 64^3), its labels (1, 64^3), unlabeled image (1, 1, 64^3)."""
    return image(LABELED_BS, 100 + k), labels(LABELED_BS, 200 + k), image(BATCH - LABELED_BS, 300 + k)


def sample_idx(n: int) -> list[int]:
    return sorted({0, n // 7, n // 3, n // 2, (2 * n) // 3, n - 1})


def checksum(t: torch.Tensor) -> dict:
    """sum, sum of squares, a position-weighted sum and a few sampled values of ``t`` (float64)."""
    f = t.detach().double().reshape(-1)
    w = (torch.arange(f.numel(), dtype=torch.float64) % 13) - 6
    return {"sum": float(f.sum()), "sumsq": float((f * f).sum()), "wsum": float((f * w).sum()),
            "samples": [float(f[i]) for i in sample_idx(f.numel())]}


def label_digest(y: torch.Tensor, num_classes: int = NUM_CLASSES) -> dict:
    """Class histogram and a position-weighted sum of an integer map."""
    f = y.reshape(-1).long()
    w = torch.arange(f.numel()) % 97
    return {"hist": torch.bincount(f, minlength=num_classes).tolist(), "weighted": int((f * w).sum())}


#: parameters whose weights after the optimiser steps are compared (released names)
TRACKED = ("encoder.block_one.conv.0.weight", "encoder.block_three.conv.3.weight", "encoder.block_five.conv.6.bias",
           "decoder.block_five_up.conv.0.weight", "decoder.block_nine.conv.0.weight", "decoder.out_conv.weight",
           "decoder.out_conv.bias", "fc_layer.fc_layer.0.weight", "fc_layer.fc_layer.1.weight", "fc_layer.fc_layer.3.bias")
