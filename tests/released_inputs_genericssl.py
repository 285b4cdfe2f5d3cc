"""Deterministic inputs and weights shared by ``docs/scripts/released/genericssl_goldens.py`` (which
runs GenericSSL's released A&D code, xmed-lab/GenericSSL) and ``tests/test_released_genericssl.py``
(which runs the suite's ``ad``).

Nothing here is released code: seeds, shapes, the name map between the released DiffVNet
(``code/DiffVNet/diff_vnet.py``) and the suite's :class:`methods.ad.ADNet`, and checksum helpers.
Batches, labels, fake logits and checksums come from ``tests/released_inputs_dhc.py``. Every
tensor is a function of a seed and, for network weights, of the suite's parameter name.
"""

from __future__ import annotations

import math
import re

import torch

from tests.released_inputs_dhc import N_L, N_U, NUM_CLASSES, PATCH, _gen, checksum  # noqa: F401  (re-exported)

WIDTH = 4  # n_filters of the forward / step tests
LR = 0.05
WEIGHT_DECAY = 3e-5  # make_model_all (train_diffusion.py:104-121)
MU = 10.0  # README -w 10
EMA_W = 0.99  # -s default
#: DDIM steps of the compared training step: the train-mode chain (BatchNorm over 2 images, a
#: 1-voxel bottleneck at this patch) amplifies last-bit differences 10-1000x per network pass, so
#: the release's 10 steps part even in float64; the 10-step sampler is compared in eval mode
STEP_SAMPLING_STEPS = 3
TIMESTEPS = (17, 803)  # t of the two labeled images (the release draws them with numpy)
#: schedule indices compared
SCHEDULE_IDX = (0, 1, 2, 110, 111, 500, 998, 999)

# --------------------------------------------------------------------------- name map
_ENC_BLOCKS = {"two": (0, 2), "three": (1, 3), "four": (2, 3), "five": (3, 3)}  # block -> (suite index, stages)
_DEC_BLOCKS = {"six": (0, 3), "seven": (1, 3), "eight": (2, 2), "nine": (3, 1)}
_DOWN = {"one": 0, "two": 1, "three": 2, "four": 3}
_UP = {"five": 0, "six": 1, "seven": 2, "eight": 3}
_DECODERS = {"denoise_model.decoder.": "dec_xi.", "decoder_psi.": "dec_psi.", "decoder_theta.": "dec_theta."}


def _stage(prefix: str, blocks: dict, block: str, j: str, rest: str) -> str | None:
    i, n = blocks[block]
    if rest.startswith("temb_fusion.temb_proj."):
        # the last stage of a block has a time projection the release never applies (temb_flag=False)
        return None if int(j) == n - 1 else f"{prefix}{i}.{j}.temb.{rest[len('temb_fusion.temb_proj.'):]}"
    return f"{prefix}{i}.{j}.{rest}"


def _resample(prefix: str, i: int, op: str, rest: str) -> str:
    part = {"0": "conv", "2": "norm", "3": "temb"}[op]
    rest = rest[len("temb_proj."):] if part == "temb" else rest
    return f"{prefix}{i}.{part}.{rest}"


def suite_name(released: str) -> str | None:
    """The suite's :class:`methods.ad.ADNet` key of a released DiffVNet state-dict key, or None
    for a released tensor the release never uses (the image stem's time MLP and projection, the
    time projection of each block's last stage): they have no suite counterpart."""
    if released.startswith("embedding."):
        m = re.fullmatch(r"embedding\.emb\.ops\.0\.(conv|norm)\.(.+)", released)
        return f"stem.{m.group(1)}.{m.group(2)}" if m else None
    if released.startswith("denoise_model.embedding_diffusion."):
        r = released[len("denoise_model.embedding_diffusion."):]
        if m := re.fullmatch(r"temb\.dense\.([01])\.(.+)", r):
            return f"time_mlp.{2 * int(m.group(1))}.{m.group(2)}"
        m = re.fullmatch(r"emb\.ops\.0\.(conv|norm)\.(.+)", r)
        return f"stem_xi.{m.group(1)}.{m.group(2)}" if m else None
    if released.startswith("denoise_model.encoder."):
        r = released[len("denoise_model.encoder."):]
        if m := re.fullmatch(r"block_(\w+?)_dw\.ops\.(\d)\.(.+)", r):
            return _resample("encoder.down.", _DOWN[m.group(1)], m.group(2), m.group(3))
        m = re.fullmatch(r"block_(\w+?)\.ops\.(\d)\.(.+)", r)
        return _stage("encoder.enc.", _ENC_BLOCKS, m.group(1), m.group(2), m.group(3))
    for rp, sp in _DECODERS.items():
        if released.startswith(rp):
            r = released[len(rp):]
            if r.startswith("out_conv."):
                return sp + r
            if m := re.fullmatch(r"block_(\w+?)_up\.ops\.(\d)\.(.+)", r):
                return _resample(sp + "up.", _UP[m.group(1)], m.group(2), m.group(3))
            m = re.fullmatch(r"block_(\w+?)\.ops\.(\d)\.(.+)", r)
            return _stage(sp + "dec.", _DEC_BLOCKS, m.group(1), m.group(2), m.group(3))
    raise KeyError(f"unknown released parameter {released!r}")


