"""The suite's ``desco`` against goldens of DeSCO's released code (``tests/golden/released/desco.json``,
made by ``docs/scripts/released/desco_goldens.py`` from HengCai-NJU/DeSCO d3f0852; its docstring
lists what is covered).

Configuration closest to the release: 2 classes, ``entropy_max="ln2"``, ``dropout=True``,
PyTorch's default init, ``released_lr_decay_seg1_only=True``, the release's SGD settings and
schedules at its 6000 iterations. Inputs and weights come from ``tests/released_inputs_desco.py``.

What the adaptation changes, and what is tested instead (methods/desco.py, "Adapted, not released"):
* supervision: the release's weight maps come from registration-propagated labels; the suite's
  ``full`` (all ones) and ``sparse`` (two central slices) maps are fed to the released step as its
  ``weight`` (``test_first_step_*``), and the released LARandomCrop1/2 maps themselves are
  compared with ``supervision="weighted"``'s (``test_view_weight_maps``) on a volume whose fixed
  annotated slices fall on the patch centre;
* C classes: with C = 2 the suite's pieces are the release's (the released losses are compared
  with K = 2 channels and the class-1 Dice);
* one batch for both networks: the released step is run with the same batch for both.

Tolerances: relative 1e-5 on scalars (ramps, weights, losses of fixed inputs), 1e-4 on the step's
losses and on checksums of fp32 tensors, 1e-3 on gradient checksums (sums over ~1e4 values in
another order).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bench.config import resolve_method
from bench.core.registry import METHODS
from bench.step import TrainStep, make_optimizers
from methods.base import MethodContext
from methods.desco import DeSCO, cosine_rampdown, desco_dice, desco_wce, view_weight
from methods.networks import VNet
from methods.ramps import sigmoid_rampup
from tests import released_inputs_desco as ri
from tests.test_released_dhc import _one_thread, close, close_ck  # noqa: F401 (_one_thread: a module fixture)

G = json.loads((Path(__file__).parent / "golden/released/desco.json").read_text())
C = ri.NUM_CLASSES
RTOL, CK_RTOL = 1e-5, 1e-4
RELEASED = dict(entropy_max="ln2", dropout=True, released_lr_decay_seg1_only=True)


def context(width=ri.WIDTH, **kw) -> MethodContext:
    kw.setdefault("iterations", ri.MAX_ITERATIONS)
    return MethodContext(num_classes=C, class_names=("background", "fg"), patch_size=ri.PATCH, width=width, **kw)


def desco(**hp) -> DeSCO:
    return METHODS.get("desco")(context(), **{**RELEASED, **hp})


# ----------------------------------------------------------------------------- network
@pytest.mark.parametrize("mode", ["train_dropout", "eval"])
def test_vnet_forward(mode):
    """The release's create_model() V-Net (2 classes, BatchNorm, Dropout3d) = the suite's seg1 network."""
    net = desco().networks["seg1"]
    assert isinstance(net, VNet) and net.has_dropout
    ri.fill_suite_vnet(net, seed=1)
    net.train(mode != "eval")
    b = ri.step_batch(0)
    torch.manual_seed(7)
    with torch.no_grad():
        y = net(torch.cat([b["image_l"], b["image_u"]]))
    exp = G["vnet"][mode]
    close_ck(ri.checksum(y), exp["out"])
    st = ri.state_checksum(net)
    close_ck(st["params"], exp["state"]["params"])
    close_ck(st["buffers"], exp["state"]["buffers"])


def test_no_initialiser_is_called_so_init_is_pytorch_default():
    assert G["init"]["vnet_init_calls"] == [] and G["init"]["train_init_calls"] == []
    assert DeSCO.hparam_defaults()["init"] == "default"


@pytest.mark.parametrize("layer", sorted(G["init"]["stats"]))
def test_init_statistics(layer):
    """E[w^2 fan_in] and E[w^2 fan_avg] within 5 % (25 % under 5000 values), zero share within 0.01."""
    torch.manual_seed(123)
    got = ri.layer_type_stats(METHODS.get("desco")(context(width=ri.INIT_WIDTH), dropout=True).networks["seg2"])[layer]
    exp = G["init"]["stats"][layer]
    rtol = 0.05 if exp["n"] > 5000 else 0.25
    for k in ("m2_fan_in", "m2_fan_avg"):
        assert abs(got[k] - exp[k]) <= rtol * abs(exp[k]) + 1e-9, (k, got[k], exp[k])
    assert abs(got["zero_share"] - exp["zero_share"]) <= 0.01


# ----------------------------------------------------------------------------- losses
def _loss_cases():
    inp = ri.loss_inputs()
    y, w, m = inp["label"], inp["weight"], inp["mask"]
    return inp, {
        "wce_weight": lambda z: desco_wce(z, y, w, channels=2),
        "wce_mask": lambda z: desco_wce(z, y, m, channels=2),
        "wce_empty": lambda z: desco_wce(z, y, torch.zeros_like(m), channels=2) + 0 * z.sum(),
        "dice_weight": lambda z: desco_dice(torch.softmax(z, 1), y, w),
        "dice_ones": lambda z: desco_dice(torch.softmax(z, 1), y, torch.ones_like(w)),
    }


@pytest.mark.parametrize("name", sorted(G["losses"]))
def test_losses(name):
    """utils/losses.py wce (weights repeated over 2 channels) and dice_loss_weight (class 1)."""
    inp, cases = _loss_cases()
    z = inp["logits"].clone().requires_grad_(True)
    v = cases[name](z)
    v.backward()
    close(float(v.detach()), G["losses"][name]["value"])
    close_ck(ri.checksum(z.grad), G["losses"][name]["grad"], rtol=1e-3)


# ----------------------------------------------------------------------------- weight maps
@pytest.mark.parametrize("sw", ri.SLICE_WEIGHTS)
@pytest.mark.parametrize("crop,view", [("crop1", "axial"), ("crop2", "coronal")])
def test_view_weight_maps(crop, view, sw):
    """LARandomCrop1 (seg1) / LARandomCrop2 (seg2) weight maps, release axes (x, y, z) -> (W, H, D)."""
    exp = G["weights"]["maps"][f"{crop}_{sw}"]
    d, h, w = exp["shape"]
    got = view_weight((d, h, w), view, sw)
    assert exp["w_constant"]
    close_ck(ri.checksum(got), exp["checksum"], rtol=1e-6)
    close(got[:, 0, 0], exp["profile_d"], rtol=1e-6, atol=1e-30)
    close(got[0, :, 0], exp["profile_h"], rtol=1e-6, atol=1e-30)


def test_slice_weight_schedule():
    """The slice weight of the loaders: --slice_weight until the first rebuild, then
    get_current_slice_weight(iter // 150) at each rebuild (every 1000 iterations)."""
    W = G["weights"]
    m = desco(supervision="weighted")
    assert m.hp.slice_weight == W["initial_slice_weight"] and m.hp.slice_weight_step == W["slice_weight_step"]
    assert m.hp.slice_weight_refresh == W["rebuild_every"]
    close([m.slice_weight_at(t) for t in (0, 999)], [W["initial_slice_weight"]] * 2)
    for it, v in W["slice_weight_at_rebuild"].items():
        close([m.slice_weight_at(int(it)), m.slice_weight_at(int(it) + 999)], [v, v], rtol=1e-12)


# ----------------------------------------------------------------------------- schedules
S = G["schedules"]


def test_released_arguments_are_the_defaults():
    a, hp = S["args"], DeSCO.hparam_defaults()
    assert (hp["consistency"], hp["consistency_rampup"], hp["slice_weight"], hp["slice_weight_step"]) == (
        a["consistency"], a["consistency_rampup"], a["slice_weight"], a["slice_weight_step"])
    assert a["max_iterations"] == ri.MAX_ITERATIONS and a["base_lr"] == ri.LR


def test_ramps():
    close([sigmoid_rampup(e, 40.0) for e in range(45)], S["sigmoid_rampup"], rtol=1e-12)
    close([cosine_rampdown(e, 40.0) for e in range(41)], S["cosine_rampdown"], rtol=1e-12, atol=1e-15)


def test_consistency_weight_and_threshold():
    m = desco()
    close([m.consistency_weight(t) for t in S["iters"]], S["consistency_weight"], rtol=1e-12)
    close([m.uncertainty_threshold(t) for t in S["iters"]], S["threshold"], rtol=1e-12)


def test_threshold_default_is_a_fraction_of_ln_c():
    """Adapted: entropy_max="classes" scales by ln C (= the release's ln 2 at C = 2)."""
    m = METHODS.get("desco")(context())
    close([m.uncertainty_threshold(t) for t in S["iters"]], S["threshold"], rtol=1e-12)
    m14 = METHODS.get("desco")(MethodContext(num_classes=14, class_names=tuple("c" * 14), patch_size=ri.PATCH, iterations=6000))
    close([m14.uncertainty_threshold(t) for t in S["iters"]], [v * math.log(14) / math.log(2) for v in S["threshold"]], rtol=1e-12)


def _lrs(**hp):
    m = desco(**hp)
    opts = make_optimizers(m, resolve_method("desco", METHODS.get("desco"), []).train)
    return {t: [opts[k][1](t) for k in ("seg1", "seg2")] for t in S["iters"]}


def test_lr_in_force_with_the_released_switch():
    """The "change lr" block: optimizer1 x 0.1 every 2500 iterations, optimizer2 never."""
    got = _lrs(released_lr_decay_seg1_only=True)
    close([got[t] for t in S["iters"]], [G["lr"]["in_force"][str(t)] for t in S["iters"]], rtol=1e-12)


def test_lr_default_decays_both_networks():
    """Released bug fixed: seg2 decays as seg1 does (the release's optimizer2 stays at 0.01)."""
    got = _lrs(released_lr_decay_seg1_only=False)
    exp1 = [G["lr"]["in_force"][str(t)][0] for t in S["iters"]]
    close([got[t][0] for t in S["iters"]], exp1, rtol=1e-12)
    close([got[t][1] for t in S["iters"]], exp1, rtol=1e-12)
    assert G["lr"]["in_force"]["5400"][1] == ri.LR != got[5400][1]


def test_optimizer_settings():
    train = resolve_method("desco", METHODS.get("desco"), []).train
    opts = make_optimizers(desco(), train)
    for k, name in (("seg1", "optimizer1"), ("seg2", "optimizer2")):
        exp = dict(G["optimizer"][name])
        assert exp.pop("network") == "m_" + k
        got = {key: opts[k][0].defaults[key] for key in exp}
        assert got == pytest.approx(exp), (k, got, exp)


# ----------------------------------------------------------------------------- one training step
@pytest.fixture(scope="module")
def suite_steps():
    """The engine step (TrainStep, the method's two SGDs, fp32) at STEP_ITER, per supervision mode."""
    out = {}
    for mode in ri.STEP_MODES:
        m = desco(supervision=mode)
        ri.fill_suite_vnet(m.networks["seg1"], seed=11)
        ri.fill_suite_vnet(m.networks["seg2"], seed=12)
        m.train()
        train = resolve_method("desco", METHODS.get("desco"), []).train
        ts = TrainStep(m, make_optimizers(m, train), torch.device("cpu"), amp=False)
        lrs = ts.set_lr(ri.STEP_ITER)
        b = ri.step_batch(0)
        torch.manual_seed(100)
        losses = ts({"image": b["image_l"], "label": b["label_l"]}, {"image": b["image_u"]}, ri.STEP_ITER)
        p = {k: float(v) for k, v in losses.parts.items()}
        out[mode] = {
            "lr": [lrs["seg1"], lrs["seg2"]],
            **{k: {"loss": p[f"loss_{k}"], "sup": p[f"sup_{k}"], "cons": p[f"unsup_{k}"], "mask": p[f"certain_{k}"],
                   "w": p["w_unsup"], "threshold": m.uncertainty_threshold(ri.STEP_ITER)} for k in ("seg1", "seg2")},
            **{f"grads_{k}": ri.grads_checksum(m.networks[k].named_parameters()) for k in ("seg1", "seg2")},
            "delta_seg1": ri.delta_checksum(m.networks["seg1"], 11), "delta_seg2": ri.delta_checksum(m.networks["seg2"], 12),
            "state_seg1": ri.state_checksum(m.networks["seg1"]), "state_seg2": ri.state_checksum(m.networks["seg2"]),
        }
    return out


@pytest.mark.parametrize("mode", ri.STEP_MODES)
@pytest.mark.parametrize("net", ["seg1", "seg2"])
def test_first_step_losses(suite_steps, mode, net):
    got, exp = suite_steps[mode][net], G["steps"][mode][net]
    close(suite_steps[mode]["lr"], G["steps"][mode]["lr"], rtol=1e-12)
    close([got["w"], got["threshold"]], [exp["w"], exp["threshold"]], rtol=1e-6)
    for k in ("loss", "sup", "cons", "mask"):
        close(got[k], exp[k], rtol=CK_RTOL, atol=1e-6)


@pytest.mark.parametrize("mode", ri.STEP_MODES)
@pytest.mark.parametrize("net", ["seg1", "seg2"])
def test_first_step_gradients(suite_steps, mode, net):
    close_ck(suite_steps[mode][f"grads_{net}"], G["steps"][mode][f"grads_{net}"], rtol=1e-3)


@pytest.mark.parametrize("mode", ri.STEP_MODES)
@pytest.mark.parametrize("net", ["seg1", "seg2"])
def test_networks_after_first_step(suite_steps, mode, net):
    """What SGD changed (seg1 at lr 1e-4, seg2 at 0.01 as the release has them at 5400) and the
    BatchNorm buffers after the step (seg2's saw seg1's pseudo-label and noisy passes)."""
    got, exp = suite_steps[mode], G["steps"][mode]
    close_ck(got[f"delta_{net}"], exp[f"delta_{net}"], rtol=1e-3)
    close_ck(got[f"state_{net}"]["params"], exp[f"state_{net}"]["params"])
    close_ck(got[f"state_{net}"]["buffers"], exp[f"state_{net}"]["buffers"])
