"""Every public module-level function and class of the suite's packages has a docstring (issue
#29: the engine and the networks say Args, Returns, Raises and tensor shapes where they apply)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"bench": "bench/*.py", "bench.core": "bench/core/*.py", "datasets": "datasets/*.py", "priors": "priors/*.py",
            "reports": "reports/*.py", "methods": "methods/*.py"}


def public_without_docstring(pattern: str) -> tuple[int, list[str]]:
    """(public top-level functions and classes, those of them without a docstring) in the files."""
    total, missing = 0, []
    for path in sorted(ROOT.glob(pattern)):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                total += 1
                if not ast.get_docstring(node):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    return total, missing


@pytest.mark.parametrize("package", list(PACKAGES))
def test_every_public_function_and_class_has_a_docstring(package):
    total, missing = public_without_docstring(PACKAGES[package])
    assert total > 0
    assert not missing, f"{len(missing)} of {total} public names of {package} have no docstring: {', '.join(missing)}"
