"""Many runs: --shard slices are disjoint and cover the matrix; workers sharing a results
directory never train one run twice (claims with stale-claim recovery)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import lock
from bench.cli import main
from bench.core import owner
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


def _claim_of(pid: int, **owner_changes) -> str:
    """A claim as another worker writes it: a token and its owner identity."""
    info = {**owner.identity(), "pid": pid, "start": owner.start_time(pid), **owner_changes}
    return json.dumps({"token": "0" * 32, "owner": info, "time": time.time()})


def test_claims_and_stale_recovery(tmp_path):
    d = tmp_path / "run"
    assert lock.claim(d) and lock.claim(d)  # our own claim
    lock.release(d)
    assert not (d / ".claim").exists()
    # a claim of a live process on this host is respected
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (d / ".claim").write_text(_claim_of(sleeper.pid))
        assert not lock.claim(d)
        # ...unless its lease was not refreshed for too long
        old = time.time() - 10
        os.utime(d / ".claim", (old, old))
        assert lock.claim(d, stale_after=5)
        lock.release(d)
        # a live worker in another PID namespace or container (its pid means nothing here) is respected
        (d / ".claim").write_text(_claim_of(2**22 + 7, pidns="pid:[4026531999]"))
        assert not lock.claim(d)
    finally:
        sleeper.kill()
    # a dead owner's claim on this machine is stale at once; so is a reused pid (another start time)
    sleeper.wait()
    for text in (_claim_of(sleeper.pid), _claim_of(os.getppid(), start="1"), _claim_of(-1), _claim_of(0)):
        (d / ".claim").write_text(text)
        assert lock.claim(d)
        lock.release(d)


@pytest.mark.parametrize("content", ['{"host": "h", "pid": "abc"}', '{"pid": 1e20}', "null", "[1, 2]", "{", '{"token": 5}'])
def test_malformed_claims_are_judged_by_age(tmp_path, content):
    d = tmp_path / "run"
    d.mkdir()
    (d / ".claim").write_text(content)
    assert not lock.claim(d)  # fresh: might be a worker writing it
    old = time.time() - 120
    os.utime(d / ".claim", (old, old))
    assert lock.claim(d)
    lock.release(d)


def test_a_claim_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / "run" / ".claim").mkdir(parents=True)
    with pytest.raises(UserError, match=r"\.claim is a folder, not a claim file; remove it"):
        lock.claim(tmp_path / "run")


def test_the_lease_is_refreshed_by_a_heartbeat_and_a_lost_claim_stops_the_worker(tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "HEARTBEAT_S", 0.05)
    d = tmp_path / "run"
    assert lock.claim(d)
    try:
        old = time.time() - 1000
        os.utime(d / ".claim", (old, old))
        time.sleep(0.4)
        assert time.time() - (d / ".claim").stat().st_mtime < 5  # refreshed without any checkpoint
        (d / ".claim").write_text(_claim_of(os.getpid()))  # another worker took it over
        with pytest.raises(UserError, match="lost its claim"):
            lock.touch(d)
        assert not lock.held(d)
    finally:
        lock.release(d)
    assert (d / ".claim").exists()  # the other worker's claim is left alone


RACE = """
import sys, time
from pathlib import Path
from bench import lock
go = float(sys.argv[2])
time.sleep(max(0.0, go - time.time()))
print(lock.claim(Path(sys.argv[1]), stale_after=5), flush=True)
time.sleep(0.3)
"""


def test_two_workers_never_both_take_over_a_stale_claim(tmp_path):
    """Two real processes judge one stale claim at the same moment, with a forced delay between
    the staleness check and the takeover (a slow network filesystem): exactly one owns the run."""
    env = {**os.environ, "BENCH_CLAIM_RACE_DELAY_S": "0.05", "OMP_NUM_THREADS": "1"}
    for trial in range(6):
        d = tmp_path / f"run{trial}"
        d.mkdir()
        (d / ".claim").write_text(json.dumps({"token": "f" * 32, "owner": {"host": "elsewhere"}, "time": 0}))
        old = time.time() - 100
        os.utime(d / ".claim", (old, old))
        go = str(time.time() + 1.5)
        procs = [subprocess.Popen([sys.executable, "-c", RACE, str(d), go], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(2)]
        answers = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
        assert answers == ["False", "True"], (trial, answers)


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
