"""Goldens of TAK's released code (Lunn88/TAK-Semi) on small fixed inputs (issue #30, part 3).

    python docs/scripts/released/tak_goldens.py /path/to/TAK-Semi [--write] [--out FILE]

``/path/to/TAK-Semi`` is a checkout of the release (a git clone; commit 8f175c5 was used). It is
read, never copied into this repository: its modules are imported from there (networks/,
loss_amos.py, utils/, dataloaders/). Pieces of ``train_AMOS_MagicNet_GA_TAK.py`` are driven
without running the script: its functions (``get_current_consistency_weight``,
``update_ema_variables``, ``kaiming_normal_init_weight``) and single statements (argparse
defaults, the optimiser, the lr / entropy / contrast schedules, the epoch length, the cube-wise
pseudo-label blending block) are taken from its syntax tree and evaluated in a namespace that
holds what the script would have there. Everything runs on the CPU in float32: ``.cuda()`` is a
no-op, ``torch.load`` maps to the CPU (the released prior was saved from a GPU), and h5py /
skimage / tensorboardX, imported but not used by these pieces, are stubbed when missing.

Inputs and weights come from ``tests/released_inputs_tak.py`` (integer hashes: no random generator), and
the golden stores the recipe of each input beside the numbers, so the test builds the same
tensors. Tensors are stored as ``tests.released.summary`` (numbers only). What cannot be
driven, and why, is listed under "not_covered" in the golden.

The released training step itself (one iteration of the loop) is not run: its within-image
recovery hard-codes a 3x3x3 cube grid (``f_list.shape[3] * 3``), i.e. 96^3 patches, where one
forward and backward of the network alone takes ~3 minutes on a 2-core CPU. Its TAK-specific
statements are run on fixed inputs instead: the cube-wise pseudo-label blending block (64^3)
and the assembly of the contrastive term (96^3, from fixed encoder maps: no backbone).
About 1 minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import hashlib
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from _golden_io import ROOT, golden_path, repo_commit, write_golden
from torch import nn

from tests.released_inputs_tak import build, fill, fixed, labels_recipe, recipe, summary

GOLDEN = golden_path("tak")
TRAIN_SCRIPT = "train_AMOS_MagicNet_GA_TAK.py"
NUM_CLASSES = 16
OPTIONAL = ("h5py", "skimage", "skimage.measure", "skimage.transform", "tensorboardX", "medpy", "medpy.metric", "nibabel")


# -- the release, imported from its checkout ------------------------------------------------------------
class _Stub(types.ModuleType):
    """A module the released files import but these pieces never use."""

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)

        def missing(*a, **k):
            raise RuntimeError(f"{self.__name__}.{attr} is stubbed by {Path(__file__).name}")

        return missing


def _cpu_only() -> None:
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    load = torch.load
    torch.load = lambda *a, **k: load(*a, **{"map_location": "cpu", **k})  # type: ignore[assignment]


def _stub_missing() -> list[str]:
    stubbed = []
    for name in OPTIONAL:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            sys.modules[name] = _Stub(name)
            stubbed.append(name)
    return stubbed


def load_release(root: Path) -> SimpleNamespace:
    """The released modules, imported from ``root`` (cwd ``root``: the network reads ./CLIP/...)."""
    _cpu_only()
    stubbed = _stub_missing()
    sys.path.insert(0, str(root))
    os.chdir(root)
    mods = {}
    for key, name in (("net", "networks.amos_magicnet_clip_contrast"), ("loss", "loss_amos"), ("ramps", "utils.ramps"),
                      ("cube_losses", "utils.cube_losses"), ("cube_utils", "utils.cube_utils"), ("dataset", "dataloaders.dataset")):
        mod = importlib.import_module(name)
        if not Path(mod.__file__).resolve().is_relative_to(root.resolve()):
            raise SystemExit(f"{name} was imported from {mod.__file__}, not from the checkout {root}")
        mods[key] = mod
    return SimpleNamespace(stubbed=stubbed, **mods)


class TrainScript:
    """Functions and statements of the released training script, by name, from its syntax tree."""

    def __init__(self, path: Path):
        self.path = path
        self.src = path.read_text()
        self.tree = ast.parse(self.src)
        self.used: dict[str, dict] = {}

    def _record(self, key: str, node: ast.AST) -> None:
        self.used[key] = {"line": node.lineno, "source": ast.get_source_segment(self.src, node).splitlines()[0].strip()}

    def defaults(self) -> dict:
        """The argparse defaults: {option: default}."""
        out = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                kw = {k.arg: k.value for k in node.keywords}
                out[node.args[0].value.lstrip("-")] = ast.literal_eval(kw["default"])
        return out

    def function(self, name: str, ns: dict):
        """The script's function ``name``, defined in the namespace ``ns``."""
        (node,) = [n for n in ast.walk(self.tree) if isinstance(n, ast.FunctionDef) and n.name == name]
        self._record(name, node)
        exec(compile(ast.Module([node], []), str(self.path), "exec"), ns)
        return ns[name]

    def value(self, target: str, contains: str = "") -> types.CodeType:
        """The expression assigned to ``target`` (the one assignment whose source holds ``contains``)."""
        nodes = [n for n in ast.walk(self.tree) if isinstance(n, ast.Assign) and len(n.targets) == 1
                 and isinstance(n.targets[0], ast.Name) and n.targets[0].id == target
                 and contains in ast.get_source_segment(self.src, n)]
        if len(nodes) != 1:
            raise SystemExit(f"{self.path.name}: {len(nodes)} assignments to {target} holding {contains!r}")
        self._record(target, nodes[0])
        return compile(ast.Expression(nodes[0].value), str(self.path), "eval")

    def block(self, condition: str, nth: int = 0, count: int = 1) -> types.CodeType:
        """The ``nth`` (in source order) of the ``count`` statements ``if <condition>:`` (its whole
        body) as code to exec."""
        nodes = sorted((n for n in ast.walk(self.tree) if isinstance(n, ast.If) and ast.get_source_segment(self.src, n.test) == condition),
                       key=lambda n: n.lineno)
        if len(nodes) != count:
            raise SystemExit(f"{self.path.name}: {len(nodes)} blocks 'if {condition}:', expected {count}")
        self._record(f"if {condition} #{nth + 1}", nodes[nth])
        return compile(ast.Module([nodes[nth]], []), str(self.path), "exec")

    def assignments(self, *targets: str) -> types.CodeType:
        """The (single) assignments to ``targets``, in source order, as code to exec."""
        nodes = sorted((n for n in ast.walk(self.tree) if isinstance(n, ast.Assign) and len(n.targets) == 1
                        and isinstance(n.targets[0], ast.Name) and n.targets[0].id in targets), key=lambda n: n.lineno)
        if sorted(n.targets[0].id for n in nodes) != sorted(targets):
            raise SystemExit(f"{self.path.name}: assignments {[n.targets[0].id for n in nodes]} for {targets}")
        for n in nodes:
            self._record(n.targets[0].id, n)
        return compile(ast.Module(nodes, []), str(self.path), "exec")


