"""pytest-benchmark timings (``tox -e bench``; skipped in the default run). Speed is measured
here, never asserted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.core.labels import BTCV_13
from bench.core.metrics import case_metrics
from datasets.phantom import generate_case
from methods.mean_teacher import MeanTeacher
from tests.helpers import random_batch, tiny_context

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def phantom_case():
    return generate_case(BTCV_13, (40, 80, 80), seed=7)


def test_bench_case_metrics_all_organs(benchmark, phantom_case):
    _, label, spacing = phantom_case
    pred = np.roll(label, 1, axis=2)  # a slightly wrong prediction
    result = benchmark(case_metrics, pred, label, spacing, len(BTCV_13))
    assert len(result) == 13


def test_bench_phantom_generation(benchmark):
    benchmark(generate_case, BTCV_13, (40, 80, 80), 3)


def test_bench_mean_teacher_step(benchmark):
    torch.manual_seed(0)
    ctx = tiny_context(patch=(32, 64, 64), width=8)
    m = MeanTeacher(ctx)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    labeled, unlabeled = random_batch(ctx)

    def step():
        losses = m.training_step(labeled, unlabeled, 5)
        opt.zero_grad()
        losses.total.backward()
        opt.step()
        m.after_step(5)

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)


def test_bench_perf_command(tmp_path):
    """`python -m bench perf` end to end on the tiny phantom (numbers in its JSON)."""
    import json

    from bench.perf import run_perf

    run_perf(["mean_teacher"], "tiny", "cpu", str(tmp_path / "perf.json"), None, log=lambda *a: None)
    r = json.loads((tmp_path / "perf.json").read_text())
    assert r["harness"][0]["overhead_ratio"] > 0 and r["metrics"]["speedup_vs_medpy"] > 0
    assert r["steps"]["mean_teacher_vs_dhc"] > 0 and r["steps"]["dhc_vs_dhc"] == 1.0
