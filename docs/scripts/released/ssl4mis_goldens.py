"""Goldens of SSL4MIS' Mean Teacher 3D (HiLab-git/SSL4MIS), made by running the released code on CPU.

    python docs/scripts/released/ssl4mis_goldens.py --repo /path/to/SSL4MIS [--commit SHA] [--write] [--time]

``--repo`` is a checkout (or ``git archive``) of the released repository; the script puts its
``code/`` folder on ``sys.path`` and imports ``train_mean_teacher_3D.py``, ``utils/losses.py``,
``utils/ramps.py`` and ``dataloaders/brats2019.py`` from it. Nothing of the release is copied into
this repository. ``--write`` writes ``tests/golden/released/ssl4mis.json`` (numbers only);
without it the JSON is printed in short. ``--time`` times one Mean Teacher training step of the
released pieces against the suite's (1 thread, interleaved rounds, median; never written to the golden).

Inputs and weights come from ``tests/released_inputs_ssl4mis.py`` (seeded by name), which the
test ``tests/test_released_ssl4mis.py`` imports too.

Covered (released file:line of commit 06df604):

* ``utils/losses.py:156-192`` ``DiceLoss`` (squared denominators Σp² + Σy², smooth 1e-5, mean
  over all classes), on softmax probabilities, with the gradient w.r.t. the logits;
* the supervised loss ``0.5 * (CrossEntropyLoss + DiceLoss(softmax))`` (``train_mean_teacher_3D.py:150-154``);
* the consistency ``softmax_mse_loss(...).mean()`` (``utils/losses.py:65``; the loop writes the same
  ``torch.mean((softmax(s) - softmax(t))**2)`` inline, ``train_mean_teacher_3D.py:156``);
* ``ramps.sigmoid_rampup`` and ``get_current_consistency_weight(iter_num // 150)``
  (``train_mean_teacher_3D.py:67-69,155``) over a range of steps of the released 30k-iteration run;
* ``update_ema_variables`` (``train_mean_teacher_3D.py:72-76``) over a sequence of steps;
* the released training loop ``train()`` itself, run for ``LOOP_ITERATIONS`` iterations on a tiny
  network: per-step losses, consistency weight, the learning rate each optimiser step used, the
  poly lr ``base_lr * (1 - iter / max_iter) ** 0.9`` it sets (line 164), the SGD settings it builds
  (line 121), the teacher noise it draws (lines 140-142) and the student and EMA weights after 3 steps;
* ``dataloaders/brats2019.py:131-147`` ``RandomRotFlip``: described only (the suite has no such
  augmentation): which in-plane transforms it draws.

How the loop is driven (the substitutions, all outside the pieces compared): ``tensorboardX``,
``h5py``, ``skimage``, ``networks.net_factory_3d`` and ``val_3D`` are stubbed in ``sys.modules``;
``.cuda()`` is a no-op; ``net_factory_3d`` returns ``TinyNet`` (a named substitution for ``unet_3D``,
with weights drawn by name); the BraTS dataset, the ``TwoStreamBatchSampler`` (random
permutations of labeled / unlabeled indices) and the DataLoader (4 workers) are replaced by a fixed
sequence of batches (``released_inputs_ssl4mis.batch``), and the global torch seed is set before
each batch so that the teacher noise can be drawn again by the suite. The SummaryWriter stub
records every scalar the loop writes; ``optim.SGD`` is wrapped to record its settings and the lr
of each step.

Not covered: ``unet_3D`` (a different backbone from the suite's V-Net; known substitution), the
validation ``test_all_case`` (sliding window, stubbed), the data pipeline (RandomCrop, the
two-stream sampler), and the 2D scripts. The noise and the supervised-loss composition are inline
statements of ``train()``: they are covered through the loop, not as functions.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from _golden_io import ROOT, golden_path, provenance, repo_commit, write_golden
from torch import nn

from tests import released_inputs_ssl4mis as R

GOLDEN = golden_path("ssl4mis")
SCALARS = ("info/total_loss", "info/loss_ce", "info/loss_dice", "info/consistency_loss", "info/consistency_weight", "info/lr")


class Capture:
    """What the stubs record during one run of the released loop."""

    def __init__(self, independent_teacher: bool):
        self.independent_teacher = independent_teacher
        self.nets: list[nn.Module] = []
        self.scalars: dict[str, dict[int, float]] = {}
        self.sgd: dict = {}
        self.step_lrs: list[float] = []
        self.teacher_inputs: list[torch.Tensor] = []
        self.snapshot: dict = {}


CAP: Capture | None = None
#: whether two successive unet_3D constructions (student, then EMA model) have equal weights
UNET_TWO_CALLS_EQUAL: bool | None = None


def _install_stubs() -> None:
    """Stub the modules the released script imports that the venv lacks or that are substituted."""

    class SummaryWriter:
        def __init__(self, *a, **k):
            pass

        def add_scalar(self, tag, value, step):
            CAP.scalars.setdefault(tag, {})[int(step)] = float(value)
            if tag == "info/lr" and step == R.COMPARED_STEPS and not CAP.snapshot:
                CAP.snapshot = {"student": R.net_checksums(CAP.nets[0]), "teacher": R.net_checksums(CAP.nets[1])}

        def add_image(self, *a, **k):
            pass

        def close(self):
            pass

    def mod(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    def net_factory_3d(net_type="unet_3D", in_chns=1, class_num=2):
        role = "teacher" if (CAP.independent_teacher and CAP.nets) else "student"
        net = R.tiny_net(f"loop/{role}", class_num)
        if CAP.nets:  # the second network the loop creates is the EMA teacher
            net.register_forward_pre_hook(lambda m, inp: CAP.teacher_inputs.append(inp[0].detach().clone()))
        CAP.nets.append(net)
        return net

    mod("tensorboardX", SummaryWriter=SummaryWriter)
    mod("h5py", File=None)
    skimage = mod("skimage")
    skimage.measure = mod("skimage.measure")
    mod("networks.net_factory_3d", net_factory_3d=net_factory_3d)
    mod("val_3D", test_all_case=lambda *a, **k: np.zeros((1, 2)))


def load_released(repo: Path):
    """Import the released modules from ``repo/code`` (the training script parses its defaults)."""
    code = repo / "code"
    if not (code / "train_mean_teacher_3D.py").exists():
        raise SystemExit(f"{code}/train_mean_teacher_3D.py not found: --repo must be an SSL4MIS checkout")
    sys.path.insert(0, str(code))
    global UNET_TWO_CALLS_EQUAL
    unet = importlib.import_module("networks.unet_3D").unet_3D  # the released backbone, built only for this check
    torch.manual_seed(0)
    a, b = unet(n_classes=2, in_channels=1), unet(n_classes=2, in_channels=1)
    UNET_TWO_CALLS_EQUAL = all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    _install_stubs()
    argv, sys.argv = sys.argv, ["train_mean_teacher_3D.py", "--max_iterations", str(R.LOOP_ITERATIONS)]
    try:
        train_mod = importlib.import_module("train_mean_teacher_3D")
    finally:
        sys.argv = argv
    losses = importlib.import_module("utils.losses")
    ramps = importlib.import_module("utils.ramps")
    brats = importlib.import_module("dataloaders.brats2019")
    return train_mod, losses, ramps, brats


# -- the released loop, driven ------------------------------------------------------------------
class FixedDataset(torch.utils.data.Dataset):
    def __init__(self, base_dir=None, split="train", num=None, transform=None):
        pass

    def __len__(self):
        return 10**6

    def __getitem__(self, i):
        image, label = R.case(i)
        return {"image": image, "label": label}


class FixedSampler:
    """Batch ``s`` = cases 4 s .. 4 s + 3, for s < max_iterations."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter([list(range(R.BATCH * s, R.BATCH * s + R.BATCH)) for s in range(self.n)])

    def __len__(self):
        return self.n


