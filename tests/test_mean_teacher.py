import math

import pytest
import torch

from methods.ema import ema_update, make_teacher
from methods.mean_teacher import MeanTeacher
from methods.ramps import sigmoid_rampup
from tests.helpers import random_batch, tiny_context


def _method():
    torch.manual_seed(0)
    ctx = tiny_context()
    m = MeanTeacher(ctx, consistency=1.0, consistency_rampup=0.0)
    return m, ctx


def test_consistency_gradient_reaches_student_only():
    m, ctx = _method()
    labeled, unlabeled = random_batch(ctx)
    losses = m.training_step(labeled, unlabeled, step=5)
    student, teacher = m.networks["net"], m.teachers["teacher"]
    grads = torch.autograd.grad(losses.parts["unsup"], list(student.parameters()), allow_unused=True, retain_graph=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(not p.requires_grad for p in teacher.parameters())
    losses.total.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_changes_after_a_step_and_follows_ema():
    m, ctx = _method()
    labeled, unlabeled = random_batch(ctx)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = [p.clone() for p in m.teachers["teacher"].parameters()]
    losses = m.training_step(labeled, unlabeled, step=3)
    opt.zero_grad()
    losses.total.backward()
    opt.step()
    m.after_step(step=3)
    alpha = min(1 - 1 / 4, 0.99)
    for b, t, s in zip(before, m.teachers["teacher"].parameters(), m.networks["net"].parameters()):
        torch.testing.assert_close(t, alpha * b + (1 - alpha) * s.detach())
    assert any(not torch.equal(b, t) for b, t in zip(before, m.teachers["teacher"].parameters()))


def test_ema_update_hand_case():
    s = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        s.weight.fill_(1.0)
    t = make_teacher(s)
    with torch.no_grad():
        t.weight.fill_(0.0)
    ema_update(t, s, decay=0.99, step=1000)  # alpha = 0.99
    assert t.weight.item() == torch.tensor(0.01).item()
    ema_update(t, s, decay=0.99, step=0)  # alpha = min(0, 0.99) = 0: copy
    assert t.weight.item() == 1.0


def test_sigmoid_rampup_hand_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))  # t = 0.5: exp(-5 * 0.25)
    assert sigmoid_rampup(200, 100) == 1.0


def test_consistency_weight_is_ssl4mis_staircase_by_default():
    """0.1 sigmoid_rampup(step // 150, 200): constant within an epoch of 150 steps; hand value at
    step 15,000 (epoch 100, phase 0.5): 0.1 exp(-5 0.25) = 0.0286505."""
    m = MeanTeacher(tiny_context())
    assert m.consistency_weight(0) == m.consistency_weight(149) < m.consistency_weight(150)
    assert m.consistency_weight(15_000) == pytest.approx(0.1 * math.exp(-1.25), rel=1e-12)
    assert m.consistency_weight(30_000) == 0.1 and m.schedule_step(0) == 0 and m.schedule_step(5) == 4


def test_consistency_weight_ramps_over_the_run():
    ctx = tiny_context()
    m = MeanTeacher(ctx, consistency_epoch="run")  # consistency 0.1, ramp over all iterations (10)
    assert m.consistency_weight(10) == 0.1
    assert m.consistency_weight(0) < 0.001


@pytest.mark.parametrize("buffers", ["own", "copy"])
def test_ema_buffers_are_the_teachers_own_unless_copied(buffers):
    """Parameters only by default (every release): BatchNorm running statistics stay the
    teacher's; "copy" copies the student's. In train mode the teacher's output is the same."""
    torch.manual_seed(0)
    s = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    t = make_teacher(s)
    s.train()
    s(torch.randn(2, 1, 4, 4, 4) * 3 + 1)  # moves the student's running statistics
    ema_update(t, s, decay=0.99, step=5, buffers=buffers)
    moved = torch.equal(t[1].running_mean, s[1].running_mean)
    assert moved == (buffers == "copy") and (buffers == "copy" or not t[1].running_mean.any())
    x = torch.randn(2, 1, 4, 4, 4)
    t.train()
    other = make_teacher(t)
    other[1].running_mean.fill_(5.0)
    torch.testing.assert_close(t(x), other(x))  # train mode: batch statistics, buffers unused
