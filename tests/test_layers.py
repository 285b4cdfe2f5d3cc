"""The import layers of DESIGN.md hold: core imports nothing of the project, plugins never
import the engine nor each other, reports stay free of torch (contracts in .importlinter)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    r = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports())"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "4 kept, 0 broken" in r.stdout


def test_contract_names_every_engine_module():
    """A new module in bench/ is engine code: it must be listed as forbidden for core and plugins."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / ".importlinter")
    listed = set(cfg["importlinter:contract:plugins"]["forbidden_modules"].split())
    engine = {f"bench.{p.stem}" for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__"}
    assert engine == listed
    assert engine <= set(cfg["importlinter:contract:core"]["forbidden_modules"].split())
