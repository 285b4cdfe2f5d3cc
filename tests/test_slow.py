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
