"""Run claims: a lock file per run folder so that workers sharing a results directory never
train the same run twice.

``claim(dir)`` writes host, pid and time to a temporary file and hard-links it to
``dir/.claim`` (``link`` fails if the claim exists: atomic on local and NFS filesystems), so a
claim never exists without its content. A claim is stale - and is taken over - when its owner
process is gone (same host) or it has not been refreshed for ``stale_after`` seconds (any
host; the owner refreshes it at every checkpoint through :func:`touch`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from bench.core.store import process_alive

STALE_AFTER_S = 1800.0


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def is_stale(path: Path, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether a run's ``.claim`` is no longer held: its owner process on this host is gone, it is
    unreadable and a minute old, or it was not refreshed for ``stale_after`` seconds.
    """
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return True  # vanished: not a live claim
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return age > 60.0  # unreadable (written by another tool): stale once it is a minute old
    if info.get("host") == socket.gethostname() and not process_alive(int(info.get("pid", -1))):
        return True
    return age > stale_after


def claim(run_dir: Path, stale_after: float = STALE_AFTER_S) -> bool:
    """True if this process now owns ``run_dir``; False if a live worker does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".claim"
    for _ in range(2):
        tmp = run_dir / f".claim.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(_owner()))
        try:
            os.link(tmp, path)
        except FileExistsError:
            info = _read(path)
            if info.get("host") == socket.gethostname() and info.get("pid") == os.getpid():
                return True
            if not is_stale(path, stale_after):
                return False
            # stale: remove it and retry once (a rival doing the same loses the link race)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            continue
        finally:
            tmp.unlink(missing_ok=True)
        return True
    return False


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def touch(run_dir: Path) -> None:
    """Refresh this process's claim (keeps it from looking stale on long runs)."""
    path = run_dir / ".claim"
    if path.exists():
        os.utime(path)


def release(run_dir: Path) -> None:
    """Remove this process' claim on ``run_dir`` (another owner's claim is left alone)."""
    path = run_dir / ".claim"
    info = _read(path)
    if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
