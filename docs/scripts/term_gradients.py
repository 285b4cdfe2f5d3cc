"""How strongly each supervised term of magicnet and ga pulls on small organs (issue #19).

For one labeled patch of the quick phantom, centred on the left adrenal gland, this prints the
mean |d term / d logit| per voxel over the voxels of small organs (adrenal glands, gallbladder,
esophagus) and over the liver, for MagicNet's mean CE and soft Dice and GALoss' GA-CE and
GA-Dice, with the network at PyTorch's default initialisation (``--ckpt`` to load a run's
``best.pt`` instead). Each term enters the step with weight 1/4 (``(CE + Dice + Dice_unmix +
Dice_local) / 4``), so the per-term numbers compare as they are.

    BENCH_CACHE=/tmp/bc python docs/scripts/term_gradients.py [--ckpt RUN/best.pt] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.registry import PROTOCOLS
from bench.runner import load_dataset
from methods.base import MethodContext
from methods.ga_loss import ga_ce, ga_dice
from methods.magicnet import MagicNet

SMALL = ("left adrenal gland", "right adrenal gland", "gallbladder", "esophagus")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--case", default="case_0004")  # a labeled case of labeled_10p (seed 0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    ds = load_dataset("phantom", "quick", None)
    proto = PROTOCOLS.get("default")(None)
    image = proto.prepare_image(ds.load_image(args.case))
    label = proto.prepare_label(np.asarray(ds.load_label(args.case)))
    names = tuple(ds.labels)
    # a 32x64x64 patch (the quick preset's) centred on the left adrenal gland
    zc, yc, xc = (int(v.mean()) for v in np.nonzero(label == names.index("left adrenal gland")))
    sl = tuple(slice(max(0, min(c - p // 2, s - p)), max(0, min(c - p // 2, s - p)) + p)
               for c, p, s in zip((zc, yc, xc), (32, 64, 64), label.shape))
    x = torch.from_numpy(image[sl]).float()[None, None]
    y = torch.from_numpy(label[sl]).long()[None]
    ctx = MethodContext(num_classes=len(names), class_names=names, patch_size=(32, 64, 64), width=8)
    method = MagicNet(ctx)
    if args.ckpt:
        state = torch.load(args.ckpt, map_location="cpu", weights_only=True)
        method.networks["net"].load_state_dict(state["modules"]["net"])
    net = method.networks["net"]
    with torch.no_grad():
        feats = net.encode(x)
        logits0 = net.segment(feats, net.decode(feats), net.head_condition())
    small = torch.zeros_like(y, dtype=torch.bool)
    for n in SMALL:
        small |= y == names.index(n)
    liver = y == names.index("liver")
    print(f"patch {tuple(x.shape[2:])}: small-organ voxels {int(small.sum())}, liver voxels {int(liver.sum())}")
    terms = {
        "magicnet CE (mean)": lambda z: F.cross_entropy(z, y),
        "magicnet Dice": lambda z: ga_dice(torch.softmax(z, 1), y, gradient_aware=False),
        "ga GA-CE": lambda z: ga_ce(z, y),
        "ga GA-Dice": lambda z: ga_dice(torch.softmax(z, 1), y, gradient_aware=True),
    }
    print(f"{'term':22s} {'small |g|/voxel':>16s} {'liver |g|/voxel':>16s} {'small/liver':>12s}")
    for name, fn in terms.items():
        z = logits0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(z), z)
        per_voxel = g.abs().sum(1)[0]  # (D, H, W): summed over classes
        s, l_ = float(per_voxel[small[0]].mean()), float(per_voxel[liver[0]].mean())
        print(f"{name:22s} {s:16.3e} {l_:16.3e} {s / l_:12.2f}")


if __name__ == "__main__":
    main()
