"""The project files a command executes (issue #29: "files a reader opens to follow one run"):
every .py file of bench/, methods/, datasets/, priors/, reports/ with at least one function
called while ``python -m bench ARGS`` runs (all threads), counted by a profile hook.

Run from the repository root (or a worktree of another commit):
    python docs/scripts/files_executed.py run --methods tak --preset tiny --out /tmp/x --no-progress
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

ROOT = Path.cwd().resolve()
PACKAGES = ("bench", "methods", "datasets", "priors", "reports")
seen: set[str] = set()


def hook(frame, event, arg):
    if event == "call" and frame.f_code.co_name != "<module>":  # a function ran, not just an import
        seen.add(frame.f_code.co_filename)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.cli import main as bench_main

    sys.setprofile(hook)
    threading.setprofile(hook)
    try:
        rc = bench_main(sys.argv[1:])
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    files = sorted(str(Path(f).resolve().relative_to(ROOT)) for f in seen
                   if Path(f).resolve().is_relative_to(ROOT) and Path(f).resolve().relative_to(ROOT).parts[0] in PACKAGES)
    print(f"{len(files)} project files executed (exit {rc}):", file=sys.stderr)
    for f in files:
        print("  " + f, file=sys.stderr)


if __name__ == "__main__":
    main()
