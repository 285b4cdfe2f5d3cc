"""The suite's ``mean_teacher`` against goldens of the released SSL4MIS code (HiLab-git/SSL4MIS).

``tests/golden/released/ssl4mis.json`` was made by ``docs/scripts/released/ssl4mis_goldens.py``
from a checkout of the release (its commit and command are in the JSON); this test never reads
the release. Inputs and weights come from ``tests/released_inputs_ssl4mis.py`` (seeded by name);
the network is ``TinyNet`` (a named substitution for SSL4MIS' ``unet_3D``; the suite's V-Net is not
compared), put into ``MeanTeacher`` by replacing ``methods.supervised.build_vnet``.

Covered: SSL4MIS' DiceLoss (squared denominators: the suite's ``dice="squared"``, the
``mean_teacher`` default), the supervised (CE + Dice) / 2 and the softmax-MSE consistency (values
and gradients w.r.t. the logits), ``sigmoid_rampup``, the consistency weight over the released
30k-iteration run, the EMA update, the teacher noise, the poly lr, the SGD settings and three
training steps of the released loop (losses per step, student and teacher weights after).
``RandomRotFlip`` is described in the golden only (the suite has no such augmentation): it always
mirrors the volume in the axial plane (one of the 4 in-plane reflections, never the identity).

Tolerances (float32 losses and weights, float64 checksums): losses and per-step values rtol 1e-5,
atol 1e-7; gradients and weights (sum, sum of squares, sampled values) rtol 1e-5, atol 1e-6;
schedules (lr, ramps) rel 1e-12; teacher noise atol 1e-6.

The one-step lag of the released poly lr (``lr_lag=1``), the ``iter // 150`` staircase of the
consistency weight (``consistency_epoch=150``) and the EMA model's independent initialisation
(``teacher_init="independent"``) are mean_teacher's defaults since 2026-12-06, each with the
suite's earlier behaviour one setting away (tested here). No Nesterov: ``MeanTeacher.train_defaults``
gives the released SGD, and the test checks it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from bench.config import resolve_method
from bench.step import TrainStep, make_optimizers, poly_lr
from methods import supervised
from methods.base import MethodContext
from methods.ema import ema_update, teacher_noise
from methods.losses import soft_dice_loss, softmax_mse, ssl4mis_dice_ce_loss
from methods.mean_teacher import MeanTeacher
from methods.ramps import sigmoid_rampup
from tests import released_inputs_ssl4mis as R

GOLDEN = json.loads((Path(__file__).parent / "golden" / "released" / "ssl4mis.json").read_text())
LOSS = {"rtol": 1e-5, "atol": 1e-7}
WEIGHT = {"rtol": 1e-5, "atol": 1e-6}
SCHEDULE = 1e-12


def close(actual: float, expected: float, rtol: float, atol: float) -> bool:
    return abs(actual - expected) <= atol + rtol * abs(expected)


def assert_checksum(actual: dict, expected: dict, what: str, tol: dict = WEIGHT) -> None:
    for k in ("sum", "sumsq"):
        assert close(actual[k], expected[k], **tol), f"{what} {k}: suite {actual[k]!r}, released {expected[k]!r}"
    for i, (a, e) in enumerate(zip(actual["sample"], expected["sample"], strict=True)):
        assert close(a, e, **tol), f"{what} sample {i}: suite {a!r}, released {e!r}"


def assert_net(net: torch.nn.Module, expected: dict, what: str) -> None:
    actual = R.net_checksums(net)
    assert sorted(actual) == sorted(expected)
    for name in expected:
        assert_checksum(actual[name], expected[name], f"{what} {name}")


# -- losses ------------------------------------------------------------------------------------------
LOSS_CASES = GOLDEN["losses"]
LOSS_IDS = [f"b{c['batch']}c{c['classes']}" for c in LOSS_CASES]


def _logits(case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits, teacher, labels = R.loss_inputs(case["batch"], case["classes"])
    return logits.clone().requires_grad_(True), teacher, labels


@pytest.mark.parametrize("case", LOSS_CASES, ids=LOSS_IDS)
def test_dice_loss_squared(case):
    """utils/losses.py:156-192 DiceLoss == soft_dice_loss(squared=True) (the mean_teacher default)."""
    assert MeanTeacher.Hparams().dice == "squared"
    x, _, labels = _logits(case)
    dice = soft_dice_loss(torch.softmax(x, 1), labels, squared=True)
    (g,) = torch.autograd.grad(dice, x)
    assert close(float(dice.detach()), case["dice"], **LOSS)
    assert_checksum(R.checksum(g), case["dice_grad"], "dice grad")
    linear = soft_dice_loss(torch.softmax(x, 1), labels, squared=False)  # the golden tells the variants apart
    assert not close(float(linear.detach()), case["dice"], **LOSS)


@pytest.mark.parametrize("case", LOSS_CASES, ids=LOSS_IDS)
def test_supervised_loss(case):
    """0.5 * (CE + DiceLoss(softmax)) (train_mean_teacher_3D.py:150-154) == ssl4mis_dice_ce_loss(dice="squared")."""
    x, _, labels = _logits(case)
    sup = ssl4mis_dice_ce_loss(x, labels, dice=MeanTeacher.Hparams().dice)
    (g,) = torch.autograd.grad(sup, x)
    assert close(float(torch.nn.functional.cross_entropy(x.detach(), labels)), case["ce"], **LOSS)
    assert close(float(sup.detach()), case["supervised"], **LOSS)
    assert_checksum(R.checksum(g), case["supervised_grad"], "supervised grad")


@pytest.mark.parametrize("case", LOSS_CASES, ids=LOSS_IDS)
def test_consistency_loss(case):
    """softmax_mse_loss(s, t).mean() (utils/losses.py:65; inline at train_mean_teacher_3D.py:156) == softmax_mse."""
    x, teacher, _ = _logits(case)
    cons = softmax_mse(x, teacher)
    (g,) = torch.autograd.grad(cons, x)
    assert close(float(cons.detach()), case["consistency"], **LOSS)
    assert_checksum(R.checksum(g), case["consistency_grad"], "consistency grad")


# -- ramps and schedules ---------------------------------------------------------------------------
@pytest.mark.parametrize("current,length,expected", GOLDEN["ramps"]["sigmoid_rampup"], ids=lambda v: str(v))
def test_sigmoid_rampup(current, length, expected):
    assert sigmoid_rampup(current, length) == pytest.approx(expected, rel=SCHEDULE, abs=0)


@pytest.fixture
def make_method(monkeypatch):
    """MeanTeacher with the resolved defaults of ``mean_teacher``, its backbone replaced by TinyNet."""

    def make(iterations: int = R.RELEASED_ITERATIONS, net: str = "loop/student", **hparams):
        monkeypatch.setattr(supervised, "build_vnet", lambda ctx, hp, init=None: R.tiny_net(net, ctx.num_classes))
        settings = resolve_method("mean_teacher", MeanTeacher, [])
        train = dataclasses.replace(settings.train, iterations=iterations)
        ctx = MethodContext(num_classes=R.NUM_CLASSES, class_names=("background", "foreground"), patch_size=(16, 16, 16), width=2,
                            iterations=iterations)
        method = MeanTeacher(ctx, **{**settings.hparams, **hparams})
        method.train(True)
        return method, train

    return make


RAMP = GOLDEN["ramps"]
RAMP_CASES = list(zip(RAMP["steps"], RAMP["consistency_weight"], strict=True))
INSIDE = [c for c in RAMP_CASES if c[0] % 150 and c[0] < R.RELEASED_ITERATIONS]  # the staircase shows
BOUNDARY = [c for c in RAMP_CASES if c not in INSIDE]  # epoch starts, and the end of the ramp


def test_released_consistency_defaults():
    hp = MeanTeacher.Hparams()
    assert (hp.consistency, hp.ema_decay) == (RAMP["consistency"], 0.99)
    # released: 200 "epochs" of 150 iterations = the whole 30k run == consistency_rampup 1.0 of a 30k run
    assert RAMP["consistency_rampup"] * 150 == hp.consistency_rampup * R.RELEASED_ITERATIONS


@pytest.mark.parametrize("step,expected", BOUNDARY, ids=[str(c[0]) for c in BOUNDARY])
def test_consistency_weight_at_epoch_starts(make_method, step, expected):
    """0.1 sigmoid_rampup(iter // 150, 200) at multiples of 150 of a 30k-iteration run."""
    method, _ = make_method()
    assert method.consistency_weight(step) == pytest.approx(expected, rel=1e-9, abs=0)


@pytest.mark.parametrize("step,expected", INSIDE, ids=[str(c[0]) for c in INSIDE])
def test_consistency_weight_inside_epochs(make_method, step, expected):
    """The staircase sigmoid_rampup(iter // 150, 200) (train_mean_teacher_3D.py:155) inside epochs too."""
    method, _ = make_method()
    assert method.consistency_weight(step) == pytest.approx(expected, rel=1e-9, abs=0)


@pytest.mark.parametrize("step,expected", INSIDE, ids=[str(c[0]) for c in INSIDE])
def test_continuous_ramp_switch_moves_away_inside_epochs(make_method, step, expected):
    """consistency_epoch="run" (the suite's earlier continuous ramp) differs inside an epoch."""
    method, _ = make_method(consistency_epoch="run")
    if step % 150:
        assert method.consistency_weight(step) != pytest.approx(expected, rel=1e-9, abs=0)


SCHED = GOLDEN["loop"]["schedule"]


def _schedule(make_method):
    method, train = make_method(iterations=GOLDEN["loop"]["iterations"])
    (opt, schedule), = make_optimizers(method, train).values()
    return schedule


def test_poly_lr_formula(make_method):
    """lr_ = base_lr (1 - iter / max_iterations)^0.9 (train_mean_teacher_3D.py:164), over a 300-iteration run."""
    schedule = _schedule(make_method)
    for step, expected in zip(SCHED["steps"], SCHED["poly_lr_set"], strict=True):
        assert schedule(step + 1) == pytest.approx(expected, rel=SCHEDULE, abs=0), step  # set after step, used by step + 1
        assert poly_lr(R.BASE_LR, step, GOLDEN["loop"]["iterations"], 0.9) == pytest.approx(expected, rel=SCHEDULE, abs=0)


def test_lr_used_by_each_step(make_method):
    """SSL4MIS sets lr_ = poly(iter) after the step of iter (train_mean_teacher_3D.py:164): step t
    uses poly(t - 1), steps 0 and 1 both base_lr (lr_lag=1); lr_lag=0 uses poly(t)."""
    schedule = _schedule(make_method)
    assert [schedule(s) for s in SCHED["steps"]] == pytest.approx(SCHED["lr_used"], rel=SCHEDULE, abs=0)
    method, train = make_method(iterations=GOLDEN["loop"]["iterations"], lr_lag=0)
    (_, own), = make_optimizers(method, train).values()
    assert [own(s) for s in SCHED["steps"]] != pytest.approx(SCHED["lr_used"], rel=SCHEDULE, abs=0)


def test_consistency_weight_in_the_loop():
    """The loop's weights (written by the released train()) are get_current_consistency_weight(iter // 150)."""
    by_step = dict(RAMP_CASES)
    for step, w in zip(SCHED["steps"], SCHED["consistency_weight"], strict=True):
        if step in by_step:
            assert w == by_step[step]


# -- EMA, noise, optimiser ------------------------------------------------------------------------
def test_ema_update_sequence():
    """update_ema_variables (train_mean_teacher_3D.py:72-76): alpha = min(1 - 1/(step + 1), decay)."""
    teacher = R.tiny_net("ema/teacher")
    for i, rec in enumerate(GOLDEN["ema"]):
        ema_update(teacher, R.tiny_net(f"ema/student/{i}"), rec["decay"], rec["step"])
        assert_net(teacher, rec["teacher"], f"teacher after update {i} (step {rec['step']}, decay {rec['decay']})")


@pytest.mark.parametrize("step", range(R.COMPARED_STEPS))
def test_teacher_noise(step):
    """clamp(randn * 0.1, -0.2, 0.2) on the unlabeled images (train_mean_teacher_3D.py:140-142), same draw."""
    expected = GOLDEN["loop"]["noise"][step]
    unlabeled = R.batch(step)[0][R.LABELED_BS:]
    torch.manual_seed(R.noise_seed(step))
    n = teacher_noise(unlabeled) - unlabeled
    assert list(n.shape) == expected["shape"]
    assert float(n.min()) >= -0.2 - 1e-6 and float(n.max()) <= 0.2 + 1e-6
    assert int((n.abs() >= 0.2 - 1e-7).sum()) == expected["at_clip"]
    assert_checksum(R.checksum(n), expected, "noise", {"rtol": 0.0, "atol": 1e-6})


SGD = GOLDEN["loop"]["sgd"]["defaults"]


def _sgd_settings(opt: torch.optim.Optimizer) -> dict:
    return {k: opt.defaults[k] for k in SGD}


def test_default_optimizer_settings(make_method):
    """SGD(lr 0.01, momentum 0.9, weight_decay 1e-4), no Nesterov (train_mean_teacher_3D.py:121) from the
    resolved defaults of mean_teacher (``MeanTeacher.train_defaults``)."""
    method, train = make_method()
    (opt, _), = make_optimizers(method, train).values()
    assert _sgd_settings(opt) == SGD


# -- three steps of the loop ---------------------------------------------------------------------
LOOP = GOLDEN["loop"]


def test_three_steps(make_method):
    """The suite's training step (TrainStep + MeanTeacher, resolved defaults: the optimiser too) on the golden's
    batches, fed the lr and consistency weight the released loop used at each step (their deviations are
    tested above): per-step losses, then student and EMA teacher after 3 steps."""
    method, train = make_method(iterations=LOOP["iterations"])
    (opt, _), = make_optimizers(method, train).values()
    steps = LOOP["steps"]
    method.consistency_weight = lambda step: steps[step]["consistency_weight"]
    ts = TrainStep(method, {"main": (opt, lambda step: steps[step]["lr_used"])}, torch.device("cpu"), amp=False)
    logs = []
    for t in range(R.COMPARED_STEPS):
        images, labels = R.batch(t)
        ts.set_lr(t)
        torch.manual_seed(R.noise_seed(t))  # as the released loop's batch (and bench.train's step seed)
        losses = ts({"image": images[:R.LABELED_BS], "label": labels[:R.LABELED_BS]}, {"image": images[R.LABELED_BS:]}, t)
        logs.append(losses.log_values())
    for t, (log, rec) in enumerate(zip(logs, LOOP["steps"], strict=True)):
        assert close(log["loss"], rec["loss"], **LOSS), t
        assert close(log["sup"], 0.5 * (rec["loss_ce"] + rec["loss_dice"]), **LOSS), t
        assert close(log["unsup"], rec["consistency_loss"], **LOSS), t
    assert_net(method.networks["net"], LOOP["after_3_steps"]["student"], "student")
    assert_net(method.teachers["teacher"], LOOP["after_3_steps"]["teacher"], "teacher")


@pytest.mark.parametrize("teacher_init", ["independent", "copy"])
def test_teacher_initialised_independently(teacher_init):
    """SSL4MIS builds the EMA model with a second net_factory_3d call (train_mean_teacher_3D.py:95-96):
    an independent random init (teacher_init="independent", the default); "copy" copies the student."""
    from tests.helpers import tiny_context

    assert LOOP["networks_created"] == 2 and LOOP["teacher_equals_student_at_start"] is False
    torch.manual_seed(0)
    method = MeanTeacher(tiny_context(patch=(16, 16, 16), width=2), teacher_init=teacher_init)
    same = all(torch.equal(a, b) for a, b in zip(method.networks["net"].parameters(), method.teachers["teacher"].parameters()))
    assert same == (teacher_init == "copy")
    assert not any(p.requires_grad for p in method.teachers["teacher"].parameters())