# -- helpers ------------------------------------------------------------------------------------------------
def grads(named_params) -> dict:
    return {n: (summary(p.grad) if p.grad is not None else None) for n, p in named_params}


class Wrap(nn.Module):
    """What DataParallel gives the script: ``.module`` and the module's parameters."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *a, **k):
        return self.module(*a, **k)


@contextlib.contextmanager
def forbidden(name: str):
    """Fail if ``torch.<name>`` is called inside (e.g. no random anchor sampling may happen)."""
    orig = getattr(torch, name)

    def refuse(*a, **k):
        raise AssertionError(f"torch.{name} was called: the golden would depend on the random state")

    setattr(torch, name, refuse)
    try:
        yield
    finally:
        setattr(torch, name, orig)


# -- the goldens --------------------------------------------------------------------------------------------
def network_golden(rel, prior) -> dict:
    """The network with the text head at 32^3 (one cube: the location head has one output):
    encoder maps, class embedding, decoder map, logits, contrastive projections, and the gradients
    of every parameter for GACE + GADice + fixed projections of the contrastive embeddings."""
    torch.manual_seed(0)
    model = rel.net.VNet_Magic_CLIP_2p_Contrast(n_channels=1, n_classes=NUM_CLASSES, cube_size=32, patch_size=32)
    model.text_embedding = prior.clone()
    fill(model.named_parameters(), tag="student")
    model.train()
    r_x, r_y = recipe((1, 1, 32, 32, 32), "tak:net:x", 0.0, 1.0), labels_recipe((1, 32, 32, 32), "tak:net:y", 12)
    x, y = build(r_x), build(r_y)
    feats, f_emb, t_emb, clip = model.forward_encoder(x, True)
    dec = model.forward_decoder(feats)
    logits = model.forward_prediction_head(feats, clip, dec)
    whole = model(x, True)[0]
    assert torch.equal(whole, logits)
    ce = rel.loss.GACE(k=10, gama=0.5)(logits, y.unsqueeze(1))
    dice = rel.loss.GADice()(F.softmax(logits, dim=1), y)
    emb = sum((f * fixed(f.shape, f"tak:net:fw{i}")).mean() for i, f in enumerate(f_emb))
    emb = emb + sum((t * fixed(t.shape, f"tak:net:tw{i}")).mean() for i, t in enumerate(t_emb))
    loss = ce + dice + emb
    loss.backward()
    return {
        "inputs": {"x": r_x, "y": r_y, "feature_weights": [f"tak:net:fw{i}" for i in range(3)],
                   "text_weights": [f"tak:net:tw{i}" for i in range(3)]},
        "logit_std_over_voxels": float(logits.detach().std(dim=(2, 3, 4)).mean()),
        "features": [summary(f) for f in feats],
        "class_embedding": summary(clip),
        "decoder": summary(dec),
        "logits": summary(logits),
        "feature_embeddings": [summary(f) for f in f_emb],
        "text_embeddings": [summary(t) for t in t_emb],
        "loss": {"ga_ce": float(ce), "ga_dice": float(dice), "embeddings": float(emb), "total": float(loss)},
        "param_shapes": {n: list(p.shape) for n, p in model.named_parameters()},
        "grads": grads(model.named_parameters()),
    }


HEAD_PREFIXES = ("text_to_256.", "text_to_vision.", "Gap_64.", "GAP_128.", "GAP_256.", "controller.", "precls_conv.")


def optimizer_golden(rel, script: TrainScript, args, prior) -> dict:
    """Three steps of the released optimiser (built by the script's own expression) with the
    released lr between steps, on the text-driven head (class embedding from the prior, GAP of
    fixed encoder maps, fixed decoder map), loss GACE + GADice. Parameter updates are stored as
    deltas (so that a step's size is compared, not drowned in the weights)."""
    torch.manual_seed(0)
    model = rel.net.VNet_Magic_CLIP_2p_Contrast(n_channels=1, n_classes=NUM_CLASSES, cube_size=32, patch_size=32)
    model.text_embedding = prior.clone()
    fill(model.named_parameters(), tag="student")
    head = [(n, p) for n, p in model.named_parameters() if n.startswith(HEAD_PREFIXES)]
    start = {n: p.detach().clone() for n, p in head}
    r_feats = [recipe((2, c, s, s, s), f"tak:opt:f{i}") for i, (c, s) in enumerate(((64, 4), (128, 2), (256, 2)))]
    r_dec, r_y = recipe((2, 16, 8, 8, 8), "tak:opt:dec"), labels_recipe((2, 8, 8, 8), "tak:opt:y", 14)
    r_x = recipe((1, 1, 32, 32, 32), "tak:opt:x", 0.0, 1.0)
    feats, dec, y, x = [build(r) for r in r_feats], build(r_dec), build(r_y), build(r_x)
    base_lr = args.base_lr
    ns = {"optim": torch.optim, "model": SimpleNamespace(parameters=lambda: iter([p for _, p in head])), "base_lr": base_lr}
    optimizer = eval(script.value("optimizer", "optim.SGD"), ns)
    lr_expr = script.value("lr_", "max_lr_iters")
    ce_loss, dice_loss = rel.loss.GACE(k=10, gama=0.5), rel.loss.GADice()
    steps, lr_ = [], base_lr
    for iter_num in range(3):
        optimizer.zero_grad()
        clip = model.forward_encoder(x)[3]  # the class embedding (the encoder maps are not used)
        logits = model.forward_prediction_head(feats, clip, dec)
        loss = ce_loss(logits, y.unsqueeze(1)) + dice_loss(F.softmax(logits, dim=1), y)
        loss.backward()
        optimizer.step()
        steps.append({"iter": iter_num, "lr": lr_, "loss": float(loss)})
        lr_ = eval(lr_expr, {"base_lr": base_lr, "iter_num": iter_num + 1, "args": args})
        for g in optimizer.param_groups:
            g["lr"] = lr_
    group = optimizer.param_groups[0]
    return {
        "inputs": {"features": r_feats, "decoder": r_dec, "y": r_y, "x": r_x},
        "sgd": {k: group[k] for k in ("momentum", "dampening", "weight_decay", "nesterov")} | {"lr": base_lr},
        "steps": steps,
        "delta": {n: summary(p.detach() - start[n]) for n, p in head},
    }


def ga_golden(rel) -> dict:
    """GADice on probabilities and GACE on logits, with and without absent classes: values and
    gradients with respect to the probabilities / logits."""
    out = {}
    for case, (shape, n_present) in {"absent": ((2, 16, 4, 6, 6), 11), "present": ((2, 4, 4, 6, 6), 4)}.items():
        b, c, *sp = shape
        r_logits, r_y = recipe(shape, f"tak:ga:{case}:logits", -3.0, 3.0), labels_recipe((b, *sp), f"tak:ga:{case}:y", n_present)
        logits, y = build(r_logits).requires_grad_(True), build(r_y)
        probs = F.softmax(logits.detach(), dim=1).requires_grad_(True)
        dice = rel.loss.GADice()(probs, y)
        dice.backward()
        ce = rel.loss.GACE(k=10, gama=0.5)(logits, y.unsqueeze(1))
        ce.backward()
        out[case] = {"inputs": {"logits": r_logits, "y": r_y}, "ga_dice": float(dice), "ga_ce": float(ce),
                     "ga_dice_grad": summary(probs.grad), "ga_ce_grad": summary(logits.grad)}
    return out


def contrastive_golden(rel) -> dict:
    """``ContrastiveLoss``: (a) its SupCon loss on fixed anchors; (b) the whole loss on 12 maps
    (6 labeled-derived, 6 unlabeled-derived with an entropy mask) whose classes never exceed
    n_view voxels at any scale, so no voxel is sampled (torch.randperm is forbidden while it
    runs); (c) the class counts its sampler draws when classes exceed n_view (the subset is
    random, the counts are not)."""
    con = rel.loss.ContrastiveLoss()
    # (a)
    r_a, r_t = recipe((50, 16), "tak:con:anchors"), labels_recipe((50,), "tak:con:anchor_labels", 6)
    a = build(r_a).requires_grad_(True)
    t = build(r_t)
    t[-1] = 9  # an anchor without positives
    sup = con.contrastive_loss(F.normalize(a, dim=1), t)
    sup.backward()
    # (b) labels: class (a + 2 b + 3 c + 5 image) mod 16 on the 8^3 grid of 4^3 blocks
    z, yy, xx = torch.meshgrid(*(torch.arange(32) // 4,) * 3, indexing="ij")
    label = torch.stack([(z + 2 * yy + 3 * xx + 5 * i) % 16 for i in range(12)])[:, None].long()
    r_f = [recipe((12, c, s, s, s), f"tak:con:f{i}") for i, (c, s) in enumerate(((64, 8), (128, 4), (256, 2)))]
    r_txt = [recipe((32, c), f"tak:con:t{i}") for i, c in enumerate((64, 128, 256))]
    r_ent = recipe((6, 1, 32, 32, 32), "tak:con:entropy", 0.0, 1.2)
    feats = [build(r).requires_grad_(True) for r in r_f]
    text = [build(r).requires_grad_(True) for r in r_txt]
    entropy, threshold = build(r_ent), 0.6
    with forbidden("randperm"):
        loss = con(feats, label.clone(), text, entropy, threshold, sample_num=10)
    loss.backward()
    # (c)
    r_sf, r_sl = recipe((2, 200, 4), "tak:con:sample_features"), labels_recipe((2, 200), "tak:con:sample_labels", 5)
    s_lab = build(r_sl) - 1  # classes 0..3 and -1 (ignored)
    torch.manual_seed(0)
    _, anc_labels = con.sample_anchor(build(r_sf), s_lab, 12)
    return {
        "supcon": {"inputs": {"anchors": r_a, "labels": r_t, "last_label": 9}, "loss": float(sup), "grad": summary(a.grad)},
        "no_sampling": {
            "inputs": {"labels": "(z//4 + 2 (y//4) + 3 (x//4) + 5 image) % 16 on 12x1x32^3", "features": r_f, "text": r_txt,
                       "entropy": r_ent, "threshold": threshold, "sample_num": 10},
            "loss": float(loss), "feature_grads": [summary(f.grad) for f in feats], "text_grads": [summary(t.grad) for t in text]},
        "sampling_counts": {"inputs": {"features": r_sf, "labels": r_sl, "minus": 1, "n_view": 12},
                            "counts": torch.bincount(anc_labels, minlength=4).tolist()},
    }


def schedule_golden(rel, script: TrainScript, args, root: Path) -> dict:
    """Epoch length, consistency weight, lr, entropy threshold and contrast switch over the run,
    for each labeled share the script can train (--label_num 4 / 10 / 21)."""
    cons = script.function("get_current_consistency_weight", {"args": args, "ramps": rel.ramps})
    lr_expr = script.value("lr_", "max_lr_iters")
    ent_expr = script.value("entropy_threshold")
    contrast_expr = script.value("do_contrast")
    lab_expr, unl_expr = script.value("labeled_idxs"), script.value("unlabeled_idxs")
    sampler_expr = script.value("batch_sampler")
    out = {}
    for share in ("2p", "5p", "10p"):
        unlabeled_list = (root / "data" / "amos_splits" / f"unlabeled_{share}.txt").read_text().split()
        ns = {"unlabeled_list": unlabeled_list, "args": args, "TwoStreamBatchSampler": rel.dataset.TwoStreamBatchSampler}
        ns["labeled_idxs"], ns["unlabeled_idxs"] = eval(lab_expr, ns), eval(unl_expr, ns)
        epoch = len(eval(sampler_expr, ns))
        total = (args.max_epoch + 1) * epoch
        its = sorted({0, 1, epoch - 1, epoch, 10 * epoch, 20 * epoch, 21 * epoch - 1, 21 * epoch, 50 * epoch, 80 * epoch,
                      100 * epoch, 120 * epoch, 159 * epoch, 160 * epoch, total - 1, 1000, 5000, 16000, 30000})
        rows = []
        for it in its:
            e = it // epoch
            lr = args.base_lr if it == 0 else eval(lr_expr, {"base_lr": args.base_lr, "iter_num": it, "args": args})
            rows.append({"iter": it, "epoch": e, "consistency": cons(e), "lr": lr,
                         "entropy_threshold": float(eval(ent_expr, {"np": np, "ramps": rel.ramps, "epoch_num": e, "args": args})),
                         "contrast": bool(eval(contrast_expr, {"epoch_num": e, "args": args}))})
        out[share] = {"n_unlabeled": len(unlabeled_list), "epoch_length": epoch, "iterations": total, "rows": rows}
    return out


def ema_golden(script: TrainScript) -> dict:
    """``update_ema_variables`` on a small two-layer module over a sequence of steps, the student
    moving between steps."""
    update = script.function("update_ema_variables", {})

    def net():
        return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))

    teacher, student = net(), net()
    fill(teacher.named_parameters(), tag="ema:teacher")
    fill(student.named_parameters(), tag="ema:student")
    steps, after = [0, 1, 2, 50, 99, 100, 101, 1000], []
    for step in steps:
        with torch.no_grad():
            for n, p in student.named_parameters():
                p.add_(0.05 * fixed(p.shape, f"ema:move:{step}:{n}"))
        update(student, teacher, 0.99, step)
        after.append({n: summary(p) for n, p in teacher.named_parameters()})
    return {"module": "Sequential(Linear(6, 5), ReLU, Linear(5, 3))", "decay": 0.99, "steps": steps,
            "student_move": "0.05 fixed(shape, 'ema:move:<step>:<name>') before each update", "teacher_after": after}


def init_golden(rel, script: TrainScript) -> dict:
    """Per-parameter statistics of the released network as constructed (PyTorch's default init:
    the script never calls an initialiser), torch seeds 0 and 1, and after the script's unused
    ``kaiming_normal_init_weight``."""

    def stats(model):
        return {n: {"shape": list(p.shape), "numel": p.numel(), "mean": float(p.mean()), "std": float(p.std()) if p.numel() > 1 else 0.0,
                    "min": float(p.min()), "max": float(p.max())} for n, p in model.named_parameters()}

    out = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = rel.net.VNet_Magic_CLIP_2p_Contrast(n_channels=1, n_classes=NUM_CLASSES, cube_size=32, patch_size=96)
        out[f"default_seed{seed}"] = stats(model)
    kaiming = script.function("kaiming_normal_init_weight", {"nn": nn})
    torch.manual_seed(0)
    model = rel.net.VNet_Magic_CLIP_2p_Contrast(n_channels=1, n_classes=NUM_CLASSES, cube_size=32, patch_size=96)
    kaiming(model)
    out["kaiming_normal_init_weight_seed0"] = stats(model)
    out["module_types"] = {n: type(m).__name__ for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    return out


def cube_golden(rel) -> dict:
    """The magic-cube index machinery on small tensors (cube 4): the within-image cube list and
    its recovery (grids 3x2x4 and 3x3x3), the location labels, and the cross-image partition /
    recovery indices with the index drawn at torch seed 0."""
    cl, cu = rel.cube_losses, rel.cube_utils
    out = {}
    for name, shape in {"grid_3x2x4": (2, 3, 12, 8, 16), "grid_3x3x3": (1, 2, 12, 12, 12)}.items():
        r = recipe(shape, f"tak:cubes:{name}")
        x = build(r)
        plist = torch.cat(cl.get_patch_list(x, cube_size=4), dim=1)  # (B, N, C, 4, 4, 4)
        rec = cl.unmix_tensor(plist, x.shape)
        loc = [int(v) for v in torch.cat(cu.get_loc_mask(list(shape), 4))]
        out[name] = {"input": r, "cube_list": summary(plist), "recovered": summary(rec), "recovered_equals_input": bool(torch.equal(rec, x)),
                     "location_labels": loc}
    r_x, r_f = recipe((4, 3, 12, 12, 12), "tak:cubes:cross"), recipe((4, 5, 6, 6, 6), "tak:cubes:cross_feat")
    x, f = build(r_x), build(r_f)
    torch.manual_seed(0)
    part, rec, ind = cu.get_part_and_rec_ind(volume_shape=x.shape, nb_cubes=3, nb_chnls=3, rand_loc_ind=None)
    mixed = torch.gather(x, 0, part)
    back = torch.gather(mixed, 0, rec)
    rec_f = cu.get_part_and_rec_ind(volume_shape=f.shape, nb_cubes=3, nb_chnls=5, rand_loc_ind=ind)[1]
    out["cross_image"] = {"input": r_x, "features": r_f, "index": ind.tolist(), "mixed": summary(mixed),
                          "recovered_equals_input": bool(torch.equal(back, x)), "features_recovered": summary(torch.gather(f, 0, rec_f))}
    return out


def pseudo_label_golden(rel, script: TrainScript, args, prior) -> dict:
    """At 64^3 (a 2x2x2 cube grid; the location head has 8 outputs): ``cube_location_loss`` of
    two images with the student, then the script's cube-wise pseudo-label blending block
    (``if iter_num > 100:``) for those two images as the unlabeled ones: the EMA teacher decodes
    the student's cube features with the student's class embedding (``get_mix_pl``), blended
    with fixed teacher logits by the organ-class distribution. ``args.T_dist``, read there but
    never defined by the script (a crash at iteration 101), is set to GALoss' 1.0."""
    torch.manual_seed(0)
    student = rel.net.VNet_Magic_CLIP_2p_Contrast(n_channels=1, n_classes=NUM_CLASSES, cube_size=32, patch_size=64)
    teacher = rel.net.VNet_Magic_CLIP_2p_Contrast(n_channels=1, n_classes=NUM_CLASSES, cube_size=32, patch_size=64)
    for m, tag in ((student, "student"), (teacher, "teacher")):
        m.text_embedding = prior.clone()
        fill(m.named_parameters(), tag=tag)
        m.train()
    r_x = recipe((2, 1, 64, 64, 64), "tak:pl:x", 0.0, 1.0)
    r_t = recipe((2, NUM_CLASSES, 64, 64, 64), "tak:pl:teacher_logits", -2.0, 2.0)
    r_counts = labels_recipe((NUM_CLASSES,), "tak:pl:class_counts", 100000)
    x, ema_output = build(r_x), build(r_t)
    patch_list = rel.cube_losses.get_patch_list(x, cube_size=32)
    loc_list = rel.cube_utils.get_loc_mask([2, 1, 64, 64, 64], 32)
    torch.manual_seed(0)
    idx = torch.randperm(len(patch_list))
    with torch.no_grad():
        loc_loss, feat_list, feat_embed_list = rel.cube_losses.cube_location_loss(student, loc_list, patch_list, idx, True)
        clip_embedding = student.forward_encoder(patch_list[0][0])[3]  # the student's class embedding
    dist_logger = rel.cube_utils.OrganClassLogger(num_classes=NUM_CLASSES)
    dist_logger.class_dist_init = (build(r_counts) + 1).tolist()
    unlab_pl_soft = F.softmax(ema_output, dim=1)
    ns = {"torch": torch, "F": F, "cube_losses": rel.cube_losses, "iter_num": 150, "dist_logger": dist_logger,
          "args": SimpleNamespace(**vars(args), T_dist=1.0), "pseudo_label": torch.argmax(unlab_pl_soft, dim=1, keepdim=True).long(),
          "num_classes": NUM_CLASSES, "ema_model": Wrap(teacher), "feat_list": feat_list, "labeled_bs": 0,
          "clip_embedding": clip_embedding, "volume_batch": x, "batch_size": 2, "ema_output": ema_output, "unlab_pl_soft": unlab_pl_soft}
    with torch.no_grad():
        exec(script.block("iter_num > 100"), ns)
    pred = ns["pred_class_mix"]
    return {
        "inputs": {"x": r_x, "teacher_logits": r_t, "class_counts": r_counts, "class_counts_plus": 1, "iter_num": 150, "T_dist": 1.0},
        "location_labels": [int(v) for v in torch.cat(loc_list)],
        "loc_loss": float(loc_loss),
        "cube_features": [[summary(f) for f in feats] for feats in feat_list],
        "cube_feature_embeddings": [[summary(f) for f in feats] for feats in feat_embed_list],
        "class_embedding": summary(clip_embedding),
        "class_weights": summary(ns["current_organ_dist"]),
        "unmix_pl": summary(ns["unmix_pl"]),
        "blended_entropy": summary(ns["mix_entropy_map"]),
        "target": summary(pred.float()),
        "target_histogram": torch.bincount(pred.reshape(-1), minlength=NUM_CLASSES).tolist(),
        "logged_classes": torch.bincount(torch.cat(dist_logger.class_total_pixel_store).reshape(-1), minlength=NUM_CLASSES).tolist(),
    }


@contextlib.contextmanager
def first_voxels():
    """``torch.randperm(n)`` -> ``arange(n)``: the released sampler keeps the first n_view voxels of
    each (image, class) in index order, a subset the suite's sampler can be made to draw too."""
    orig = torch.randperm
    torch.randperm = lambda n, *a, **k: torch.arange(n)
    try:
        yield
    finally:
        torch.randperm = orig


def contrast_assembly_golden(rel, script: TrainScript, args, prior) -> dict:
    """The contrastive term as the step assembles it, at 96^3 (the 3x3x3 grid the script hard-codes),
    2 labeled + 2 unlabeled images, from fixed encoder maps instead of the backbone's: the
    student's voxel projections (``features_to_*``) of the whole, the cross-image mixed and the
    cube maps; the script's own statements recover the mixed maps (``cube_rec_ind_*`` and the
    first ``if do_contrast:`` block) and assemble, order (organized_idx), label and mask the 12
    maps and call ``ContrastiveLoss`` (the second ``if do_contrast:`` block), with
    ``torch.randperm`` returning ``arange`` (the first n_view voxels of each class are kept)."""
    torch.manual_seed(0)
    model = rel.net.VNet_Magic_CLIP_2p_Contrast(n_channels=1, n_classes=NUM_CLASSES, cube_size=32, patch_size=96)
    model.text_embedding = prior.clone()
    fill(model.named_parameters(), tag="student")
    chans, whole_size, cube_size = (64, 128, 256), (24, 12, 6), (8, 4, 2)
    r_whole = [recipe((4, c, s, s, s), f"tak:ca:whole{k}") for k, (c, s) in enumerate(zip(chans, whole_size))]
    r_mixed = [recipe((4, c, s, s, s), f"tak:ca:mixed{k}") for k, (c, s) in enumerate(zip(chans, whole_size))]
    r_cubes = [[recipe((27, c, s, s, s), f"tak:ca:cube{b}:{k}") for k, (c, s) in enumerate(zip(chans, cube_size))] for b in range(4)]
    r_ind = recipe((4, 3, 3, 3), "tak:ca:ind")
    r_lab, r_pseudo, r_blend = (labels_recipe((4, 96, 96, 96), "tak:ca:labels", NUM_CLASSES),
                                labels_recipe((2, 1, 96, 96, 96), "tak:ca:pseudo", NUM_CLASSES),
                                labels_recipe((2, 96, 96, 96), "tak:ca:blended", NUM_CLASSES))
    r_ent, r_ment = recipe((2, 1, 96, 96, 96), "tak:ca:entropy", 0.0, 1.2), recipe((2, 1, 96, 96, 96), "tak:ca:blended_entropy", 0.0, 1.2)
    whole = [build(r).requires_grad_(True) for r in r_whole]
    mixed = [build(r).requires_grad_(True) for r in r_mixed]
    cubes = [[build(r).requires_grad_(True) for r in rb] for rb in r_cubes]
    ind = torch.argsort(build(r_ind), dim=0)
    epoch_num = 25
    threshold = float(eval(script.value("entropy_threshold"), {"np": np, "ramps": rel.ramps, "epoch_num": epoch_num, "args": args}))
    ns = {"torch": torch, "cube_utils": rel.cube_utils, "cube_losses": rel.cube_losses, "do_contrast": True, "nb_cubes": 3,
          "rand_loc_ind": ind, "mix_features": [None, None, *mixed], "args": args, "gpu_num": 1, "labeled_bs": 2,
          "features_embedding_list": [model.features_to_64(whole[0]), model.features_to_128(whole[1]), model.features_to_256(whole[2])],
          "mix_features_embedding_list": [model.features_to_64(mixed[0]), model.features_to_128(mixed[1]), model.features_to_256(mixed[2])],
          "feat_embed_list": [[model.features_to_64(c[0]), model.features_to_128(c[1]), model.features_to_256(c[2])] for c in cubes],
          "text_embedding_list": [model.text_to_64(model.text_embedding), model.text_to_128(model.text_embedding),
                                  model.text_to_256(model.text_embedding)],
          "label_batch": build(r_lab), "pseudo_label": build(r_pseudo), "pred_class_mix": build(r_blend),
          "entropy_map": build(r_ent), "mix_entropy_map": build(r_ment), "entropy_threshold": threshold,
          "con_loss": rel.loss.ContrastiveLoss()}
    exec(script.assignments("cube_rec_ind_3", "cube_rec_ind_2", "cube_rec_ind_1"), ns)
    exec(script.block("do_contrast", 0, 2), ns)
    with first_voxels():
        exec(script.block("do_contrast", 1, 2), ns)
    loss = ns["loss_con"]
    loss.backward()
    proj = ("features_to_", "text_to_64.", "text_to_128.", "text_to_256.")
    return {
        "inputs": {"whole": r_whole, "mixed": r_mixed, "cubes": r_cubes, "index_argsort_of": r_ind, "labels": r_lab,
                   "pseudo": r_pseudo, "blended": r_blend, "entropy": r_ent, "blended_entropy": r_ment, "epoch_num": epoch_num},
        "entropy_threshold": threshold, "contrast_w": args.contrast_w, "sample_num": args.contrast_sample_num,
        "maps": [summary(f) for f in ns["features_embedding_list"]],
        "loss": loss.item(),
        "whole_grads": [summary(t.grad) for t in whole], "mixed_grads": [summary(t.grad) for t in mixed],
        "cube_grads": [[summary(t.grad) for t in c] for c in cubes],
        "param_grads": {n: summary(p.grad) for n, p in model.named_parameters() if n.startswith(proj)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="a checkout of github.com/Lunn88/TAK-Semi")
    ap.add_argument("--write", action="store_true", help=f"write the golden ({GOLDEN.relative_to(ROOT)} or --out)")
    ap.add_argument("--out", type=Path, default=None, help="another file to write (implies --write)")
    ap.add_argument("--commit", default=None, help="the checkout's commit, if it is not a git checkout")
    opts = ap.parse_args()
    root = opts.checkout.resolve()
    out = (opts.out or GOLDEN).resolve()
    command = "python docs/scripts/released/tak_goldens.py <TAK-Semi checkout> --write" + (
        f" --out {opts.out}" if opts.out else "")
    commit = repo_commit(root, opts.commit, required=True)
    rel = load_release(root)
    script = TrainScript(root / TRAIN_SCRIPT)
    args = SimpleNamespace(**script.defaults())
    prior_file = root / "CLIP" / "amos_embedding_shape_location.pth"
    released_prior = torch.load(prior_file, map_location="cpu", weights_only=True).float()
    r_prior = recipe((2 * NUM_CLASSES, 512), "tak:prior", -0.3, 0.3)
    prior = build(r_prior)

    golden = {
        "repository": "github.com/Lunn88/TAK-Semi",
        "commit": commit,
        "command": command,
        "made": {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "device": "cpu", "dtype": "float32",
                 "stubbed_imports": rel.stubbed},
        "released_files": {str(p): hashlib.sha256((root / p).read_bytes()).hexdigest()[:16] for p in (
            TRAIN_SCRIPT, "loss_amos.py", "networks/amos_magicnet_clip_contrast.py", "utils/cube_losses.py", "utils/cube_utils.py",
            "utils/ramps.py", "dataloaders/dataset.py", "CLIP/amos_embedding_shape_location.pth")},
        "args": vars(args),
        "prior": {"released": {"file": "CLIP/amos_embedding_shape_location.pth",
                               "sha256": hashlib.sha256(prior_file.read_bytes()).hexdigest(),
                               "shape": list(released_prior.shape), "row_norm_mean": float(released_prior.norm(dim=1).mean()),
                               "summary": summary(released_prior)},
                  "fixed": r_prior, "fixed_row_norm_mean": float(prior.norm(dim=1).mean())},
    }
    for key, fn in (("network", lambda: network_golden(rel, prior)),
                    ("optimizer", lambda: optimizer_golden(rel, script, args, prior)),
                    ("ga_loss", lambda: ga_golden(rel)),
                    ("contrastive", lambda: contrastive_golden(rel)),
                    ("schedules", lambda: schedule_golden(rel, script, args, root)),
                    ("ema", lambda: ema_golden(script)),
                    ("init", lambda: init_golden(rel, script)),
                    ("cubes", lambda: cube_golden(rel)),
                    ("pseudo_label", lambda: pseudo_label_golden(rel, script, args, prior)),
                    ("contrast_assembly", lambda: contrast_assembly_golden(rel, script, args, prior))):
        print(f"{key} ...", flush=True)
        golden[key] = fn()
    golden["script_pieces"] = script.used
    golden["not_covered"] = {
        "training step": "one iteration of the loop is inline in train(); its within-image recovery hard-codes a 3x3x3 cube grid "
                         "(f_list.shape[3] * 3), so it runs only at 96^3, ~3 min per network forward+backward on a 2-core CPU",
        "anchor sampling": "ContrastiveLoss.sample_anchor draws torch.randperm per (image, class) in a loop; the suite draws random "
                           "keys for all voxels at once: the same subsets cannot be drawn, so the loss is covered where no voxel is "
                           "sampled, the sampler by its class counts, and the step's assembly of the term with torch.randperm -> "
                           "arange (the first n_view voxels of each class, which the test makes the suite draw too)",
        "within-image recovered prediction (local Dice)": "inline in the loop, with the 3x3x3 grid hard-coded",
        "AMP": "the release trains in fp16 autocast with a GradScaler on CUDA; the goldens are fp32 on the CPU",
    }
    write_golden("tak", golden, write=bool(opts.write or opts.out), out=out, sort_keys=False, preview=0)


if __name__ == "__main__":
    main()
