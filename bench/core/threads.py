"""The suite chooses its own CPU threads, once, before torch starts its thread pools.

Why: PyTorch's CPU kernels run on GNU OpenMP (libgomp). By default its threads spin at every
barrier for a while before they sleep; beside one busy neighbour a training step became many
times slower, almost all of it in that spin (docs/performance.md, "Threads"). The rule:

* **threads** = the cores this process may use: its CPU affinity, capped by a cgroup CPU quota
  (cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``, as in a container or a Slurm job), divided
  by ``share`` (the number of jobs that split the machine, e.g. local executor workers), at
  least 1;
* **wait policy**: a bounded spin (``GOMP_SPINCOUNT=10000``, libgomp's default is 300,000): an
  idle OpenMP thread spins briefly, then sleeps, so a descheduled thread no longer makes the
  others burn the neighbour's time slices. ``OMP_WAIT_POLICY=PASSIVE`` (no spin) isolates more
  but makes a quiet step much slower (a futex wake per parallel region); the measured
  trade-off is in docs/performance.md, "Threads";
* what the user set wins: ``OMP_NUM_THREADS`` (the thread count), ``OMP_WAIT_POLICY`` or
  ``GOMP_SPINCOUNT`` (the wait); ``BENCH_THREADS=off`` leaves everything to torch and OpenMP
  (the suite's behaviour before it chose its threads; for measurements).

:func:`apply_threads` runs when the ``bench`` package is imported (``bench/__init__.py``), so
``python -m bench``, the tests and every worker process follow the same rule. OpenMP reads its
environment when torch loads it: if torch was imported before ``bench``, only the thread count
can still be set (``torch.set_num_threads``) and the wait policy is recorded as unknown.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

#: the environment variable that switches the rule off (``off``) or on (unset, ``auto``)
SWITCH = "BENCH_THREADS"
#: spins of an idle OpenMP thread before it sleeps (libgomp's default: 300,000): the value that
#: kept a quiet step within noise and cut most of a busy neighbour's cost (docs/performance.md)
SPIN_COUNT = 10000


@dataclass(frozen=True)
class ThreadPlan:
    """The threads a process runs with and where each choice came from.

    Attributes:
        threads: intra-op threads of torch (and OpenMP).
        threads_source: ``"affinity"``, ``"cgroup quota"``, ``"OMP_NUM_THREADS"``, ``"share"``
            (cores divided between jobs) or ``"torch default"`` (rule off).
        wait_policy: how idle OpenMP threads wait: ``"spin N"`` (``GOMP_SPINCOUNT``), ``"PASSIVE"``
            or ``"ACTIVE"`` (``OMP_WAIT_POLICY``), ``"default"`` (libgomp's own spin) or
            ``"unknown"`` (torch was loaded before the rule ran).
        wait_source: ``"bench"``, ``"OMP_WAIT_POLICY"``, ``"GOMP_SPINCOUNT"`` or ``"off"``.
        usable_cores: cores this process may use (affinity and cgroup quota).
    """

    threads: int
    threads_source: str
    wait_policy: str
    wait_source: str
    usable_cores: int

    def to_dict(self) -> dict:
        return asdict(self)


def _cgroup_quota_cores(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """Cores allowed by the CPU quota of this process' cgroup (the smallest along its path), or
    None where no quota is set or the files cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2: <root>/<path>/cpu.max = "<quota|max> <period>"
            bases, name = [root], "cpu.max"
        elif "cpu" in controllers.split(","):  # cgroup v1: cpu.cfs_quota_us / cpu.cfs_period_us
            bases, name = [root / controllers, root / "cpu", root / "cpu,cpuacct"], "cpu.cfs_quota_us"
        else:
            continue
        for base in bases:
            d = base / rel
            while True:
                q = _read_quota(d, name)
                if q is not None:
                    quotas.append(q)
                if d == base or d.parent == d:
                    break
                d = d.parent
    return min(quotas) if quotas else None


def _read_quota(folder: Path, name: str) -> float | None:
    try:
        if name == "cpu.max":
            quota, _, period = (folder / name).read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100000)
        quota = int((folder / name).read_text().strip())
        period = int((folder / "cpu.cfs_period_us").read_text().strip())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError, ZeroDivisionError):
        return None


def usable_cores() -> tuple[int, str]:
    """(cores this process may use, what limited them: ``"affinity"`` or ``"cgroup quota"``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota_cores()
    if quota is not None and math.floor(quota) < cores:
        return max(1, math.floor(quota)), "cgroup quota"
    return max(1, cores), "affinity"


#: the variables the rule reads, as the user set them (taken before the rule sets any of them)
_VARS = (SWITCH, "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_USER_ENV = {k: os.environ[k] for k in _VARS if k in os.environ}


def plan_threads(env: dict | None = None, share: int = 1) -> ThreadPlan:
    """The thread plan for a process whose user environment is ``env`` (default: this process'
    as it was before the rule ran) and that shares the usable cores with ``share - 1`` other
    jobs. Pure: sets nothing."""
    env = _USER_ENV if env is None else env
    cores, limit = usable_cores()
    if env.get(SWITCH, "auto").strip().lower() == "off":
        return ThreadPlan(cores, "torch default", env.get("OMP_WAIT_POLICY", "").strip().upper() or "default", "off", cores)
    explicit = env.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        threads, source = int(explicit), "OMP_NUM_THREADS"
    else:
        threads = max(1, cores // max(1, share))
        source = "share" if share > 1 else limit
    if env.get("OMP_WAIT_POLICY", "").strip():
        wait, wait_source = env["OMP_WAIT_POLICY"].strip().upper(), "OMP_WAIT_POLICY"
    elif env.get("GOMP_SPINCOUNT", "").strip():
        wait, wait_source = f"spin {env['GOMP_SPINCOUNT'].strip()}", "GOMP_SPINCOUNT"
    else:
        wait, wait_source = f"spin {SPIN_COUNT}", "bench"
    return ThreadPlan(threads, source, wait, wait_source, cores)


def _set_env(env, plan: ThreadPlan) -> None:
    """Write ``plan`` into an environment mapping (what OpenMP reads when it starts)."""
    if plan.wait_source == "off":
        return
    env["OMP_NUM_THREADS"] = str(plan.threads)
    if plan.wait_source == "bench":
        env["GOMP_SPINCOUNT"] = str(SPIN_COUNT)


def child_env(share: int = 1) -> dict:
    """The environment of a worker process that shares this machine with ``share - 1`` others:
    this process' environment with the worker's thread count and wait policy written out."""
    env = dict(os.environ)
    _set_env(env, plan_threads(share=share))
    return env


_APPLIED: ThreadPlan | None = None


def apply_threads() -> ThreadPlan:
    """Set this process' threads by :func:`plan_threads`, once (see the module doc)."""
    global _APPLIED
    if _APPLIED is not None:
        return _APPLIED
    plan = plan_threads()
    if "torch" not in sys.modules:  # OpenMP reads these when torch loads it
        _set_env(os.environ, plan)
    elif plan.wait_source != "off":
        import torch

        torch.set_num_threads(plan.threads)
        if plan.wait_source == "bench":  # too late for the wait policy: libgomp has read its environment
            plan = ThreadPlan(plan.threads, plan.threads_source, "unknown", "torch loaded first", plan.usable_cores)
    _APPLIED = plan
    return plan


def current_threads() -> dict:
    """What this process runs with, for timing.json: the applied plan, with torch's own count."""
    out = (_APPLIED or plan_threads()).to_dict()
    torch = sys.modules.get("torch")
    if torch is not None:
        out["threads"] = torch.get_num_threads()
    return out
