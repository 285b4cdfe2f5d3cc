"""Golden outputs of DHC's released code (xmed-lab/DHC), for ``tests/test_released_dhc.py`` (issue #30).

    python docs/scripts/released/dhc_goldens.py --repo /path/to/DHC [--write] [--time]

imports the released modules from the checkout (``<repo>/code`` on sys.path; tensorboard is
stubbed, ``.cuda()`` is a no-op, each ``train_*.py`` is imported with a fake ``sys.argv``), runs
the pieces below on CPU in fp32 with the fixed inputs and weights of ``tests/released_inputs_dhc.py``
and prints (``--write``: writes) ``tests/golden/released/dhc.json``. Nothing of the release is
copied into the suite; the test reads only the JSON.

Covered (released file):
* ``vnet``: ``models/vnet.py`` VNet forward (BatchNorm; train mode without / with seeded
  Dropout3d, eval mode) with weights mapped by name (``VNET_PREFIX_MAP``), + BN running stats.
* ``init``: ``utils/__init__.py`` kaiming_normal_init_weight / xavier_normal_init_weight and no
  initialiser (PyTorch default): statistics per layer type; ``init_by_method``: which initialiser
  each script applies to networks A / B, read from the scripts' ``model_X = ..._init_weight(model_X)``
  lines (none active: PyTorch's default).
* ``weighting``: train_dhc.py DistDW (init from a fake labeled set, EMA 0.99 on unlabeled argmax)
  and DiffDW (K = 50) over 4 fake batches; train_crest.py CReST and train_simis.py SimiS likewise.
* ``losses``: utils/loss.py DC_and_CE_loss (weighted as train_dhc.py's ``w_ce+dice``, and
  unweighted as train_cps.py's), RobustCrossEntropyLoss (the weighted cross-pseudo CE): values and
  gradient checksums.
* ``steps``: the first step of train_dhc / cps / crest / simis / depl: the body of each script's training
  loop (it sits under ``if __name__ == '__main__'`` and cannot be called, so this script re-runs
  it in the released order with the released objects: forward A and B, weights updated from this
  batch, loss funcs' ``update_weight``, sup + cps_w * cps, backward, SGD of ``make_model_all``).
  fp32 instead of the script's forced autocast (CPU); ``-cr 0`` so cps_w is constant (the ramp is
  checked separately). Loss terms, class weights (DePL: q-hat), gradient checksums, parameters
  and BN buffers after the step. Only one step: later steps do not reproduce across
  implementations (``CO_STEPS`` in tests/released_inputs_dhc.py says why).
* ``schedules``: sigmoid_rampup, get_current_consistency_weight, utils.poly_lr over an epoch range,
  and the values in force in each epoch as the loops set them (at the END of epoch e, from e);
  train_uamt.py's uncertainty threshold (0.75 + 0.25 sigmoid_rampup(epoch, max_epoch)) ln 2.
* ``ema``: train_uamt.py update_ema_variables over 4 steps of 2-step epochs (epoch passed).
* ``optimizer``: ``make_model_all()``'s SGD settings of each script; ``sgd_steps``: 3 steps of
  train_cps.py's ``make_model_all`` network and optimiser on its supervised loss alone, BatchNorm
  in eval mode (smooth: float noise stays small): losses and what the optimiser changed.

Not covered: data loading / augmentation and evaluation (other tests and the audit cover them);
AMP (CPU); ACISIS's step (its ``record_data`` bug has a switch; too long for the time box), Adsh
and CLD steps (only their init and optimiser are covered); UA-MT's full step (the noisy teacher
passes draw from the RNG in an order the suite does not share); the DePL step's unused
``output_A_u + tau log qhat_B`` (never reaches a loss).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
from _golden_io import ROOT, golden_path, provenance, repo_commit, write_golden
from torch import nn

from tests import released_inputs_dhc as ri

GOLDEN = golden_path("dhc")
SCRIPTS = ("dhc", "cps", "crest", "simis", "depl", "adsh", "cld", "uamt", "acisis")


# ----------------------------------------------------------------------------- loading the release
def setup(repo: Path):
    code = repo / "code"
    sys.path.insert(0, str(code))
    tb = types.ModuleType("torch.utils.tensorboard")
    tb.SummaryWriter = object
    sys.modules["torch.utils.tensorboard"] = tb
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    return code


def import_script(code: Path, name: str, argv=()):
    sys.argv = [f"train_{name}.py", *argv]
    spec = importlib.util.spec_from_file_location(f"released_train_{name}", code / f"train_{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeLabeledSet:
    """What DistDW / CReST / SimiS read of the labeled dataset: ``unlabeled``, ``ids_list``, ``_get_data``."""

    unlabeled = False

    def __init__(self):
        self.labels = ri.labeled_set_labels()
        self.ids_list = list(range(len(self.labels)))

    def _get_data(self, i):
        return None, None, self.labels[i]


def tolist(t) -> list:
    return [float(v) for v in torch.as_tensor(t).reshape(-1)]


def released_vnet(vnet_mod, dropout: bool, width: int = ri.WIDTH):
    return vnet_mod.VNet(n_channels=1, n_classes=ri.NUM_CLASSES, n_filters=width, normalization="batchnorm", has_dropout=dropout)


# ----------------------------------------------------------------------------- pieces
def golden_vnet(vnet_mod) -> dict:
    x = torch.cat([ri.step_batch(0)["image_l"], ri.step_batch(0)["image_u"]])
    out = {}
    for mode, dropout, train in (("train", False, True), ("train_dropout", True, True), ("eval", False, False)):
        net = released_vnet(vnet_mod, dropout)
        ri.fill_released_vnet(net, seed=1)
        net.train(train)
        torch.manual_seed(7)
        with torch.no_grad():
            y = net(x)
        out[mode] = {"out": ri.checksum(y), "state": ri.state_checksum(net, ri.suite_name)}
    return out


def init_by_method(code: Path) -> dict:
    """Initialiser of networks A / B per script, from its active ``model_X = <kind>_init_weight(model_X)`` lines."""
    pat = re.compile(r"^\s*(\w+)\s*=\s*(kaiming|xavier)_normal_init_weight\(\1\)")
    res = {}
    for s in SCRIPTS:
        lines = (code / f"train_{s}.py").read_text().splitlines()
        found = {m.group(1): (m.group(2), f"code/train_{s}.py:{i + 1}") for i, line in enumerate(lines) if (m := pat.match(line))}
        a = found.get("model_A") or found.get("model") or ("default", f"code/train_{s}.py: no initialiser called")
        b = found.get("model_B") or found.get("ema_model") or a
        res[s] = {"A": a[0], "B": b[0], "where_A": a[1], "where_B": b[1]}
    return res


def golden_init(vnet_mod, utils_mod, code: Path) -> dict:
    stats = {}
    for kind in ("kaiming", "xavier", "default"):
        torch.manual_seed(0)
        net = released_vnet(vnet_mod, True, ri.INIT_WIDTH)
        if kind != "default":
            getattr(utils_mod, f"{kind}_normal_init_weight")(net)
        stats[kind] = ri.layer_type_stats(net)
    return {"stats": stats, "init_by_method": init_by_method(code)}


def golden_weighting(dhc, crest, simis) -> dict:
    C = ri.NUM_CLASSES
    batches = ri.weighting_batches()
    dist = dhc.DistDW(C, momentum=0.99)  # train_dhc.py:263
    diff = dhc.DiffDW(C, accumulate_iters=50)  # train_dhc.py:262
    cr = crest.CReST(C, do_bg=True, momentum=0.99)  # train_crest.py:244
    si = simis.SimiS(C, do_bg=True, momentum=0.99)  # train_simis.py:246
    ds = FakeLabeledSet()
    out = {"distdw_init": tolist(dist.init_weights(ds)), "crest_init": tolist(cr.init_crest_weight(ds)),
           "simis_init": tolist(si.init_weight(ds)), "diffdw_init": tolist(diff.init_weights()),
           "distdw": [], "diffdw": [], "crest": [], "simis": []}
    for b in batches:
        out["distdw"].append(tolist(dist.get_ema_weights(b["logits_u"])))
        w = diff.cal_weights(b["logits_l"], b["label_l"].unsqueeze(1))
        out["diffdw"].append({"weights": tolist(w), "last_dice": tolist(diff.last_dice), "learn": tolist(diff.cls_learn),
                              "unlearn": tolist(diff.cls_unlearn), "dice_weight": tolist(diff.dice_weight)})
        out["crest"].append(tolist(cr.get_weights(b["logits_u"])))
        out["simis"].append(tolist(si.get_weights(torch.cat([b["logits_l"], b["logits_u"]]))))
    return out


def golden_losses(dhc, cps) -> dict:
    inp = ri.loss_inputs()
    n = ri.N_L
    out = {}

    def run(name, fn, *tensors):
        ts = [t.clone().requires_grad_(True) for t in tensors]
        v = fn(*ts)
        v.backward()
        out[name] = {"value": float(v.detach()), "grads": [ri.checksum(t.grad) for t in ts]}

    label = inp["label_l"].unsqueeze(1)
    w_A, w_B = inp["w_A"], inp["w_B"]

    def weighted_sup(a):  # train_dhc.py:268 then update_weight (train_dhc.py:311)
        f = dhc.make_loss_function("w_ce+dice", w_A.numpy())
        f.update_weight(w_A)
        return f(a[:n], label)

    run("dc_ce_weighted", weighted_sup, inp["out_A"])
    run("dc_ce", lambda a: cps.make_loss_function("w_ce+dice")(a[:n], label), inp["out_A"])  # train_cps.py:199

    def cross(a, b):  # train_dhc.py:270-271, 316
        fa, fb = dhc.make_loss_function("wce", w_A.numpy()), dhc.make_loss_function("wce", w_B.numpy())
        fa.update_weight(w_A)
        fb.update_weight(w_B)
        max_a = torch.argmax(a.detach(), dim=1, keepdim=True).long()
        max_b = torch.argmax(b.detach(), dim=1, keepdim=True).long()
        return fa(a, max_b) + fb(b, max_a)

    run("cps_cross_weighted", cross, inp["out_A"], inp["out_B"])

    def cross_plain(a, b):  # train_cps.py:200, 239
        f = cps.make_loss_function("wce")
        return f(a, torch.argmax(b.detach(), 1, keepdim=True)) + f(b, torch.argmax(a.detach(), 1, keepdim=True))

    run("cps_cross", cross_plain, inp["out_A"], inp["out_B"])
    return out


# ----------------------------------------------------------------------------- training steps
class ReleasedCoTraining:
    """The loop body of train_<kind>.py (see module docstring), with its objects."""

    def __init__(self, kind: str, mod, vnet_mod):
        self.kind, self.mod = kind, mod
        self.A, self.B = released_vnet(vnet_mod, True), released_vnet(vnet_mod, True)
        ri.fill_released_vnet(self.A, seed=11)
        ri.fill_released_vnet(self.B, seed=12)
        self.A.train()
        self.B.train()

        def sgd(m):  # make_model_all's optimiser (e.g. train_dhc.py:127-133)
            return torch.optim.SGD(m.parameters(), lr=mod.args.base_lr, momentum=0.9, weight_decay=3e-5, nesterov=True)

        self.opt_A, self.opt_B = sgd(self.A), sgd(self.B)
        C, mk, args = ri.NUM_CLASSES, mod.make_loss_function, mod.args
        ds = FakeLabeledSet()
        if kind == "dhc":  # train_dhc.py:262-271
            self.diffdw, self.distdw = mod.DiffDW(C, accumulate_iters=50), mod.DistDW(C, momentum=0.99)
            wa, wb = self.diffdw.init_weights(), self.distdw.init_weights(ds)
        elif kind == "crest":  # train_crest.py:244-257
            self.wa, self.wb = mod.CReST(C, do_bg=True, momentum=0.99), mod.CReST(C, do_bg=True, momentum=0.99)
            wa, wb = self.wa.init_crest_weight(ds), self.wb.init_crest_weight(ds)
        elif kind == "simis":  # train_simis.py:246-257
            self.wa, self.wb = mod.SimiS(C, do_bg=True, momentum=0.99), mod.SimiS(C, do_bg=True, momentum=0.99)
            wa, wb = self.wa.init_weight(ds), self.wb.init_weight(ds)
        if kind in ("dhc", "crest", "simis"):
            self.lf_A, self.lf_B = mk(args.sup_loss, wa), mk(args.sup_loss, wb)
            self.cf_A, self.cf_B = mk(args.cps_loss, wa), mk(args.cps_loss, wb)
        else:  # train_cps.py:199-200, train_depl.py:201-202
            self.lf = mk(args.sup_loss)
            self.cf = mod.WeightedCrossEntropyLoss() if kind == "depl" else mk(args.cps_loss)
        if kind == "depl":  # train_depl.py:206-209 (initial_qhat reads config.patch_size)
            mod.config.patch_size = ri.PATCH
            self.qhat_A, self.qhat_B = mod.initial_qhat(class_num=C), mod.initial_qhat(class_num=C)
            self.tau = 1.0
        self.cps_w = mod.get_current_consistency_weight(0)

    def step(self, batch, seed: int) -> dict:
        mod = self.mod
        self.opt_A.zero_grad()
        self.opt_B.zero_grad()
        image_l, label_l, image_u = batch["image_l"], batch["label_l"].unsqueeze(1), batch["image_u"]
        image = torch.cat([image_l, image_u], dim=0)
        tmp_bs = image.shape[0] // 2
        torch.manual_seed(seed)
        output_A, output_B = self.A(image), self.B(image)
        output_A_l, output_A_u = output_A[:tmp_bs], output_A[tmp_bs:]
        output_B_l, output_B_u = output_B[:tmp_bs], output_B[tmp_bs:]
        rec = {}
        if self.kind in ("dhc", "crest", "simis"):
            max_A = torch.argmax(output_A.detach(), dim=1, keepdim=True).long()
            max_B = torch.argmax(output_B.detach(), dim=1, keepdim=True).long()
            if self.kind == "dhc":
                wA = self.diffdw.cal_weights(output_A_l.detach(), label_l.detach())
                wB = self.distdw.get_ema_weights(output_B_u.detach())
            elif self.kind == "crest":
                wA, wB = self.wa.get_weights(output_A_u), self.wb.get_weights(output_B_u)
            else:
                wA, wB = self.wa.get_weights(output_A), self.wb.get_weights(output_B)
            for f, w in ((self.lf_A, wA), (self.lf_B, wB), (self.cf_A, wA), (self.cf_B, wB)):
                f.update_weight(w)
            loss_sup = self.lf_A(output_A_l, label_l) + self.lf_B(output_B_l, label_l)
            loss_cps = self.cf_A(output_A, max_B) + self.cf_B(output_B, max_A)
            rec["weight_A"], rec["weight_B"] = tolist(wA), tolist(wB)
        elif self.kind == "cps":  # train_cps.py:231-239
            loss_sup = self.lf(output_A_l, label_l) + self.lf(output_B_l, label_l)
            max_A = torch.argmax(output_A.detach(), dim=1, keepdim=True).long()
            max_B = torch.argmax(output_B.detach(), dim=1, keepdim=True).long()
            loss_cps = self.cf(output_A, max_B) + self.cf(output_B, max_A)
        else:  # train_depl.py:237-264
            loss_sup = self.lf(output_A_l, label_l) + self.lf(output_B_l, label_l)
            pl_A = mod.causal_inference(output_A.detach(), self.qhat_A, tau=self.tau)
            pl_B = mod.causal_inference(output_B.detach(), self.qhat_B, tau=self.tau)
            max_probs_A, targets_A = torch.max(pl_A, dim=1)
            mask_A = max_probs_A.ge(0.9).float()
            max_probs_B, targets_B = torch.max(pl_B, dim=1)
            mask_B = max_probs_B.ge(0.9).float()
            self.qhat_A = mod.update_qhat(torch.softmax(output_A_u.detach(), dim=1), self.qhat_A, momentum=0.99)
            self.qhat_B = mod.update_qhat(torch.softmax(output_B_u.detach(), dim=1), self.qhat_B, momentum=0.99)
            loss_cps = self.cf(output_A, targets_B, mask_B) + self.cf(output_B, targets_A, mask_A)
            rec["qhat_A"], rec["qhat_B"] = ri.checksum(self.qhat_A), ri.checksum(self.qhat_B)
            rec["mask_share"] = [float(mask_A.mean()), float(mask_B.mean())]
        loss = loss_sup + self.cps_w * loss_cps
        loss.backward()
        rec.update(loss=float(loss.detach()), sup=float(loss_sup.detach()), cps=float(loss_cps.detach()),
                   grads_A=ri.grads_checksum(self.A.named_parameters(), ri.suite_name),
                   grads_B=ri.grads_checksum(self.B.named_parameters(), ri.suite_name))
        self.opt_A.step()
        self.opt_B.step()
        return rec


def step_argv() -> list[str]:
    return ["--base_lr", str(ri.LR), "-w", str(ri.CPS_W), "-ep", "10", "-r", "-cr", "0"]


def golden_steps(code: Path, vnet_mod) -> dict:
    out = {}
    for kind in ("dhc", "cps", "crest", "simis", "depl"):
        mod = import_script(code, kind, step_argv())
        run = ReleasedCoTraining(kind, mod, vnet_mod)
        recs = [run.step(ri.step_batch(s), seed=100 + s) for s in range(ri.CO_STEPS)]
        out[kind] = {"cps_w": run.cps_w, "steps": recs,
                     "A": ri.state_checksum(run.A, ri.suite_name), "B": ri.state_checksum(run.B, ri.suite_name)}
    return out


# ----------------------------------------------------------------------------- schedules, EMA, optimiser
MAX_EPOCH, BASE_LR = 10, 0.01


def golden_schedules(code: Path) -> dict:
    dhc = import_script(code, "dhc", ["-w", str(ri.CPS_W), "-ep", str(MAX_EPOCH), "-r"])
    uamt = import_script(code, "uamt", ["-ep", str(MAX_EPOCH)])
    utils = sys.modules["utils"]
    epochs = list(range(MAX_EPOCH + 3))
    in_force = []
    cps_w, lr = dhc.get_current_consistency_weight(0), BASE_LR  # train_dhc.py:277 / the optimiser's lr
    for e in range(MAX_EPOCH + 1):  # train_dhc.py:280, 359-362
        in_force.append({"epoch": e, "lr": lr, "cps_w": cps_w})
        lr = utils.poly_lr(e, MAX_EPOCH, BASE_LR, 0.9)
        cps_w = dhc.get_current_consistency_weight(e)
    return {
        "max_epoch": MAX_EPOCH, "base_lr": BASE_LR, "cps_w": ri.CPS_W, "epochs": epochs,
        "sigmoid_rampup": [dhc.sigmoid_rampup(e, MAX_EPOCH) for e in epochs],
        "consistency_weight": [dhc.get_current_consistency_weight(e) for e in epochs],
        "poly_lr": [utils.poly_lr(e, MAX_EPOCH, BASE_LR, 0.9) for e in range(MAX_EPOCH + 1)],
        "in_force": in_force,
        # train_uamt.py:291: threshold of the uncertainty mask in epoch e
        "uamt_threshold": [(0.75 + 0.25 * uamt.sigmoid_rampup(e, MAX_EPOCH)) * np.log(2) for e in range(MAX_EPOCH + 1)],
    }


EMA_EPOCH_LENGTH, EMA_STEPS = 2, 4


def golden_ema(code: Path, vnet_mod) -> dict:
    uamt = import_script(code, "uamt", ["-ep", str(MAX_EPOCH)])
    student, teacher = released_vnet(vnet_mod, True), released_vnet(vnet_mod, True)
    ri.fill_released_vnet(teacher, seed=999)
    out = []
    for k in range(EMA_STEPS):
        ri.fill_released_vnet(student, seed=20 + k)  # the student after step k
        uamt.update_ema_variables(student, teacher, 0.99, k // EMA_EPOCH_LENGTH)  # train_uamt.py:302 (epoch_num)
        out.append(ri.state_checksum(teacher, ri.suite_name))
    return {"epoch_length": EMA_EPOCH_LENGTH, "teacher": out}


def golden_sgd_steps(code: Path) -> dict:
    """3 steps of train_cps.py's own network + optimiser (``make_model_all``: VNet with dropout, SGD
    momentum 0.9, wd 3e-5, Nesterov) on its supervised loss only (DC_and_CE_loss, smooth: no
    argmax), lr LR: loss per step and what the optimiser changed."""
    mod = import_script(code, "cps", step_argv())
    mod.config.n_filters = ri.WIDTH
    model, opt = mod.make_model_all()
    ri.fill_released_vnet(model, seed=11)
    model.eval()  # BatchNorm on its running statistics: train-mode statistics of the tiny bottleneck amplify float noise
    loss_func = mod.make_loss_function(mod.args.sup_loss)  # train_cps.py:199
    losses = []
    for s in range(ri.STEPS):
        b = ri.step_batch(s)
        opt.zero_grad()
        torch.manual_seed(100 + s)
        loss = loss_func(model(b["image_l"]), b["label_l"].unsqueeze(1))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {"lr": opt.param_groups[0]["lr"], "loss": losses, "delta": ri.delta_checksum(model, 11, ri.suite_name),
            "state": ri.state_checksum(model, ri.suite_name)}


def golden_optimizer(code: Path) -> dict:
    out = {}
    for s in SCRIPTS:
        mod = import_script(code, s)
        mod.config.n_filters = 2
        made = mod.make_model_all()
        opt = made[1]
        out[s] = {k: opt.defaults[k] for k in ("momentum", "weight_decay", "nesterov", "dampening")}
    return out


# ----------------------------------------------------------------------------- timing
def time_steps(code: Path, vnet_mod, rounds: int = 7) -> None:
    from bench.config import TrainConfig
    from bench.core.registry import METHODS
    from bench.step import TrainStep, make_optimizers
    from methods.base import MethodContext

    torch.set_num_threads(1)
    mod = import_script(code, "dhc", step_argv())
    rel = ReleasedCoTraining("dhc", mod, vnet_mod)
    ctx = MethodContext(num_classes=ri.NUM_CLASSES, class_names=tuple(f"c{i}" for i in range(ri.NUM_CLASSES)), patch_size=ri.PATCH,
                        width=ri.WIDTH, iterations=1000, labeled_voxel_counts=ri.labeled_counts())
    method = METHODS.get("dhc")(ctx, cps_w=ri.CPS_W, cps_rampup=0.0, dropout=True)
    ts = TrainStep(method, make_optimizers(method, TrainConfig(lr=ri.LR, weight_decay=3e-5, iterations=1000)), torch.device("cpu"), amp=False)
    for net in method.networks.values():
        net.train()
    b = ri.step_batch(0)
    lab, unl = {"image": b["image_l"], "label": b["label_l"]}, {"image": b["image_u"]}
    t_rel, t_suite = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        rel.step(b, seed=r)
        t_rel.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ts(lab, unl, r)
        t_suite.append(time.perf_counter() - t0)
    mr, ms = statistics.median(t_rel[1:]), statistics.median(t_suite[1:])
    print(f"dhc step, 1 thread, width {ri.WIDTH}, patch {ri.PATCH}: released {mr * 1e3:.1f} ms, suite {ms * 1e3:.1f} ms, "
          f"suite / released = {ms / mr:.2f} (median of {rounds - 1} interleaved rounds)")


# ----------------------------------------------------------------------------- main
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repo", required=True, type=Path, help="checkout of xmed-lab/DHC")
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    ap.add_argument("--time", action="store_true", help="time the released and the suite's DHC step (not stored)")
    a = ap.parse_args(argv)
    command = "python docs/scripts/released/dhc_goldens.py --repo <DHC checkout>" + (" --write" if a.write else "")
    repo = a.repo.resolve()
    commit = repo_commit(repo)
    saved_argv = sys.argv
    code = setup(repo)
    torch.set_num_threads(1)
    import models.vnet as vnet_mod
    import utils as utils_mod

    dhc, cps = import_script(code, "dhc", step_argv()), import_script(code, "cps", step_argv())
    crest, simis = import_script(code, "crest", step_argv()), import_script(code, "simis", step_argv())
    golden = {
        **provenance("xmed-lab/DHC", commit, command),
        "vnet": golden_vnet(vnet_mod),
        "init": golden_init(vnet_mod, utils_mod, code),
        "weighting": golden_weighting(dhc, crest, simis),
        "losses": golden_losses(dhc, cps),
        "steps": golden_steps(code, vnet_mod),
        "schedules": golden_schedules(code),
        "ema": golden_ema(code, vnet_mod),
        "optimizer": golden_optimizer(code),
        "sgd_steps": golden_sgd_steps(code),
    }
    sys.argv = saved_argv
    write_golden("dhc", golden, write=a.write, preview=2000)
    if a.time:
        time_steps(code, vnet_mod)


if __name__ == "__main__":
    main()