# --------------------------------------------------------------------------- weights
def tensor_for(name: str, like: torch.Tensor, seed: int) -> torch.Tensor:
    """Deterministic value of the suite tensor ``name`` (shape and dtype of ``like``): He-scaled
    conv weights, 1/sqrt(fan_in) linear weights, BatchNorm scale ~1, small biases, running
    variance > 0."""
    shape = tuple(like.shape)
    if name.endswith("num_batches_tracked"):
        return torch.zeros_like(like)
    r = torch.randn(shape, generator=_gen("ad-w", name, seed), dtype=torch.float64)
    if name.endswith("running_var"):
        return (0.5 + r.abs()).to(like.dtype)
    if name.endswith("running_mean"):
        return (0.1 * r).to(like.dtype)
    if len(shape) == 5:
        k = math.prod(shape[2:])
        transposed = ".up." in f".{name}" and name.endswith("conv.weight")
        fan_in = shape[0] if transposed else shape[1] * k
        return (r * math.sqrt(2.0 / fan_in)).to(like.dtype)
    if len(shape) == 2:  # Linear
        return (r / math.sqrt(shape[1])).to(like.dtype)
    if name.endswith("norm.weight"):
        return (1.0 + 0.1 * r).to(like.dtype)
    return (0.05 * r).to(like.dtype)  # biases


def fill_suite(net: torch.nn.Module, seed: int) -> None:
    """Set every parameter and buffer of a suite ADNet from ``seed`` and its name."""
    net.load_state_dict({k: tensor_for(k, v, seed) for k, v in net.state_dict().items()})


def fill_released(net: torch.nn.Module, seed: int) -> None:
    """Set a released DiffVNet to the values of :func:`fill_suite` (names mapped); tensors
    without a suite counterpart (never used) get values of their own name."""
    sd = net.state_dict()
    net.load_state_dict({k: tensor_for(suite_name(k) or f"unused:{k}", v, seed) for k, v in sd.items()})


# --------------------------------------------------------------------------- draws and checksums
def q_noise() -> torch.Tensor:
    """eps of q_sample for the labeled images (N_L, C, *PATCH)."""
    return torch.randn(N_L, NUM_CLASSES, *PATCH, generator=_gen("ad-q-noise"), dtype=torch.float64).float()


def sample_start() -> torch.Tensor:
    """x_T of the DDIM loop for the unlabeled images (N_U, C, *PATCH)."""
    return torch.randn(N_U, NUM_CLASSES, *PATCH, generator=_gen("ad-x_T"), dtype=torch.float64).float()


def gumbel() -> torch.Tensor:
    """-log(Exp(1)) noise of the Gumbel-softmax (N_U, C, *PATCH)."""
    e = torch.empty(N_U, NUM_CLASSES, *PATCH, dtype=torch.float64).exponential_(generator=_gen("ad-gumbel"))
    return (-e.log()).float()


def timesteps() -> torch.Tensor:
    return torch.tensor(TIMESTEPS, dtype=torch.long)


def _mapped(items, map_name):
    out = []
    for n, t in items:
        s = map_name(n) if map_name else n
        if s is not None:
            out.append((s, t))
    return sorted(out, key=lambda kv: kv[0])


def grads_checksum(named_params, map_name=None, prefix: str = "") -> dict:
    """Checksum of the gradients (None as zeros) of the parameters whose suite name starts
    with ``prefix``, concatenated in sorted suite-name order; unmapped released ones left out."""
    items = [(n, p) for n, p in _mapped(named_params, map_name) if n.startswith(prefix)]
    return checksum(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for _, p in items]))


def state_checksum(net: torch.nn.Module, map_name=None, prefix: str = "") -> dict:
    """Checksums of parameters and of buffers (``num_batches_tracked`` left out) whose suite name
    starts with ``prefix``, in sorted suite-name order."""
    params = {n for n, _ in _mapped(net.named_parameters(), map_name)}
    sd = [(k, v) for k, v in _mapped(net.state_dict().items(), map_name) if k.startswith(prefix) and not k.endswith("num_batches_tracked")]
    return {"params": checksum(torch.cat([v.reshape(-1).double() for k, v in sd if k in params])),
            "buffers": checksum(torch.cat([v.reshape(-1).double() for k, v in sd if k not in params]))}


def delta_checksum(net: torch.nn.Module, seed: int, map_name=None) -> dict:
    """Checksum of (parameters - their :func:`tensor_for` values at ``seed``), sorted suite names."""
    items = _mapped(net.named_parameters(), map_name)
    return checksum(torch.cat([(p.detach() - tensor_for(n, p, seed)).reshape(-1) for n, p in items]))
