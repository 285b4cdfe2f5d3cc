"""The suite's ``ss_net`` against goldens of DHC's released SS-Net (``tests/golden/released/dhc_ssnet.json``,
made by ``docs/scripts/released/dhc_ssnet_goldens.py`` from xmed-lab/DHC's ``code/train_ssnet.py``;
its docstring lists what is covered).

Inputs and weights come from ``tests/released_inputs_ssnet.py`` (seeds and parameter names). The
released repository is not needed here. The released behaviour is compared with both
``released_*`` switches on; the defaults must move away from it where the switches say so.
DHC's ``SoftDiceLoss`` returns -mean Dice and the suite 1 - mean Dice: Dice terms are compared
offset by 1. Tolerances as ``tests/test_released_dhc.py``: relative 1e-5 on fp32 scalars, 1e-4
on checksums of fp32 tensors, 1e-3 on gradient checksums of a whole step. One thread (the
golden's): reductions in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.config import TrainConfig, resolve_method
from bench.core.registry import METHODS
from bench.step import TrainStep, make_optimizers, poly_lr
from methods.base import MethodContext
from methods.ss_net import FeatureMemory, SSNetVNet, class_separation, l2_normalize
from tests import released_inputs_dhc as ri
from tests import released_inputs_ssnet as rs
from tests.test_released_dhc import _one_thread, close, close_ck  # noqa: F401 (_one_thread: a module fixture)

G = json.loads((Path(__file__).parent / "golden/released/dhc_ssnet.json").read_text())
G_DHC = json.loads((Path(__file__).parent / "golden/released/dhc.json").read_text())
C = rs.NUM_CLASSES
CK_RTOL = 1e-4
#: both released behaviours on (the golden is the release)
RELEASED = {"released_memory_rank": True, "released_memory_weights": True}


def context(**kw) -> MethodContext:
    kw.setdefault("iterations", 1000)
    return MethodContext(num_classes=C, class_names=tuple(f"c{i}" for i in range(C)), patch_size=rs.PATCH, width=rs.WIDTH, **kw)


def method(**hp):
    """``ss_net`` as the golden's step runs it: dropout on, constant weight -w, weights by name."""
    m = METHODS.get("ss_net")(context(), dropout=True, cps_w=rs.CPS_W, cps_rampup=0.0, **hp)
    rs.fill_suite(m.networks["net"])
    m.train()
    return m


def net() -> SSNetVNet:
    n = SSNetVNet(1, C, rs.WIDTH, "batchnorm", dropout=True, init="default")
    rs.fill_suite(n)
    return n.train()


def bn_buffers(n) -> dict:
    rows: dict[str, list] = {g: [] for g in rs.GROUPS}
    for k, v in n.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            rows[rs.group_of(k)].append((k, v.reshape(-1).double()))
    return {g: ri.checksum(torch.cat([v for _, v in sorted(r, key=lambda t: t[0])])) for g, r in rows.items() if r}


def batch():
    b = ri.step_batch(0)
    return {"image": b["image_l"], "label": b["label_l"]}, {"image": b["image_u"]}


# ----------------------------------------------------------------------------- network
def test_state_names_map_one_to_one():
    """Every VNet4SSNet tensor maps to one SSNetVNet tensor of the same name set (shapes: load_state_dict)."""
    assert sorted(SSNetVNet(1, C, rs.WIDTH, "batchnorm").state_dict()) == G["network"]["state_names"]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward(mode):
    n = net()
    b = ri.step_batch(0)
    x = torch.cat([b["image_l"], b["image_u"]])
    with torch.no_grad():
        if mode == "train":
            torch.manual_seed(7)
            out, emb = n.features(x)
            close_ck(ri.checksum(out), G["network"]["train"]["out"])
            close_ck(ri.checksum(emb), G["network"]["train"]["embedding"])
        else:  # test.py: eval mode, logits only
            m = method()
            m.train(False)
            close_ck(ri.checksum(m.predict(x)), G["network"]["eval"])


def test_backbone_init_is_pytorchs_default():
    """train_ssnet.py calls no initialiser (golden: no active ``*_init_weight`` line): the conv
    weights' statistics are those of the released V-Net without one (dhc.json)."""
    assert G["constants"]["init_calls"] == []
    torch.manual_seed(123)
    m = METHODS.get("ss_net")(context())
    assert m.hp.init == "default"
    got = ri.layer_type_stats(m.networks["net"])["Conv3d.weight"]
    exp = G_DHC["init"]["stats"]["default"]["Conv3d.weight"]
    assert abs(got["m2_fan_in"] - exp["m2_fan_in"]) <= 0.05 * exp["m2_fan_in"], (got, exp)


