"""Long tests (``tox -e slow`` / ``pytest -m slow``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path, env: dict, iterations: int = 12):
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "run", "--methods", "mean_teacher", "--preset", "tiny", "--out", str(out),
         "--no-progress", "--set", f"iterations={iterations}", "--set", "ckpt_every=1", "--set", "val_every=4"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_sigkill_then_rerun_resumes_to_the_same_result(tmp_path):
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache")}
    ref = _run(tmp_path / "ref", env)
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    ref_metrics = json.loads(next((tmp_path / "ref").rglob("metrics.json")).read_text())

    out = tmp_path / "killed"
    proc = _run(out, env)
    deadline = time.time() + 600
    while time.time() < deadline:  # kill once a few checkpoints exist
        logs = list(out.rglob("log.jsonl"))
        if logs and sum(1 for line in logs[0].read_text().splitlines() if '"loss"' in line) >= 5:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(out.rglob("metrics.json")), "killed before the end"
    again = _run(out, env)
    assert again.wait(timeout=600) == 0, again.stderr.read()
    metrics = json.loads(next(out.rglob("metrics.json")).read_text())
    assert metrics["mean"] == ref_metrics["mean"]
    assert metrics["cases"] == ref_metrics["cases"]


def test_five_random_sigkills_then_the_same_result(tmp_path):
    """Kill a run at 5 random points (after a random number of steps); every restart resumes
    (a stale claim of the dead process is taken over) and the final metrics equal an
    uninterrupted run (deterministic CPU mode)."""
    import random

    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    iters = 30
    ref = _run(tmp_path / "ref", env, iters)
    assert ref.wait(timeout=900) == 0, ref.stderr.read()
    ref_metrics = json.loads(next((tmp_path / "ref").rglob("metrics.json")).read_text())
    out = tmp_path / "killed"
    rng = random.Random(0)
    for _kill in range(5):
        proc = _run(out, env, iters)
        target = rng.randint(2, 5)  # more steps each time
        deadline = time.time() + 600
        start = None
        while time.time() < deadline and proc.poll() is None:
            logs = list(out.rglob("log.jsonl"))
            n = sum(1 for line in logs[0].read_text().splitlines() if '"loss"' in line) if logs else 0
            start = n if start is None else start
            if n >= start + target:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not list(out.rglob("metrics.json")), "a kill came after the end; use more iterations"
    again = _run(out, env, iters)
    assert again.wait(timeout=900) == 0, again.stderr.read()
    metrics = json.loads(next(out.rglob("metrics.json")).read_text())
    assert metrics["mean"] == ref_metrics["mean"] and metrics["cases"] == ref_metrics["cases"]


def test_memory_does_not_grow_over_1000_steps(tmp_path):
    """Peak RSS after 200 and after 1000 steps of a cheap method (same process): no growth
    beyond allocator noise."""
    import resource

    from bench.train import Trainer
    from datasets.phantom import build_phantom
    from tests.helpers import tiny_spec

    os.environ.setdefault("BENCH_CACHE", str(tmp_path / "cache"))
    ds = build_phantom("btcv", "tiny")
    spec = tiny_spec(ds, "mean_teacher", tmp_path / "run", iterations=1000, val_every=0, ckpt_every=10**6, log_every=100)
    spec.progress = False
    spec.stop_after = 200
    trainer = Trainer(spec)
    trainer.fit()
    rss_200 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer.spec.stop_after = None
    trainer.fit()
    rss_1000 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert trainer.step == 1000
    print(f"peak RSS after 200 steps {rss_200 / 1024:.0f} MB, after 1000 steps {rss_1000 / 1024:.0f} MB")
    assert rss_1000 <= rss_200 * 1.05 + 20 * 1024

