"""The result store: run folders, config hashes and atomic writes.

Layout (see DESIGN.md)::

    runs/<dataset>/<protocol>/<split>/<method>/<config-hash>/seed_<n>/
        config.json  metrics.json  timing.json  log.jsonl  checkpoint.pt  best.pt

Every file is written to a temporary sibling and renamed into place, so a reader never sees
half a file. A run whose ``metrics.json`` exists is finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def cache_root() -> Path:
    """Where generated and preprocessed data live (``$BENCH_CACHE`` or ``~/.cache/bench``)."""
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_save(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            save(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path, what: str, missing_hint: str = "", corrupt_hint: str = "") -> Any:
    """Parse a JSON file; a missing or invalid file is a :class:`UserError` naming it.

    ``what`` names the file for the user (e.g. "split file x.json"); the hints say how to fix it.
    """
    from bench.core.errors import UserError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} does not exist{'; ' + missing_hint if missing_hint else ''}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else ""
        raise UserError(f"{what} is not valid JSON{where}{'; ' + corrupt_hint if corrupt_hint else ''}")


def config_hash(config: dict) -> str:
    """Short stable hash of a resolved config (key order does not matter)."""
    body = json.dumps(config, sort_keys=True, default=_json_default)
    return hashlib.sha256(body.encode()).hexdigest()[:10]


def run_dir(out: Path, dataset: str, protocol: str, split: str, method: str, chash: str, seed: int) -> Path:
    return Path(out) / dataset / protocol / split / method / chash / f"seed_{seed}"


def is_finished(path: Path) -> bool:
    return (Path(path) / "metrics.json").exists()
