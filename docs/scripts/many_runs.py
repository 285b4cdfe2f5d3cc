"""Write N small but complete run folders (metrics, config, timing, 60-line log) and time
`bench report` over them: the "report over 10,000 runs" figure of docs/performance.md.

    python docs/scripts/many_runs.py --methods 1000 --seeds 10 --out /tmp/many   # 10,000 runs
    python -m bench report --runs /tmp/many/runs --out /tmp/many/report          # what is timed

Records look like the phantom's: 13 organs, 6 test cases, one labeled share; the Dice values are
drawn from a fixed generator (numbers only, nothing trained).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ORGANS = ["spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
          "inferior vena cava", "portal vein and splenic vein", "pancreas", "right adrenal gland", "left adrenal gland"]


def write_runs(root: Path, methods: int, seeds: int, cases: int = 6) -> int:
    rng = np.random.default_rng(0)
    n = 0
    for m in range(methods):
        name = f"method_{m:04d}"
        base = rng.uniform(0.3, 0.9)
        for s in range(seeds):
            d = root / "phantom" / "default" / "labeled_10p" / name / "0123456789" / f"seed_{s}"
            d.mkdir(parents=True, exist_ok=True)
            per_case = {f"case_{c:04d}": {o: {"dice": float(np.clip(base + rng.normal(0, 0.1), 0, 1)), "hd95": 5.0, "asd": 1.0}
                                          for o in ORGANS} for c in range(cases)}
            per_organ = {o: {k: float(np.mean([per_case[c][o][k] for c in per_case])) for k in ("dice", "hd95", "asd")}
                         for o in ORGANS}
            mean = {k: float(np.mean([per_organ[o][k] for o in ORGANS])) for k in ("dice", "hd95", "asd")}
            metrics = {"schema_version": 2, "method": name, "dataset": "phantom", "protocol": "default", "protocol_version": "1",
                       "split": "labeled_10p", "seed": s, "organs": ORGANS, "per_organ": per_organ, "mean": mean,
                       "cases": per_case, "labeled_voxel_share": {o: 1 / len(ORGANS) for o in ORGANS}, "labeled_fraction": 0.1}
            (d / "metrics.json").write_text(json.dumps(metrics))
            (d / "config.json").write_text(json.dumps({"method": name, "seed": s, "schema_version": 2}))
            (d / "timing.json").write_text(json.dumps({"device": "CPU x86_64 x1 threads", "train_s_per_iter": {"median": 1.0},
                                                       "infer_s_per_case": {"median": 0.5}, "peak_memory_mb": 500.0,
                                                       "peak_memory_kind": "process_rss", "data_wait_share": 0.01,
                                                       "schema_version": 2}))
            lines = [json.dumps({"step": k * 10, "loss": 3.0 / (1 + k)}) for k in range(1, 61)]
            lines += [json.dumps({"step": k * 100, "val_dice": base * k / 6}) for k in range(1, 7)]
            (d / "log.jsonl").write_text("\n".join(lines) + "\n")
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    n = write_runs(out / "runs", args.methods, args.seeds)
    cmd = [sys.executable, "-m", "bench", "report", "--runs", str(out / "runs"), "--out", str(out / "report")]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    sizes = {p.name: p.stat().st_size for p in (out / "report").iterdir() if p.is_file()}
    print(json.dumps({"runs": n, "methods": args.methods, "seeds": args.seeds, "rc": res.returncode, "wall_s": round(wall, 1),
                      "peak_rss_mb": round(peak), "files": sizes, "stderr_tail": res.stderr.strip().splitlines()[-3:],
                      "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
