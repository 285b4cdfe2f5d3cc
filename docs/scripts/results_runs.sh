#!/bin/bash
# The runs behind docs/results.md (issue #36): phantom, quick preset, 10 % labels, one thread per
# run, from a frozen worktree of one commit. Run it again at any time: finished cells are
# skipped and an interrupted cell resumes from its checkpoint (at most ckpt_every = 50 steps are
# redone), so the matrix can span several sessions.
#
#   bash docs/scripts/results_runs.sh COMMIT OUT [JOBS]
#
# JOBS (default 2): cells at once, each at one thread (OMP_NUM_THREADS=1 is set, so that a
# single job beside other work keeps the one-thread numerics of the rest).
set -euo pipefail
COMMIT=${1:?commit to run from}
OUT=${2:?results folder}
JOBS=${3:-2}
REPO=$(git rev-parse --show-toplevel)
WT=${WT:-/work/wt_results}
[ -d "$WT" ] || git -C "$REPO" worktree add -q "$WT" "$COMMIT"
[ "$(git -C "$WT" rev-parse HEAD)" = "$(git -C "$REPO" rev-parse "$COMMIT")" ] || { echo "$WT is not at $COMMIT" >&2; exit 2; }
PY=${PY:-$REPO/.venv/bin/python}
cd "$WT"
export OMP_NUM_THREADS=1
# rows that may carry a mark: 5 seeds each, the same seeds; the longest cells first
"$PY" -m bench run --methods tak,ga,dhc,mean_teacher,supervised --seeds 0,1,2,3,4 --preset quick \
    --executor local --jobs "$JOBS" --out "$OUT" --no-progress
# rows shown with their CI and no mark: 3 seeds
"$PY" -m bench run --methods cps,magicnet --seeds 0,1,2 --preset quick --executor local --jobs "$JOBS" --out "$OUT" --no-progress
