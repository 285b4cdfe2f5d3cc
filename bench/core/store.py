"""The result store: run folders, config hashes and atomic writes.

Layout (see DESIGN.md)::

    runs/<dataset>/<protocol>/<split>/<method>/<config-hash>/seed_<n>/
        config.json  metrics.json  timing.json  log.jsonl  checkpoint.pt  best.pt

Every file is written to a temporary sibling and renamed into place, so a reader never sees
half a file. A run whose ``metrics.json`` exists is finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def cache_root() -> Path:
    """Where generated and preprocessed data live (``$BENCH_CACHE`` or ``~/.cache/bench``).

    Raises:
        UserError: the path (or its nearest existing parent) is a file, or is not writable.
    """
    from bench.core.errors import UserError

    root = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))
    probe = root
    while not probe.exists() and probe != probe.parent and not probe.is_symlink():
        probe = probe.parent
    name = "BENCH_CACHE" if "BENCH_CACHE" in os.environ else "the cache folder"
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{name} {root}: {probe} is a file, not a folder; set BENCH_CACHE to a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{name} {root}: {probe} is not writable; set BENCH_CACHE to a folder you can write in")
    return root


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename, see :func:`atomic_save`)."""
    atomic_save(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nan_to_none(v) for v in o]
    return o


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically; NaN/inf become ``null`` (valid JSON, read back as NaN by reports)."""
    text = json.dumps(_nan_to_none(json.loads(json.dumps(obj, default=_json_default))), indent=1)
    atomic_write_text(path, text + "\n")


def atomic_save(path: Path, save: Callable[[Any], None]) -> None:
    """Atomically write a file produced by ``save(file_object)`` (e.g. ``torch.save``)."""
    from bench.core.errors import UserError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write in {path.parent} ({e.strerror}); is it a file, read-only, or the disk full?")
    try:
        with os.fdopen(fd, "wb") as f:
            save(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are shared like any file
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        full = isinstance(e, OSError) or (isinstance(e, RuntimeError) and ("enforce fail" in str(e) or "write" in str(e).lower()))
        if full and not isinstance(e, UserError):
            why = getattr(e, 'strerror', None) or ' '.join(str(e).split())[:80] or 'write failed'
            raise UserError(f"cannot write {path} ({why}); is the disk full or the folder read-only?")
        raise


def available_memory() -> int | None:
    """Bytes of host memory available now (Linux ``MemAvailable``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the largest settings, label, split, prompt or record file read (bytes): far above any real one
MAX_TEXT_BYTES = 64 * 2**20
#: the deepest nesting of a JSON or TOML document read (real ones nest 4 levels)
MAX_DEPTH = 64


def absent(path: Path | str) -> str:
    """Why ``path`` is not there, for a message: "does not exist", or what a link or special
    file is instead (``Path.exists`` answers False for a symbolic-link loop too)."""
    import errno
    import stat as stat_

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return "is a symbolic link to a missing file" if p.is_symlink() else "does not exist"
    if stat_.S_ISDIR(mode):
        return "is a folder"
    return "is a device or pipe, not a file" if not stat_.S_ISREG(mode) else "exists"


def read_bounded(path: Path, what: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a small file, read at most ``limit`` + 1 of them: a device (``/dev/zero``) or
    a huge file is refused instead of read forever.

    Raises:
        UserError: not a regular file, or larger than ``limit``.
    """
    from bench.core.errors import UserError

    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise
    except OSError as e:
        why = absent(p)
        if why.startswith("is a symbolic link"):
            raise UserError(f"{what} {why}; check the path")
        raise UserError(f"{what} cannot be read ({e.strerror or type(e).__name__}); check the path")
    if p.is_dir():
        raise IsADirectoryError(str(p))
    import stat as stat_

    if not stat_.S_ISREG(st.st_mode):
        raise UserError(f"{what} is not a regular file (a device or pipe); give a file")
    with p.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError(f"{what} is larger than {limit // 2**20} MiB; it is not a file this suite writes or reads")
    return data


def check_depth(value: Any, what: str, limit: int = MAX_DEPTH) -> Any:
    """``value`` (parsed JSON / TOML) if it nests at most ``limit`` levels, else one line."""
    from bench.core.errors import UserError

    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            raise UserError(f"{what} nests deeper than {limit} levels; it is not a file this suite writes or reads")
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return value


def read_json(path: Path, what: str, missing_hint: str = "", corrupt_hint: str = "") -> Any:
    """Parse a JSON file (bounded in size and nesting); a missing or invalid file is a
    :class:`UserError` naming it.

    ``what`` names the file for the user (e.g. "split file x.json"); the hints say how to fix it.
    """
    from bench.core.errors import UserError

    try:
        return check_depth(json.loads(read_bounded(Path(path), what).decode("utf-8")), what)
    except FileNotFoundError:
        raise UserError(f"{what} {absent(path)}{'; ' + missing_hint if missing_hint else ''}")
    except IsADirectoryError:
        raise UserError(f"{what} is a folder; give the JSON file")
    except PermissionError:
        raise UserError(f"{what} cannot be read (permission denied)")
    except RecursionError:
        raise UserError(f"{what} nests deeper than {MAX_DEPTH} levels; it is not a file this suite writes or reads")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise UserError(f"{what} is not valid JSON{where}{'; ' + corrupt_hint if corrupt_hint else ''}")


def config_hash(config: dict) -> str:
    """Short stable hash of a resolved config (key order does not matter)."""
    body = json.dumps(config, sort_keys=True, default=_json_default)
    return hashlib.sha256(body.encode()).hexdigest()[:10]


#: what a name that becomes a file or folder name may hold: no separator, no "..", no leading dot
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,127}")


def safe_name(name: str, what: str, fix: str = "") -> str:
    """``name`` if it is safe as one path component (letters, digits, ``_ . + = -``, not starting
    with a dot, at most 128 characters), else a :class:`UserError` naming it."""
    from bench.core.errors import UserError

    text = str(name)
    if not _SAFE.fullmatch(text) or ".." in text:
        raise UserError(f"{what} {text!r} cannot be a file name (use letters, digits and _ . + = -, no / or ..)"
                        + (f"; {fix}" if fix else ""))
    return text


def inside(path: Path, root: Path, what: str) -> Path:
    """``path`` if it lies under ``root`` once resolved, else a :class:`UserError` (nothing is
    ever written outside the output and cache folders)."""
    from bench.core.errors import UserError

    if not Path(path).resolve().is_relative_to(Path(root).resolve()):
        raise UserError(f"{what} {path} would lie outside {root}; fix the name that leads there")
    return Path(path)


def run_dir(out: Path, dataset: str, protocol: str, split: str, method: str, chash: str, seed: int) -> Path:
    """The folder of one run: ``<out>/<dataset>/<protocol>/<split>/<method>/<config hash>/seed_<n>``;
    every part is checked to be a safe name and the result to lie inside ``out``.
    """
    parts = [safe_name(dataset, "dataset name"), safe_name(protocol, "protocol name"),
             safe_name(split, "split name", "rename the split ('name' in its file)"), safe_name(method, "method name"),
             safe_name(chash, "config hash"), f"seed_{int(seed)}"]
    return inside(Path(out).joinpath(*parts), Path(out), "run folder")


def is_finished(path: Path) -> bool:
    """A run is finished when its ``metrics.json`` exists (written last)."""
    return (Path(path) / "metrics.json").exists()


@contextlib.contextmanager
def scratch_dir(kind: str) -> Iterator[Path]:
    """A temporary folder under the cache (``<cache>/scratch/<kind>-<random>``), removed on exit.
    A process killed inside leaves it behind; the next ``scratch_dir(kind)`` removes such
    folders once their writer is provably gone (:func:`bench.core.owner.sweep_orphans`)."""
    from bench.core import owner

    parent = cache_root() / "scratch"
    owner.sweep_orphans(parent, f"{kind}-*")
    tmp = owner.make_owned_dir(parent, f"{kind}-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
