"""Goldens of the released GALoss (cicailalala/GALoss) and MagicNet (DeepMed-Lab-ECNU/MagicNet) code (issue #30).

Usage::

    python docs/scripts/released/galoss_magicnet_goldens.py --galoss /path/GALoss --magicnet /path/MagicNet [--write] [--time]

Imports the released modules from the two checkouts (each in isolation: both have ``networks``,
``utils`` and ``dataloaders`` packages), runs them on CPU (``.cuda()`` a no-op; h5py, skimage,
einops, surface_distance, tensorboardX stubbed) on the deterministic inputs and weights of
``tests/released_inputs_galoss_magicnet.py`` and writes numbers only to
``tests/golden/released/galoss_magicnet.json`` (``--write``), which
``tests/test_released_galoss_magicnet.py`` compares with the suite.

Covered (released file: piece):

* GALoss.py ``GADice`` / ``GACE``; MagicNet utils/losses.py ``DiceLoss``: value and gradient on
  fixed logits / labels (a labeled and a pseudo-label target);
* utils/cube_losses.py ``get_patch_list`` / ``unmix_tensor`` (within-image partition and the
  released, transposed recovery), utils/cube_utils.py ``get_loc_mask``;
* utils/cube_utils.py ``get_part_and_rec_ind``: cross-image partition / recovery for a
  permutation fixed by the global seed (the function draws ``torch.rand`` itself);
* utils/cube_losses.py ``cube_location_loss`` (value, gradients) and the within-image local Dice
  (the training scripts' lines that decode the cubes, unmix, head, Dice: executed from the
  script's own source);
* cube-wise pseudo-label blending: ``OrganClassLogger`` and the training script's ``with
  torch.no_grad():`` block (train_Synapse_MagicNet.py:266-290, train_main_btcv.py:256-281)
  executed verbatim from the source on fixed inputs, for both ``get_mix_pl`` versions (GALoss
  decodes ``feat_list[i]``, the labeled images: a released bug; MagicNet ``feat_list[i + unlabeled_bs]``);
* consistency weight: the script's ``get_current_consistency_weight`` called on the argument
  expression read from the source (``iter_num // 350``) over a step range;
* poly lr: the script's ``lr_ = ...`` expression read from the source (GALoss: horizon 70000
  literal; MagicNet: ``max_iterations``, default 70000), over a step range;
* optimiser: the script's ``optimizer = optim.SGD(...)`` statement executed: its param-group
  settings, and three steps of it (with the lr expression) on fixed weights and gradients;
* init statistics of ``VNet_Magic`` (PyTorch default init) per layer;
* two full training steps of each released ``train()`` (GALoss train_Synapse_MagicNet.py and
  MagicNet train_main_btcv.py), run verbatim with the data loader, logging, writer, validation
  and saving patched out, patch 64^3, 1 labeled + 1 unlabeled image, width 16, 14 classes:
  losses, gradient checksums, weights after the steps.

Not covered: the released ``train()`` cannot start at an iteration > 100, so the blending inside
a full step is covered only by executing its block (above); the teacher of the released step
is a separately initialised network (``create_model(ema=True)``), given the student's weights
here (after step 0, whose consistency weight is 6.7e-4, both teachers equal the student);
validation / test-time code; the dataset and sampler (patched).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import logging
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _golden_io import golden_path, repo_commit, write_golden

from tests import released_inputs_galoss_magicnet as RI

GOLDEN = golden_path("galoss_magicnet")
CLASH = ("networks", "utils", "dataloaders", "GALoss", "train_Synapse_MagicNet", "train_main_btcv")


# -- importing the releases ------------------------------------------------------------------------------
def _stubs() -> None:
    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules.setdefault(name, m)
        return m

    mod("h5py", File=None)
    mod("skimage", measure=mod("skimage.measure", label=None), transform=mod("skimage.transform", resize=None))
    mod("einops", rearrange=None, repeat=None)
    mod("surface_distance", compute_surface_distances=None, compute_surface_dice_at_tolerance=None)

    class _Writer:
        def __init__(self, *a, **k): ...
        def add_scalar(self, *a, **k): ...
        def close(self): ...

    mod("tensorboardX", SummaryWriter=_Writer)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self


def load_release(root: Path, modules: list[str], argv: list[str]) -> dict:
    """Import ``modules`` from ``root`` with no module of the other release in sys.modules."""
    for k in list(sys.modules):
        if k.split(".")[0] in CLASH:
            del sys.modules[k]
    sys.path.insert(0, str(root))
    old_argv = sys.argv
    sys.argv = argv
    try:
        import importlib

        out = {m: importlib.import_module(m) for m in modules}
    finally:
        sys.argv = old_argv
        sys.path.remove(str(root))
    for k in list(sys.modules):
        if k.split(".")[0] in CLASH:
            del sys.modules[k]
    return out


# -- reading statements of the training scripts -----------------------------------------------------------
def _train_loop_body(script) -> list[ast.stmt]:
    src = Path(script.__file__).read_text()
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "train")
    outer = next(n for n in fn.body if isinstance(n, ast.For))
    inner = next(n for n in outer.body if isinstance(n, ast.For))
    return inner.body


def _find(nodes, pred):
    for n in nodes:
        for sub in ast.walk(n):
            if pred(sub):
                return sub
    raise LookupError("statement not found in the released script")


def _src(script):
    return Path(script.__file__).read_text()


def blending_block(script) -> ast.Module:
    """The ``with torch.no_grad():`` block whose first statement tests ``iter_num > 100`` (cube-wise PL blending)."""
    node = _find(_train_loop_body(script), lambda n: isinstance(n, ast.With) and isinstance(n.body[-1], ast.If)
                 and "iter_num > 100" in ast.unparse(n.body[-1].test))
    upd = _find(_train_loop_body(script), lambda n: isinstance(n, ast.If) and "update_class_dist" in ast.unparse(n))
    return ast.fix_missing_locations(ast.Module(body=[node, upd], type_ignores=[]))


def local_block(script) -> ast.Module:
    """The ``if feat_list is not None:`` block of the within-image partition-and-recovery Dice."""
    node = _find(_train_loop_body(script), lambda n: isinstance(n, ast.If) and ast.unparse(n.test) == "feat_list is not None"
                 and "unmix_tensor" in ast.unparse(n))
    return ast.fix_missing_locations(ast.Module(body=[node], type_ignores=[]))


def cw_argument(script) -> str:
    node = _find(_train_loop_body(script), lambda n: isinstance(n, ast.Call) and ast.unparse(n.func) == "get_current_consistency_weight")
    return ast.unparse(node.args[0])


def lr_expression(script) -> str:
    node = _find(_train_loop_body(script), lambda n: isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "lr_")
    return ast.unparse(node.value)


def optimizer_statement(script) -> ast.Module:
    fn = next(n for n in ast.parse(_src(script)).body if isinstance(n, ast.FunctionDef) and n.name == "train")
    node = next(n for n in fn.body if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "optimizer")
    return ast.fix_missing_locations(ast.Module(body=[node], type_ignores=[]))


# -- pieces --------------------------------------------------------------------------------------------
def loss_cases():
    """(name, logits (B, C, D, H, W), target (B, D, H, W))."""
    lg = RI.logits((2, 6, 8, 10, 12), seed=11)
    y = RI.labels(2, seed=12, shape=(8, 10, 12), num_classes=6)  # ABSENT -> class 3 never present
    pl = lg.argmax(1).clone()
    pl[pl == 5] = 0  # pseudo-label without class 5
    return [("labels", lg, y), ("pseudo", RI.logits((2, 6, 8, 10, 12), seed=13), pl)]


def run_losses(ga, mn_losses) -> dict:
    out = {}
    for name, lg, y in loss_cases():
        rec = {}
        for key, fn in (
            ("gadice", lambda p, t: ga.GADice()(torch.softmax(p, 1), t)),
            ("gace", lambda p, t: ga.GACE(k=10, gama=0.5)(p, t.unsqueeze(1))),
            ("magicnet_dice", lambda p, t: mn_losses.DiceLoss(n_classes=p.shape[1])(torch.softmax(p, 1), t)),
        ):
            x = lg.clone().requires_grad_(True)
            v = fn(x, y)
            v.backward()
            rec[key] = {"value": float(v), "grad": RI.checksum(x.grad)}
        out[name] = rec
    return out


def run_cubes(cl, cu) -> dict:
    x = torch.arange(2 * 2 * 12 * 12 * 12, dtype=torch.float32).reshape(2, 2, 12, 12, 12)
    patches = cl.get_patch_list(x, cube_size=4)
    stacked = torch.cat(patches, dim=1)  # (2, 27, 2, 4, 4, 4)
    rec = cl.unmix_tensor(stacked, x.shape)
    weights = torch.arange(rec.numel(), dtype=torch.float64).reshape(rec.shape) % 101
    loc = [int(t) for t in torch.cat(cu.get_loc_mask(x, 4))]
    return {
        "patch_origins": [float(stacked[0, i, 0, 0, 0, 0]) for i in range(stacked.shape[1])],
        "patch_list": RI.checksum(stacked),
        "unmix_origins": [float(rec[0, 0, 4 * i, 4 * j, 4 * k]) for i in range(3) for j in range(3) for k in range(3)],
        "unmix": RI.checksum(rec),
        "unmix_weighted": float((rec.double() * weights).sum()),
        "identity_roundtrip": bool(torch.equal(rec, x)),
        "loc_mask": loc,
    }


def run_mixing(cu) -> dict:
    shape = (4, 2, 12, 12, 12)
    y = torch.randn(*shape, generator=torch.Generator().manual_seed(21))
    torch.manual_seed(2024)
    part, rec = cu.get_part_and_rec_ind(volume_shape=shape, nb_cubes=3, nb_chnls=2)
    mixed = torch.gather(y, 0, part)
    back = torch.gather(mixed, 0, rec)
    return {"seed": 2024, "perm": part[:, 0, ::4, ::4, ::4].tolist(), "mixed": RI.checksum(mixed),
            "recovered_equals_input": bool(torch.equal(back, y)), "recovered": RI.checksum(back)}


def released_model(mn):
    m = mn.VNet_Magic(n_channels=1, n_classes=RI.NUM_CLASSES, cube_size=RI.CUBE, patch_size=RI.PATCH[0])
    RI.load_released(m)
    m.train()
    return m


def run_cube_losses(rel: dict, script, which: str) -> dict:
    """Location loss, local Dice and cube-wise blending on batch 0 (1 labeled + 1 unlabeled image)."""
    cl, cu = rel["utils.cube_losses"], rel["utils.cube_utils"]
    model = released_model(rel["networks.magicnet"])
    xl, yl, xu = RI.step_batch(0)
    volume_batch = torch.cat([xl, xu])
    patch_list = cl.get_patch_list(volume_batch, cube_size=RI.CUBE)
    idx = torch.randperm(len(patch_list), generator=torch.Generator().manual_seed(5))
    loc_list = cu.get_loc_mask(volume_batch, RI.CUBE)
    loc_loss, feat_list = cl.cube_location_loss(model, loc_list, patch_list, idx, RI.LABELED_BS, cube_size=RI.CUBE)
    dice = rel["GALoss"].GADice() if which == "galoss" else rel["utils.losses"].DiceLoss(n_classes=RI.NUM_CLASSES)
    ns = {"feat_list": feat_list, "bs": RI.BATCH, "model": model, "cube_losses": cl, "labeled_volume_batch": xl, "F": F,
          "torch": torch, "dice_loss": dice, "labeled_bs": RI.LABELED_BS, "label_batch": yl, "supervised_loss": 0.0, "count_ss": 0}
    exec(compile(local_block(script), "<released local block>", "exec"), ns)
    local = ns["loss_lab_local_dice"]
    model.zero_grad()
    (0.1 * loc_loss + local).backward()
    grads = {n: RI.checksum(p.grad) for n, p in model.named_parameters() if n in RI.TRACKED and p.grad is not None}
    # cube-wise pseudo-label blending, the script's block verbatim
    logger = cu.OrganClassLogger(num_classes=RI.NUM_CLASSES)
    history = RI.labels(1, seed=77)
    logger.append_class_list(history.view(-1, 1))
    logger.update_class_dist()
    ema_output = RI.logits((1, RI.NUM_CLASSES, *RI.PATCH), seed=78)
    unlab_pl_soft = F.softmax(ema_output, dim=1)
    _, pred_class_teacher = torch.max(unlab_pl_soft, dim=1)
    ns = {"torch": torch, "F": F, "iter_num": 120, "feat_list": [[f.detach() for f in fl] for fl in feat_list], "dist_logger": logger,
          "args": types.SimpleNamespace(T_dist=1.0), "pred_class_teacher": pred_class_teacher, "num_classes": RI.NUM_CLASSES,
          "model": model, "cube_losses": cl, "volume_batch": volume_batch, "bs": RI.BATCH, "labeled_bs": RI.LABELED_BS,
          "ema_output": ema_output, "unlab_pl_soft": unlab_pl_soft}
    exec(compile(blending_block(script), "<released blending block>", "exec"), ns)
    return {
        "loc_loss": float(loc_loss), "local_dice": float(local), "grads": grads,
        "blend": {"history_counts": torch.bincount(history.reshape(-1), minlength=RI.NUM_CLASSES).tolist(),
                  "weights": [float(v) for v in ns["current_organ_dist"]],
                  "unmix_pl": RI.checksum(ns["unmix_pl"]),
                  "target": RI.label_digest(ns["pred_class_mix"]),
                  "teacher": RI.label_digest(pred_class_teacher),
                  "counts_after": [int(v) for v in logger.class_dist_init]},
    }


def run_schedules(script, consistency_default: float, rampup_default: float) -> dict:
    arg = cw_argument(script)
    expr = lr_expression(script)
    steps = sorted({0, 1, 349, 350, 351, 700, 1000, 5000, 17000, 34999, 35000, 69999, 70000 - 350, 100000} | set(range(0, 70001, 3500)))
    cw = [script.get_current_consistency_weight(eval(arg, {"iter_num": s})) for s in steps]
    lr_steps = [0, 1, 2, 3, 100, 1000, 17000, 35000, 69999]
    lr = [eval(expr, {"base_lr": RI.BASE_LR, "iter_num": s, "max_iterations": script.args.max_iteration}) for s in lr_steps]
    return {"cw_argument": arg, "cw_steps": steps, "cw": cw, "consistency": script.args.consistency,
            "consistency_rampup": script.args.consistency_rampup, "lr_expression": expr, "lr_steps": lr_steps, "lr": lr,
            "max_iteration": script.args.max_iteration}


def opt_model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(RI.param_tensor("opt." + n, p.shape))
    return m


def opt_loss(m: torch.nn.Module) -> torch.Tensor:
    x = RI.logits((4, 6), seed=31, scale=1.0)
    return (m(x) ** 2).mean()


def run_optimizer(script) -> dict:
    m = opt_model()
    ns = {"optim": torch.optim, "model": m, "base_lr": RI.BASE_LR}
    exec(compile(optimizer_statement(script), "<released optimizer>", "exec"), ns)
    opt = ns["optimizer"]
    settings = {k: opt.param_groups[0][k] for k in ("lr", "momentum", "weight_decay", "nesterov", "dampening")}
    expr = lr_expression(script)
    for it in range(3):
        opt.zero_grad()
        opt_loss(m).backward()
        opt.step()
        lr_ = eval(expr, {"base_lr": RI.BASE_LR, "iter_num": it + 1, "max_iterations": script.args.max_iteration})
        for pg in opt.param_groups:
            pg["lr"] = lr_
    return {"settings": settings,
            "after_3_steps": {n: RI.checksum(p) for n, p in m.named_parameters()}}


def run_init(mn) -> dict:
    torch.manual_seed(1337)
    m = mn.VNet_Magic(n_channels=1, n_classes=RI.NUM_CLASSES, cube_size=RI.CUBE, patch_size=96)
    out = {}
    for name, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Conv3d, torch.nn.ConvTranspose3d, torch.nn.Linear, torch.nn.BatchNorm1d)):
            rec = {"type": type(mod).__name__}
            for pn in ("weight", "bias"):
                p = getattr(mod, pn, None)
                if p is not None:
                    f = p.detach().double()
                    rec[pn] = {"n": f.numel(), "mean": float(f.mean()), "std": float(f.std()), "absmax": float(f.abs().max())}
            out[name] = rec
    return out


# -- the released training loop ---------------------------------------------------------------------------
class _Loader:
    def __init__(self, batches, seeds, stamps):
        self.batches, self.seeds, self.stamps = batches, seeds, stamps

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        if self.stamps:  # a second epoch: the steps are done (max_iteration stays the released one: MagicNet's lr horizon)
            raise _Done
        for b, s in zip(self.batches, self.seeds):
            self.stamps.append(time.perf_counter())
            torch.manual_seed(s)
            yield b
        self.stamps.append(time.perf_counter())


class _Done(Exception):
    pass


def run_train(script, steps: int = RI.STEPS, record: bool = True) -> dict:
    """The released ``train()`` for ``steps`` iterations, everything but the step patched out."""
    models, rec, stamps = [], {"total": [], "loc": [], "cw": [], "dice": [], "lr": [], "grads": []}, []
    orig_create, orig_loc, orig_cw = script.create_model, script.cube_losses.cube_location_loss, script.get_current_consistency_weight
    names: dict[int, str] = {}

    def create_model(*a, **k):
        m = orig_create(*a, **{**k, "patchsize": RI.PATCH[0]})
        RI.load_released(m)
        models.append(m)
        if not names:
            names.update({id(p): n for n, p in m.named_parameters()})
        return m

    def loc_loss(*a, **k):
        out = orig_loc(*a, **k)
        rec["loc"].append(float(out[0]))
        return out

    def cw(epoch):
        v = orig_cw(epoch)
        rec["cw"].append(v)
        return v

    class SGD(torch.optim.SGD):
        def step(self, closure=None):
            if record:
                rec["lr"].append(self.param_groups[0]["lr"])
                rec["grads"].append({names[id(p)]: RI.checksum(p.grad) for g in self.param_groups for p in g["params"]
                                     if names.get(id(p)) in RI.TRACKED and p.grad is not None})
            return super().step(closure)

    def wrap_dice(cls):
        class D(cls):
            def forward(self, *a, **k):
                v = super().forward(*a, **k)
                rec["dice"].append(float(v))
                return v
        return D

    batches = []
    for k in range(steps):
        xl, yl, xu = RI.step_batch(k)
        batches.append({"image": torch.cat([xl, xu]), "label": torch.cat([yl, torch.zeros_like(yl)])})
    loader = _Loader(batches, [RI.STEP_SEED + k for k in range(steps)], stamps)
    orig_backward, orig_save = torch.Tensor.backward, torch.save

    def backward(self, *a, **k):
        rec["total"].append(float(self))
        return orig_backward(self, *a, **k)

    patches = {
        "create_model": create_model, "config_log": lambda *a: (logging.NullHandler(), logging.NullHandler()),
        "DataLoader": lambda *a, **k: loader, "TwoStreamBatchSampler": lambda *a, **k: None,
        "Synapse_fast": lambda *a, **k: None, "BTCV": lambda *a, **k: None, "patch_size": RI.PATCH,
        "optim": types.SimpleNamespace(SGD=SGD), "get_current_consistency_weight": cw, "num_classes": RI.NUM_CLASSES,
    }
    saved = {k: getattr(script, k) for k in patches if hasattr(script, k)}
    for k, v in patches.items():
        setattr(script, k, v)
    script.cube_losses.cube_location_loss = loc_loss
    orig_gadice = getattr(script, "GADice", None)
    if orig_gadice is not None:
        script.GADice = wrap_dice(orig_gadice)
    if hasattr(script, "losses"):  # DiceLoss calls super(DiceLoss, self): wrap its forward, keep the class
        dl_cls = script.losses.DiceLoss
        orig_dl = dl_cls.forward

        def dl_forward(self, *a, **k):
            v = orig_dl(self, *a, **k)
            rec["dice"].append(float(v))
            return v

        dl_cls.forward = dl_forward
    orig_val = getattr(script.test_util, "validation_all_case", None)
    script.test_util.validation_all_case = lambda *a, **k: (np.zeros(13), np.zeros(13), None)
    torch.Tensor.backward, torch.save = backward, (lambda *a, **k: None)
    try:
        if hasattr(script, "labeled_list"):
            script.train(script.labeled_list, script.unlabeled_list, script.eval_list)
        else:
            script.train(["a", "b"], ["c"])
    except _Done:
        pass
    finally:
        torch.Tensor.backward, torch.save = orig_backward, orig_save
        for k, v in saved.items():
            setattr(script, k, v)
        script.cube_losses.cube_location_loss = orig_loc
        script.test_util.validation_all_case = orig_val
        if hasattr(script, "losses"):
            dl_cls.forward = orig_dl
        if orig_gadice is not None:
            script.GADice = orig_gadice
    student, teacher = models[0], models[1]
    sd, td = dict(student.named_parameters()), dict(teacher.named_parameters())
    n_dice = len(rec["dice"]) // steps
    out = {
        "steps": steps, "total": rec["total"], "loc": rec["loc"], "cw": rec["cw"], "lr": rec["lr"], "grads": rec["grads"],
        "cons": [rec["dice"][k * n_dice + n_dice - 1] for k in range(steps)],
        "weights": {n: RI.checksum(sd[n]) for n in RI.TRACKED},
        "teacher": {n: RI.checksum(td[n]) for n in RI.TRACKED[:3]},
        "all_sum": float(sum(p.detach().double().sum() for n, p in sd.items() if n not in RI.RELEASED_ONLY)),
        "step_seconds": [b - a for a, b in zip(stamps, stamps[1:])],
    }
    out["sup"] = [t - 0.1 * lo - w * c for t, lo, w, c in zip(out["total"], out["loc"], out["cw"], out["cons"])]
    return out


# -- timing -------------------------------------------------------------------------------------------------
def suite_step_seconds(method_name: str, hparams: dict, steps: int = 2) -> float:
    import dataclasses

    from bench.config import resolve_method
    from bench.core.registry import METHODS
    from bench.step import TrainStep, make_optimizers
    from methods.base import MethodContext

    cls = METHODS.get(method_name)
    ms = resolve_method(method_name, cls, [])
    train = dataclasses.replace(ms.train, lr_horizon=70000, amp=False, lr=RI.BASE_LR)
    ctx = MethodContext(num_classes=RI.NUM_CLASSES, class_names=tuple(f"c{i}" for i in range(RI.NUM_CLASSES)), patch_size=RI.PATCH,
                        width=RI.WIDTH, iterations=17000)
    m = cls(ctx, **{**ms.hparams, **hparams})
    RI.load_suite(m.networks["net"])
    RI.load_suite(m.teachers["teacher"])
    m.train()
    ts = TrainStep(m, make_optimizers(m, train), torch.device("cpu"), amp=False)
    times = []
    for k in range(steps):
        xl, yl, xu = RI.step_batch(k)
        torch.manual_seed(RI.STEP_SEED + k)
        ts.set_lr(k)
        t = time.perf_counter()
        ts({"image": xl, "label": yl}, {"image": xu}, k)
        times.append(time.perf_counter() - t)
    return times[-1]


def time_steps(scripts: dict, rounds: int) -> None:
    torch.set_num_threads(1)
    hp = {"galoss": ("ga", {"released_cube_order": True}), "magicnet": ("magicnet", {"released_cube_order": True})}
    for key, script in scripts.items():
        rel, ours = [], []
        for _ in range(rounds):
            rel.append(run_train(script, steps=2, record=False)["step_seconds"][-1])
            ours.append(suite_step_seconds(*hp[key]))
        r, o = statistics.median(rel), statistics.median(ours)
        print(f"{key}: released step {r:.2f} s, suite step {o:.2f} s (median of {rounds}, 1 thread, 2nd step): suite / released = {o / r:.2f}")


# -- main ---------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--galoss", type=Path, required=True)
    ap.add_argument("--magicnet", type=Path, required=True)
    ap.add_argument("--galoss-commit", default=None, help="commit of --galoss when it is no git work tree (e.g. a git archive)")
    ap.add_argument("--magicnet-commit", default=None, help="commit of --magicnet when it is no git work tree")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--time", action="store_true", help="time the released and the suite's training step instead (no golden)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (--time)")
    a = ap.parse_args()
    _stubs()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    mn_root = a.magicnet / "code" if (a.magicnet / "code").is_dir() else a.magicnet
    argv = ["train", "--labeled_bs", str(RI.LABELED_BS), "--batch_size", str(RI.BATCH)]
    ga = load_release(a.galoss, ["GALoss", "networks.magicnet", "utils.cube_losses", "utils.cube_utils", "train_Synapse_MagicNet"], argv)
    mn = load_release(mn_root, ["utils.losses", "networks.magicnet", "utils.cube_losses", "utils.cube_utils", "train_main_btcv"], argv)
    ga_s, mn_s = ga["train_Synapse_MagicNet"], mn["train_main_btcv"]
    if a.time:
        time_steps({"galoss": ga_s, "magicnet": mn_s}, a.rounds)
        return
    t0 = time.time()
    golden = {
        "repositories": {"cicailalala/GALoss": repo_commit(a.galoss, a.galoss_commit),
                         "DeepMed-Lab-ECNU/MagicNet": repo_commit(a.magicnet, a.magicnet_commit)},
        "command": "python docs/scripts/released/galoss_magicnet_goldens.py --galoss <GALoss checkout> --magicnet <MagicNet checkout> --write",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "losses": run_losses(ga["GALoss"], mn["utils.losses"]),
        "cubes": {"galoss": run_cubes(ga["utils.cube_losses"], ga["utils.cube_utils"]),
                  "magicnet": run_cubes(mn["utils.cube_losses"], mn["utils.cube_utils"])},
        "mixing": {"galoss": run_mixing(ga["utils.cube_utils"]), "magicnet": run_mixing(mn["utils.cube_utils"])},
        "cube_losses": {"galoss": run_cube_losses(ga, ga_s, "galoss"), "magicnet": run_cube_losses(mn, mn_s, "magicnet")},
        "schedules": {"galoss": run_schedules(ga_s, 0.1, 200.0), "magicnet": run_schedules(mn_s, 0.1, 200.0)},
        "optimizer": {"galoss": run_optimizer(ga_s), "magicnet": run_optimizer(mn_s)},
        "init": run_init(ga["networks.magicnet"]),
    }
    print(f"pieces done in {time.time() - t0:.0f} s", flush=True)
    golden["train"] = {"galoss": run_train(ga_s), "magicnet": run_train(mn_s)}
    for v in golden["train"].values():
        v.pop("step_seconds")
    print(f"train done in {time.time() - t0:.0f} s", flush=True)
    write_golden("galoss_magicnet", golden, write=a.write, preview=0)


if __name__ == "__main__":
    main()
