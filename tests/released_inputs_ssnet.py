"""Deterministic inputs and weights shared by ``docs/scripts/released/dhc_ssnet_goldens.py`` (which
runs DHC's released ``train_ssnet.py`` / ``VNet4SSNet``) and ``tests/test_released_ssnet.py``
(which runs the suite's ``ss_net``).

Nothing here is released code: the name map from ``VNet4SSNet``'s parameters to
``methods.ss_net.SSNetVNet``'s (the backbone through ``released_inputs_dhc.VNET_PREFIX_MAP``, the
heads below), values as functions of a seed and the suite name, and the fixed inputs. Batches,
labels and checksums are ``released_inputs_dhc``'s.
"""

from __future__ import annotations

import math
import re

import torch

from tests import released_inputs_dhc as ri

NUM_CLASSES, PATCH, WIDTH = ri.NUM_CLASSES, ri.PATCH, ri.WIDTH
LR = ri.LR
CPS_W = 1.0  # train_ssnet.py's argparse default -w 1: the unsupervised terms weigh as much as the Dice
WEIGHT_SEED = 31  # seed of the network's values
STEP_SEED = 100  # torch.manual_seed before the step's first forward (dropout masks, VAT's random direction)

#: VNet4SSNet head prefix (code/models/vnet.py:213-244) -> SSNetVNet's (methods/ss_net.py)
_HEADS = (
    (re.compile(r"^projection_head\."), "projection_head."),
    (re.compile(r"^prediction_head\."), "prediction_head."),
    (re.compile(r"^contrastive_class_selector_memory(\d+)\."), r"memory_selectors.\1."),
    (re.compile(r"^contrastive_class_selector_(\d+)\."), r"selectors.\1."),
)

#: parameter groups by suite-name prefix, for per-group gradient and update checksums
GROUPS = {"backbone": ("enc.", "down.", "up.", "dec.", "out_conv."), "projection_head": ("projection_head.",),
          "prediction_head": ("prediction_head.",), "selectors": ("selectors.",), "memory_selectors": ("memory_selectors.",)}


def suite_name(released_name: str) -> str:
    """The suite's state-dict key of a ``VNet4SSNet`` state-dict key."""
    for pat, repl in _HEADS:
        if pat.match(released_name):
            return pat.sub(repl, released_name, count=1)
    return ri.suite_name(released_name)


def group_of(name: str) -> str:
    """The group (:data:`GROUPS`) of a suite parameter name."""
    hits = [g for g, prefixes in GROUPS.items() if name.startswith(prefixes)]
    if len(hits) != 1:
        raise KeyError(f"no unique group for {name!r}: {hits}")
    return hits[0]


def tensor_for(name: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    """Deterministic value of suite parameter / buffer ``name``: Linear weights (2-d) ~ N(0, 1 / fan_in),
    everything else as ``released_inputs_dhc.tensor_for`` (conv, BatchNorm, biases)."""
    if like.dim() == 2:
        r = torch.randn(tuple(like.shape), generator=ri._gen("w", name, seed), dtype=torch.float64)
        return (r / math.sqrt(like.shape[1])).to(like.dtype)
    return ri.tensor_for(name, like, seed)


def fill_suite(net: torch.nn.Module, seed: int = WEIGHT_SEED) -> None:
    """Set every parameter and buffer of an ``SSNetVNet`` from ``seed`` and its name."""
    net.load_state_dict({k: tensor_for(k, v, seed) for k, v in net.state_dict().items()})


def fill_released(net: torch.nn.Module, seed: int = WEIGHT_SEED) -> None:
    """Set a ``VNet4SSNet`` to the values :func:`fill_suite` gives the suite's (names mapped)."""
    net.load_state_dict({k: tensor_for(suite_name(k), v, seed) for k, v in net.state_dict().items()})


def grads_by_group(named_params, grads=None, map_name=None) -> dict:
    """Checksums (``released_inputs_dhc.checksum``) of the gradients per :data:`GROUPS` group, in
    sorted suite-name order; ``grads``: gradients in the order of ``named_params`` (default:
    each parameter's ``.grad``); None counted as zeros."""
    items = list(named_params)
    grads = [p.grad for _, p in items] if grads is None else list(grads)
    rows: dict[str, list] = {g: [] for g in GROUPS}
    for (n, p), g in zip(items, grads):
        s = map_name(n) if map_name else n
        rows[group_of(s)].append((s, (g if g is not None else torch.zeros_like(p)).detach().reshape(-1)))
    return {g: ri.checksum(torch.cat([v for _, v in sorted(r, key=lambda t: t[0])])) for g, r in rows.items()}


def delta_by_group(net: torch.nn.Module, seed: int = WEIGHT_SEED, map_name=None) -> dict:
    """Checksums per group of (parameters - their :func:`tensor_for` values): what the optimiser changed."""
    rows: dict[str, list] = {g: [] for g in GROUPS}
    for n, p in net.named_parameters():
        s = map_name(n) if map_name else n
        rows[group_of(s)].append((s, (p.detach() - tensor_for(s, p, seed)).reshape(-1)))
    return {g: ri.checksum(torch.cat([v for _, v in sorted(r, key=lambda t: t[0])])) for g, r in rows.items()}


def contrast_inputs() -> dict:
    """Inputs of the isolated class-separation check: predicted features (V, 2 WIDTH) with labels
    over 4 classes (class 3 with a single voxel, class 0 without memory) and a memory with rows
    for classes 1, 2 and 3 (class 2: 32 rows)."""
    g = ri._gen("ssnet-contrast")
    f = 2 * WIDTH
    labels = torch.tensor([0] * 5 + [1] * 7 + [2] * 6 + [3])
    return {
        "features": torch.randn(labels.numel(), f, generator=g),
        "labels": labels,
        "memory": [None, torch.randn(5, f, generator=g), torch.randn(32, f, generator=g), torch.randn(3, f, generator=g)],
    }


def memory_inputs() -> dict:
    """Inputs of the isolated memory update: projected features (V, 2 WIDTH) and labels with a class
    above the 32-row limit (class 1: 40), one below (class 2: 5) and an absent one (class 3)."""
    g = ri._gen("ssnet-memory")
    labels = torch.tensor([1] * 40 + [2] * 5 + [0] * 3)[torch.randperm(48, generator=g)]
    return {"features": torch.randn(labels.numel(), 2 * WIDTH, generator=g), "labels": labels}