class FixedLoader:
    """Batches of the fixed sampler; the global torch seed is set to ``noise_seed(step)`` before each."""

    def __init__(self, dataset, batch_sampler, **kwargs):
        self.dataset, self.batch_sampler = dataset, batch_sampler

    def __len__(self):
        return len(self.batch_sampler)

    def __iter__(self):
        for idx in self.batch_sampler:
            torch.manual_seed(R.noise_seed(idx[0] // R.BATCH))
            yield torch.utils.data.default_collate([self.dataset[i] for i in idx])


class RecordingSGD(torch.optim.SGD):
    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        CAP.sgd = {"kwargs": dict(kwargs), "defaults": {k: self.defaults[k] for k in ("lr", "momentum", "dampening", "weight_decay",
                                                                                     "nesterov", "maximize")}}

    def step(self, closure=None):
        CAP.step_lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


def run_loop(train_mod, iterations: int, independent_teacher: bool) -> Capture:
    """Run the released ``train()`` for ``iterations`` iterations on the tiny network."""
    global CAP
    CAP = Capture(independent_teacher)
    args = copy.copy(train_mod.args)
    args.max_iterations = iterations
    train_mod.args = args
    train_mod.BraTS2019 = FixedDataset
    train_mod.TwoStreamBatchSampler = lambda *a, **k: FixedSampler(iterations)
    train_mod.DataLoader = FixedLoader
    train_mod.optim = types.SimpleNamespace(SGD=RecordingSGD)
    train_mod.make_grid = lambda *a, **k: None
    train_mod.test_all_case = lambda *a, **k: np.zeros((1, 2))
    tensor_cuda, module_cuda = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train_mod.train(args, tmp)
    finally:
        torch.Tensor.cuda, nn.Module.cuda = tensor_cuda, module_cuda
    return CAP


def loop_goldens(train_mod) -> dict:
    cap = run_loop(train_mod, R.LOOP_ITERATIONS, independent_teacher=False)
    sc = cap.scalars
    # the writer logs at iter_num + 1 what step iter_num computed
    steps = [{"loss": sc["info/total_loss"][t + 1], "loss_ce": sc["info/loss_ce"][t + 1], "loss_dice": sc["info/loss_dice"][t + 1],
              "consistency_loss": sc["info/consistency_loss"][t + 1], "consistency_weight": sc["info/consistency_weight"][t + 1],
              "lr_used": cap.step_lrs[t]} for t in range(R.COMPARED_STEPS)]
    noise = []
    for t in range(R.COMPARED_STEPS):
        n = cap.teacher_inputs[t] - R.batch(t)[0][R.LABELED_BS:]
        noise.append({"shape": list(n.shape), "min": float(n.min()), "max": float(n.max()),
                      "at_clip": int((n.abs() >= 0.2 - 1e-7).sum()), **R.checksum(n)})
    sampled = [t for t in R.STEP_SAMPLES if t < R.LOOP_ITERATIONS]
    indep = run_loop(train_mod, 1, independent_teacher=True)
    return {
        "iterations": R.LOOP_ITERATIONS,
        # the loop builds the EMA model with a second net_factory_3d call (lines 95-96): with the
        # released unet_3D that is an independent random init (measured on two unet_3D builds)
        "networks_created": len(cap.nets),
        "teacher_equals_student_at_start": UNET_TWO_CALLS_EQUAL,
        "sgd": cap.sgd,
        "steps": steps,
        "noise": noise,
        "after_3_steps": cap.snapshot,
        "schedule": {"steps": sampled,
                     "poly_lr_set": [sc["info/lr"][t + 1] for t in sampled],  # lr_ computed after step t (line 164)
                     "lr_used": [cap.step_lrs[t] for t in sampled],  # lr the optimiser step of iteration t used
                     "consistency_weight": [sc["info/consistency_weight"][t + 1] for t in sampled]},
        "independent_teacher_init": {"consistency_loss_step0": indep.scalars["info/consistency_loss"][1],
                                     "loss_step0": indep.scalars["info/total_loss"][1]},
    }


# -- pieces called as functions -----------------------------------------------------------------
def loss_goldens(losses) -> list[dict]:
    out = []
    for b, c in R.LOSS_CASES:
        logits, teacher, labels = R.loss_inputs(b, c)
        rec = {"batch": b, "classes": c}
        x = logits.clone().requires_grad_(True)
        dice = losses.DiceLoss(c)(torch.softmax(x, 1), labels.unsqueeze(1))
        (g,) = torch.autograd.grad(dice, x)
        rec["dice"], rec["dice_grad"] = float(dice), R.checksum(g)
        x = logits.clone().requires_grad_(True)
        ce = nn.CrossEntropyLoss()(x, labels)
        sup = 0.5 * (losses.DiceLoss(c)(torch.softmax(x, 1), labels.unsqueeze(1)) + ce)
        (g,) = torch.autograd.grad(sup, x)
        rec["ce"], rec["supervised"], rec["supervised_grad"] = float(ce), float(sup), R.checksum(g)
        x = logits.clone().requires_grad_(True)
        cons = losses.softmax_mse_loss(x, teacher).mean()
        (g,) = torch.autograd.grad(cons, x)
        rec["consistency"], rec["consistency_grad"] = float(cons), R.checksum(g)
        out.append(rec)
    return out


def ema_goldens(train_mod) -> list[dict]:
    teacher = R.tiny_net("ema/teacher")
    out = []
    for i, (step, decay) in enumerate(R.EMA_SEQUENCE):
        student = R.tiny_net(f"ema/student/{i}")
        train_mod.update_ema_variables(student, teacher, decay, step)
        out.append({"step": step, "decay": decay, "teacher": R.net_checksums(teacher)})
    return out


def ramp_goldens(train_mod, ramps) -> dict:
    return {"sigmoid_rampup": [[c, n, ramps.sigmoid_rampup(c, n)] for c, n in R.RAMPUP_SAMPLES],
            "consistency": train_mod.args.consistency, "consistency_rampup": train_mod.args.consistency_rampup,
            "steps": list(R.STEP_SAMPLES),
            # the loop's epoch: iter_num // 150 (train_mean_teacher_3D.py:155)
            "consistency_weight": [train_mod.get_current_consistency_weight(s // 150) for s in R.STEP_SAMPLES]}


def rotflip_description(brats, draws: int = 400) -> dict:
    """Which in-plane transforms ``RandomRotFlip`` draws (on an (H, W, D) array with distinct entries)."""
    a = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    rotations = {f"rot90^{k}": np.rot90(a, k) for k in range(4)}
    reflections = {"flip H": np.flip(a, 0), "flip W": np.flip(a, 1), "transpose HW": a.transpose(1, 0, 2),
                   "anti-transpose HW": np.rot90(a, 2).transpose(1, 0, 2)}
    counts: dict[str, int] = {}
    np.random.seed(0)
    same_on_label = True
    for _ in range(draws):
        out = brats.RandomRotFlip()({"image": a, "label": a.copy()})
        same_on_label &= bool(np.array_equal(out["image"], out["label"]))
        name = next((n for n, r in {**rotations, **reflections}.items() if r.shape == out["image"].shape
                     and np.array_equal(r, out["image"])), "other")
        counts[name] = counts.get(name, 0) + 1
    return {"draws": draws, "counts": dict(sorted(counts.items())), "label_follows_image": same_on_label,
            "pure_rotations_or_identity": sum(v for k, v in counts.items() if k in rotations)}


# -- timing --------------------------------------------------------------------------------------
def time_steps(train_mod, losses, rounds: int = 7, steps: int = 5) -> None:
    """Median seconds per Mean Teacher step: released pieces vs the suite's step (same tiny net)."""
    from bench.config import resolve_method
    from bench.step import TrainStep, make_optimizers
    from methods.base import MethodContext
    from methods.ema import make_teacher
    from methods.mean_teacher import MeanTeacher

    torch.set_num_threads(1)
    shape, width = (32, 32, 32), 16
    image, label = R.batch(0, shape)

    def released_setup():
        student, teacher = R.tiny_net("time", width=width), R.tiny_net("time", width=width)
        opt = torch.optim.SGD(student.parameters(), lr=R.BASE_LR, momentum=0.9, weight_decay=1e-4)
        ce, dice = nn.CrossEntropyLoss(), losses.DiceLoss(2)

        def step(t):
            unl = image[R.LABELED_BS:]
            ema_in = unl + torch.clamp(torch.randn_like(unl) * 0.1, -0.2, 0.2)
            out = student(image)
            soft = torch.softmax(out, 1)
            with torch.no_grad():
                ema_soft = torch.softmax(teacher(ema_in), 1)
            sup = 0.5 * (dice(soft[:R.LABELED_BS], label[:R.LABELED_BS].unsqueeze(1)) + ce(out[:R.LABELED_BS], label[:R.LABELED_BS]))
            loss = sup + 0.1 * torch.mean((soft[R.LABELED_BS:] - ema_soft) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            train_mod.update_ema_variables(student, teacher, 0.99, t)
        return step

    def suite_setup():
        settings = resolve_method("mean_teacher", MeanTeacher, [])
        ctx = MethodContext(num_classes=2, class_names=("bg", "fg"), patch_size=shape, width=2, iterations=1000)
        m = MeanTeacher(ctx, **settings.hparams)
        m.networks["net"] = R.tiny_net("time", width=width)
        m.teachers["teacher"] = make_teacher(m.networks["net"])
        m.train(True)
        ts = TrainStep(m, make_optimizers(m, settings.train), torch.device("cpu"), amp=False)
        lab, unl = {"image": image[:R.LABELED_BS], "label": label[:R.LABELED_BS]}, {"image": image[R.LABELED_BS:]}

        def step(t):
            ts.set_lr(t)
            ts(lab, unl, t)
        return step

    fns = {"released": released_setup(), "suite": suite_setup()}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f(0)
    for r in range(rounds):
        for k, f in (fns.items() if r % 2 == 0 else reversed(fns.items())):
            t0 = time.perf_counter()
            for i in range(steps):
                f(1 + r * steps + i)
            times[k].append((time.perf_counter() - t0) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"Mean Teacher step, TinyNet width {width}, batch 4x1x{'x'.join(map(str, shape))}, 1 thread, {rounds} rounds x {steps} steps:")
    for k, v in med.items():
        print(f"  {k:8s} median {v * 1e3:.2f} ms/step")
    print(f"  suite / released = {med['suite'] / med['released']:.3f}")


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, required=True, help="checkout of HiLab-git/SSL4MIS")
    p.add_argument("--commit", help="the checkout's commit (when --repo is not a git work tree)")
    p.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    p.add_argument("--time", action="store_true", help="time one training step, released pieces vs suite")
    a = p.parse_args(argv)
    repo = a.repo.resolve()
    commit = repo_commit(repo, a.commit, required=True)
    torch.set_num_threads(1)
    train_mod, losses, ramps, brats = load_released(repo)
    command = "python docs/scripts/released/ssl4mis_goldens.py " + " ".join(sys.argv[1:] if argv is None else argv)
    golden = {
        **provenance("HiLab-git/SSL4MIS", commit, command, torch_version=False),
        "losses": loss_goldens(losses),
        "ramps": ramp_goldens(train_mod, ramps),
        "ema": ema_goldens(train_mod),
        "loop": loop_goldens(train_mod),
        "random_rot_flip": rotflip_description(brats),
    }
    write_golden("ssl4mis", golden, write=a.write, sort_keys=False)
    if a.time:
        time_steps(train_mod, losses)


if __name__ == "__main__":
    main()
