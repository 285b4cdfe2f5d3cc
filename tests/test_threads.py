"""The suite's thread rule (bench/core/threads.py): usable cores from affinity and cgroup quota,
a passive OpenMP wait policy, the user's explicit settings win, applied before torch loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core import threads as th

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cores(monkeypatch):
    """Pretend the process may use 4 cores (affinity, no quota)."""
    monkeypatch.setattr(th, "usable_cores", lambda: (4, "affinity"))


@pytest.mark.parametrize("env, share, expected", [
    ({}, 1, (4, "affinity", "spin 10000", "bench")),
    ({}, 2, (2, "share", "spin 10000", "bench")),
    ({}, 3, (1, "share", "spin 10000", "bench")),           # 4 // 3
    ({}, 8, (1, "share", "spin 10000", "bench")),           # never below one thread
    ({"OMP_NUM_THREADS": "1"}, 1, (1, "OMP_NUM_THREADS", "spin 10000", "bench")),
    ({"OMP_NUM_THREADS": "3"}, 2, (3, "OMP_NUM_THREADS", "spin 10000", "bench")),  # the user's count wins over the share
    ({"OMP_NUM_THREADS": "x"}, 1, (4, "affinity", "spin 10000", "bench")),         # not a count: ignored
    ({"OMP_WAIT_POLICY": "active"}, 1, (4, "affinity", "ACTIVE", "OMP_WAIT_POLICY")),
    ({"GOMP_SPINCOUNT": "300000"}, 1, (4, "affinity", "spin 300000", "GOMP_SPINCOUNT")),
    ({"BENCH_THREADS": "off", "OMP_NUM_THREADS": "1"}, 1, (4, "torch default", "default", "off")),
])
def test_plan(cores, env, share, expected):
    p = th.plan_threads(env, share)
    assert (p.threads, p.threads_source, p.wait_policy, p.wait_source) == expected
    assert p.usable_cores == 4


def _cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "proc").write_text(proc)
    return root, tmp_path / "proc"


@pytest.mark.parametrize("proc, files, expected", [
    # cgroup v2: 150000 us of CPU per 100000 us period = 1.5 cores
    ("0::/job\n", {"job/cpu.max": "150000 100000\n"}, 1.5),
    ("0::/job\n", {"job/cpu.max": "max 100000\n"}, None),
    # the tightest quota along the path counts (a parent's limit binds its children)
    ("0::/a/b\n", {"a/cpu.max": "100000 100000\n", "a/b/cpu.max": "300000 100000\n"}, 1.0),
    # cgroup v1: quota -1 = none; 50000 / 100000 = half a core
    ("4:cpu,cpuacct:/slurm/job1\n", {"cpu,cpuacct/slurm/job1/cpu.cfs_quota_us": "-1\n",
                                      "cpu,cpuacct/slurm/job1/cpu.cfs_period_us": "100000\n"}, None),
    ("4:cpu,cpuacct:/slurm/job1\n", {"cpu,cpuacct/slurm/job1/cpu.cfs_quota_us": "50000\n",
                                      "cpu,cpuacct/slurm/job1/cpu.cfs_period_us": "100000\n"}, 0.5),
    ("4:memory:/x\n", {}, None),  # no cpu controller
])
def test_cgroup_quota(tmp_path, proc, files, expected):
    root, proc_file = _cgroup(tmp_path, proc, files)
    assert th._cgroup_quota_cores(root, proc_file) == expected


def test_quota_caps_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(th, "_cgroup_quota_cores", lambda: 2.5)
    assert th.usable_cores() == (2, "cgroup quota")
    monkeypatch.setattr(th, "_cgroup_quota_cores", lambda: 0.5)
    assert th.usable_cores() == (1, "cgroup quota")  # at least one core
    monkeypatch.setattr(th, "_cgroup_quota_cores", lambda: None)
    assert th.usable_cores() == (4, "affinity")


def _probe(env: dict) -> dict:
    """What a fresh process that imports bench, then torch, runs with."""
    code = ("import json, os, bench, torch; from bench.core.threads import current_threads; "
            "print(json.dumps({'env': {k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}, "
            "'torch': torch.get_num_threads(), 'plan': current_threads()}))")
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "BENCH_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_applied_before_torch_in_a_fresh_process():
    cores, _ = th.usable_cores()
    got = _probe({})
    assert got["env"] == {"OMP_NUM_THREADS": str(cores), "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}
    assert got["torch"] == cores and got["plan"]["wait_policy"] == "spin 10000" and got["plan"]["wait_source"] == "bench"
    got = _probe({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"})
    assert got["torch"] == 1 and got["plan"]["threads_source"] == "OMP_NUM_THREADS"
    assert got["env"]["OMP_WAIT_POLICY"] == "passive" and got["env"]["GOMP_SPINCOUNT"] is None
    assert got["plan"]["wait_policy"] == "PASSIVE"
    got = _probe({"BENCH_THREADS": "off"})
    assert got["env"] == {"OMP_NUM_THREADS": None, "OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}
    assert got["plan"]["wait_source"] == "off"


def test_child_env_splits_the_cores(monkeypatch):
    monkeypatch.setattr(th, "usable_cores", lambda: (4, "affinity"))
    monkeypatch.setattr(th, "_USER_ENV", {})
    env = th.child_env(share=4)
    assert env["OMP_NUM_THREADS"] == "1" and env["GOMP_SPINCOUNT"] == "10000"
    monkeypatch.setattr(th, "_USER_ENV", {"OMP_NUM_THREADS": "2"})
    assert th.child_env(share=4)["OMP_NUM_THREADS"] == "2"


def test_timing_record_names_the_threads(tmp_path):
    from bench.cli import main
    from bench.core.records import read_record

    assert main(["run", "--methods", "supervised", "--preset", "tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    timing = read_record(next(tmp_path.rglob("timing.json")), "timing")
    import torch

    assert timing.threads["threads"] == torch.get_num_threads()
    assert {"threads_source", "wait_policy", "wait_source", "usable_cores"} <= set(timing.threads)
