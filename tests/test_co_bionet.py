"""Co-BioNet (``methods/co_bionet.py``): each formula on hand-computed examples of 2-4 voxels,
the multi-class form reducing to the released binary one at C = 2, the step through the engine
(four named optimisers, two backward passes for the segmenters, critics trained unless
``released_critic_detach``), checkpoint / resume by optimiser name. The released code itself is
compared in ``tests/test_released_cobionet.py``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from bench.config import TrainConfig
from bench.core.registry import METHODS
from bench.step import TrainStep, make_optimizers
from bench.train import Trainer
from methods.co_bionet import CoBioNet, binary_ce, cosine_lr, disc_loss, gen_loss, soft_ce
from tests.helpers import random_batch, tiny_context, tiny_spec


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vox(*values) -> torch.Tensor:
    """Per-voxel channel vectors -> (1, C, n, 1, 1)."""
    return torch.tensor(values, dtype=torch.float32).T.reshape(1, len(values[0]), len(values), 1, 1)


def fg(*values) -> torch.Tensor:
    """Foreground probabilities -> (1, 1, n, 1, 1)."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, -1, 1, 1)


def binary(**hp) -> CoBioNet:
    return CoBioNet(tiny_context(num_classes=2, patch=(16, 16, 16)), output="sigmoid", **hp)


def multi(c: int = 3, **hp) -> CoBioNet:
    return CoBioNet(tiny_context(num_classes=c, patch=(16, 16, 16)), **hp)


class Fixed(nn.Module):
    """A 'critic' returning fixed scores (1, 1, n, 1, 1), whatever its input."""

    def __init__(self, scores):
        super().__init__()
        self.scores = fg(*scores)

    def forward(self, x):
        return self.scores


# ----------------------------------------------------------------------------- formulas
def test_soft_ce_by_hand():
    p = vox([0.7, 0.2, 0.1], [0.1, 0.1, 0.8])
    q = vox([1.0, 0.0, 0.0], [0.5, 0.5, 0.0])
    # -ln 0.7 = 0.356675; -(0.5 ln 0.1 + 0.5 ln 0.1) = ln 10 = 2.302585
    assert soft_ce(p, q).flatten().tolist() == pytest.approx([0.3566749, 2.3025851], rel=1e-6)


def test_soft_ce_clamp_and_log_floor():
    p = vox([1.0, 0.0], [0.0, 1.0])
    q = vox([0.0, 1.0], [1.0, 0.0])
    # clamp to [1e-8, 1 - 1e-7]: -ln 1e-8 = 18.420681; log floor: -(-100) = 100
    assert soft_ce(p, q, (1e-8, 1 - 1e-7)).flatten().tolist() == pytest.approx([18.420681, 18.420681], rel=1e-6)
    assert soft_ce(p, q).flatten().tolist() == pytest.approx([100.0, 100.0])


def test_binary_ce_by_hand():
    # -ln 0.9 = 0.105361; -ln 0.7 = 0.356675; -(0.5 ln 0.6 + 0.5 ln 0.4) = 0.713558
    got = binary_ce(fg(0.9, 0.3, 0.6), fg(1.0, 0.0, 0.5)).flatten().tolist()
    assert got == pytest.approx([0.1053605, 0.3566749, 0.7135582], rel=1e-6)


def test_uncertainty_mask_by_hand():
    """sigmoid(-2, -1, 0, 1.5) = 0.119, 0.269, 0.5, 0.818: above t_m = 0.2 from the second voxel."""
    m = binary()
    assert m.mask(Fixed([-2.0, -1.0, 0.0, 1.5]), fg(0.5, 0.5, 0.5, 0.5)).flatten().tolist() == [0.0, 1.0, 1.0, 1.0]
    assert binary(t_m=0.5).mask(Fixed([-2.0, -1.0, 0.0, 1.5]), fg(0.5, 0.5, 0.5, 0.5)).flatten().tolist() == [0.0, 0.0, 0.0, 1.0]


