"""Deterministic inputs, weights and checksums for the SSL4MIS (HiLab-git/SSL4MIS) goldens.

Shared by ``docs/scripts/released/ssl4mis_goldens.py`` (which runs the released code and writes
``tests/golden/released/ssl4mis.json``) and ``tests/test_released_ssl4mis.py`` (which drives the
suite with the same inputs). Nothing here is released code: every tensor is drawn from a
``torch.Generator`` seeded by a CRC32 of its name, so no weights are stored.

The network is a tiny 3D CNN (conv 3x3x3 -> ReLU -> conv 1x1x1), a named substitution for
SSL4MIS' ``unet_3D`` (the suite's backbone is a V-Net): the goldens check the losses, the
optimiser, the schedules and the EMA around a network, not the network.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

#: the released Mean Teacher 3D script: 2 classes, batch 4 of which 2 labeled
NUM_CLASSES = 2
BATCH = 4
LABELED_BS = 2
SHAPE = (8, 8, 8)
BASE_LR = 0.01
EMA_DECAY = 0.99
CONSISTENCY = 0.1
#: iterations of the released loop run for the golden (steps 0..2 are compared weight by weight)
LOOP_ITERATIONS = 300
COMPARED_STEPS = 3
#: the released run: 30,000 iterations, ramp over ``iter // 150`` up to 200 "epochs"
RELEASED_ITERATIONS = 30000
#: steps at which the consistency weight and the poly lr are compared
STEP_SAMPLES = (0, 1, 2, 75, 149, 150, 151, 299, 300, 1000, 7499, 7500, 7501, 15000, 22649, 22650, 29849, 29850, 29999, 30000, 31000)
#: (current, length) pairs for ``sigmoid_rampup``
RAMPUP_SAMPLES = ((0, 200), (1, 200), (50, 200), (100.5, 200), (199, 200), (200, 200), (250, 200), (-3, 200), (3, 0), (0.25, 1.0))
#: EMA update: (step, decay) applied in sequence to the teacher
EMA_SEQUENCE = ((0, 0.99), (1, 0.99), (2, 0.99), (7, 0.99), (150, 0.99), (3, 0.5))
#: (batch, classes) of the loss cases
LOSS_CASES = ((2, 2), (2, 5), (1, 3))


def seed_of(name: str) -> int:
    """A seed from a name (CRC32)."""
    return zlib.crc32(name.encode())


def randn(name: str, shape, scale: float = 1.0) -> torch.Tensor:
    """Standard normal tensor (float32) drawn from the generator seeded by ``name``."""
    g = torch.Generator().manual_seed(seed_of(name))
    return torch.randn(tuple(shape), generator=g) * scale


def randint(name: str, high: int, shape) -> torch.Tensor:
    """Integers in [0, high) (int64) drawn from the generator seeded by ``name``."""
    g = torch.Generator().manual_seed(seed_of(name))
    return torch.randint(0, high, tuple(shape), generator=g)


class TinyNet(nn.Module):
    """conv 3x3x3 (1 -> width) -> ReLU -> conv 1x1x1 (width -> classes); no dropout, no norm."""

    def __init__(self, in_channels: int = 1, num_classes: int = NUM_CLASSES, width: int = 4):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, width, 3, padding=1)
        self.conv2 = nn.Conv3d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


def tiny_net(name: str, num_classes: int = NUM_CLASSES, width: int = 4) -> TinyNet:
    """A :class:`TinyNet` whose parameters are drawn from ``name`` (std 0.3)."""
    net = TinyNet(num_classes=num_classes, width=width)
    with torch.no_grad():
        for pname, p in net.named_parameters():
            p.copy_(randn(f"{name}/{pname}", p.shape, 0.3))
    return net


def case(index: int, shape=SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (1, D, H, W) float32 and label (D, H, W) int64 in {0, 1} of training case ``index``."""
    image = randn(f"case{index}/image", (1, *shape))
    label = (image[0] + randn(f"case{index}/label", shape, 0.5) > 0.3).long()
    return image, label


def batch(step: int, shape=SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of ``step``: cases 4 step .. 4 step + 3 stacked, images (4, 1, ...) and labels (4, ...);
    the first ``LABELED_BS`` are the labeled ones."""
    cases = [case(BATCH * step + j, shape) for j in range(BATCH)]
    return torch.stack([c[0] for c in cases]), torch.stack([c[1] for c in cases])


def noise_seed(step: int) -> int:
    """Global torch seed set just before step ``step`` (its only random draw is the teacher noise)."""
    return seed_of(f"noise/{step}")


def loss_inputs(b: int, c: int, shape=SHAPE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits (b, c, ...), teacher logits and labels (b, ...) of a loss case."""
    name = f"loss/{b}x{c}"
    return randn(f"{name}/logits", (b, c, *shape), 2.0), randn(f"{name}/teacher", (b, c, *shape), 2.0), randint(f"{name}/labels", c, (b, *shape))


def checksum(t: torch.Tensor, k: int = 5) -> dict:
    """Sum, sum of squares (float64) and ``k`` values at evenly spaced flat indices."""
    flat = t.detach().double().flatten()
    idx = torch.linspace(0, flat.numel() - 1, min(k, flat.numel())).long()
    return {"sum": float(flat.sum()), "sumsq": float((flat * flat).sum()), "sample": [float(v) for v in flat[idx]]}


def net_checksums(net: nn.Module) -> dict:
    """:func:`checksum` of every parameter of ``net`` by name."""
    return {name: checksum(p) for name, p in net.named_parameters()}
