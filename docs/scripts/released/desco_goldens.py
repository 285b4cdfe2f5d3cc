"""Golden outputs of DeSCO's released code (HengCai-NJU/DeSCO), for ``tests/test_released_desco.py``.

    python docs/scripts/released/desco_goldens.py --repo /path/to/DeSCO [--write]

imports the released modules from the checkout (``<repo>/code`` on sys.path; tensorboardX, h5py
and skimage are stubbed, ``.cuda()`` is a no-op, ``train_desco.py`` is imported with a fake
``sys.argv`` = its defaults), runs the pieces below on CPU in fp32 with the fixed inputs and
weights of ``tests/released_inputs_desco.py`` and prints (``--write``: writes)
``tests/golden/released/desco.json``. Nothing of the release is copied into the suite; the test
reads only the JSON.

Covered (released file):
* ``vnet``: ``networks/vnet.py`` VNet forward (2 classes, BatchNorm, has_dropout as
  ``create_model``: train mode with seeded Dropout3d, eval mode), weights mapped by name.
* ``init``: the statistics of the VNet's PyTorch-default init (``__init_weight`` is commented
  out and ``train_desco.py`` calls no initialiser: both read from the files).
* ``losses``: ``utils/losses.py`` ``wce`` (weight maps repeated over 2 channels as the script
  does) with a soft weight map, a 0/1 mask and an all-zero mask, ``dice_loss_weight`` of class 1:
  values and gradient checksums.
* ``weights``: ``dataloaders/la_heart.py`` LARandomCrop1 / LARandomCrop2 weight maps on a volume
  whose annotated slices fall on the patch centre, for three slice weights; the slice weight
  ``get_current_slice_weight(iter // slice_weight_step)`` of each loader rebuild.
* ``schedules``: ``ramps.sigmoid_rampup`` / ``cosine_rampdown``,
  ``get_current_consistency_weight(iter // 150)`` and the uncertainty threshold
  ``(0.75 + 0.25 sigmoid_rampup(iter, max_iterations)) ln 2`` at ``ITERS``.
* ``lr``: the script's "change lr" block (read from train_desco.py and executed as it is) over
  6000 iterations with two SGD optimisers: the lr of each in force at ``ITERS``.
* ``optimizer``: the two ``optim.SGD(...)`` calls of the script (read and evaluated).
* ``steps``: one iteration of the training loop body (it sits under ``if __name__ ==
  '__main__'`` and cannot be called, so this script re-runs it in the released order with the
  released objects: noise draw, m_seg1 forward, m_seg2 pseudo-labels and its 8 noisy passes,
  wce + dice_loss_weight, (1 - w) sup + w cons, backward, optimizer1 step; then the same for
  m_seg2 with the updated m_seg1), at iteration ``STEP_ITER`` with the lr in force there, the
  same batch for both networks (the release draws one per loader), supervised weight map all
  ones ("full") or the two central slices ("sparse"). Loss terms, mask shares, gradient
  checksums, parameters and BN buffers after the step.

Not covered: data loading (h5 files, registration, augmentation), the registration script,
evaluation (sliding windows, medpy metrics), later steps (float noise of the tiny BatchNorm
bottleneck and argmax / threshold flips make them diverge across implementations).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import torch
from _golden_io import ROOT, golden_path, provenance, repo_commit, write_golden
from torch import nn

from tests import released_inputs_desco as ri

GOLDEN = golden_path("desco")


# ----------------------------------------------------------------------------- loading the release
def setup(repo: Path) -> Path:
    code = repo / "code"
    sys.path.insert(0, str(code))
    tbx = types.ModuleType("tensorboardX")
    tbx.SummaryWriter = object
    sys.modules["tensorboardX"] = tbx
    sys.modules.setdefault("h5py", types.ModuleType("h5py"))
    sk = types.ModuleType("skimage")
    sk.measure = types.ModuleType("skimage.measure")
    sys.modules.setdefault("skimage", sk)
    sys.modules.setdefault("skimage.measure", sk.measure)
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    for alias, t in (("float", float), ("int", int), ("bool", bool)):
        if not hasattr(np, alias):
            setattr(np, alias, t)
    return code


def import_train(code: Path):
    import importlib.util

    sys.argv = ["train_desco.py"]
    spec = importlib.util.spec_from_file_location("released_train_desco", code / "train_desco.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tolist(t) -> list:
    return [float(v) for v in torch.as_tensor(t).reshape(-1)]


def released_vnet(vnet_mod, width: int = ri.WIDTH, dropout: bool = True):
    # create_model(): VNet(n_channels=1, n_classes=num_classes, normalization='batchnorm', has_dropout=True)
    return vnet_mod.VNet(n_channels=1, n_classes=ri.NUM_CLASSES, n_filters=width, normalization="batchnorm", has_dropout=dropout)


# ----------------------------------------------------------------------------- pieces
def golden_vnet(vnet_mod) -> dict:
    b = ri.step_batch(0)
    x = torch.cat([b["image_l"], b["image_u"]])
    out = {}
    for mode, train in (("train_dropout", True), ("eval", False)):
        net = released_vnet(vnet_mod)
        ri.fill_released_vnet(net, seed=1)
        net.train(train)
        torch.manual_seed(7)
        with torch.no_grad():
            y = net(x)
        out[mode] = {"out": ri.checksum(y), "state": ri.state_checksum(net, ri.suite_name)}
    return out


def golden_init(vnet_mod, code: Path) -> dict:
    torch.manual_seed(0)
    net = released_vnet(vnet_mod, ri.INIT_WIDTH)
    vnet_src = (code / "networks/vnet.py").read_text()
    train_src = (code / "train_desco.py").read_text()
    active_init = [ln.strip() for ln in vnet_src.splitlines() if "__init_weight()" in ln and not ln.strip().startswith("#")]
    train_init = [ln.strip() for ln in train_src.splitlines() if re.search(r"init_weight|nn\.init\.", ln) and not ln.strip().startswith("#")]
    return {"stats": ri.layer_type_stats(net), "vnet_init_calls": active_init, "train_init_calls": train_init}


def golden_losses(losses) -> dict:
    inp = ri.loss_inputs()
    n = inp["logits"].shape[0]
    P = ri.PATCH
    out = {}

    def run(name, fn):
        z = inp["logits"].clone().requires_grad_(True)
        v = fn(z)
        v.backward()
        out[name] = {"value": float(v.detach()), "grad": ri.checksum(z.grad)}

    def rep(w):  # maskzz = unsqueeze(maskz, 1).repeat(1, 2, 1, 1, 1) (train_desco.py:198-199, 232)
        return w.unsqueeze(1).repeat(1, 2, 1, 1, 1)

    run("wce_weight", lambda z: losses.wce(z, inp["label"], rep(inp["weight"]), n, P[0], P[1], P[2]))
    run("wce_mask", lambda z: losses.wce(z, inp["label"], rep(inp["mask"]), n, P[0], P[1], P[2]))
    run("wce_empty", lambda z: losses.wce(z, inp["label"], rep(torch.zeros_like(inp["mask"])), n, P[0], P[1], P[2]) + 0 * z.sum())
    run("dice_weight", lambda z: losses.dice_loss_weight(torch.softmax(z, 1)[:, 1], inp["label"] == 1, inp["weight"]))
    run("dice_ones", lambda z: losses.dice_loss_weight(torch.softmax(z, 1)[:, 1], inp["label"] == 1, torch.ones_like(inp["weight"])))
    return out


def golden_weights(code: Path, mod) -> dict:
    from dataloaders.la_heart import LARandomCrop1, LARandomCrop2

    image = np.zeros(ri.WEIGHT_VOLUME, dtype=np.float32)
    label = np.zeros(ri.WEIGHT_VOLUME, dtype=np.uint8)
    maps = {}
    for sw in ri.SLICE_WEIGHTS:
        for name, cls in (("crop1", LARandomCrop1), ("crop2", LARandomCrop2)):
            np.random.seed(0)
            s = cls(ri.WEIGHT_PATCH, sw)({"image": image, "label": label})
            w = torch.from_numpy(np.ascontiguousarray(s["weight"])).permute(2, 1, 0)  # (x, y, z) -> (D, H, W)
            maps[f"{name}_{sw}"] = {"shape": list(w.shape), "checksum": ri.checksum(w),
                                    "profile_d": tolist(w[:, 0, 0]), "profile_h": tolist(w[0, :, 0]),
                                    "w_constant": bool((w == w[:, :, :1]).all())}
    a = mod.args
    rebuild = {str(it): mod.get_current_slice_weight(it // a.slice_weight_step) for it in range(1000, ri.MAX_ITERATIONS, 1000)}
    return {"maps": maps, "initial_slice_weight": a.slice_weight, "slice_weight_step": a.slice_weight_step,
            "rebuild_every": 1000, "slice_weight_at_rebuild": rebuild}


def golden_schedules(mod) -> dict:
    ramps = mod.ramps
    return {
        "iters": list(ri.ITERS),
        "consistency_weight": [mod.get_current_consistency_weight(i // 150) for i in ri.ITERS],  # train_desco.py:229
        "threshold": [(0.75 + 0.25 * ramps.sigmoid_rampup(i, ri.MAX_ITERATIONS)) * np.log(2) for i in ri.ITERS],  # :230
        "sigmoid_rampup": [ramps.sigmoid_rampup(e, 40.0) for e in range(0, 45)],
        "cosine_rampdown": [ramps.cosine_rampdown(e, 40.0) for e in range(0, 41)],
        "args": {k: getattr(mod.args, k) for k in ("consistency", "consistency_rampup", "base_lr", "max_iterations",
                                                   "slice_weight", "slice_weight_step", "batch_size", "labeled_bs")},
    }


def lr_block(code: Path) -> str:
    """The "## change lr" block of the loop (its lines up to the checkpoint save), dedented."""
    lines = (code / "train_desco.py").read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if "## change lr" in ln)
    j = next(k for k in range(i + 1, len(lines)) if "iter_num % 2000" in lines[k])
    return textwrap.dedent("\n".join(lines[i:j]))


def lr_run(code: Path, until: int, opt1, opt2) -> float:
    """Executes the block after each iteration 1..until (iter_num as the loop has it after its
    increment); returns the loop's ``lr_``."""
    ns = {"optimizer1": opt1, "optimizer2": opt2, "base_lr": ri.LR, "lr_": ri.LR}
    block = compile(lr_block(code), "train_desco.py:change-lr", "exec")
    for it in range(1, until + 1):
        ns["iter_num"] = it
        exec(block, ns)
    return ns["lr_"]


