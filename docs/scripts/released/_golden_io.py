"""What every ``docs/scripts/released/*_goldens.py`` does around running a release: paths, commit, JSON.

Each script runs a released repository's code from a checkout and writes numbers only to
``tests/golden/released/<name>.json``. The scripts are run as
``python docs/scripts/released/<name>_goldens.py ...``, so this folder is ``sys.path[0]`` and they
import this module as ``_golden_io``. Importing it puts the suite's root (``ROOT``) first on
``sys.path``, so that ``from tests import released_inputs_<name>`` works next.

* ``repo_commit``: the commit of a checkout (given, ``git rev-parse HEAD``, or an export's ``COMMIT`` file).
* ``provenance``: the header fields a golden starts with (repository, commit, command, date, torch).
* ``golden_path`` / ``dump`` / ``write_golden``: where a golden lives, its exact text, writing (or previewing) it.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
GOLDEN_DIR = ROOT / "tests" / "golden" / "released"
sys.path.insert(0, str(ROOT))


def golden_path(name: str) -> Path:
    """``tests/golden/released/<name>.json``."""
    return GOLDEN_DIR / f"{name}.json"


def shown(path: Path) -> str:
    """``path`` relative to the suite's root when it lies inside it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def repo_commit(repo: Path, given: str | None = None, *, required: bool = False) -> str:
    """The commit of the checkout ``repo``: ``given`` if set, else ``git rev-parse HEAD`` there, else the
    first line of ``repo/COMMIT`` (an export without .git), else ``"unknown"`` (``required``: exit)."""
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        pass
    if (Path(repo) / "COMMIT").exists():
        return (Path(repo) / "COMMIT").read_text().strip()
    if required:
        raise SystemExit(f"{repo} is not a git checkout and has no COMMIT file: give its commit with --commit SHA")
    return "unknown"


def provenance(repository: str, commit: str, command: str, *, torch_version: bool = True) -> dict:
    """The header of a golden: where it comes from, how it was made, today's date (and torch's version)."""
    head = {"repository": repository, "commit": commit, "command": command, "date": datetime.date.today().isoformat()}
    if torch_version:
        head["torch"] = torch.__version__
    return head


def dump(golden: dict, *, sort_keys: bool = True) -> str:
    """The golden file's exact text: ``json.dumps(golden, indent=1)`` and a final newline."""
    return json.dumps(golden, indent=1, sort_keys=sort_keys) + "\n"


def write_golden(name: str, golden: dict, *, write: bool = True, out: Path | None = None, sort_keys: bool = True,
                 preview: int = 3000) -> Path:
    """Write ``golden`` to ``out`` (default ``golden_path(name)``) when ``write``; else print its first
    ``preview`` characters and where ``--write`` would write it. Returns that path."""
    path = Path(out) if out is not None else golden_path(name)
    text = dump(golden, sort_keys=sort_keys)
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {shown(path)} ({len(text) // 1024} KB)")
    else:
        if preview:
            print(text[:preview])
        print(f"({len(text)} characters; --write writes {shown(path)})")
    return path
