"""Deterministic inputs and weights shared by ``docs/scripts/released/skcdf_goldens.py`` (which runs
SKCDF's released code, yinguanchun/SKCDF) and ``tests/test_released_skcdf.py`` (which runs the suite).

Nothing here is released code: seeds, shapes, the name map between the released
``VNet_Decouple_Attention_ABC`` (``SKCDF/code/models/SKCDF.py``) and the suite's
:class:`methods.skcdf.SKCDFNet`, and value generators. The V-Net parts of the map and the
checksum helpers are ``tests/released_inputs_dhc.py``'s.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tests import released_inputs_dhc as ri

NUM_CLASSES = ri.NUM_CLASSES
#: the release's patch: its attention blocks hard-code a 4x8x8 bottleneck (256 global tokens,
#: ``d=2, h=4, w=4`` local positions), so the whole-network goldens run at 64x128x128
PATCH = (64, 128, 128)
BOTTLENECK = (4, 8, 8)
NF = 2  # n_filters: bottleneck channels c = 16 NF = 32
N_L = N_U = 2  # the release hard-codes b=2 images per half in the local cross-attention
HEADS = 2
LR = 0.05
WEIGHT_DECAY = 3e-5
CPS_W = 10.0
EMA_W = 0.99
MAX_EPOCH = 10  # -ep of the step golden
EPOCH = 3  # the step golden runs in this epoch (keep-ratio anneal 0.3, weight and lr of epoch 2)
EPOCH_LENGTH = 2  # suite iterations per epoch in the comparison (n_unlabeled 4 / unlabeled_bs 2)
N_LABELED_CASES = 5  # fake labeled set; the release counts classes over the first 4 (num_sample)
CASE_SHAPE = (8, 16, 16)

_BLOCKS = {"cross_attention_local.": "local_attn.", "cross_attention_global.": "global_attn."}
_HEADS = {"out_conv9.": "out_conv.", "out_conv9_abc.": "out_conv_abc."}


def suite_name(name: str) -> str | None:
    """The suite's ``SKCDFNet`` key of a released ``VNet_Decouple_Attention_ABC`` key; None for the
    release's unused ``token_learner.map_in`` convolutions."""
    if name.startswith("encoder."):
        return ri.suite_name(name[len("encoder."):])
    for dec in ("decoder_l.", "decoder_u."):
        if name.startswith(dec):
            rest = name[len(dec):]
            for rel, suite in _HEADS.items():
                if rest.startswith(rel):
                    return "dec_" + dec[-2] + "." + suite + rest[len(rel):]
            return "dec_" + dec[-2] + "." + ri.suite_name(rest)
    for rel, suite in _BLOCKS.items():
        if name.startswith(rel):
            rest = name[len(rel):]
            if rest.startswith("token_learner.map_in."):
                return None
            return suite + rest.replace("token_learner.proj.", "token.")
    raise KeyError(f"no suite name for released parameter {name!r}")


