"""The suite's ``dst`` against goldens of DHC's released DST (``tests/golden/released/dhc_dst.json``,
made by ``docs/scripts/released/dhc_dst_goldens.py`` from xmed-lab/DHC ``code/train_dst.py`` and
``code/models/vnet_dst.py``; its docstring lists what is covered).

Inputs and weights: ``tests/released_inputs_dhc.py``. The step is compared with
``released_pseudo_targets=true`` (the release's pseudo-label direction); the default (pseudo heads
trained, the released bug fixed) has no released counterpart and is tested in ``tests/test_dst.py``.
Tolerances as ``tests/test_released_dhc.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.config import TrainConfig, resolve_method
from bench.core.registry import METHODS
from bench.step import TrainStep, make_optimizers
from methods.dst import DecoupledVNet, grl_coefficient, masked_ce, worst_case_loss
from tests import released_inputs_dhc as ri
from tests.test_released_dhc import C, _one_thread, check_stats, close, close_ck, context  # noqa: F401 (_one_thread: a module fixture)

G = json.loads((Path(__file__).parent / "golden/released/dhc_dst.json").read_text())


def fill(net: DecoupledVNet, seed: int) -> None:
    """The golden script's weights: every tensor from its suite name, the pseudo heads scaled."""
    ri.fill_suite_vnet(net, seed)
    with torch.no_grad():
        net.pseudo.out_conv.weight.mul_(G["pseudo_head_scale"])


@pytest.mark.parametrize("it", sorted(G["grl"], key=int))
def test_grl_coefficient(it):
    close(grl_coefficient(int(it)), G["grl"][it], rtol=1e-6, atol=1e-9)


def test_worst_case_and_masked_ce_losses():
    inp = ri.loss_inputs()
    n = ri.N_L
    a, b = inp["out_A"].clone().requires_grad_(True), inp["out_B"].clone().requires_grad_(True)
    v = worst_case_loss(a[:n], b[:n], a[n:], b[n:])
    v.backward()
    exp = G["losses"]["worst_case"]
    close(float(v.detach()), exp["value"])
    assert a.grad is None and exp["grads"][0] is None  # the main head's argmax only
    close_ck(ri.checksum(b.grad), exp["grads"][1])
    mask = (torch.softmax(inp["out_B"], 1).max(1).values > 0.2).float()
    close(float(mask.mean()), G["losses"]["mask_share"])
    a = inp["out_A"].clone().requires_grad_(True)
    v = masked_ce(a, inp["out_B"].argmax(1), mask)
    v.backward()
    close(float(v.detach()), G["losses"]["masked_ce"]["value"])
    close_ck(ri.checksum(a.grad), G["losses"]["masked_ce"]["grads"][0])


_INIT = [pytest.param(k, d, t, id=f"{k}-{d}-{t}") for k in G["init"] for d in G["init"][k] for t in G["init"][k][d]]
_DEC = {"decoder": None, "decoder_pseudo": "pseudo", "decoder_worst": "worst"}


@pytest.mark.parametrize("kind,decoder,layer", _INIT)
def test_init_statistics_of_each_decoder(kind, decoder, layer):
    torch.manual_seed(123)
    net = DecoupledVNet(1, C, ri.INIT_WIDTH, "batchnorm", True, kind)
    if _DEC[decoder]:
        module = getattr(net, _DEC[decoder])
    else:  # the main decoder: the suite's VNet up / dec / out_conv
        module = torch.nn.ModuleList([net.up, net.dec, net.out_conv])
    check_stats(ri.layer_type_stats(module)[layer], G["init"][kind][decoder][layer])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_three_heads_forward(mode):
    net = DecoupledVNet(1, C, ri.WIDTH, "batchnorm", False, "default")
    fill(net, 1)
    net.train(mode == "train")
    b = ri.step_batch(0)
    x = torch.cat([b["image_l"], b["image_u"]])
    with torch.no_grad():
        heads = net.heads(x, 0.0) if mode == "train" else (net(x),)
    for got, exp in zip(heads, G["forward"][mode], strict=True):
        close_ck(ri.checksum(got), exp)


@pytest.fixture(scope="module")
def suite_step():
    """One engine step (TrainStep, the SGD of make_optimizers, fp32) at step GRL_ITER with the
    release's pseudo-label direction; lr and weight constant (schedule=step, a huge horizon)."""
    m = METHODS.get("dst")(context(iterations=10**9), cps_w=ri.CPS_W, cps_rampup=0.0, dropout=True, schedule="step",
                           released_pseudo_targets=True)
    fill(m.networks["A"], 11)
    fill(m.networks["B"], 12)
    train = TrainConfig(lr=ri.LR, weight_decay=ri.WEIGHT_DECAY, momentum=0.9, nesterov=True, iterations=10**9)
    ts = TrainStep(m, make_optimizers(m, train), torch.device("cpu"), amp=False)
    b = ri.step_batch(0)
    torch.manual_seed(100)
    losses = ts({"image": b["image_l"], "label": b["label_l"]}, {"image": b["image_u"]}, G["grl_iter"])
    return m, losses


def test_first_step_losses(suite_step):
    m, losses = suite_step
    exp = G["step"]
    close(m.cps_weight(G["grl_iter"]), exp["cps_w"])
    for k in ("sup", "cps", "worst"):
        close(float(losses.parts[k].detach()), exp[k], rtol=1e-4, atol=1e-6)
    close(float(losses.total.detach()), exp["loss"], rtol=1e-4)
    assert exp["mask_share"][0] > 0 and exp["mask_share"][1] > 0  # the cps term is not empty


@pytest.mark.parametrize("net", ["A", "B"])
def test_first_step_gradients_and_weights(suite_step, net):
    m, _ = suite_step
    exp = G["step"]
    model = m.networks[net]
    assert not exp["grads"][f"{net}.pseudo_has_grad"] and exp["grads"][f"{net}.worst_has_grad"]
    assert all(p.grad is None for p in model.pseudo.parameters())  # the released bug, reproduced
    close_ck(ri.grads_checksum([(n, p) for n, p in model.named_parameters() if not n.startswith("pseudo.")]), exp["grads"][net], rtol=1e-3)
    enc = [(n, p) for n, p in model.named_parameters() if n.startswith(("enc.", "down."))]
    close_ck(ri.grads_checksum(enc), exp["grads"][f"{net}.encoder"], rtol=1e-3)
    st = ri.state_checksum(model)
    close_ck(st["params"], exp[net]["params"])
    close_ck(st["buffers"], exp[net]["buffers"])


def test_optimizer_settings_as_released():
    t = resolve_method("dst", METHODS.get("dst"), []).train
    exp = G["optimizer"]
    assert (t.momentum, t.weight_decay, t.nesterov) == (exp["momentum"], exp["weight_decay"], exp["nesterov"])
