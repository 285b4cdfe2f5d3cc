"""Many runs: --shard slices are disjoint and cover the matrix; workers sharing a results
directory never train one run twice (claims with stale-claim recovery)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import lock
from bench.cli import main
from bench.core.errors import UserError
from bench.runner import parse_shard

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--methods", "supervised", "--preset", "tiny", "--iterations", "2", "--no-progress"]


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None
    for bad in ("0/2", "3/2", "x", "1-2"):
        with pytest.raises(UserError):
            parse_shard(bad)


def test_shards_are_disjoint_and_cover(tmp_path, capsys):
    out = tmp_path / "runs"
    for i in (1, 2):
        assert main(["run", *TINY, "--seeds", "0,1,2", "--out", str(out), "--shard", f"{i}/2"]) == 0
    text = capsys.readouterr().out
    started = re.findall(r"-> (\S+)", text)
    assert len(started) == 3 == len(set(started))
    assert len(list(out.rglob("metrics.json"))) == 3


def test_claims_and_stale_recovery(tmp_path):
    d = tmp_path / "run"
    assert lock.claim(d) and lock.claim(d)  # our own claim
    lock.release(d)
    assert not (d / ".claim").exists()
    # a claim of a live process on this host is respected
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (d / ".claim").write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "time": time.time()}))
        assert not lock.claim(d)
        # ...unless it was not refreshed for too long
        old = time.time() - 10
        os.utime(d / ".claim", (old, old))
        assert lock.claim(d, stale_after=5)
    finally:
        sleeper.kill()
    # a dead owner's claim is stale at once
    (d / ".claim").write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "time": time.time()}))
    sleeper.wait()
    assert lock.claim(d)


def test_two_processes_never_run_one_run_twice(tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bench", "run", *TINY, "--seeds", "0,1,2,3", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    started = [d for log in logs for d in re.findall(r"-> (\S+)", log)]
    assert len(started) == len(set(started)) == 4, logs  # each run trained by exactly one process
    assert len(list(out.rglob("metrics.json"))) == 4
    assert not list(out.rglob(".claim"))
    for metrics in out.rglob("metrics.json"):
        json.loads(metrics.read_text())  # complete, parseable files
