"""Registry-wide method checks: every registered method trains one CPU step on the phantom; the
unsupervised loss sends a gradient to the student and none to EMA teachers."""

from __future__ import annotations

import pytest
import torch

from bench.core.labels import BTCV_13
from bench.core.registry import METHODS
from bench.train import Trainer
from priors.cache import prior_embeddings
from tests.helpers import random_batch, tiny_context, tiny_spec

PATCH = (32, 32, 64)  # the smallest patch every method accepts (cube methods need 2 cubes of 32)


def _hash_priors():
    return prior_embeddings("anatomy", "hash:48", BTCV_13, use_cache=False)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_trains_one_step_on_the_phantom(name, tiny_dataset, tmp_path):
    spec = tiny_spec(tiny_dataset, name, tmp_path / name, iterations=1, patch=PATCH, val_every=0)
    spec.priors = _hash_priors
    trainer = Trainer(spec)
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in trainer.method.networks.items()}
    trainer.fit()
    assert trainer.step == 1
    changed = any(not torch.equal(a, b) for k, m in trainer.method.networks.items() for a, b in zip(before[k], m.parameters()))
    assert changed, "the optimiser step changed no weight"
    for m in trainer.method.modules().values():
        assert all(torch.isfinite(p).all() for p in m.parameters())


def _unsup_methods():
    return [n for n in METHODS.names() if METHODS.get(n).uses_unlabeled and METHODS.get(n).label_policy == "split"]


@pytest.mark.parametrize("name", _unsup_methods())
def test_unsupervised_loss_reaches_the_student_not_the_teacher(name):
    torch.manual_seed(0)
    ctx = tiny_context(patch=PATCH, width=4, priors=_hash_priors)
    ctx.iterations = 10
    method = METHODS.get(name)(ctx)
    labeled, unlabeled = random_batch(ctx)
    step = 200  # past warm-ups (cube-wise blending starts after 100 steps)
    method.training_step(labeled, unlabeled, 0)  # fills running statistics
    method.class_dist.update() if hasattr(method, "class_dist") else None
    losses = method.training_step(labeled, unlabeled, step)
    assert "unsup" in losses.parts, "methods name their unsupervised term 'unsup'"
    student = [p for net in method.networks.values() for p in net.parameters()]
    grads = torch.autograd.grad(losses.parts["unsup"], student, allow_unused=True, retain_graph=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient from the unsupervised loss"
    losses.total.backward()
    for teacher in method.teachers.values():
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_the_tiny_preset_runs_every_registered_method(tmp_path, capsys):
    """`--preset tiny` (one patch, 32x32x64, for every method) trains and tests every method of
    the registry end to end through the command line, text-prior methods with hash vectors."""
    import json

    from bench.cli import main

    names = METHODS.names()
    assert main(["run", "--methods", ",".join(names), "--preset", "tiny", "--text-encoder", "hash:32", "--out", str(tmp_path),
                 "--no-progress", "--set", "iterations=2", "--set", "val_every=2"]) == 0
    done = {json.loads(p.read_text())["method"] for p in tmp_path.rglob("metrics.json")}
    assert done == set(names)
    configs = [json.loads(p.read_text()) for p in tmp_path.rglob("config.json")]
    assert {tuple(c["train"]["patch"]) for c in configs} == {(32, 32, 64)}
