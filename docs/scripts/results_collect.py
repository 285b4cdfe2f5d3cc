"""Copy the records of results_runs.sh into docs/results/runs (issue #36).

Per run metrics.json, config.json, timing.json and log.jsonl, plus the split files; no
checkpoints and no job files. The old records are replaced. Refuses (exit 2) while any started
run has no metrics.json: a row has all its seeds or is left out, and no run is dropped unnoticed.

    python docs/scripts/results_collect.py OUT
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from bench.core.store import is_finished

#: where the records go
DEST = Path(__file__).resolve().parents[1] / "results" / "runs"
#: the files of a run record (bench/checkpoint.py RUN_FILES without the checkpoints and predictions)
RECORD = ("metrics.json", "config.json", "timing.json", "log.jsonl")


def main(argv: list[str], dest: Path = DEST) -> int:
    if len(argv) != 1:
        print("usage: python docs/scripts/results_collect.py OUT", file=sys.stderr)
        return 2
    src = Path(argv[0])
    runs = sorted(p for p in src.rglob("seed_*") if p.is_dir())
    unfinished = [str(p) for p in runs if not is_finished(p)]
    if not runs or unfinished:
        print(f"{src}: {'no runs' if not runs else 'unfinished runs (no metrics.json)'}; "
              f"finish them with docs/scripts/results_runs.sh first: {' '.join(unfinished)}", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix=".runs_", dir=dest.parent))
    for run in runs:
        to = tmp / run.relative_to(src)
        to.mkdir(parents=True)
        for name in RECORD:
            if (run / name).is_file():
                shutil.copy2(run / name, to / name)
    for split in src.glob("*/splits/*.json"):
        (tmp / split.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(split, tmp / split.relative_to(src))
    tmp.chmod(0o755)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    print(f"{len(runs)} runs copied to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
