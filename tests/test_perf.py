"""Helpers of ``python -m bench perf`` (the timings themselves are benchmarks: ``tox -e bench``)."""

from pathlib import Path


def test_interleaved_medians_runs_each_callable_every_round_in_shuffled_orders():
    """Each callable runs warm-up + rounds times; the order changes between rounds (so drift
    weighs on all of them alike); the result is the median of each one's times."""
    import torch

    from bench.perf import _interleaved_medians

    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    med = _interleaved_medians(fns, torch.device("cpu"), rounds=6, warmup=1)
    assert set(med) == set("abcd") and all(v >= 0 for v in med.values())
    assert calls[:4] == list("abcd") and len(calls) == 4 + 6 * 4
    rounds = [tuple(calls[4 + 4 * r : 8 + 4 * r]) for r in range(6)]
    assert all(sorted(r) == list("abcd") for r in rounds) and len(set(rounds)) > 1


def test_harness_ratio_is_timed_at_the_runs_thread_count(tiny_dataset):
    """The engine step and the bare step run at the same thread count (torch.utils.benchmark's
    Timer alone would time the bare step at 1 thread while the engine ran at the process'
    count, and the ratio would compare thread counts, not harnesses)."""
    import torch

    from bench.perf import harness_overhead

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # two threads even on a one-core machine, so that 1 would differ
    try:
        h = harness_overhead("supervised", "tiny", tiny_dataset, torch.device("cpu"), iterations=3)
    finally:
        torch.set_num_threads(before)
    assert h["engine_threads"] == h["bare_threads"] == [2]
    assert h["overhead_ratio"] > 0


def test_perf_steps_a_method_with_its_own_optimisers():
    """bench perf builds the method's own named optimisers (make_optimizers): desco steps 'seg1'
    and 'seg2' by name inside its training step, which one 'main' SGD would refuse."""
    import math

    import torch

    from bench.perf import achieved_gflops

    row = achieved_gflops("desco", torch.device("cpu"), patch=(16, 16, 16), width=2)
    assert row["gflop_per_step"] > 0 and math.isfinite(row["s_per_step"])


def test_step_ratios_time_each_method_beside_the_reference(monkeypatch):
    """step_ratios: one interleaved median per method (the reference included) and each ratio to it."""
    import torch

    from bench import perf

    monkeypatch.setattr(perf, "_interleaved_medians", lambda fns, device, rounds: {k: 2.0 if k == "dhc" else 3.0 for k in fns})
    r = perf.step_ratios(["mean_teacher"], torch.device("cpu"), patch=(16, 16, 16), width=2)
    assert r == {"dhc": 2.0, "mean_teacher": 3.0, "dhc_vs_dhc": 1.0, "mean_teacher_vs_dhc": 1.5}


_TWO_RUNS = """
import gc, json, sys
from pathlib import Path
from datasets.phantom import build_phantom
from bench.train import Trainer
from tests.helpers import tiny_spec

out, peaks = Path(sys.argv[1]), []
for name, width, patch in (("large", 16, (32, 64, 64)), ("small", 2, (16, 16, 16))):
    trainer = Trainer(tiny_spec(build_phantom("btcv", "tiny"), "supervised", out / name, iterations=2,
                                width=width, patch=patch, val_every=0))
    trainer.fit()
    trainer.test()
    del trainer  # as the runner: a finished run's networks and batches are freed before the next
    gc.collect()
    timing = json.loads((out / name / "timing.json").read_text())
    peaks.append([timing["peak_memory_kind"], timing["peak_memory_mb"]])
print(json.dumps(peaks))
"""


def test_runs_in_one_process_report_their_own_peak_memory(tiny_dataset, tmp_path):
    """timing.json's peak is the run's own: a small run after a large one in the same process
    reports less (the process' high-water mark is reset when a run starts; Linux: VmHWM via
    /proc/self/clear_refs). The two runs go to a fresh process: in the test process, memory the
    suite's earlier tests hold sets a floor above both runs' peaks, and the test would compare
    that floor with itself."""
    import json
    import os
    import subprocess
    import sys

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("the per-run CPU peak needs /proc (Linux)")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    done = subprocess.run(
        [sys.executable, "-c", _TWO_RUNS, str(tmp_path)], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (kind_large, large), (kind_small, small) = json.loads(done.stdout.strip().splitlines()[-1])
    assert kind_large == kind_small == "process_rss_since_reset"
    assert small < large, (large, small)
