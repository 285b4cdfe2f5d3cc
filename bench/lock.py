"""Run claims: a lock file per run folder so that workers sharing a results directory never
train the same run twice.

* **Claim**: :func:`claim` writes ``{"token", "owner", "time"}`` to a temporary file with a
  random name and hard-links it to ``dir/.claim``; ``link`` fails if a claim exists (atomic on
  local and NFS filesystems), so a claim never exists without its content.
* **Lease**: while this process holds a claim, a heartbeat thread refreshes its mtime every
  :data:`HEARTBEAT_S` seconds for the whole life of the run (validation and test included), and
  checks that the claim is still its own.
* **Stale**: a claim is taken over when its owner is provably gone (same host, boot and PID
  namespace, pid not running or reused: :mod:`bench.core.owner`) or its lease was not refreshed
  for ``stale_after`` seconds (any host, any container).
* **Takeover without a race**: the taker hard-links the stale claim it judged to
  ``.claim.dead.<inode>``; only one worker can create that name for a given claim file, and the
  winner checks that the name points at the very inode it judged before it replaces ``.claim``
  with its own (``os.replace``: atomic). A worker that judged an older claim loses.

``BENCH_CLAIM_RACE_DELAY_S`` (tests only) sleeps between the staleness check and the takeover,
as a slow network filesystem would.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
import time
from pathlib import Path

from bench.core import owner
from bench.core.errors import UserError

#: a claim whose lease was not refreshed for this long is stale (the heartbeat runs 10x as often)
STALE_AFTER_S = 300.0
#: seconds between two refreshes of a held claim
HEARTBEAT_S = float(os.environ.get("BENCH_CLAIM_HEARTBEAT_S", "30"))


class _Lease:
    """The heartbeat of one held claim (a daemon thread)."""

    def __init__(self, path: Path, token: str):
        self.path, self.token, self.lost = path, token, False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"claim {path.parent.name}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            if not self.refresh():
                return

    def refresh(self) -> bool:
        """Refresh the claim's mtime if it is still ours; else mark the lease lost."""
        if _read(self.path).get("token") != self.token:
            self.lost = True
            return False
        try:
            os.utime(self.path)
        except OSError:
            self.lost = True
            return False
        return True


#: the claims this process holds: run folder -> lease
_held: dict[Path, _Lease] = {}


def _read(path: Path) -> dict:
    """A claim's content, or {} when it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_file(path: Path) -> os.stat_result | None:
    """``lstat`` of a claim (None when there is none); anything but a regular file is one line."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = "folder" if stat.S_ISDIR(st.st_mode) else "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"
        raise UserError(f"{path} is a {kind}, not a claim file; remove it (no worker writes one like it) and run again")
    return st


def is_stale(path: Path, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether a run's ``.claim`` is no longer held: its owner is provably gone, it is unreadable
    and a minute old, or its lease was not refreshed for ``stale_after`` seconds."""
    st = _check_file(path)
    if st is None:
        return True
    info = _read(path)
    if owner.is_dead(info.get("owner")):
        return True
    age = time.time() - st.st_mtime
    if not isinstance(info.get("token"), str):
        return age > min(60.0, stale_after)  # not ours (another tool, an old suite): stale once a minute old
    return age > stale_after


def _write_new(run_dir: Path, token: str) -> Path:
    """This process' claim content in a new file with a random name (never through a link)."""
    tmp = run_dir / f".claim.{token}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump({"token": token, "owner": owner.identity(), "time": time.time()}, f)
    return tmp


def _take_over(path: Path, ino: int, tmp: Path) -> bool:
    """Replace the stale claim file ``ino`` at ``path`` by ``tmp``; False if another worker did or
    the claim changed since it was judged."""
    dead = path.with_name(f".claim.dead.{ino}")
    try:
        os.link(path, dead, follow_symlinks=False)
    except (FileExistsError, FileNotFoundError):
        return False  # another worker is taking over this claim, or its owner released it
    try:
        if os.lstat(dead).st_ino != ino:
            return False  # the claim at `path` is not the one judged stale
        os.replace(tmp, path)
        return True
    finally:
        dead.unlink(missing_ok=True)


def _race_delay() -> None:
    delay = float(os.environ.get("BENCH_CLAIM_RACE_DELAY_S", "0") or 0)
    if delay > 0:
        time.sleep(delay)


def claim(run_dir: Path, stale_after: float = STALE_AFTER_S) -> bool:
    """True if this process now owns ``run_dir`` (its lease then refreshes itself until
    :func:`release`); False if a live worker does.

    Raises:
        UserError: a ``.claim`` that is not a regular file.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ".claim"
    if run_dir in _held and not _held[run_dir].lost and _read(path).get("token") == _held[run_dir].token:
        return True
    token = secrets.token_hex(16)
    tmp = _write_new(run_dir, token)
    try:
        for _ in range(3):
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError:
                st = _check_file(path)
                if st is None:
                    continue  # released meanwhile: try again
                if not is_stale(path, stale_after):
                    return False
                _race_delay()
                if not _take_over(path, st.st_ino, tmp):
                    return False
            _held[run_dir] = _Lease(path, token)
            return True
        return False
    finally:
        tmp.unlink(missing_ok=True)


def touch(run_dir: Path) -> None:
    """Refresh this process' claim now (the heartbeat does it too).

    Raises:
        UserError: the claim was taken over by another worker (this one must stop).
    """
    lease = _held.get(Path(run_dir))
    if lease is not None and not lease.refresh():
        raise UserError(f"{run_dir}: this worker lost its claim on the run to another worker (its lease was not "
                        f"refreshed for {STALE_AFTER_S:.0f} s); it stops here and leaves the run to that worker")


def release(run_dir: Path) -> None:
    """Stop this process' lease on ``run_dir`` and remove its claim (another owner's claim is left alone)."""
    run_dir = Path(run_dir)
    lease = _held.pop(run_dir, None)
    if lease is None:
        return
    lease.stop.set()
    path = run_dir / ".claim"
    if _read(path).get("token") == lease.token:
        path.unlink(missing_ok=True)


def held(run_dir: Path) -> bool:
    """Whether this process holds a live lease on ``run_dir``."""
    lease = _held.get(Path(run_dir))
    return lease is not None and not lease.lost
