"""Shared fixtures. Generated data goes to a per-session cache folder, never to ~/.cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"

# `bench run` in the tests runs its cells in the test process (monkeypatches and captured output
# reach them); the default, `auto` (local subprocesses on a multi-core CPU), has its own tests
# (tests/test_slurm.py::test_auto_*), which unset this
os.environ["BENCH_EXECUTOR"] = "process"


@pytest.fixture(scope="session", autouse=True)
def _bench_cache(tmp_path_factory):
    if "BENCH_CACHE" not in os.environ:
        os.environ["BENCH_CACHE"] = str(tmp_path_factory.mktemp("bench-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_dataset(_bench_cache):
    from datasets.phantom import build_phantom

    return build_phantom("btcv", "tiny")


@pytest.fixture(scope="session")
def tiny_amos(_bench_cache):
    from datasets.phantom import build_phantom

    return build_phantom("amos", "tiny")