def test_masked_loss_voxelwise_and_as_released():
    p, q, mask = fg(0.9, 0.3, 0.6), fg(1.0, 0.0, 0.5), fg(1.0, 0.0, 1.0)
    # fixed: (0.105361 + 0.713558) / 3 = 0.272973; released: mean(M) mean(CE) = 2/3 x 0.391865 = 0.261243
    assert float(binary().masked(p, q, mask)) == pytest.approx(0.2729729, rel=1e-6)
    assert float(binary(released_mask_after_mean=True).masked(p, q, mask)) == pytest.approx(0.2612430, rel=1e-6)


def test_masked_loss_sends_no_gradient_to_the_target():
    p, q = fg(0.9, 0.3, 0.6).requires_grad_(True), fg(1.0, 0.0, 0.5).requires_grad_(True)
    binary().masked(p, q, fg(1.0, 1.0, 1.0)).backward()
    assert q.grad is None and p.grad is not None


def test_diff_term_has_a_gradient_unless_released():
    p, q = fg(0.9, 0.3, 0.6), fg(1.0, 0.0, 0.5)
    # mean of the three BCE values: (0.105361 + 0.356675 + 0.713558) / 3 = 0.391865
    fixed = binary().diff(p.clone().requires_grad_(True), q)
    released = binary(released_diff_item=True).diff(p.clone().requires_grad_(True), q)
    assert float(fixed.detach()) == pytest.approx(0.3918645, rel=1e-6) and float(released) == pytest.approx(0.3918645, rel=1e-6)
    assert fixed.requires_grad and not released.requires_grad


def test_supervised_binary_by_hand():
    # BCE: (-ln 0.8 - ln 0.4 - ln 0.9) / 3 = 0.414932; Dice: 1 - (2 x 1.2 + 1e-5) / (1.3 + 2 + 1e-5) = 0.272726
    y = torch.tensor([1, 1, 0]).reshape(1, 3, 1, 1)
    assert float(binary().supervised(fg(0.8, 0.4, 0.1), y)) == pytest.approx(0.6876580, rel=1e-6)
    assert float(binary(lamda=0.5).supervised(fg(0.8, 0.4, 0.1), y)) == pytest.approx(0.3438290, rel=1e-6)


def test_supervised_multiclass_by_hand():
    """CE (-ln 0.7 - ln 0.8) / 2 = 0.289909; Dice over the foreground classes: class 1 (absent)
    1 - 1e-5 / 0.30001 = 0.999967, class 2 1 - 1.60001 / 1.90001 = 0.157894, mean 0.578930."""
    p = vox([0.7, 0.2, 0.1], [0.1, 0.1, 0.8])
    y = torch.tensor([0, 2]).reshape(1, 2, 1, 1)
    assert float(multi(3).supervised(p, y)) == pytest.approx(0.8688395, rel=1e-6)


def test_generator_and_critic_losses_by_hand():
    # gen: (-ln 0.8 - ln 0.5) / 2 = 0.458145; critic: 0.5 (-ln 0.8 - ln(1 - 0.3)) = 0.289909
    assert float(gen_loss(fg(0.8, 0.5))) == pytest.approx(0.4581454, rel=1e-6)
    assert float(disc_loss(fg(0.3), fg(0.8))) == pytest.approx(0.2899092, rel=1e-6)


