"""The claim race of issue #31: two workers judge the same stale claim at the same moment, with a
forced delay between the staleness check and the takeover (as on a slow network filesystem);
how often do both end up owning the run?

Two worker processes each walk the same N run folders; trial i starts in both at the same wall
time. Every folder holds a stale claim of a worker on another host. Run from the repository root
(or a worktree of another commit, to measure the code before a change):

    python docs/scripts/claim_race.py [--trials 200] [--delay 0.003] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = """
import json, sys, time
from pathlib import Path
from bench import lock
root, t0, dt, delay, n = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
judge = lock.is_stale
def slow(*a, **k):  # the forced delay after the staleness check, in any version of bench.lock
    stale = judge(*a, **k)
    if stale:
        time.sleep(delay)
    return stale
lock.is_stale = slow
out = []
for i in range(n):
    time.sleep(max(0.0, t0 + i * dt - time.time()))
    out.append(bool(lock.claim(root / f"run{i}", stale_after=5)))
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--delay", type=float, default=0.003, help="seconds between the staleness check and the takeover")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        old = time.time() - 100
        for i in range(args.trials):
            d = root / f"run{i}"
            d.mkdir()
            (d / ".claim").write_text(json.dumps({"token": "f" * 32, "owner": {"host": "elsewhere"}, "host": "elsewhere",
                                                  "pid": 1, "time": 0}))
            os.utime(d / ".claim", (old, old))
        t0, dt = time.time() + 2.0, 0.05
        cmd = [sys.executable, "-c", WORKER, str(root), str(t0), str(dt), str(args.delay), str(args.trials)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen(cmd, cwd=Path.cwd(), env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        a, b = (json.loads(p.communicate(timeout=600)[0]) for p in procs)
    both = sum(x and y for x, y in zip(a, b))
    none = sum(not x and not y for x, y in zip(a, b))
    result = {"trials": args.trials, "delay_s": args.delay, "double_owners": both, "no_owner": none,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