# ----------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("released", [True, False])
def test_memory_update(released):
    """Released: the 32 lowest-ranked rows of class 1 (of 40), in ascending rank order; default:
    the 32 highest. Classes with <= 32 rows keep all of them; the selectors' BatchNorm statistics
    move as the release's (ranking in train mode)."""
    n = net()
    inp = rs.memory_inputs()
    mem = FeatureMemory(C, 32, lowest=released)
    mem.update(inp["features"], inp["labels"], n.selectors)
    exp = G["memory"]["memory"]
    for c in range(C):
        got = mem.memory[c]
        if exp[str(c)] is None:
            assert got is None, c
        elif released or len(exp[str(c)]) < 32:
            close(got, exp[str(c)])
        else:  # the fix keeps other rows of the class above the limit
            assert got.shape == (32, 2 * rs.WIDTH)
            assert not torch.allclose(got.sort(0)[0], torch.tensor(exp[str(c)]).sort(0)[0])
    got_buf = bn_buffers(n)
    close_ck(got_buf["selectors"], G["memory"]["selector_buffers"]["selectors"])


def _contrast(released: bool):
    n = net()
    inp = rs.contrast_inputs()
    feats = inp["features"].clone().requires_grad_(True)
    loss = class_separation(feats, inp["labels"], inp["memory"], n.selectors, n.memory_selectors, released_memory_weights=released)
    loss.backward()
    return n, feats, loss


def test_contrast_as_released():
    n, feats, loss = _contrast(True)
    exp = G["contrast"]
    close(float(loss.detach()), exp["value"])
    close_ck(ri.checksum(feats.grad), exp["grad_features"])
    grads = rs.grads_by_group(n.named_parameters())
    for g in ("selectors", "projection_head", "prediction_head", "backbone"):
        close_ck(grads[g], exp["grads"][g])
    mem_grad = max(float(p.grad.abs().max()) for p in n.memory_selectors.parameters() if p.grad is not None)
    assert mem_grad < 1e-6 and exp["memory_selector_grad_max"] < 1e-6  # w / w: rounding noise only
    for g, ck in exp["buffers"].items():
        close_ck(bn_buffers(n)[g], ck)


def test_contrast_default_weights_the_memory():
    """The fix: memory weights normalised over the memory rows - another value, and the memory
    selectors learn."""
    n, _, loss = _contrast(False)
    assert abs(float(loss.detach()) - G["contrast"]["value"]) > 1e-4
    assert max(float(p.grad.abs().max()) for p in n.memory_selectors.parameters() if p.grad is not None) > 1e-4


def test_l2_normalize():
    g = ri._gen("ssnet-l2")
    d = torch.rand(2, 1, *ri.PATCH, generator=g).sub(0.5)
    d[1] = 0.0
    out = l2_normalize(d)
    close_ck(ri.checksum(out), G["l2_normalize"]["out"])
    close(out.flatten(1).norm(dim=1), G["l2_normalize"]["norms"])


# ----------------------------------------------------------------------------- the first step
S = G["step"]
TERMS = {"dice": "sup", "lds": "lds", "contr_l": "sep_l", "contr_u": "sep_u"}
OFFSET = {"dice": 1.0, "lds": 1.0, "contr_l": 0.0, "contr_u": 0.0}  # 1 - Dice here, -Dice released


@pytest.fixture(scope="module")
def engine_step():
    """The first engine step (TrainStep, the SGD of make_optimizers, fp32) with the released switches."""
    m = method(**RELEASED)
    train = TrainConfig(lr=rs.LR, weight_decay=3e-5, momentum=0.9, nesterov=True, iterations=1000)
    ts = TrainStep(m, make_optimizers(m, train), torch.device("cpu"), amp=False)
    lab, unl = batch()
    torch.manual_seed(rs.STEP_SEED)
    losses = ts(lab, unl, 0)
    n = m.networks["net"]
    return {"m": m, "losses": losses, "grads": rs.grads_by_group(n.named_parameters()), "delta": rs.delta_by_group(n),
            "buffers": bn_buffers(n)}


@pytest.fixture(scope="module")
def term_grads():
    """Gradients of each loss term of the same step (training_step called directly)."""
    m = method(**RELEASED)
    lab, unl = batch()
    torch.manual_seed(rs.STEP_SEED)
    losses = m.training_step(lab, unl, 0)
    params = list(m.networks["net"].named_parameters())
    out = {}
    for k, part in TERMS.items():
        gs = torch.autograd.grad(losses.parts[part], [p for _, p in params], allow_unused=True, retain_graph=True)
        out[k] = rs.grads_by_group(params, gs)
    return out


def test_step_weight_and_lr(engine_step):
    close(engine_step["m"].cps_weight(0), S["cps_w"])
    assert S["lr"] == rs.LR


@pytest.mark.parametrize("term", list(TERMS))
def test_step_loss_terms(engine_step, term):
    got = float(engine_step["losses"].parts[TERMS[term]].detach())
    close(got - OFFSET[term], S[term], rtol=CK_RTOL, atol=1e-6)