def test_two_class_softmax_reduces_to_the_released_sigmoid_form():
    """softmax over logits (0, z) is sigmoid(z): supervised, diff and masked terms agree."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(2, 1, 4, 4, 4), torch.randn(2, 1, 4, 4, 4)
    y = torch.randint(0, 2, (2, 4, 4, 4))
    mask = (torch.rand(2, 1, 4, 4, 4) > 0.3).float()
    soft, sig = multi(2), binary()
    ps1, ps2 = soft.probs(torch.cat([torch.zeros_like(z1), z1], 1)), soft.probs(torch.cat([torch.zeros_like(z2), z2], 1))
    pb1, pb2 = sig.probs(z1), sig.probs(z2)
    assert float(soft.supervised(ps1, y)) == pytest.approx(float(sig.supervised(pb1, y)), rel=1e-5)
    assert float(soft.diff(ps1, ps2)) == pytest.approx(float(sig.diff(pb1, pb2)), rel=1e-5)
    assert float(soft.masked(ps1, ps2, mask)) == pytest.approx(float(sig.masked(pb1, pb2, mask)), rel=1e-5)


def test_cosine_schedule_by_hand():
    # (1 + cos(pi/4)) / 2 = 0.853553; cos(pi/2) = cos(3 pi/2) = 0: half; 0 at T_max, back to base at 2 T_max
    assert [cosine_lr(0.01, s, 4) for s in (0, 1, 2, 4, 6, 8)] == pytest.approx([0.01, 0.0085355339, 0.005, 0.0, 0.005, 0.01], abs=1e-11)


def test_consistency_ramp_by_hand():
    """w(t) = exp(-5 (1 - ((t + 1) // 150) / 40)^2): exp(-5) = 0.006738 until step 148,
    exp(-5 (39/40)^2) = 0.008625 from step 149, 1 from step 5999."""
    m = multi()
    got = [m.consistency_weight(s) for s in (0, 148, 149, 5998, 5999, 9000)]
    assert got == pytest.approx([0.006737947, 0.006737947, 0.008624701, math.exp(-5 * (1 / 40) ** 2), 1.0, 1.0], rel=1e-6)


def test_t_max_modes():
    ctx = tiny_context(num_classes=3, patch=(16, 16, 16), n_unlabeled=16, unlabeled_bs=2)
    ctx.iterations = 2400
    assert CoBioNet(ctx).t_max() == 2400 // 8 + 1  # no n_labeled in the context: the suite's (unlabeled) epoch
    ctx.n_labeled, ctx.labeled_bs = 4, 2  # the hook: the released epoch of 4 labeled cases
    assert CoBioNet(ctx).t_max() == 1201
    assert CoBioNet(ctx, cosine_t_max="run").t_max() == 2400 and CoBioNet(ctx, cosine_t_max=300).t_max() == 300


def test_predict_averages_the_two_views_probabilities():
    m = binary()
    m.networks["seg1"] = lambda x: torch.zeros(1, 1, 1, 1, 1)
    m.networks["seg2"] = lambda x: torch.full((1, 1, 1, 1, 1), 2.0)
    # (sigmoid(0) + sigmoid(2)) / 2 = (0.5 + 0.880797) / 2 = 0.690399
    assert torch.softmax(m.predict(torch.zeros(1, 1, 1, 1, 1)), 1).flatten().tolist() == pytest.approx([0.3096015, 0.6903985], rel=1e-6)
    k = multi(3)
    k.networks["seg1"] = lambda x: torch.log(vox([0.7, 0.2, 0.1]))
    k.networks["seg2"] = lambda x: torch.log(vox([0.1, 0.1, 0.8]))
    assert torch.softmax(k.predict(None), 1).flatten().tolist() == pytest.approx([0.4, 0.15, 0.45], rel=1e-6)


def test_sigmoid_form_needs_two_classes():
    with pytest.raises(ValueError, match="num_classes must be 2"):
        CoBioNet(tiny_context(num_classes=14), output="sigmoid")


# ----------------------------------------------------------------------------- the step
def _state(m, names):
    return {f"{k}.{n}": p.detach().clone() for k in names for n, p in m.networks[k].named_parameters()}


def _step(**hp):
    torch.manual_seed(0)
    ctx = tiny_context(num_classes=4, patch=(16, 16, 16))
    m = CoBioNet(ctx, **hp)
    ts = TrainStep(m, make_optimizers(m, TrainConfig(lr=0.01, iterations=10)), torch.device("cpu"), amp=False)
    before = _state(m, m.networks)
    losses = ts(*random_batch(ctx), 3)
    return m, before, _state(m, m.networks), losses


def test_one_step_moves_segmenters_and_critics():
    m, before, after, losses = _step()
    assert set(m.networks) == {"seg1", "seg2", "critic1", "critic2"}
    assert all(not torch.equal(before[k], after[k]) for k in before), "every network moved"
    assert {"sup", "unsup", "diff", "masked", "gen", "critic", "mask", "w_unsup"} <= set(losses.parts)
    assert not losses.total.requires_grad


def test_released_critic_detach_leaves_the_critics_untouched():
    m, before, after, _ = _step(released_critic_detach=True)
    for k in before:
        assert torch.equal(before[k], after[k]) == k.startswith("critic"), k


def test_critic_gradient_comes_from_the_critic_loss_alone():
    """After the step each critic's gradient is that of its own loss (the generator terms'
    gradients were cleared), on the predictions detached from the segmenters."""
    torch.manual_seed(0)
    ctx = tiny_context(num_classes=4, patch=(16, 16, 16))
    m = CoBioNet(ctx)
    lab, unl = random_batch(ctx)
    losses = m.training_step(lab, unl, 3)
    crit = [p for p in m.networks["critic1"].parameters()]
    seg = [p for p in m.networks["seg1"].parameters()]
    g_seg = torch.autograd.grad(losses.parts["critic"], seg, allow_unused=True, retain_graph=True)
    assert all(g is None for g in g_seg), "the critic loss reaches no segmenter"
    g_crit = torch.autograd.grad(losses.parts["critic"], crit, allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in g_crit)


def test_unsup_reaches_both_segmenters():
    torch.manual_seed(0)
    ctx = tiny_context(num_classes=4, patch=(16, 16, 16))
    m = CoBioNet(ctx, released_diff_item=True)  # even with the released float diff term (masked + generator)
    losses = m.training_step(*random_batch(ctx), 200)
    for k in ("seg1", "seg2"):
        grads = torch.autograd.grad(losses.parts["unsup"], list(m.networks[k].parameters()), allow_unused=True, retain_graph=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), k


def test_each_segmenter_gets_only_its_own_loss():
    """Two backward passes: loss_1 reaches segmenter 1 only (the other view enters detached)."""
    torch.manual_seed(0)
    ctx = tiny_context(num_classes=4, patch=(16, 16, 16))
    m = CoBioNet(ctx)
    lab, unl = random_batch(ctx)
    x_l, x_u = lab["image"], unl["image"]
    z = {k: (m.networks[k](x_l), m.networks[k](x_u), m.networks[k](torch.cat([x_l, x_u]))) for k in ("seg1", "seg2")}
    v1 = m._view(z["seg1"][0], z["seg1"][1], z["seg2"][1], z["seg1"][2], lab["label"], m.networks["critic1"], m.networks["critic2"],
                 m.real_input(lab["label"]), 1.0)
    g2 = torch.autograd.grad(v1["total"], list(m.networks["seg2"].parameters()), allow_unused=True)
    assert all(g is None for g in g2)


# ----------------------------------------------------------------------------- the engine
def _spec(tiny_dataset, run_dir, **kw):
    return tiny_spec(tiny_dataset, "co_bionet", run_dir, iterations=4, val_every=0, ckpt_every=1, patch=(16, 16, 16), **kw)


def test_engine_step_and_resume_by_optimiser_name(tiny_dataset, tmp_path):
    whole = Trainer(_spec(tiny_dataset, tmp_path / "a"))
    whole.fit()
    first = Trainer(_spec(tiny_dataset, tmp_path / "b"))
    first.spec.stop_after = 2
    first.fit()
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert set(state["optimizers"]) == {"seg1", "seg2", "critic1", "critic2"}
    assert state["optimizers"]["critic1"]["state"], "the critics' AdamW has moments after two steps"
    second = Trainer(_spec(tiny_dataset, tmp_path / "b"))
    second.fit()
    assert second.step == 4
    a, b = _state(whole.method, whole.method.networks), _state(second.method, second.method.networks)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    t_max = whole.method.t_max()
    assert log[1]["lr_seg1"] == pytest.approx(cosine_lr(0.01, 1, t_max)) and log[1]["lr_critic2"] == pytest.approx(cosine_lr(1e-4, 1, t_max))


def test_registered():
    assert METHODS.get("co_bionet") is CoBioNet and CoBioNet.manual_optimization


def test_the_engine_passes_the_labeled_count_for_the_released_epoch(tiny_dataset, tmp_path):
    """bench.train gives methods n_labeled / labeled_bs, so T_max = iterations // (n_labeled // labeled_bs) + 1."""
    from tests.helpers import tiny_spec

    trainer = Trainer(tiny_spec(tiny_dataset, "co_bionet", tmp_path / "run", iterations=40, patch=(16, 16, 16), val_every=0))
    ctx = trainer.ctx
    assert ctx.n_labeled == len(trainer.cases.labeled) > 0 and ctx.labeled_bs == trainer.t.labeled_bs
    assert trainer.method.t_max() == 40 // max(1, ctx.n_labeled // ctx.labeled_bs) + 1
