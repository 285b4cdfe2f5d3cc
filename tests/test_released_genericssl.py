"""The suite's ``ad`` against goldens of GenericSSL's released A&D code
(``tests/golden/released/genericssl.json``, made by ``docs/scripts/released/genericssl_goldens.py``
from xmed-lab/GenericSSL; its docstring lists what is covered and how the step's random draws are
fed to both sides).

Inputs and weights come from ``tests/released_inputs_genericssl.py``. The released repository is
not needed here. Tolerances as ``tests/test_released_dhc.py``: relative 1e-5 on fp32 scalars,
1e-4 on checksums of fp32 tensors, 1e-3 on gradient checksums of the training step; float64
tables to 1e-12. The training step runs in float64 on both sides with a 3-step sampler (its
train-mode DDIM chain amplifies last-bit differences 10-1000x per pass:
``STEP_SAMPLING_STEPS``), the losses in float32 as the suite computes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.config import TrainConfig, resolve_method
from bench.core.registry import METHODS
from bench.step import TrainStep, make_optimizers, poly_lr
from methods import ad
from methods.base import MethodContext
from methods.losses import dhc_dc_ce_loss
from tests import released_inputs_dhc as rd
from tests import released_inputs_genericssl as rg
from tests.test_released_dhc import _one_thread, close, close_ck  # noqa: F401 (_one_thread: a module fixture)

G = json.loads((Path(__file__).parent / "golden/released/genericssl.json").read_text())
C = rg.NUM_CLASSES
RTOL, CK_RTOL = 1e-5, 1e-4


def context(**kw) -> MethodContext:
    kw.setdefault("iterations", 1000)
    return MethodContext(num_classes=C, class_names=tuple(f"c{i}" for i in range(C)), patch_size=rd.PATCH, width=rg.WIDTH, **kw)


def x_start(label):
    return torch.nn.functional.one_hot(label, C).movedim(-1, 1).float() * 2 - 1


# ----------------------------------------------------------------------------- diffusion schedule
S = G["schedule"]
_TABLES = {"betas": "betas", "alphas_cumprod": "alphas_cumprod", "sqrt_alphas_cumprod": "sqrt_ab",
           "sqrt_one_minus_alphas_cumprod": "sqrt_1m_ab"}


@pytest.mark.parametrize("released,suite", sorted(_TABLES.items()))
def test_training_schedule_tables(released, suite):
    d = ad.Diffusion(S["num_timesteps"])
    table = getattr(d, suite)
    close([table[i] for i in S["idx"]], S["train"][released], rtol=1e-12, atol=0)
    close_ck(rd.checksum(torch.from_numpy(table)), S["train_checksum"][released], rtol=1e-12)


def test_q_sample_coefficients_in_float32():
    d = ad.Diffusion()
    t = torch.tensor(S["idx"])
    one = torch.ones(len(t), 1)
    close(d._at(d.sqrt_ab, t, one)[:, 0], S["q_coeffs"]["sqrt_alphas_cumprod"], rtol=0, atol=0)
    close(d._at(d.sqrt_1m_ab, t, one)[:, 0], S["q_coeffs"]["sqrt_one_minus_alphas_cumprod"], rtol=0, atol=0)


def test_sampling_schedule():
    d = ad.Diffusion(1000, 10)
    assert d.timestep_map == S["sample"]["timestep_map"]
    close(d.sample_ab, S["sample"]["alphas_cumprod"], rtol=1e-12, atol=0)
    close(d.sample_ab_prev, S["sample"]["alphas_cumprod_prev"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("key", sorted(S["space_timesteps"]))
def test_space_timesteps(key):
    n, k = map(int, key.split(","))
    assert ad.space_timesteps(n, k) == S["space_timesteps"][key]


def test_timestep_embedding():
    t = torch.tensor(G["embedding"]["t"]).long()
    close_ck(rd.checksum(ad.timestep_embedding(t, 128)), G["embedding"]["emb"])


def test_q_sample():
    b = rd.step_batch(0)
    x_t = ad.Diffusion().q_sample(x_start(b["label_l"]), rg.timesteps(), rg.q_noise())
    close_ck(rd.checksum(x_t), G["q_sample"]["x_t"])


# ----------------------------------------------------------------------------- network
def test_name_map_is_a_bijection_onto_the_suite_network():
    """Every suite tensor has exactly one released counterpart; released tensors without one are
    the time layers the release never applies (tests/released_inputs_genericssl.py)."""
    mapped = [rg.suite_name(k) for k in G["released_keys"]]
    used = [m for m in mapped if m is not None]
    assert len(used) == len(set(used))
    assert set(used) == set(ad.ADNet(1, C, rg.WIDTH, dropout=True).state_dict())
    unused = [k for k, m in zip(G["released_keys"], mapped) if m is None]
    assert all(".temb" in k for k in unused), unused


@pytest.fixture(scope="module")
def forward_outputs():
    b = rd.step_batch(0)
    x_t = ad.Diffusion().q_sample(x_start(b["label_l"]), rg.timesteps(), rg.q_noise())
    out = {}
    for mode in ("eval", "train"):
        net = ad.ADNet(1, C, rg.WIDTH, "batchnorm", dropout=True, stage_dropout=0.1)
        rg.fill_suite(net, seed=1)
        net.train(mode == "train")
        torch.manual_seed(7)
        with torch.no_grad():
            xi = net.denoise(x_t, rg.timesteps(), b["image_l"])
            psi = net.psi(b["image_l"])
            theta = net.theta(b["image_u"])
        out[mode] = {"xi": rd.checksum(xi), "psi": rd.checksum(psi), "theta": rd.checksum(theta), "state": rg.state_checksum(net)}
    return out


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("decoder", ["xi", "psi", "theta"])
def test_decoder_forward(forward_outputs, mode, decoder):
    """D_xi / D_psi / D_theta logits; train mode with every Dropout3d drawing in the released order."""
    close_ck(forward_outputs[mode][decoder], G["forward"][mode][decoder])


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_batchnorm_statistics_after_forward(forward_outputs, mode):
    close_ck(forward_outputs[mode]["state"]["params"], G["forward"][mode]["state"]["params"])
    close_ck(forward_outputs[mode]["state"]["buffers"], G["forward"][mode]["state"]["buffers"])


def test_ddim_x0_prediction():
    b = rd.step_batch(0)
    net = ad.ADNet(1, C, rg.WIDTH, "batchnorm", dropout=True)
    rg.fill_suite(net, seed=1)
    net.eval()
    with torch.no_grad():
        x0 = ad.Diffusion(1000, 10).ddim_x0(lambda x, t: net.denoise(x, t, b["image_u"]), rg.sample_start())
    close_ck(rd.checksum(x0), G["ddim"]["pred_xstart"])


def test_gaussian_smoothing():
    close(ad.gaussian_kernel(3, 1.0).reshape(-1), G["smoothing"]["kernel"], rtol=1e-6)
    close_ck(rd.checksum(ad.smooth(torch.softmax(rg.sample_start(), 1), ad.gaussian_kernel(3, 1.0))), G["smoothing"]["out"])


def test_gumbel_noise_is_what_gumbel_softmax_draws():
    """The golden script feeds g as softmax(p + g) after checking that this is F.gumbel_softmax;
    the suite's draw consumes the RNG the same way: same seed, same probabilities."""
    assert G["gumbel_softmax_is_softmax_plus_noise"]
    m = METHODS.get("ad")(context())
    p = rg.sample_start()
    torch.manual_seed(3)
    want = torch.nn.functional.gumbel_softmax(p, dim=1)
    torch.manual_seed(3)
    close(torch.softmax(p + m.draw_gumbel(p), 1), want, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- class weights and losses
def test_difficulty_weights_over_fake_batches():
    s = ad.Difficulty(C, accumulate_iters=50)
    for b, exp in zip(rd.weighting_batches(), G["difficulty"]):
        close(s.update(b["logits_l"], b["label_l"]), exp["weights"], rtol=CK_RTOL)
        close(s.last_dice, exp["last_dice"])
        close(s.learn, exp["learn"])
        close(s.unlearn, exp["unlearn"])
        close(s.dice_weight, exp["dice_weight"])


@pytest.mark.parametrize("name", ["plain", "weighted"])
def test_dc_ce_losses(name):
    inp = rd.loss_inputs()
    a = inp["out_A"].clone().requires_grad_(True)
    v = dhc_dc_ce_loss(a[:rd.N_L], inp["label_l"], inp["w_A"] if name == "weighted" else None)
    v.backward()
    close(float(v.detach()), G["losses"][name]["value"])
    close_ck(rd.checksum(a.grad), G["losses"][name]["grad"])


def test_theta_aggregation():
    net = ad.ADNet(1, C, rg.WIDTH, "batchnorm")
    rg.fill_suite(net, seed=5)
    ad.aggregate(net.dec_theta, net.dec_xi, net.dec_psi, rg.EMA_W)
    st = rg.state_checksum(net, prefix="dec_theta.")
    close_ck(st["params"], G["aggregate"]["params"])
    close_ck(st["buffers"], G["aggregate"]["buffers"])


# ----------------------------------------------------------------------------- one training step
@pytest.fixture(scope="module")
def suite_step():
    """The first engine step (TrainStep, SGD of make_optimizers, fp32) with the draws of the golden."""
    mp = pytest.MonkeyPatch()
    m = METHODS.get("ad")(context(), mu=rg.MU, mu_rampup=0.0, dropout=False, stage_dropout=0.0, sampling_steps=rg.STEP_SAMPLING_STEPS)
    net = m.networks["net"]
    rg.fill_suite(net, seed=11)
    net.double().train()  # float64 as the golden (genericssl_goldens.golden_step says why)
    rec = {}
    m.draw_timesteps = lambda n, device: rg.timesteps()
    m.draw_noise = lambda like: rg.q_noise().double()
    m.draw_sample_start = lambda shape, device: rg.sample_start().double()
    m.draw_gumbel = lambda like: rg.gumbel().double()
    agg, smooth, pl = m.aggregate, ad.smooth, m.pseudo_label

    def aggregate():
        agg()
        rec["theta_after_ema"] = rg.state_checksum(net, prefix="dec_theta.")

    def smooth_rec(p, kernel):
        rec["p_u_xi"] = rd.checksum(out := smooth(p, kernel))
        return out

    def pseudo_label(x):
        rec["pl"] = out = pl(x)
        return out

    m.aggregate, m.pseudo_label = aggregate, pseudo_label
    mp.setattr(ad, "smooth", smooth_rec)
    train = TrainConfig(lr=rg.LR, weight_decay=rg.WEIGHT_DECAY, momentum=0.9, nesterov=True, iterations=1000)
    opts = make_optimizers(m, train)
    ts = TrainStep(m, opts, torch.device("cpu"), amp=False)
    b = rd.step_batch(0)
    try:
        losses = ts({"image": b["image_l"].double(), "label": b["label_l"]}, {"image": b["image_u"].double()}, 0)
    finally:
        mp.undo()
    rec.update(losses={k: float(v) for k, v in losses.log_values().items()}, weights=m.difficulty.weights.tolist(),
               hist=torch.bincount(rec["pl"].reshape(-1), minlength=C).tolist(), mu=m.unsup_weight(0),
               grads={k: rg.grads_checksum(net.named_parameters(), prefix=k) for k in G["step"]["grads"]},
               delta=rg.delta_checksum(net, 11), state=rg.state_checksum(net), opt=opts["main"][0].defaults)
    return rec


ST = G["step"]


def test_step_aggregation_before_the_forward(suite_step):
    close_ck(suite_step["theta_after_ema"]["params"], ST["theta_after_ema"]["params"])


@pytest.mark.parametrize("key,released", [("loss", "loss"), ("deno", "deno"), ("diff", "diff"), ("unsup", "unsup")])
def test_step_losses(suite_step, key, released):
    close(suite_step["losses"][key], ST[released], rtol=CK_RTOL, atol=1e-6)


def test_step_mu_and_class_weights(suite_step):
    close(suite_step["mu"], ST["mu"])
    close(suite_step["weights"], ST["weights"], rtol=CK_RTOL)


def test_step_pseudo_label(suite_step):
    close_ck(suite_step["p_u_xi"], ST["p_u_xi"])
    assert suite_step["hist"] == [int(v) for v in ST["pseudo_label_hist"]]


@pytest.mark.parametrize("part", sorted(ST["grads"]))
def test_step_gradients(suite_step, part):
    close_ck(suite_step["grads"][part], ST["grads"][part], rtol=1e-3)


def test_step_parameter_change_and_buffers(suite_step):
    close_ck(suite_step["delta"], ST["delta"], rtol=1e-3)
    close_ck(suite_step["state"]["buffers"], ST["state"]["buffers"])


def test_optimizer_settings_as_make_model_all():
    train = resolve_method("ad", METHODS.get("ad"), []).train
    opt = make_optimizers(METHODS.get("ad")(context()), train)["main"][0]
    exp = ST["optimizer"]
    assert {k: opt.defaults[k] for k in ("momentum", "weight_decay", "nesterov", "dampening")} == pytest.approx(
        {k: exp[k] for k in ("momentum", "weight_decay", "nesterov", "dampening")})


# ----------------------------------------------------------------------------- schedules
SC = G["schedules"]


def test_mu_curve():
    """get_current_mu(e) itself (schedule="step": each step's own value, one step per epoch)."""
    m = METHODS.get("ad")(context(iterations=SC["max_epoch"]), mu=SC["mu"], schedule="step")
    assert m.ctx.epoch_length == 1
    close([m.unsup_weight(e) for e in SC["epochs"]], SC["get_current_mu"], rtol=1e-12)


def test_lr_and_mu_in_force_per_epoch():
    """schedule="epoch" (default): lr and mu of epoch e are those the loop set at the end of e - 1."""
    m = METHODS.get("ad")(context(iterations=SC["max_epoch"]), mu=SC["mu"])
    got = [(poly_lr(SC["base_lr"], m.schedule_step(r["epoch"]), SC["max_epoch"], 0.9), m.unsup_weight(r["epoch"])) for r in SC["in_force"]]
    close(got, [(r["lr"], r["mu"]) for r in SC["in_force"]], rtol=1e-9)
    assert not np.allclose([r["mu"] for r in SC["in_force"]][2:],
                           [METHODS.get("ad")(context(iterations=SC["max_epoch"]), mu=SC["mu"], schedule="step").unsup_weight(e)
                            for e in range(2, SC["max_epoch"] + 1)])
