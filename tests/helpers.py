"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.config import TrainConfig
from bench.core.registry import METHODS, PROTOCOLS
from bench.train import RunSpec
from datasets.splits import draw_split
from methods.base import MethodContext

TINY_TRAIN = dict(iterations=4, patch=(16, 32, 32), width=4, val_every=2, ckpt_every=2, log_every=1, timing_warmup=1)


def tiny_spec(dataset, method: str, run_dir: Path, hparams=None, **train) -> RunSpec:
    p = dataset.partition
    split = draw_split(p["train"], p["eval"], p["test"], 0.34, seed=0)
    return RunSpec(
        method_name=method,
        method_cls=METHODS.get(method),
        hparams=hparams or {},
        train=TrainConfig(**{**TINY_TRAIN, **train}),
        dataset=dataset,
        protocol=PROTOCOLS.get("default")(),
        split=split,
        seed=0,
        device=torch.device("cpu"),
        run_dir=Path(run_dir),
        progress=False,
    )


def tiny_context(num_classes: int = 14, patch=(16, 32, 32), width: int = 4, **kw) -> MethodContext:
    import numpy as np

    from bench.core.labels import BTCV_13

    kw.setdefault("labeled_voxel_counts", (100_000 / (np.arange(num_classes) + 1) ** 2).astype(np.int64))
    return MethodContext(num_classes=num_classes, class_names=BTCV_13[:num_classes], patch_size=patch, width=width,
                         iterations=10, **kw)


def random_batch(ctx: MethodContext, n_l: int = 2, n_u: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (ctx.in_channels, *ctx.patch_size)
    labeled = {
        "image": torch.rand(n_l, *shape, generator=g),
        "label": torch.randint(0, ctx.num_classes, (n_l, *ctx.patch_size), generator=g),
    }
    unlabeled = {"image": torch.rand(n_u, *shape, generator=g)} if n_u else None
    return labeled, unlabeled