def test_step_total_loss(engine_step):
    close(float(engine_step["losses"].total.detach()) - 1.0 - S["cps_w"] * 1.0, S["loss"], rtol=CK_RTOL, atol=1e-6)


def test_step_memory(engine_step):
    mem = engine_step["m"].memory.memory
    assert S["n_correct"] == sum(S["correct_per_class"]) > 0 and sum(v is not None and v["rows"] == 32 for v in S["memory"].values()) >= 1
    for c in range(C):
        exp = S["memory"][str(c)]
        if exp is None:
            assert mem[c] is None, c
        else:
            assert mem[c].shape[0] == exp["rows"], c
            close_ck(ri.checksum(mem[c]), exp["checksum"])


def _close_grads(got: dict, exp: dict, rtol=1e-3):
    for g in rs.GROUPS:
        if exp[g]["sumsq"] < 1e-12:  # no gradient released (memory selectors: w / w; heads from the Dice): none or noise here
            assert got[g]["sumsq"] < 1e-12, (g, got[g]["sumsq"])
        else:
            close_ck(got[g], exp[g], rtol=rtol)


@pytest.mark.parametrize("term", list(TERMS))
def test_step_gradients_of_each_term(term_grads, term):
    _close_grads(term_grads[term], S["term_grads"][term])


def test_step_gradients(engine_step):
    _close_grads(engine_step["grads"], S["grads"])


def test_step_parameter_change(engine_step):
    _close_grads(engine_step["delta"], S["delta"])


def test_step_batchnorm_buffers(engine_step):
    for g, ck in S["buffers"].items():
        close_ck(engine_step["buffers"][g], ck)


def test_defaults_move_away_from_the_release():
    """With the fixes (the defaults) the same step keeps other memory rows and learns the memory selectors."""
    m = method()
    lab, unl = batch()
    torch.manual_seed(rs.STEP_SEED)
    losses = m.training_step(lab, unl, 0)
    assert abs(float(losses.parts["sep_l"].detach()) - S["contr_l"]) > 1e-5
    grads = torch.autograd.grad(losses.parts["unsup"], list(m.networks["net"].memory_selectors.parameters()), allow_unused=True)
    assert max(float(g.abs().max()) for g in grads if g is not None) > 1e-6
    full = [c for c, v in S["memory"].items() if v is not None and v["rows"] == 32]
    assert any(abs(ri.checksum(m.memory.memory[int(c)])["sum"] - S["memory"][c]["checksum"]["sum"]) > 1e-4 for c in full)


# ----------------------------------------------------------------------------- settings
def test_optimizer_settings():
    train = resolve_method("ss_net", METHODS.get("ss_net"), []).train
    opt = make_optimizers(METHODS.get("ss_net")(context()), train)["main"][0]
    assert {k: opt.defaults[k] for k in G["optimizer"]} == pytest.approx(G["optimizer"])


@pytest.mark.parametrize("key,field", [("memory_size", "memory_size"), ("vat_eps", "vat_eps"), ("contrast_w", "contrast_w"),
                                       ("vat_xi_default", "vat_xi"), ("vat_iters_default", "vat_iters")])
def test_constants_of_the_script_are_the_defaults(key, field):
    assert METHODS.get("ss_net").hparam_defaults()[field] == G["constants"][key]["value"]


SCH = G["schedule"]


def test_consistency_weight_curve():
    """-w 0.1 -r: get_current_consistency_weight(e) = 0.1 sigmoid_rampup(e, max_epoch) (schedule=step, one step per epoch)."""
    m = METHODS.get("ss_net")(context(iterations=SCH["max_epoch"]), schedule="step")
    assert m.ctx.epoch_length == 1
    close([m.cps_weight(e) for e in SCH["epochs"]], SCH["ramped"], rtol=1e-12)


def test_argparse_default_weight_is_constant():
    """Without -r the script's weight is the constant -w (argparse default 1): ``cps_rampup=0``."""
    m = METHODS.get("ss_net")(context(iterations=SCH["max_epoch"]), cps_w=1.0, cps_rampup=0.0, schedule="step")
    close([m.cps_weight(e) for e in SCH["epochs"]], SCH["argparse_default"]["cps_w"], rtol=1e-12)


def test_values_in_force_per_epoch():
    """train_ssnet.py:463-464 set lr and weight at the end of epoch e from e: schedule=epoch (default)."""
    m = METHODS.get("ss_net")(context(iterations=SCH["max_epoch"]))
    got = [(poly_lr(SCH["base_lr"], m.schedule_step(r["epoch"]), SCH["max_epoch"], 0.9), m.cps_weight(r["epoch"])) for r in SCH["in_force"]]
    close(got, [(r["lr"], r["cps_w"]) for r in SCH["in_force"]], rtol=1e-9)