def tensor_for(name: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    """Deterministic value of the suite tensor ``name``: ``ri.tensor_for``, except Linear weights
    (N(0, 1 / fan_in)) and transposed convolutions (fan_in = input channels x 8)."""
    if like.dim() == 2 or (like.dim() == 5 and ".up." in name and name.endswith("weight")):
        r = torch.randn(tuple(like.shape), generator=ri._gen("w", name, seed), dtype=torch.float64)
        fan_in = like.shape[1] if like.dim() == 2 else like.shape[0] * math.prod(like.shape[2:])
        return (r * math.sqrt((1.0 if like.dim() == 2 else 2.0) / fan_in)).to(like.dtype)
    return ri.tensor_for(name, like, seed)


def fill_suite(net: torch.nn.Module, seed: int, prefix: str = "") -> None:
    """Every parameter and buffer of a suite network (or block, named under ``prefix``) from ``seed``."""
    sd = net.state_dict()
    net.load_state_dict({k: tensor_for(prefix + k, v, seed) for k, v in sd.items()})


def fill_released(net: torch.nn.Module, seed: int, prefix: str = "") -> None:
    """A released network (or block, named under the released ``prefix``) set to the same values
    as :func:`fill_suite`; the unused ``map_in`` convolutions get zeros."""
    sd = net.state_dict()
    out = {}
    for k, v in sd.items():
        s = suite_name(prefix + k)
        out[k] = torch.zeros_like(v) if s is None else tensor_for(s, v, seed)
    net.load_state_dict(out)


def block_prefix(suite_prefix: str) -> str:
    """The released prefix of a suite block prefix ("local_attn." -> "cross_attention_local.")."""
    return {v: k for k, v in _BLOCKS.items()}[suite_prefix]


def skewed_labels(n: int, seed: int, shape=PATCH) -> torch.Tensor:
    """(n, *shape) labels with imbalanced classes (probability ~ 1 / (c + 1)^1.5)."""
    g = ri._gen("skcdf-labels", n, seed, tuple(shape))
    p = 1.0 / (torch.arange(NUM_CLASSES, dtype=torch.float64) + 1) ** 1.5
    return torch.multinomial(p, n * math.prod(shape), replacement=True, generator=g).reshape(n, *shape).long()


def step_batch(seed: int = 0) -> dict:
    """``image_l`` (N_L, 1, *PATCH), ``label_l`` (N_L, *PATCH), ``image_u`` (N_U, 1, *PATCH)."""
    g = ri._gen("skcdf-batch", seed)
    image = torch.rand(N_L + N_U, 1, *PATCH, generator=g)
    return {"image_l": image[:N_L].clone(), "label_l": skewed_labels(N_L, seed), "image_u": image[N_L:].clone()}


def labeled_cases() -> list[np.ndarray]:
    """Label volumes of a fake labeled set (:data:`N_LABELED_CASES` cases)."""
    return [skewed_labels(1, 300 + i, CASE_SHAPE)[0].numpy() for i in range(N_LABELED_CASES)]


def counts(cases: list[np.ndarray]) -> np.ndarray:
    """Voxel count per class over ``cases`` (what ``ctx.labeled_voxel_counts`` holds)."""
    return sum(np.bincount(c.reshape(-1), minlength=NUM_CLASSES) for c in cases).astype(np.int64)


def bottleneck_input(seed: int = 0) -> torch.Tensor:
    """(N_L + N_U, 16 NF, *BOTTLENECK) encoder maps x5 for the attention blocks."""
    return torch.randn(N_L + N_U, 16 * NF, *BOTTLENECK, generator=ri._gen("skcdf-x5", seed))


def block_loss_weights(batch: int) -> torch.Tensor:
    """Fixed weights of the blocks' test loss sum(w * out) (batch, 16 NF, *BOTTLENECK)."""
    return torch.randn(batch, 16 * NF, *BOTTLENECK, generator=ri._gen("skcdf-block-loss", batch))


def mask_inputs() -> dict:
    """Logits (N_L, C, 16^3), labels and a 0/1 mask (N_L, 1, 16^3) for the masked DC_and_CE."""
    inp = ri.loss_inputs()
    g = ri._gen("skcdf-mask")
    mask = torch.bernoulli(torch.full((ri.N_L, 1, *ri.PATCH), 0.6, dtype=torch.float64), generator=g)
    return {"logits": inp["out_A"][: ri.N_L], "label": inp["label_l"], "mask": mask}


def module_stats(net: torch.nn.Module) -> dict:
    """``ri.layer_type_stats`` with Linear layers too (E[w^2 (fan_in + fan_out) / 2]: 1 for Xavier)."""
    out = ri.layer_type_stats(net)
    w = [m.weight.detach().double() for m in net.modules() if type(m) is torch.nn.Linear]
    if w:
        n = sum(t.numel() for t in w)
        out["Linear.weight"] = {
            "mean": float(sum(t.sum() for t in w)) / n,
            "m2_fan_in": float(sum((t * t).sum() * t.shape[1] for t in w)) / n,
            "m2_fan_avg": float(sum((t * t).sum() * (t.shape[0] + t.shape[1]) / 2 for t in w)) / n,
            "zero_share": float(sum((t == 0).sum() for t in w)) / n, "n": n}
    return out


def checksum(t: torch.Tensor) -> dict:
    """``ri.checksum`` with the sample positions computed in float64 (float32 positions overrun
    tensors of ~6e7 values, the whole-network outputs here)."""
    f = t.detach().double().reshape(-1)
    idx = torch.linspace(0, f.numel() - 1, 6, dtype=torch.float64).round().long()
    return {"sum": float(f.sum()), "sumsq": float((f * f).sum()), "samples": [float(v) for v in f[idx]]}
