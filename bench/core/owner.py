"""Who owns a claim or a temporary folder, in a form other workers can judge.

A pid alone says nothing across hosts and PID namespaces (containers): a live worker in another
container with the same hostname has pids this process cannot see. :func:`identity` records the
host, the kernel boot id, the PID namespace, the pid and the process start time; :func:`is_dead`
says a recorded owner is gone only when all of host, boot and namespace are this process' own
and its pid is gone or now belongs to another process (start time differs). Otherwise the owner
is unknown and callers fall back on time (a lease that its owner refreshes).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _pidns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def start_time(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot ("" where unknown)."""
    stat = _read(f"/proc/{int(pid)}/stat")
    if not stat:
        return ""
    # the command name (field 2) may hold spaces: fields after its closing parenthesis
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def identity() -> dict[str, Any]:
    """This process: host, boot id, PID namespace, pid and start time."""
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"), "pidns": _pidns(),
            "pid": os.getpid(), "start": start_time(os.getpid())}


def same_machine(info: dict) -> bool:
    """Whether ``info`` was recorded on this host, boot and PID namespace (its pid is one we see)."""
    me = identity()
    return all(isinstance(info.get(k), str) and info.get(k) == me[k] and me[k] for k in ("host", "boot_id", "pidns"))


def is_dead(info: Any) -> bool:
    """True when the recorded owner ``info`` (from :func:`identity`) is provably gone: recorded on
    this machine and namespace, and its pid is not running or is another process now. False when
    it lives or cannot be judged from here."""
    if not isinstance(info, dict) or not same_machine(info):
        return False
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True  # a pid no process can have, recorded here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    recorded = info.get("start")
    return bool(recorded) and start_time(pid) not in ("", recorded)  # the pid was reused


def is_self(info: Any) -> bool:
    """Whether ``info`` records this very process."""
    return isinstance(info, dict) and same_machine(info) and info.get("pid") == os.getpid() and info.get("start") == start_time(os.getpid())


#: a temporary folder untouched this long is an orphan whoever wrote it
ORPHAN_AFTER_S = 24 * 3600.0


def make_owned_dir(parent: Path, prefix: str) -> Path:
    """A new folder ``parent/<prefix><random>`` holding this process' :func:`identity` in
    ``.owner``, so that :func:`sweep_orphans` can tell when its writer is gone."""
    import json
    import tempfile

    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    (tmp / ".owner").write_text(json.dumps(identity()))
    return tmp


def sweep_orphans(parent: Path, pattern: str, after_s: float = ORPHAN_AFTER_S) -> list[Path]:
    """Remove the folders ``parent/<pattern>`` whose writer is provably gone (same host, boot and
    PID namespace: :func:`is_dead`) or that nobody touched for ``after_s`` seconds; a live writer
    in another container or on another host is never judged by its pid. Returns what was removed."""
    import json
    import shutil
    import time

    removed = []
    for tmp in parent.glob(pattern):
        if tmp.is_symlink() or not tmp.is_dir():
            continue
        try:
            info = json.loads((tmp / ".owner").read_text())
        except (OSError, ValueError, RecursionError):
            info = None
        if is_self(info):
            continue
        try:
            idle = time.time() - max(p.stat().st_mtime for p in [tmp, *tmp.rglob("*")])
        except OSError:
            continue  # changing under us: its writer lives
        if is_dead(info) or idle > after_s:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed
