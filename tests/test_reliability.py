"""Reliability: SIGINT saves and exits cleanly, a writer crashing midway leaves no half file,
same seed -> identical metrics, property-based checks of metrics and parsers, and a fuzz pass
over malformed NIfTI headers, dataset.json files and prompt files (always a clear error)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.core.errors import UserError
from bench.core.metrics import dice, organ_metrics
from bench.core.store import atomic_save, atomic_write_json
from tests.conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_save_a_checkpoint_and_exit_128_plus_the_signal(tmp_path, signum, status):
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench", "run", "--methods", "supervised", "--preset", "tiny", "--iterations", "400",
           "--set", "ckpt_every=1000", "--set", "val_every=0", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    log = None
    while time.time() < deadline:
        logs = list(out.rglob("log.jsonl"))
        if logs and logs[0].read_text().count("\n") >= 2:
            log = logs[0]
            break
        time.sleep(0.2)
    assert log is not None, proc.stderr.read() if proc.poll() is not None else "no progress"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status
    assert err.strip().splitlines()[-1].startswith(f"interrupted (signal {int(signum)});") and "Traceback" not in err
    ckpt = log.parent / "checkpoint.pt"
    assert ckpt.exists() and not (log.parent / "metrics.json").exists()
    import torch

    step = torch.load(ckpt, weights_only=False)["step"]
    assert 1 <= step < 400  # saved at the interruption, not at a periodic checkpoint (every 1000)


def test_a_run_killed_before_its_first_checkpoint_restarts_with_a_clean_log(tmp_path):
    """SIGKILL before any checkpoint: the rerun starts at step 0 and its log has each step once."""
    out = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench", "run", "--methods", "supervised", "--preset", "tiny", "--iterations", "60",
           "--set", "ckpt_every=1000", "--set", "val_every=0", "--set", "log_every=1", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not any(p.read_text().count("\n") >= 3 for p in out.rglob("log.jsonl")):
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode == 0
    (log,) = [p for p in out.rglob("log.jsonl")]
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if "loss" in json.loads(line)]
    assert steps == sorted(set(steps)) and steps[0] == 0


def test_writer_crashing_midway_leaves_no_half_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"old": 1})

    def crash(f):
        f.write(b'{"new": "half')
        raise OSError("disk gone")

    with pytest.raises(UserError, match=r"cannot write .*metrics\.json \(disk gone\)"):  # one line for the user
        atomic_save(target, crash)
    assert json.loads(target.read_text()) == {"old": 1}  # the previous complete file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left
    # a process killed while writing leaves only a hidden temp file, never a half target
    code = ("import os,sys; sys.path.insert(0, %r)\nfrom bench.core.store import atomic_save\n"
            "def w(f):\n    f.write(b'x' * 1000); f.flush(); os.kill(os.getpid(), 9)\n"
            "atomic_save(%r, w)\n") % (str(ROOT), str(tmp_path / "new.json"))
    subprocess.run([sys.executable, "-c", code], timeout=60)
    assert not (tmp_path / "new.json").exists()


def test_same_seed_same_metrics(tiny_dataset, tmp_path):
    from bench.train import run_one
    from tests.helpers import tiny_spec

    a = run_one(tiny_spec(tiny_dataset, "mean_teacher", tmp_path / "a"))
    b = run_one(tiny_spec(tiny_dataset, "mean_teacher", tmp_path / "b"))
    assert a.cases == b.cases and a.mean == b.mean


# -- properties -------------------------------------------------------------------------------

masks = st.tuples(st.integers(0, 10**6), st.floats(0.05, 0.6)).map(
    lambda t: np.random.default_rng(t[0]).random((6, 7, 8)) < t[1]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks, masks)
def test_metric_symmetry_and_bounds(a, b):
    d = dice(a, b)
    assert d == pytest.approx(dice(b, a)) and 0.0 <= d <= 1.0
    m1, m2 = organ_metrics(a, b, (1.0, 2.0, 0.5)), organ_metrics(b, a, (1.0, 2.0, 0.5))
    if a.any() and b.any():
        assert m1["hd95"] == pytest.approx(m2["hd95"]) and m1["assd"] == pytest.approx(m2["assd"])  # symmetric ones
        assert m1["hd95"] >= 0 and m1["asd"] >= 0
    assert organ_metrics(a, a, (1, 1, 1))["dice"] in (1.0,) or not a.any()


@settings(max_examples=25, deadline=None)
@given(masks, st.integers(-2, 2), st.integers(-2, 2))
def test_metrics_translation_invariant(a, dy, dx):
    pad = np.zeros((10, 13, 14), bool)
    pad[2:8, 3:10, 3:11] = a
    b = np.roll(np.roll(pad, 1, axis=2), -1, axis=1)  # a second mask, same shape
    moved_a, moved_b = (np.roll(np.roll(x, dy, axis=1), dx, axis=2) for x in (pad, b))
    m, n = organ_metrics(pad, b, (1.0, 1.0, 1.0)), organ_metrics(moved_a, moved_b, (1.0, 1.0, 1.0))
    for k in ("dice", "hd95", "asd"):
        assert (np.isnan(m[k]) and np.isnan(n[k])) or m[k] == pytest.approx(n[k])


@given(st.text(max_size=12))
def test_fraction_parser_never_crashes(text):
    from datasets.splits import parse_fraction

    try:
        v = parse_fraction(text)
    except UserError:
        return
    assert 0.0 < v <= 1.0


@given(st.lists(st.text(max_size=10), max_size=4))
def test_set_parser_never_crashes(items):
    from bench.config import parse_set

    try:
        out = parse_set(items)
    except UserError:
        return
    assert all(isinstance(k, str) and k for k in out)


@given(st.dictionaries(st.sampled_from(["labeled", "unlabeled", "eval", "test", "name", "x"]),
                       st.one_of(st.lists(st.sampled_from(["a", "b", "c", "a"]), max_size=4), st.integers(), st.text(max_size=3)),
                       max_size=6))
@settings(deadline=None)
def test_split_files_never_crash(tmp_path_factory, data):
    from datasets.splits import Split

    path = tmp_path_factory.mktemp("s") / "split.json"
    path.write_text(json.dumps(data))
    try:
        Split.load(path).validate(["a", "b", "c"])
    except UserError:
        pass


# -- fuzz: broken files always give a UserError -----------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_fuzzed_nifti_headers(tmp_path, seed):
    from datasets.nifti import read_nifti

    raw = bytearray(gzip.decompress((SHARED / "data" / "totalseg_example" / "seg_total.nii.gz").read_bytes()))
    rng = np.random.default_rng(seed)
    for pos in rng.integers(0, 348, size=8):  # the NIfTI-1 header
        raw[pos] = int(rng.integers(0, 256))
    path = tmp_path / "f.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    try:
        data, spacing = read_nifti(path)
        assert data.ndim == 3 and all(s > 0 for s in spacing)  # a harmless byte flip may still read
    except UserError as e:
        assert str(path) in str(e) and "\n" not in str(e)


@pytest.mark.parametrize("text", ["", "[]", "{", '{"labels": 3}', '{"labels": {"0": "background"}, "training": 5}',
                                  '{"labels": {"0": "bg"}, "training": [{"image": 1}]}', '{"labels": {"a": "b"}}', "\x00\xff"])
def test_fuzzed_dataset_json(tmp_path, text):
    from bench.core.registry import DATASETS

    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(UserError):
        DATASETS.get("folder")(data_root=str(tmp_path))


@pytest.mark.parametrize("text", ["", "{}", "[1,2]", '{"format": "bench-prompts/1"}', '{"format": "bench-prompts/1", "organs": 5}',
                                  '{"format": "bench-prompts/1", "organs": {"liver": 3}}', "\u0000"])
def test_fuzzed_prompt_files(tmp_path, text):
    from priors.prompts import load_prompt_set

    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(UserError):
        load_prompt_set(str(path)).texts_for(("background", "liver"))
