"""Training steps quiet and beside a busy neighbour, under several thread settings: the suite's
rule off (``off``: torch's and libgomp's defaults, the suite before issue #28), the rule
(``rule``: bench/core/threads.py), and for comparison ``passive`` (OMP_WAIT_POLICY=PASSIVE),
``1thread`` and ``spin:N`` (GOMP_SPINCOUNT=N). docs/performance.md, "Threads", holds the
tables this prints.

Per method, one interleaved sequence: quiet (every setting), beside each neighbour (every
setting), quiet again (settings in reverse order), so drift weighs on every setting alike.
Each cell is a fresh process that trains ``--steps`` steps of the engine's own loop (demo
preset: 32x32x64 patches, width 8, labeled + unlabeled batch 2 + 2, no validation) and reports
the median s/step after ``--warmup`` steps. The neighbour is started and stopped here, with
its own default threads: ``torch`` (another PyTorch job: a test run, a second training),
``numpy_small`` (small OpenBLAS products, whose threads spin between calls), ``numpy`` (large
products) or ``python`` (one busy core).

Run from the repository root on an otherwise quiet machine:
    python docs/scripts/thread_neighbour.py [--methods mean_teacher,dhc,tak] [--neighbours torch,numpy_small]
                                            [--settings off,rule,passive,1thread,spin:3000]
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

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, statistics, sys, tempfile
import bench
from bench.core.threads import current_threads
from bench.runner import RunRequest, make_spec, pick_device, plan
from bench.train import Trainer
method, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with tempfile.TemporaryDirectory() as out:
    req = RunRequest.build({"methods": [method], "iterations": steps, "preset": "demo"},
                           ["val_every=0", f"timing_warmup={warmup}", "ckpt_every=100000"], out=out, progress=False)
    runs, ds, split = plan(req)
    trainer = Trainer(make_spec(runs[0], ds, split, pick_device("cpu"), False))
    trainer.fit()
print("RESULT " + json.dumps({"s_per_step": statistics.median(trainer.step_times), "threads": current_threads()}))
"""

NEIGHBOURS = {
    # OpenBLAS matrix products big enough to keep its threads computing
    "numpy": "import numpy as np\na = np.random.rand(700, 700)\nwhile True:\n    a = (a @ a) / 700.0",
    # small products: OpenBLAS' threads wait (spin) between calls, like many scipy / numpy jobs
    "numpy_small": "import numpy as np\na = np.random.rand(96, 96)\nwhile True:\n    a = (a @ a) / 96.0",
    # another PyTorch job at its default threads (a test run, a second training): libgomp spins too
    "torch": ("import torch\nnet = torch.nn.Sequential(*[torch.nn.Conv3d(8, 8, 3, padding=1) for _ in range(4)])\n"
              "x = torch.randn(2, 8, 16, 32, 32)\nwhile True:\n    net(x).sum().backward()"),
    "python": "while True:\n    pass",
}

#: thread settings compared: the name and the environment it sets (the suite's rule reads them)
SETTINGS = {
    "off": {"BENCH_THREADS": "off"},  # torch's and libgomp's defaults (the suite before issue #28)
    "rule": {},  # the suite's rule as it stands
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1thread": {"OMP_NUM_THREADS": "1"},
}


def setting_env(name: str) -> dict:
    """The environment of a setting: a name of SETTINGS or ``spin:N`` (GOMP_SPINCOUNT=N)."""
    if name.startswith("spin:"):
        return {"GOMP_SPINCOUNT": name[5:]}
    return SETTINGS[name]


def cell(method: str, setting: str, steps: int, warmup: int, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "BENCH_THREADS")}
    env.update(setting_env(setting))
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, method, str(steps), str(warmup)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"s_per_step": None, "error": f"over {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"s_per_step": None, "error": (p.stderr.strip().splitlines() or ["no output"])[-1], "wall_s": time.perf_counter() - t0}
    return {**json.loads(line[7:]), "wall_s": time.perf_counter() - t0}


def with_neighbour(kind: str | None, fn):
    """``fn()`` while a neighbour process of ``kind`` runs (None: quiet)."""
    busy = None
    if kind is not None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "BENCH_"))}
        busy = subprocess.Popen([sys.executable, "-c", NEIGHBOURS[kind]], stdout=subprocess.DEVNULL, env=env)
        time.sleep(3)
    try:
        return fn()
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="mean_teacher,dhc,tak")
    ap.add_argument("--neighbours", default="torch", help=f"comma-separated: {', '.join(NEIGHBOURS)}")
    ap.add_argument("--settings", default="off,rule", help="comma-separated: off, rule, passive, 1thread, spin:N")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per cell; a slower cell is reported as over it")
    ap.add_argument("--out", default=None, help="also write every cell as JSON")
    args = ap.parse_args()
    methods, settings, neighbours = (x.split(",") for x in (args.methods, args.settings, args.neighbours))
    os.environ.setdefault("BENCH_CACHE", str(Path(tempfile.gettempdir()) / "bench-cache"))
    for m in methods:  # build the phantom and encode the priors once, untimed
        cell(m, "rule", 1, 0, args.timeout)
    rows = []

    def record(m, setting, load):
        r = with_neighbour(None if load == "quiet" else load, lambda: cell(m, setting, args.steps, args.warmup, args.timeout))
        r.update(method=m, load=load, setting=setting)
        rows.append(r)
        s = f"{r['s_per_step']:.3f}" if r["s_per_step"] is not None else r["error"]
        t = r.get("threads", {})
        print(f"{m:14s} {load:12s} {setting:12s} {s} s/step  threads {t.get('threads')} wait {t.get('wait_policy')}"
              f"  ({r['wall_s']:.0f} s)", flush=True)

    for m in methods:
        # quiet, each neighbour, quiet again (settings in reverse order): drift weighs on all settings
        for load, order in [("quiet", settings), *((n, settings) for n in neighbours), ("quiet", settings[::-1])]:
            for setting in order:
                record(m, setting, load)
    print("\n| method | setting | quiet s/step (before / after) | " + " | ".join(f"beside {n} (x quiet)" for n in neighbours) + " |")
    print("|---|---|---|" + "---|" * len(neighbours))
    for m in methods:
        for setting in settings:
            q = [r["s_per_step"] for r in rows if r["method"] == m and r["setting"] == setting and r["load"] == "quiet"]
            ok = sorted(x for x in q if x is not None)
            mid = sum(ok) / len(ok) if ok else None
            cells = []
            for n in neighbours:
                b = next(r for r in rows if r["method"] == m and r["setting"] == setting and r["load"] == n)
                if b["s_per_step"] is None:
                    cells.append(b["error"])
                else:
                    cells.append(f"{b['s_per_step']:.3f} ({b['s_per_step'] / mid:.1f}x)" if mid else f"{b['s_per_step']:.3f}")
            print(f"| {m} | {setting} | {' / '.join(f'{x:.3f}' for x in q if x is not None)} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
