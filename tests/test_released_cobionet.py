"""The suite's ``co_bionet`` against goldens of Co-BioNet's released code
(``tests/golden/released/cobionet.json``, made by ``docs/scripts/released/cobionet_goldens.py``
from himashi92/Co-BioNet; its docstring lists what is covered).

The release is binary; the suite runs it in its released configuration: ``num_classes=2,
output="sigmoid", released_critic_detach=True, released_diff_item=True,
released_mask_after_mean=True, dropout=True, init="default"`` (:data:`RELEASED`). Inputs and
weights come from ``tests/released_inputs_cobionet.py``. Tolerances as in test_released_dhc.py:
relative 1e-5 on fp32 scalars, 1e-4 on checksums (1e-3 on gradients), 1e-9 on schedules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.config import TrainConfig, resolve_method
from bench.core.registry import METHODS
from bench.step import TrainStep, make_optimizers
from methods.base import MethodContext
from methods.co_bionet import Critic, cosine_lr, disc_loss, gen_loss
from methods.networks import VNet
from tests import released_inputs_cobionet as ri
from tests.test_released_dhc import _one_thread, close, close_ck  # noqa: F401 (_one_thread: a module fixture)

G = json.loads((Path(__file__).parent / "golden/released/cobionet.json").read_text())
RTOL, CK_RTOL = 1e-5, 1e-4
#: the suite's co_bionet as released (binary, the released bugs switched on)
RELEASED = dict(output="sigmoid", released_critic_detach=True, released_diff_item=True, released_mask_after_mean=True,
                dropout=True, init="default")


def context(**kw) -> MethodContext:
    kw.setdefault("iterations", 15000)
    return MethodContext(num_classes=ri.NUM_CLASSES, class_names=("background", "foreground"), patch_size=ri.PATCH, width=ri.WIDTH, **kw)


def method(**hp):
    return METHODS.get("co_bionet")(context(), **{**RELEASED, **hp})


# ----------------------------------------------------------------------------- networks
@pytest.mark.parametrize("mode", ["train_dropout", "eval"])
def test_vnet_forward(mode):
    """net_factory's training V-Net (BatchNorm, dropout) is the suite's VNet(init="default", dropout=True)."""
    net = method().networks["seg1"]
    assert isinstance(net, VNet) and net.has_dropout
    ri.fill(net, 1)
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


def test_critic_layout_and_forward():
    c = method().networks["critic1"]
    assert isinstance(c, Critic)
    got = {k: list(v.shape) for k, v in c.state_dict().items()}
    assert got == {ri.released_critic_name(k): v for k, v in G["critic"]["names"].items()}
    ri.fill(c, 3, critic=True)
    c.train()
    y = c(ri.loss_inputs()["p1"])
    close_ck(ri.checksum(y), G["critic"]["out"])
    st = ri.state_checksum(c)
    close_ck(st["params"], G["critic"]["state"]["params"])
    close_ck(st["buffers"], G["critic"]["state"]["buffers"])


# ----------------------------------------------------------------------------- losses
L = G["losses"]


def _grads(fn, *tensors):
    ts = [t.clone().requires_grad_(True) for t in tensors]
    v = fn(*ts)
    if v.requires_grad:
        v.backward()
    return v, [t.grad for t in ts]


def test_supervised_bce_plus_dice():
    inp = ri.loss_inputs()
    v, (g,) = _grads(lambda p: method().supervised(p, inp["y"]), inp["p_l"])
    close(float(v.detach()), L["sup_ce"]["value"] + L["sup_dice"]["value"])
    # gradients add: the sum of the two released gradient sums
    close(float(g.double().sum()), L["sup_ce"]["grads"][0]["sum"] + L["sup_dice"]["grads"][0]["sum"], rtol=CK_RTOL)


@pytest.mark.parametrize("key, order", [("diff1", (0, 1)), ("diff2", (1, 0))])
def test_diff_is_a_float_as_released(key, order):
    """loss_diff1 / loss_diff2 return ``.item()``: same value, no gradient."""
    inp = ri.loss_inputs()
    p, q = (inp["p1"], inp["p2"])[order[0]], (inp["p1"], inp["p2"])[order[1]]
    assert L[key]["type"] == "float"
    v, grads = _grads(lambda a: method().diff(a, q), p)
    close(float(v), L[key]["value"])
    assert not v.requires_grad and grads == [None]


def test_diff_fixed_keeps_the_value_and_has_a_gradient():
    inp = ri.loss_inputs()
    v, (g,) = _grads(lambda a: method(released_diff_item=False).diff(a, inp["p2"]), inp["p1"])
    close(float(v.detach()), L["diff1"]["value"])
    assert g is not None and g.abs().sum() > 0


def test_mask_loss_as_released():
    inp = ri.loss_inputs()
    m = method()
    mask = (inp["c"] > 0.2).float()
    close(float(mask.mean()), L["mask_share"], rtol=1e-12)
    v, grads = _grads(lambda a, b: m.masked(a, b, mask), inp["p1"], inp["p2"])
    close(float(v), L["mask"]["value"])
    close_ck(ri.checksum(grads[0]), L["mask"]["grads"][0], rtol=1e-3)
    assert L["mask"]["grads"][1] is None and grads[1] is None  # Variable(..., requires_grad=False) detaches the target


def test_generator_and_critic_losses():
    inp = ri.loss_inputs()
    v, (g,) = _grads(gen_loss, inp["d_fake"])
    close(float(v), L["gen"]["value"])
    close_ck(ri.checksum(g), L["gen"]["grads"][0], rtol=1e-3)
    v, (gf, gr) = _grads(disc_loss, inp["d_fake"], inp["d_real"])
    close(float(v), L["disc"]["value"])
    close_ck(ri.checksum(gf), L["disc"]["grads"][0], rtol=1e-3)
    close_ck(ri.checksum(gr), L["disc"]["grads"][1], rtol=1e-3)


# ----------------------------------------------------------------------------- one step
S = G["step"]


def _suite_step(**hp):
    m = method(**hp)
    for k, seed in (("seg1", ri.SEED_S1), ("seg2", ri.SEED_S2)):
        ri.fill(m.networks[k], seed)
    for k, seed in (("critic1", ri.SEED_C1), ("critic2", ri.SEED_C2)):
        ri.fill(m.networks[k], seed, critic=True)
    m.train()
    train = resolve_method("co_bionet", METHODS.get("co_bionet"), []).train
    ts = TrainStep(m, make_optimizers(m, train), torch.device("cpu"), amp=False)
    b = ri.step_batch(0)
    torch.manual_seed(100)
    losses = ts({"image": b["image_l"], "label": b["label_l"]}, {"image": b["image_u"]}, ri.ITER_NUM - 1)
    return m, losses


@pytest.fixture(scope="module")
def released_step():
    return _suite_step()


def test_step_losses(released_step):
    m, losses = released_step
    p = losses.parts
    close(float(p["w_unsup"]), S["w"], rtol=1e-12)
    close(float(p["sup"]), S["sup_1"] + S["sup_2"], rtol=CK_RTOL)
    close(float(p["diff"]), S["diff_1"] + S["diff_2"], rtol=CK_RTOL)
    close(float(p["masked"]), S["masked_1"] + S["masked_2"], rtol=CK_RTOL)
    close(float(p["gen"]), S["gen_1"] + S["gen_2"], rtol=CK_RTOL)
    close(float(p["critic"]), S["adv_1"] + S["adv_2"], rtol=CK_RTOL)
    close(float(p["mask"]), (S["mask_share_1"] + S["mask_share_2"]) / 2, rtol=1e-6)
    close(float(losses.total), S["loss_1"] + S["loss_2"] + S["adv_1"] + S["adv_2"], rtol=CK_RTOL)


def test_step_gradients_of_each_backward_pass(released_step):
    m, _ = released_step
    close_ck(ri.grads_checksum(m.networks["seg1"].named_parameters()), S["grads_1"], rtol=1e-3)
    close_ck(ri.grads_checksum(m.networks["seg2"].named_parameters()), S["grads_2"], rtol=1e-3)
    assert S["critic1_grad_none_at_step"] and S["critic2_grad_none_at_step"]
    assert all(p.grad is None for k in ("critic1", "critic2") for p in m.networks[k].parameters())


@pytest.mark.parametrize("net, seed, key", [("seg1", ri.SEED_S1, "1"), ("seg2", ri.SEED_S2, "2")])
def test_segmenters_after_the_step(released_step, net, seed, key):
    m, _ = released_step
    close_ck(ri.delta_checksum(m.networks[net], seed), S[f"delta_{key}"])
    st = ri.state_checksum(m.networks[net])
    close_ck(st["params"], S[f"state_{key}"]["params"])
    close_ck(st["buffers"], S[f"state_{key}"]["buffers"])


@pytest.mark.parametrize("net, seed", [("critic1", ri.SEED_C1), ("critic2", ri.SEED_C2)])
def test_critics_never_train_as_released(released_step, net, seed):
    """Measured on the release: after its critic steps the critics hold their initial weights."""
    m, _ = released_step
    assert S[f"{net}_unchanged"]
    assert all(torch.equal(p.detach(), ri.critic_tensor(n, p, seed)) for n, p in m.networks[net].named_parameters())


def test_fixed_critic_loss_has_the_released_value_and_trains_the_critics():
    m, losses = _suite_step(released_critic_detach=False)
    close(float(losses.parts["critic"]), S["adv_1"] + S["adv_2"], rtol=CK_RTOL)
    for net, seed in (("critic1", ri.SEED_C1), ("critic2", ri.SEED_C2)):
        assert not all(torch.equal(p.detach(), ri.critic_tensor(n, p, seed)) for n, p in m.networks[net].named_parameters())
    # the segmenters' step does not depend on the critics' own loss
    close_ck(ri.grads_checksum(m.networks["seg1"].named_parameters()), S["grads_1"], rtol=1e-3)


# ----------------------------------------------------------------------------- schedules and optimisers
SCH = G["schedules"]


@pytest.mark.parametrize("kind, base", [("sgd", 0.01), ("adamw", 1e-4)])
def test_cosine_schedule_per_iteration(kind, base):
    """CosineAnnealingLR(T_max) stepped every iteration: down to 0 at T_max and back up."""
    close([cosine_lr(base, s, SCH["t_max"]) for s in range(len(SCH[kind]))], SCH[kind], rtol=1e-9, atol=1e-15)


def test_method_schedules_for_all_four_optimisers():
    m = method(cosine_t_max=SCH["t_max"])
    opts = make_optimizers(m, TrainConfig(lr=0.01))
    assert set(opts) == {"seg1", "seg2", "critic1", "critic2"}
    for name, (_, sched) in opts.items():
        close([sched(s) for s in range(len(SCH["sgd"]))], SCH["adamw" if name.startswith("critic") else "sgd"], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", ["Pancreas_CT", "LA", "LA_16"])
def test_released_t_max_counts_labeled_epochs(name):
    """max_epoch = max_iterations // (n_labeled // labeled_bs) + 1 (TwoStreamBatchSampler's length)."""
    e = SCH[f"epoch_{name}"]
    ctx = context(n_unlabeled=e["max_samples"] - e["labelnum"], unlabeled_bs=2)
    ctx.n_labeled, ctx.labeled_bs = e["labelnum"], 2  # the context hook (methods/co_bionet.py docstring)
    m = METHODS.get("co_bionet")(ctx, **RELEASED)
    assert m.released_epoch() == e["len"] and m.t_max() == e["max_epoch"]