def golden_lr(code: Path) -> dict:
    p1, p2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    o1, o2 = torch.optim.SGD([p1], lr=ri.LR), torch.optim.SGD([p2], lr=ri.LR)
    ns = {"optimizer1": o1, "optimizer2": o2, "base_lr": ri.LR, "lr_": ri.LR}
    block = compile(lr_block(code), "train_desco.py:change-lr", "exec")
    at = {}
    for it in range(0, ri.MAX_ITERATIONS + 1):
        if it > 0:
            ns["iter_num"] = it
            exec(block, ns)
        if it in ri.ITERS:  # the lrs step `it` (0-based, = iter_num before its increment) runs with
            at[str(it)] = [o1.param_groups[0]["lr"], o2.param_groups[0]["lr"]]
    return {"block": lr_block(code), "in_force": at}


def golden_optimizer(code: Path) -> dict:
    src = (code / "train_desco.py").read_text()
    out = {}
    for m in re.finditer(r"(optimizer\d)\s*=\s*optim\.SGD\((\w+)\.parameters\(\),\s*(.*)\)\s*$", src, re.M):
        kwargs = eval(f"dict({m.group(3)})", {"base_lr": ri.LR})
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], **kwargs)
        out[m.group(1)] = {"network": m.group(2), **{k: opt.defaults[k] for k in ("lr", "momentum", "weight_decay", "nesterov", "dampening")}}
    return out


