"""torchrun with 2 CPU processes (gloo): one run trained on batch slices with averaged
gradients, weights in sync (checked at the end of training), only rank 0 writes; the result
is compared with a single process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["-m", "bench", "run", "--methods", "mean_teacher", "--preset", "tiny", "--iterations", "4", "--no-progress"]


def test_torchrun_two_cpu_processes_match_one(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", *ARGS, "--out", str(ddp)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("mean Dice") == 1  # rank 1 reports nothing
    metrics = list(ddp.rglob("metrics.json"))
    assert len(metrics) == 1
    config = json.loads((metrics[0].parent / "config.json").read_text())
    assert config["world_size"] == 2 and "world_size=2" not in str(metrics[0])
    r1 = subprocess.run([sys.executable, *ARGS, "--out", str(single)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-3000:]
    m2 = json.loads(metrics[0].read_text())
    m1 = json.loads(next(single.rglob("metrics.json")).read_text())
    assert m1["cases"].keys() == m2["cases"].keys()
    diff = abs(m1["mean"]["dice"] - m2["mean"]["dice"])
    print(f"DDP-vs-single mean Dice difference: {100 * diff:.3f} points")
    assert diff < 0.05  # same batches and averaged gradients; only batch-pooled terms (Dice, BatchNorm) differ