@pytest.mark.parametrize("iter_num", sorted(int(k) for k in SCH["ramp"]))
def test_consistency_weight(iter_num):
    """get_current_consistency_weight(iter_num // 150) with iter_num = step + 1."""
    close(method().consistency_weight(iter_num - 1), SCH["ramp"][str(iter_num)], rtol=1e-12)


def test_optimiser_settings():
    released = G["optimizer"]
    train = resolve_method("co_bionet", METHODS.get("co_bionet"), []).train
    opts = make_optimizers(method(), train)
    sgd, adamw = opts["seg1"][0], opts["critic1"][0]
    assert type(sgd) is torch.optim.SGD and type(adamw) is torch.optim.AdamW
    for k, v in released["sgd"].items():
        assert sgd.defaults[k] == v, k
    for k, v in released["adamw"].items():
        assert (list(adamw.defaults[k]) if k == "betas" else adamw.defaults[k]) == v, k
    hp = method().hp
    a = released["args"]
    assert (hp.lamda, hp.mu, hp.t_m, hp.consistency, hp.consistency_rampup) == (a["lamda"], a["mu"], a["t_m"], a["consistency"], a["consistency_rampup"])
    assert train.labeled_bs == a["labeled_bs"] and train.labeled_bs + train.unlabeled_bs == a["batch_size"]
