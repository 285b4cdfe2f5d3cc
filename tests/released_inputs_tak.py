"""Fixed inputs, fixed weights and tensor summaries shared by ``docs/scripts/released/tak_goldens.py``
(which runs TAK's released code, Lunn88/TAK-Semi, on them) and ``tests/test_released_tak.py``
(which runs the suite on them; issue #30, part 3).

Nothing here depends on a random number generator: values come from an integer hash of the
element index and a seed, so the script (with any torch) and the tests (with the pinned torch)
build bit-identical inputs and weights. The golden stores the recipe of every input
(:func:`recipe`, :func:`labels_recipe`; :func:`build` makes the tensor) and holds numbers only: a
tensor is stored as its :func:`summary` (sums, three projections on fixed weights, which see any
permutation of the elements, and a few elements), never whole. Weights are set by *released*
parameter name (:func:`fill`); :func:`released_name` maps the suite's ``TAKNetwork`` names.
"""

from __future__ import annotations

import math
import zlib
from typing import Iterable

import torch

_M32 = 0xFFFFFFFF


def seed_of(text: str) -> int:
    """A stable integer seed for a name (CRC-32)."""
    return zlib.crc32(text.encode())


def _hash(n: int, seed: int) -> torch.Tensor:
    """(n,) int64 in [0, 2^32): a 32-bit integer hash of (index, seed), exact on every platform."""
    x = (torch.arange(n, dtype=torch.int64) * 2654435761 + (seed * 40503 + 12345)) & _M32
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def fixed(shape: Iterable[int], seed: int | str, lo: float = -1.0, hi: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """A tensor of ``shape`` with values spread evenly over [lo, hi), fixed by ``seed`` (an int or a name)."""
    shape = tuple(shape)
    seed = seed_of(seed) if isinstance(seed, str) else seed
    u = _hash(math.prod(shape), seed).double() / 2**32
    return (lo + (hi - lo) * u).to(dtype).reshape(shape)


def fixed_int(shape: Iterable[int], seed: int | str, n: int) -> torch.Tensor:
    """A long tensor of ``shape`` with values in [0, n), fixed by ``seed``."""
    shape = tuple(shape)
    seed = seed_of(seed) if isinstance(seed, str) else seed
    return (_hash(math.prod(shape), seed) % n).reshape(shape)


def weight_value(name: str, shape: tuple[int, ...], tag: str = "") -> torch.Tensor:
    """The fixed value of a parameter named ``name`` (the released code's name): kernels and
    matrices U(+-sqrt(6 / fan_in)) with fan_in = numel / shape[0] (Kaiming-uniform scale, so that
    the text-driven head's logits are far from flat), 1-D weights (norm layers) 1 + U(+-0.1),
    biases U(+-0.1). ``tag`` gives another network (e.g. a teacher) other values."""
    seed = f"{tag}:{name}"
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return fixed(shape, seed) * math.sqrt(6.0 / fan_in)
    if name.endswith("weight"):
        return 1.0 + 0.1 * fixed(shape, seed)
    return 0.1 * fixed(shape, seed)


def fill(named_params: Iterable[tuple[str, torch.Tensor]], tag: str = "", rename=lambda n: n) -> list[str]:
    """Overwrite parameters with :func:`weight_value` of ``rename(name)``; returns the names used."""
    used = []
    with torch.no_grad():
        for name, p in named_params:
            key = rename(name)
            p.copy_(weight_value(key, tuple(p.shape), tag))
            used.append(key)
    return used


_PICKS = 8


def summary(t: torch.Tensor) -> dict:
    """Numbers that identify a tensor: shape, sum, sum of |t|, sum of t^2, three projections on
    fixed U(-1, 1) weights and 8 elements at fixed flat positions."""
    t = t.detach().to(torch.float64).cpu()
    flat = t.reshape(-1)
    n = flat.numel()
    picks = fixed_int((_PICKS,), "picks", max(n, 1)).tolist() if n else []
    return {
        "shape": list(t.shape),
        "sum": float(flat.sum()),
        "abs": float(flat.abs().sum()),
        "sq": float((flat * flat).sum()),
        "proj": [float((flat * fixed((n,), f"proj{k}", dtype=torch.float64)).sum()) for k in range(3)],
        "at": [float(flat[i]) for i in picks],
    }


def mismatch(t: torch.Tensor, golden: dict, rtol: float = 1e-5, atol: float = 1e-8) -> str | None:
    """None when ``t`` matches the :func:`summary` ``golden``, else what differs. Sums and
    projections are compared to ``rtol`` x the golden sum of |t| (what rounding can move them
    by), elements to ``rtol`` x max(|element|, mean |t|)."""
    s = summary(t)
    if s["shape"] != golden["shape"]:
        return f"shape {s['shape']} != golden {golden['shape']}"
    n = max(1, math.prod(golden["shape"]))
    scale = golden["abs"]
    for key in ("sum", "abs"):
        if abs(s[key] - golden[key]) > rtol * scale + atol:
            return f"{key} {s[key]!r} != golden {golden[key]!r}"
    if abs(s["sq"] - golden["sq"]) > 2 * rtol * golden["sq"] + atol:
        return f"sq {s['sq']!r} != golden {golden['sq']!r}"
    for k, (a, b) in enumerate(zip(s["proj"], golden["proj"])):
        if abs(a - b) > rtol * scale + atol:
            return f"proj{k} {a!r} != golden {b!r}"
    mean_abs = scale / n
    for k, (a, b) in enumerate(zip(s["at"], golden["at"])):
        if abs(a - b) > rtol * max(abs(b), mean_abs) + atol:
            return f"element {k} {a!r} != golden {b!r}"
    return None


def assert_matches(t: torch.Tensor, golden: dict, what: str, rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """Assert that ``t`` matches the golden summary (message names ``what``)."""
    err = mismatch(t, golden, rtol, atol)
    assert err is None, f"{what}: {err}"


# -- recipes of inputs (stored in the golden) ----------------------------------------------------------------
def recipe(shape: Iterable[int], seed: str, lo: float = -1.0, hi: float = 1.0) -> dict:
    """A float input: :func:`fixed` of these arguments."""
    return {"shape": list(shape), "seed": seed, "lo": lo, "hi": hi}


def labels_recipe(shape: Iterable[int], seed: str, n: int) -> dict:
    """A label input: :func:`fixed_int` of these arguments."""
    return {"shape": list(shape), "seed": seed, "n": n}


def build(r: dict) -> torch.Tensor:
    """The tensor of a :func:`recipe` or :func:`labels_recipe`."""
    if "n" in r:
        return fixed_int(r["shape"], r["seed"], r["n"])
    return fixed(r["shape"], r["seed"], r["lo"], r["hi"])


# -- the suite's TAKNetwork -> the released VNet_Magic_CLIP_2p_Contrast, by parameter name prefix -----------
#: (suite prefix, released prefix); Sequential indices inside each block are the same on both sides
#: (conv / norm / ReLU stages: convs at 0, 3, 6; fc: Linear 0, BatchNorm 1, Linear 3; GAP: GroupNorm 0,
#: conv 3; precls: GroupNorm 0, conv 2; voxel projections: conv 0, conv 3; text projections: Linear 0)
NAME_MAP: tuple[tuple[str, str], ...] = (
    *((f"backbone.enc.{i}.", f"block_{b}.conv.") for i, b in enumerate(("one", "two", "three", "four", "five"))),
    *((f"backbone.down.{i}.", f"block_{b}_dw.conv.") for i, b in enumerate(("one", "two", "three", "four"))),
    *((f"backbone.up.{i}.", f"block_{b}_up.conv.") for i, b in enumerate(("five", "six", "seven", "eight"))),
    *((f"backbone.dec.{i}.", f"block_{b}.conv.") for i, b in enumerate(("six", "seven", "eight", "nine"))),
    ("fc.", "fc_layer.fc_layer."),
    ("head.text_to_hidden.", "text_to_256."),  # shared by the head and the 256-channel contrastive scale
    ("head.text_to_vision.", "text_to_vision."),
    ("head.gap.0.", "Gap_64."),
    ("head.gap.1.", "GAP_128."),
    ("head.gap.2.", "GAP_256."),
    ("head.controller.", "controller."),
    ("head.precls.", "precls_conv."),
    ("voxel_proj.0.", "features_to_64."),
    ("voxel_proj.1.", "features_to_128."),
    ("voxel_proj.2.", "features_to_256."),
    ("text_proj.0.", "text_to_64."),
    ("text_proj.1.", "text_to_128."),
)


def released_name(name: str) -> str:
    """The released parameter name of the suite's ``TAKNetwork`` parameter ``name``."""
    for ours, theirs in NAME_MAP:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    raise KeyError(f"no released counterpart for {name}")
