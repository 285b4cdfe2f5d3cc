"""Faithful by default: the released settings each method declares, and every switch to a
released behaviour changes what it says (docs/fidelity.md lists them)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.core.registry import METHODS
from bench.runner import RunRequest, dry_run
from methods.acisis import ClassIndicators
from methods.cube_mixing import cubes_of, released_order, unmix_cubes
from methods.magicnet import GA, MagicNet
from methods.networks import VNet
from tests.helpers import random_batch, tiny_context

PATCH = (32, 32, 64)


def test_released_optimiser_and_init_in_the_resolved_config():
    runs = {r["method"]: r for r in dry_run(RunRequest.build({"methods": "magicnet,ga,tak,dhc,adsh,mean_teacher"}))}
    for m in ("magicnet", "ga", "tak"):
        assert runs[m]["hparams"]["init"] == "default"
    # Nesterov: TAK-Semi yes; MagicNet, GALoss and SSL4MIS' mean teacher no; DHC's scripts yes
    assert {m: runs[m]["train"]["nesterov"] for m in runs} == {"magicnet": False, "ga": False, "tak": True, "dhc": True,
                                                              "adsh": True, "mean_teacher": False}
    for m in ("dhc", "mean_teacher"):
        assert runs[m]["hparams"]["init"] == "kaiming"
    assert runs["adsh"]["hparams"]["init_b"] == "xavier" and runs["dhc"]["hparams"]["init_b"] == "kaiming"
    assert all(r["train"]["lr_horizon"] == "run" for r in runs.values())
    assert runs["ga"]["hparams"]["consistency_epoch"] == runs["magicnet"]["hparams"]["consistency_epoch"] == 350
    assert runs["tak"]["hparams"]["consistency_epoch"] == "unlabeled_cases" and runs["tak"]["hparams"]["consistency_rampup_epochs"] == 160
    assert runs["tak"]["hparams"]["pl_source"] == "teacher" and runs["tak"]["hparams"]["prior_norm"] == "encoder"


def test_init_switch():
    torch.manual_seed(0)
    default = VNet(1, 3, 4, init="default")
    torch.manual_seed(0)
    kaiming = VNet(1, 3, 4, init="kaiming")
    w_d, w_k = default.enc[1][0].weight, kaiming.enc[1][0].weight  # a 3x3x3 conv with 8 inputs
    fan_in = w_k[0].numel()
    # Kaiming-normal: std sqrt(2 / fan_in); PyTorch's default: uniform(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in)
    assert w_k.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    assert w_d.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.1)
    # as DHC's initialisers: conv biases and transposed convolutions keep PyTorch's default
    assert kaiming.enc[1][0].bias.abs().sum() > 0
    up_d = [m for m in default.modules() if isinstance(m, torch.nn.ConvTranspose3d)][0]
    up_k = [m for m in kaiming.modules() if isinstance(m, torch.nn.ConvTranspose3d)][0]
    assert up_k.weight.std().item() == pytest.approx(up_d.weight.std().item(), rel=0.2)


def test_lr_horizon_by_hand():
    from bench.step import poly_lr

    # GALoss: 17,000 of 70,000 iterations -> 0.01 (1 - 17000/70000)^0.9 = 0.0077845
    assert poly_lr(0.01, 17000, 70000, 0.9) == pytest.approx(0.0077845, rel=1e-4)
    assert poly_lr(0.01, 600, 600, 0.9) == 0.0 and poly_lr(0.01, 700, 600, 0.9) == 0.0


@pytest.mark.parametrize("cls", [GA, MagicNet])
def test_ga_and_magicnet_consistency_weight_as_released(cls):
    m = cls(tiny_context(patch=PATCH))
    # both releases: 0.1 sigmoid_rampup(17000 // 350 = 48, 200) = 0.1 exp(-5 (1 - 48/200)^2) = 0.00557
    assert m.consistency_weight(17000) == pytest.approx(0.1 * math.exp(-5 * (1 - 48 / 200) ** 2))
    assert m.consistency_weight(17000) < 0.0056
    # the suite's earlier ramp over the run, one switch away
    mn = MagicNet(tiny_context(patch=PATCH), consistency_epoch="run")
    assert mn.consistency_weight(mn.ctx.iterations) == pytest.approx(0.1)


def test_released_cube_order_transposes_the_grid():
    n = (3, 3, 3)
    x = torch.arange(27, dtype=torch.float32).reshape(1, 1, 3, 3, 3)
    cubes = cubes_of(x, 1)  # cube (i, j, k) holds the value 9 i + 3 j + k
    assert torch.equal(unmix_cubes(cubes, n), x)
    rel = unmix_cubes(cubes, n, released_order_=True)
    # the released recovery puts cube (k, j, i) at (i, j, k): the first and last axes swap
    assert torch.equal(rel, x.permute(0, 1, 4, 3, 2))
    assert int((rel == x).sum()) == 9  # 9 of 27 cubes land in place (those with i == k)
    assert released_order(n).tolist()[:3] == [0, 9, 18]


def test_released_acisis_broadcast_pairs_images_by_hand():
    """Two one-voxel images, both labelled class 0; p = (0.8, 0.2) and (0.4, 0.6). Per image the
    class-0 confidence is (0.8 + 0.4) / 2 = 0.6; DHC's broadcast sums over both label maps:
    (0.8 + 0.4) x 2 / 2 = 1.2."""
    logits = torch.log(torch.tensor([[0.8, 0.2], [0.4, 0.6]]))[:, :, None, None, None]
    label = torch.zeros(2, 1, 1, 1, dtype=torch.long)
    ours, released = ClassIndicators(2, 10), ClassIndicators(2, 10, released_broadcast=True)
    ours.record(logits, label)
    released.record(logits, label)
    assert ours.sums[1, 0].item() == pytest.approx(0.6, abs=1e-5)
    assert released.sums[1, 0].item() == pytest.approx(1.2, abs=1e-5)
    # the entropy-like indicator doubles as well: sum_b p_b0 sum_k log p_bk, twice, over n = 2
    e = [0.8 * (math.log(0.8) + math.log(0.2)), 0.4 * (math.log(0.4) + math.log(0.6))]
    assert ours.sums[0, 0].item() == pytest.approx(sum(e) / 2, abs=1e-5)
    assert released.sums[0, 0].item() == pytest.approx(sum(e), abs=1e-5)


def _unsup(name: str, patch=PATCH, **hp) -> float:
    """The consistency loss of one step past the pseudo-label warm-up, with a teacher that
    differs from the student (so that student- and teacher-made pseudo-labels differ) and the
    blending weight at 1 (the target is then the cube-wise pseudo-label alone)."""
    ctx = tiny_context(patch=patch, priors=lambda: torch.randn(2 * 14, 16, generator=torch.Generator().manual_seed(1)))
    torch.manual_seed(0)
    m = METHODS.get(name)(ctx, dist_warmup=0, contrast_weight=0.0, **hp) if name == "tak" else METHODS.get(name)(ctx, dist_warmup=0, **hp)
    with torch.no_grad():
        for p in m.teachers["teacher"].parameters():
            p.add_(0.5 * torch.randn_like(p))
    m.class_dist.counts = torch.ones(ctx.num_classes)  # blending weight 1: the target is the cube-wise pseudo-label
    labeled, unlabeled = random_batch(ctx)
    torch.manual_seed(1)
    return float(m.training_step(labeled, unlabeled, 5).parts["unsup"])


@pytest.mark.parametrize("name,switch,patch", [
    ("magicnet", {"pl_source": "teacher"}, PATCH),
    ("ga", {"released_galoss_mix_pl": True}, PATCH),
    ("ga", {"released_cube_order": True}, (64, 32, 64)),  # a 2x1x2 cube grid: the transposition moves cubes
    ("tak", {"pl_class_embedding": "teacher"}, PATCH),
])
def test_pseudo_label_switches_change_the_consistency_target(name, switch, patch):
    assert _unsup(name, patch) != pytest.approx(_unsup(name, patch, **switch), rel=1e-6)


def test_galoss_mix_pl_takes_the_labeled_cubes():
    ga, fixed = GA(tiny_context(patch=PATCH), released_galoss_mix_pl=True), GA(tiny_context(patch=PATCH))
    assert list(ga.pl_cube_indices(2, 4)) == [0, 1] and list(fixed.pl_cube_indices(2, 4)) == [2, 3]


# probabilities of two voxels (class 0, class 1): (0.2, 0.8) labelled 1, (0.6, 0.4) labelled 0
_P = torch.tensor([[0.2, 0.6], [0.8, 0.4]]).reshape(1, 2, 1, 1, 2)
_Y = torch.tensor([1, 0]).reshape(1, 1, 1, 2)


@pytest.mark.parametrize("kw,expected", [
    # class 0: inter 0.6, Σp 0.8, Σp² 0.40, Σy 1; class 1: inter 0.8, Σp 1.2, Σp² 0.80, Σy 1
    ({}, ((1 - 1.2 / 1.8) + (1 - 1.6 / 2.2)) / 2),  # linear: 0.30303
    ({"squared": True}, ((1 - 1.2 / 1.4) + (1 - 1.6 / 1.8)) / 2),  # SSL4MIS DiceLoss: 0.12698
    ({"background": False, "eps": 1e-8}, 1 - 1.6 / 2.2),  # DHC SoftDiceLoss: 0.27273
])
def test_dice_variants_by_hand(kw, expected):
    from methods.losses import soft_dice_loss

    assert soft_dice_loss(_P, _Y, **kw).item() == pytest.approx(expected, abs=1e-5)


def test_supervised_dice_defaults_follow_the_released_scripts():
    runs = {r["method"]: r for r in dry_run(RunRequest.build({"methods": "mean_teacher,ua_mt,urpc,supervised"}))}
    assert runs["mean_teacher"]["hparams"]["dice"] == "squared"  # SSL4MIS train_mean_teacher_3D.py
    assert runs["ua_mt"]["hparams"]["dice"] == "foreground" and runs["urpc"]["hparams"]["dice"] == "foreground"  # DHC
    assert runs["supervised"]["hparams"]["dice"] == "linear"
    assert runs["ua_mt"]["hparams"]["ema_warmup"] == "epoch"


@pytest.mark.parametrize("dice", ["linear", "foreground"])
def test_dice_switch_changes_the_supervised_loss(dice):
    from methods.losses import ssl4mis_dice_ce_loss

    logits = torch.log(_P)
    assert ssl4mis_dice_ce_loss(logits, _Y, dice=dice).item() != pytest.approx(ssl4mis_dice_ce_loss(logits, _Y, dice="squared").item())


@pytest.mark.parametrize("warmup,alpha", [("epoch", 0.0), ("step", 0.75)])
def test_ua_mt_ema_warm_start_counts_epochs(warmup, alpha):
    from methods.ua_mt import UAMT

    torch.manual_seed(0)
    # 8 unlabeled cases, 2 a step: an epoch is 4 steps; at step 3 the epoch count is 0 -> alpha 0
    m = UAMT(tiny_context(n_unlabeled=8, unlabeled_bs=2), ema_warmup=warmup)
    teacher, student = m.teachers["teacher"], m.networks["net"]
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    m.after_step(3)
    for b, t, s in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t, alpha * b + (1 - alpha) * s)


def test_released_empty_dice_switch_reaches_the_protocol_record_and_is_refused_elsewhere(tmp_path):
    from bench.core.errors import UserError

    (run,) = dry_run(RunRequest.build({"methods": "dhc", "protocol": "dhc"}, ["released_empty_dice=true"]))
    assert run["protocol"]["empty_rule"] == "dhc_released" and "released_empty_dice" not in run["train"]
    (plain,) = dry_run(RunRequest.build({"methods": "dhc", "protocol": "dhc"}))
    assert plain["protocol"]["empty_rule"] == "dhc"
    with pytest.raises(UserError, match="applies to the dhc protocol"):
        dry_run(RunRequest.build({"methods": "dhc", "protocol": "ga"}, ["released_empty_dice=true"]))
    # the same protocol option from a config file's [protocol_options] table
    cfg = tmp_path / "c.toml"
    cfg.write_text('methods = ["dhc"]\nprotocol = "dhc"\n[protocol_options]\nreleased_empty_dice = true\n')
    (from_file,) = dry_run(RunRequest.build({}, config=str(cfg)))
    assert from_file["protocol"] == run["protocol"]
    cfg.write_text('methods = ["dhc"]\n[protocol_options]\nreleased_empty = true\n')
    with pytest.raises(UserError, match=r"\[protocol_options\]: unknown protocol option 'released_empty'"):
        dry_run(RunRequest.build({}, config=str(cfg)))


def test_every_test_named_in_fidelity_md_exists():
    """docs/fidelity.md maps switches and deviations to tests: each ``file.py::name`` (or
    ``::name`` after a file in the same cell) names a test function that exists."""
    import re
    from pathlib import Path

    root = Path(__file__).parent.parent
    text = (root / "docs" / "fidelity.md").read_text()
    found = 0
    for line in text.splitlines():
        last = None
        for path, name in re.findall(r"`(?:tests/)?(test_\w+\.py)?::(\w+)`", line):
            last = path or last
            assert last, line
            source = (root / "tests" / last).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), (last, name)
            found += 1
    assert found >= 30