# ----------------------------------------------------------------------------- the training step
def released_half(mod, model, other, opt, batch, weight, iter_num: int) -> dict:
    """One network's half of the loop body (train_desco.py:196-243 with m_seg1 = model,
    m_seg2 = other; 247-294 mirrored), on ``batch`` with supervised weight map ``weight``."""
    losses, ramps = mod.losses, mod.ramps
    # args.labeled_bs (1) is the batch-size argument of both wce calls; here n_l = n_u = N_L (2)
    labeled_bs, P, C = ri.N_L, ri.PATCH, ri.NUM_CLASSES
    max_iterations = ri.MAX_ITERATIONS
    volume_batch = torch.cat([batch["image_l"], batch["image_u"]])
    label_batch = torch.cat([batch["label_l"], torch.zeros_like(batch["label_l"])])  # unlabeled labels are never read
    maskz = weight[0:labeled_bs]
    maskzz = torch.unsqueeze(maskz, 1).repeat(1, 2, 1, 1, 1)
    unlabeled_volume_batch = volume_batch[labeled_bs:]
    noise = torch.clamp(torch.randn_like(unlabeled_volume_batch) * 0.1, -0.2, 0.2)  # noqa: F841 (drawn, unused)
    cs_inputs = unlabeled_volume_batch
    outputs = model(volume_batch)
    with torch.no_grad():
        cs_output = other(cs_inputs)
    T = 8
    volume_batch_r = unlabeled_volume_batch.repeat(2, 1, 1, 1, 1)
    stride = volume_batch_r.shape[0] // 2
    preds = torch.zeros([stride * T, C, P[0], P[0], P[2]])
    for i in range(T // 2):
        cs_inputs = volume_batch_r + torch.clamp(torch.randn_like(volume_batch_r) * 0.1, -0.2, 0.2)
        with torch.no_grad():
            preds[2 * stride * i:2 * stride * (i + 1)] = other(cs_inputs)
    preds = torch.softmax(preds, dim=1)
    preds = preds.reshape(T, stride, C, P[0], P[0], P[2])
    preds = torch.mean(preds, dim=0)
    uncertainty = -1.0 * torch.sum(preds * torch.log(preds + 1e-6), dim=1, keepdim=True)
    loss_seg = losses.wce(outputs[:labeled_bs], label_batch[:labeled_bs], maskzz, labeled_bs, P[0], P[0], P[2])
    outputs_soft = torch.softmax(outputs, dim=1)
    cs_output_soft = torch.softmax(cs_output, dim=1)
    cs_pseudo_seg = torch.argmax(cs_output_soft.detach(), dim=1, keepdim=False)
    loss_seg_dice = losses.dice_loss_weight(outputs_soft[:labeled_bs, 1, :, :, :], label_batch[:labeled_bs] == 1, maskz)
    supervised_loss = 0.5 * (loss_seg + loss_seg_dice)
    consistency_weight = mod.get_current_consistency_weight(iter_num // 150)
    threshold = (0.75 + 0.25 * ramps.sigmoid_rampup(iter_num, max_iterations)) * np.log(2)
    mask = (uncertainty < threshold).float()
    mask = mask.repeat(1, 2, 1, 1, 1)
    consistency_dist = losses.wce(outputs[labeled_bs:], cs_pseudo_seg, mask, labeled_bs, P[0], P[0], P[2])
    consistency_loss = consistency_weight * consistency_dist
    loss = (1 - consistency_weight) * supervised_loss + consistency_loss
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {"loss": float(loss.detach()), "sup": float(supervised_loss.detach()), "cons": float(consistency_dist.detach()),
            "loss_seg": float(loss_seg.detach()), "loss_seg_dice": float(loss_seg_dice.detach()),
            "mask": float(mask[:, 0].mean()), "w": consistency_weight, "threshold": float(threshold)}


def golden_steps(code: Path, mod, vnet_mod) -> dict:
    out = {}
    for mode in ri.STEP_MODES:
        m1, m2 = released_vnet(vnet_mod), released_vnet(vnet_mod)
        ri.fill_released_vnet(m1, seed=11)
        ri.fill_released_vnet(m2, seed=12)
        m1.train()
        m2.train()
        # train_desco.py:177-178, with the lr the loop has set by STEP_ITER (the "change lr" block)
        o1 = torch.optim.SGD(m1.parameters(), lr=ri.LR, momentum=0.9, weight_decay=0.0001)
        o2 = torch.optim.SGD(m2.parameters(), lr=ri.LR, momentum=0.9, weight_decay=0.0001)
        lr_run(code, ri.STEP_ITER, o1, o2)
        lrs = [o1.param_groups[0]["lr"], o2.param_groups[0]["lr"]]
        b = ri.step_batch(0)
        w = ri.sup_weight(mode)
        torch.manual_seed(100)
        r1 = released_half(mod, m1, m2, o1, b, w, ri.STEP_ITER)
        r2 = released_half(mod, m2, m1, o2, b, w, ri.STEP_ITER)
        out[mode] = {"seg1": r1, "seg2": r2, "lr": lrs,
                     "grads_seg1": ri.grads_checksum(m1.named_parameters(), ri.suite_name),
                     "grads_seg2": ri.grads_checksum(m2.named_parameters(), ri.suite_name),
                     "delta_seg1": ri.delta_checksum(m1, 11, ri.suite_name), "delta_seg2": ri.delta_checksum(m2, 12, ri.suite_name),
                     "state_seg1": ri.state_checksum(m1, ri.suite_name), "state_seg2": ri.state_checksum(m2, ri.suite_name)}
    return out


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, type=Path, help="checkout (or export) of HengCai-NJU/DeSCO")
    ap.add_argument("--commit", default=None, help="the commit of an export without .git")
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    a = ap.parse_args(argv)
    command = "python docs/scripts/released/desco_goldens.py --repo <DeSCO checkout>" + (" --write" if a.write else "")
    repo = a.repo.resolve()
    commit = repo_commit(repo, a.commit)
    saved_argv = sys.argv
    code = setup(repo)
    torch.set_num_threads(1)
    mod = import_train(code)
    import networks.vnet as vnet_mod

    golden = {
        **provenance("HengCai-NJU/DeSCO", commit, command),
        "vnet": golden_vnet(vnet_mod),
        "init": golden_init(vnet_mod, code),
        "losses": golden_losses(mod.losses),
        "weights": golden_weights(code, mod),
        "schedules": golden_schedules(mod),
        "lr": golden_lr(code),
        "optimizer": golden_optimizer(code),
        "steps": golden_steps(code, mod, vnet_mod),
    }
    sys.argv = saved_argv
    write_golden("desco", golden, write=a.write)


if __name__ == "__main__":
    main()
