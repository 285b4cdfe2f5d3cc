"""Hostile but realistic input: no file runs code, nothing escapes its folder, every user
mistake is one line + exit 2 before any data or folder is made. ``CASES`` is the catalogue:
add a row for every new case."""

from __future__ import annotations

import json
import os
import pickle
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import main

TINY = ["--methods", "supervised", "--preset", "tiny", "--no-progress"]


def _one_line(capsys, argv, expect: str) -> str:
    code = main(argv)
    err = "\n".join(line.rsplit("\r", 1)[-1] for line in capsys.readouterr().err.split("\n")).strip()
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expect in err, err
    return err


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# (id, argv after the command, expected part of the one-line error); {out} / {tmp} are filled in
CASES = [
    ("seeds-negative", ["run", *TINY, "--seeds", "-1", "--out", "{out}"], "--seeds -1: expected integers in 0..2^31-1"),
    ("lr-negative", ["run", *TINY, "--set", "lr=-1", "--out", "{out}"], "lr=-1: must be > 0"),
    ("lr-nan", ["run", *TINY, "--set", "lr=nan", "--out", "{out}"], "lr=nan: expected a number"),
    ("patch-too-big", ["run", *TINY, "--set", "patch=512,512,512", "--out", "{out}"], "needs at least"),
    ("out-is-a-file", ["run", *TINY, "--out", "{tmp}/file.txt"], "is a file, not a folder"),
    ("device-garbage", ["run", *TINY, "--device", "cuda:x", "--out", "{out}"], "--device cuda"),
    ("device-unknown", ["run", *TINY, "--device", "tpu", "--out", "{out}"], "choose auto, cpu or cuda"),
    ("shard-bad", ["run", *TINY, "--shard", "3/2", "--out", "{out}"], "i must lie in 1..n"),
    ("evaluate-out-dir", ["evaluate", "--pred", "{tmp}/pred", "--gt", "{tmp}/gt", "--out", "{tmp}/pred"], "is a folder"),
    ("evaluate-labels-dir", ["evaluate", "--pred", "{tmp}/pred", "--gt", "{tmp}/gt", "--labels", "{tmp}/pred"], "is a folder"),
    ("evaluate-labels-device", ["evaluate", "--pred", "{tmp}/pred", "--gt", "{tmp}/gt", "--labels", "/dev/zero"], "is not a regular file"),
    ("config-labeled-nan", ["run", *TINY, "--config", "{tmp}/nan.toml", "--out", "{out}"], "labeled = nan: expected a labeled share"),
    ("tune-budget", ["tune", "--method", "supervised", "--budget-iterations", "-3", "--out", "{out}"], "at least 1 training iteration"),
    ("tune-trials", ["tune", "--method", "supervised", "--trials", "0", "--out", "{out}"], "at least 1 trial"),
    ("tune-export-dir", ["tune", "--method", "supervised", "--export", "{tmp}", "--out", "{out}"], "is a folder"),
    ("tune-study-traversal", ["tune", "--method", "supervised", "--study-name", "../x", "--out", "{out}"], "cannot be a file name"),
    ("generate-retries", ["priors", "generate", "--labels", "synapse", "--out", "{tmp}/p.json", "--max-retries", "-1"],
     "give 0 or more retries"),
]


@pytest.mark.parametrize("argv,expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_catalogue(tmp_path, capsys, monkeypatch, argv, expect):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "nan.toml").write_text("labeled = nan\n")
    for d in ("pred", "gt"):
        (tmp_path / d).mkdir()
    argv = [a.replace("{out}", str(tmp_path / "out")).replace("{tmp}", str(tmp_path)) for a in argv]
    before = _files(tmp_path)
    _one_line(capsys, argv, expect)
    assert _files(tmp_path) == before  # nothing created: no data, no folder, no split file


class _Evil:
    """Unpickling this runs a shell command that writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
@pytest.mark.parametrize("name", ["checkpoint.pt", "best.pt"])
def test_a_tampered_checkpoint_never_runs(tiny_dataset, tmp_path, capsys, kind, name):
    import torch

    from bench.runner import RunRequest, plan

    out = tmp_path / "runs"
    req = RunRequest.build({"methods": "supervised", "preset": "tiny", "iterations": 2}, out=str(out), progress=False)
    run = plan(req)[0][0].dir
    marker = tmp_path / "marker"
    if name == "best.pt":  # a finished run without metrics.json: the test loads best.pt
        assert main(["run", *TINY, "--iterations", "2", "--out", str(out)]) == 0
        (run / "metrics.json").unlink()
        capsys.readouterr()
    run.mkdir(parents=True, exist_ok=True)
    with (run / name).open("wb") as f:
        if kind == "pickle":
            pickle.dump({"step": 0, "modules": _Evil(marker)}, f)
        else:
            torch.save({"step": 0, "modules": _Evil(marker)}, f)
    _one_line(capsys, ["run", *TINY, "--iterations", "2", "--out", str(out)], "is not a bench checkpoint or is corrupt")
    assert not marker.exists()


def test_split_and_dataset_names_cannot_escape(tiny_dataset, tmp_path, capsys):
    from datasets.splits import Split

    p = tiny_dataset.partition
    for bad in ("../../../../escaped_split", str(tmp_path / "abs_split")):
        f = tmp_path / "s.json"
        Split(bad, p["train"][:1], p["train"][1:], p["eval"], p["test"]).save(f)
        _one_line(capsys, ["run", *TINY, "--split", str(f), "--out", str(tmp_path / "runs")], "cannot be a file name")
    assert not list(tmp_path.parent.glob("escaped_split*")) and not (tmp_path / "abs_split").exists()
    assert not (tmp_path / "runs").exists()


def _folder_dataset(tmp_path: Path, monkeypatch, meta: dict) -> Path:
    """An nnU-Net folder with one case and ``meta`` in its dataset.json."""
    import nibabel as nib

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ds"
    for d in ("imagesTr", "labelsTr"):
        (root / d).mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), str(root / "imagesTr" / "c1_0000.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.uint8), np.eye(4)), str(root / "labelsTr" / "c1.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz", **meta}))
    return root


def test_dataset_json_name_cannot_escape(tmp_path, capsys, monkeypatch):
    root = _folder_dataset(tmp_path, monkeypatch, {"name": "x/../../../../ds_escape"})
    _one_line(capsys, ["run", *TINY, "--dataset", "folder", "--data-root", str(root), "--out", str(tmp_path / "runs")],
              "cannot be a file name")
    assert not list(tmp_path.rglob("*ds_escape*"))


def test_prompt_template_with_other_placeholders(tmp_path, capsys):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"format": "bench-prompts/1", "name": "p", "views": ["v"], "classes": {},
                             "template": "{organ} {0} {x.__class__}"}))
    _one_line(capsys, ["priors", "show", str(f), "--text-encoder", "hash"], "may hold only the placeholder {organ}")


def test_urls_lose_credentials_and_server_text_is_masked(monkeypatch):
    from priors.generate import masked, public_url

    assert public_url("http://user:secret@host:8000/v1") == "http://host:8000/v1"
    assert public_url("https://api.openai.com/v1") == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abcdefghijklmnop")
    text = masked("Incorrect API key provided: sk-abcdefghijklmnop.\n" + "x" * 500)
    assert "abcdefghijklmnop" not in text and "\n" not in text and len(text) <= 203


def test_result_files_are_readable_by_others_and_claims_hold_their_owner(tmp_path):
    from bench import lock
    from bench.core.store import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "m.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
    assert lock.claim(tmp_path / "run")
    info = json.loads((tmp_path / "run" / ".claim").read_text())  # never an empty claim
    assert info["owner"]["pid"] == os.getpid() and not list((tmp_path / "run").glob(".claim.*.tmp"))


def test_orphaned_temp_files_and_folders_are_removed(tmp_path):
    from bench.core import owner
    from datasets.base import DatasetWriter

    me = owner.identity()
    dead = tmp_path / ".ds.tmp-999999999-abc"  # a writer on this machine that was SIGKILLed (its pid is gone)
    dead.mkdir()
    (dead / ".owner").write_text(json.dumps({**me, "pid": 999999999}))
    # a live writer in another container (another PID namespace) with the same hostname
    other = tmp_path / ".ds.tmp-7-def"
    (other / "images").mkdir(parents=True)
    (other / ".owner").write_text(json.dumps({**me, "pid": 7, "pidns": "pid:[4026539999]"}))
    # an old-style folder (no owner) nobody touched for two days
    stale = tmp_path / ".ds.tmp-8-ghi"
    stale.mkdir()
    two_days = time.time() - 2 * 86400
    os.utime(stale, (two_days, two_days))
    # a killed import of an earlier key of the same dataset (a source file changed since)
    earlier = tmp_path / ".ds-0123456789ab.tmp-999999998-jkl"
    earlier.mkdir()
    (earlier / ".owner").write_text(json.dumps({**me, "pid": 999999998}))
    w = DatasetWriter(tmp_path / "ds", "ds", ("background", "liver"))
    assert not dead.exists() and not stale.exists() and not earlier.exists() and (other / "images").is_dir()
    w.abort()


# -- property-based: random config documents through the CLI --------------------------------

_KEYS = ["methods", "dataset", "protocol", "split", "labeled", "seeds", "preset", "prompts", "text_encoder", "dataset_opts",
         "train", "method", "bogus", "lr", "iterations", "patch", "ema_decay", "mean_teacher", "../x"]
_SCALARS = st.one_of(st.integers(-3, 40), st.floats(-1, 2, allow_nan=False), st.booleans(),
                     st.sampled_from(["supervised", "mean_teacher", "tiny", "10%", "x", "", "../../e", "phantom", "32,64,64"]))
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3))


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _doc(top: dict, tables: dict) -> str:
    lines = [f'"{k}" = {_toml(v)}' for k, v in top.items()]
    for name, body in tables.items():
        lines.append(f'["{name}"]' if "." not in name else "[" + ".".join(f'"{p}"' for p in name.split(".")) + "]")
        lines += [f'"{k}" = {_toml(v)}' for k, v in body.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(top=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=5),
       tables=st.dictionaries(st.sampled_from(["train", "method", "method.mean_teacher", "method.dhc", "method.nope"]),
                              st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=3), max_size=2),
       sets=st.lists(st.from_regex(r"[a-z_.]{1,12}=[a-z0-9.,-]{0,6}", fullmatch=True), max_size=2))
def test_random_config_documents_give_exit_0_or_2(tmp_path_factory, capsys, top, tables, sets):
    tmp = tmp_path_factory.mktemp("cfg")
    cfg = tmp / "c.toml"
    cfg.write_text(_doc(top, {k: v for k, v in tables.items() if k not in top}))
    argv = ["run", "--dry-run", "--config", str(cfg), "--out", str(tmp / "out")]
    for s in sets:
        argv += ["--set", s]
    code = main(argv)  # anything but a UserError propagates and fails the test
    err = capsys.readouterr().err.strip()
    assert code in (0, 2)
    assert code == 0 or len(err.splitlines()) == 1
    assert _files(tmp) == {"c.toml"}  # a dry run writes nothing, whatever the document says


def test_tune_checks_settings_before_its_study_exists(tmp_path, capsys):
    _one_line(capsys, ["tune", "--method", "supervised", "--set", "lr=-1", "--out", str(tmp_path / "out")], "lr=-1: must be > 0")
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    import errno

    from bench.core.errors import UserError
    from bench.core.store import atomic_save

    def save(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"cannot write .*m\.pt \(No space left on device\); is the disk full"):
        atomic_save(tmp_path / "m.pt", save)
    assert not list(tmp_path.iterdir())  # the temporary file is gone too


@pytest.mark.parametrize("meta,expect", [
    ({"training": [{"image": 5, "label": "labelsTr/c1.nii.gz"}]}, "must have 'image' and 'label' paths"),
    ({"partition": {"eval": 3}}, "'partition' 'eval' must be a list of case ids"),
])
def test_malformed_dataset_json_entries(tmp_path, capsys, monkeypatch, meta, expect):
    root = _folder_dataset(tmp_path, monkeypatch, {"name": "d", **meta})
    _one_line(capsys, ["run", *TINY, "--dataset", "folder", "--data-root", str(root), "--out", str(tmp_path / "runs")], expect)


def test_a_nan_text_prior_is_refused_when_loaded(tmp_path, capsys):
    import torch

    t = torch.randn(28, 16)
    t[3, 2] = float("nan")
    torch.save(t, tmp_path / "prior.pth")
    _one_line(capsys, ["priors", "show", "anatomy", "--text-encoder", f"file:{tmp_path / 'prior.pth'}", "--labels", "synapse"],
              "holds NaN or infinite values")


def test_report_study_name_cannot_escape(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    _one_line(capsys, ["report", "--runs", str(tmp_path / "runs"), "--study", "../../evil", "--no-figures"], "cannot be a file name")


def test_planted_links_in_a_run_folder_are_refused_and_force_never_deletes_through_them(tmp_path, capsys):
    """Issue #31: `log.jsonl -> victim.txt` and `predictions -> victimdir` planted in a run folder
    must not make a run append to or write into their targets; --force removes the links only."""
    from bench.runner import RunRequest, plan

    out = tmp_path / "runs"
    req = RunRequest.build({"methods": "supervised", "preset": "tiny", "iterations": 2}, out=str(out), progress=False)
    run = plan(req)[0][0].dir
    run.mkdir(parents=True)
    victim, victim_dir = tmp_path / "victim.txt", tmp_path / "victimdir"
    victim.write_text("keep\n")
    victim_dir.mkdir()
    (run / "log.jsonl").symlink_to(victim)
    (run / "predictions").symlink_to(victim_dir, target_is_directory=True)
    args = ["run", *TINY, "--iterations", "2", "--out", str(out), "--save-predictions"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a symbolic link; a run folder holds no links" in err[0]
    assert victim.read_text() == "keep\n" and not any(victim_dir.iterdir())
    assert main([*args, "--force"]) == 0  # the links are removed, their targets are left alone
    assert victim.read_text() == "keep\n" and not any(victim_dir.iterdir()) and victim_dir.is_dir()
    assert not (run / "log.jsonl").is_symlink() and (run / "metrics.json").exists()


def test_only_run_folders_count_as_seeds(tmp_path, capsys):
    """Issue #31: `bench evaluate` output in a run's predictions/ and a backup copy seed_0.bak are
    not runs: they are named and left out, never a fake row or a second seed."""
    import shutil

    from reports.collect import collect
    from tests.test_reports import _run

    run = _run(tmp_path, "a", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.5})
    (run / "predictions").mkdir()
    shutil.copy(run / "metrics.json", run / "predictions" / "metrics.json")
    shutil.copytree(run, run.with_name("seed_0.bak"))
    runs = collect(tmp_path)
    assert [r.path.name for r in runs] == ["seed_0"]
    err = capsys.readouterr().err
    assert err.count("not in a run folder (seed_<n>)") == 3


def test_symlinked_run_folders_are_followed_once(tmp_path, capsys):
    """A method folder linked in from another disk counts (it was silently left out); a link
    back up the tree (a loop) is named on stderr and read once."""
    from reports.collect import collect
    from tests.test_reports import _run

    other = tmp_path / "other_disk"
    _run(other, "b", 0, {"spleen": 0.8, "liver": 0.9, "gallbladder": 0.4})
    runs_dir = tmp_path / "runs"
    _run(runs_dir, "a", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.5})
    (runs_dir / "linked").symlink_to(other, target_is_directory=True)
    (runs_dir / "loop").symlink_to(runs_dir, target_is_directory=True)
    runs = collect(runs_dir)
    assert sorted(r.metrics.method for r in runs) == ["a", "b"]
    assert "a symbolic-link loop or a second link" in capsys.readouterr().err


@pytest.mark.parametrize("labeled, expect", [("1e-9", "labels 0 of them"), ("95%", "labels 6 of them")])
def test_a_labeled_share_that_rounds_to_no_case_or_all_is_refused(tmp_path, capsys, labeled, expect):
    assert main(["run", *TINY, "--labeled", labeled, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert expect in err and "give a share between" in err


@pytest.mark.parametrize("spacing, label, expect", [
    ((0.0, 1.0, 1.0), None, "voxel spacing [0.0, 1.0, 1.0] is not three positive finite numbers"),
    ((float("nan"), 1.0, 1.0), None, "is not three positive finite numbers"),
    ((1.0, 1.0, 1.0), 260, "label values 0..260 do not fit 0..255"),
])
def test_impossible_spacing_and_labels_are_refused_when_imported(tmp_path, spacing, label, expect):
    from bench.core.errors import UserError
    from datasets.base import DatasetWriter

    w = DatasetWriter(tmp_path / "ds", "ds", ("background", "liver"))
    lab = np.zeros((2, 2, 2), dtype=np.int64)
    if label:
        lab[0, 0, 0] = label
    with pytest.raises(UserError, match=expect.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        w.add("case_1", np.zeros((2, 2, 2), dtype=np.float32), lab, spacing)
    w.abort()


@pytest.mark.parametrize("field, value", [("method", 123), ("mean", None), ("seed", "abc"), ("per_organ", []), ("organs", "liver"),
                                          ("cases", 5), ("labeled_fraction", "10%"), ("dataset", ["x"])])
def test_records_of_the_wrong_type_are_one_line_and_skippable(tmp_path, capsys, field, value):
    from tests.test_reports import _run

    _run(tmp_path, "a", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.5})
    bad = _run(tmp_path, "b", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.5})
    data = json.loads((bad / "metrics.json").read_text())
    data[field] = value
    (bad / "metrics.json").write_text(json.dumps(data))
    assert main(["report", "--runs", str(tmp_path), "--no-figures", "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"field '{field}'" in err[0] and "metrics.json" in err[0]
    assert main(["report", "--runs", str(tmp_path), "--no-figures", "--out", str(tmp_path / "rep"), "--skip-broken"]) == 0


@pytest.mark.parametrize("name, body", [("deep.json", "[" * 5000 + "]" * 5000), ("deep.toml", "a = " + "[" * 5000 + "]" * 5000)])
def test_deeply_nested_files_are_one_line(tmp_path, capsys, name, body):
    path = tmp_path / name
    path.write_text(body)
    if name.endswith(".toml"):
        args = ["run", *TINY, "--config", str(path), "--out", str(tmp_path / "o")]
    else:
        args = ["run", *TINY, "--split", str(path), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("nests" in err[0] or "not valid" in err[0]) and "Traceback" not in err[0]


def test_a_config_from_a_device_is_refused_not_read_forever(tmp_path, capsys):
    assert main(["run", *TINY, "--config", "/dev/zero", "--out", str(tmp_path)]) == 2
    assert "not a regular file" in capsys.readouterr().err


def test_dollar_signs_and_long_names_in_figures(tmp_path):
    """A method named with "$" (math text) or 10,000 characters still gives every figure."""
    from reports.report import ReportRequest, make_report
    from tests.test_reports import _run

    _run(tmp_path / "runs", "cost_$5_$x^2", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.5})
    long = _run(tmp_path / "runs", "m", 0, {"spleen": 0.8, "liver": 0.9, "gallbladder": 0.4})  # a folder name cannot be that long
    data = json.loads((long / "metrics.json").read_text())
    (long / "metrics.json").write_text(json.dumps({**data, "method": "m" * 10_000}))
    written = make_report(ReportRequest(runs=str(tmp_path / "runs"), out=str(tmp_path / "rep"), formats=("markdown", "html")))
    assert "report.html" in written and any(k.endswith(".png") for k in written)


@pytest.mark.parametrize("args, expect", [
    (["run", *TINY, "--out", ""], "--out is empty"),
    (["report", "--runs", "", "--no-figures"], "--runs is empty"),
    (["report", "--runs", ".", "--format", "", "--no-figures"], "--format is empty"),
])
def test_empty_paths_and_formats_are_refused(capsys, args, expect):
    assert main(args) == 2
    assert expect in capsys.readouterr().err


def test_save_predictions_on_a_finished_run_says_so(tmp_path, capsys):
    args = ["run", *TINY, "--iterations", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--save-predictions"]) == 0
    assert "its predictions were not saved then: add --force" in capsys.readouterr().out


def _hostile_nifti(path: Path, dims=(30000, 30000, 30000), affine_nan: bool = False) -> Path:
    """A 2x2x2 NIfTI whose header promises ``dims`` (a small file that would expand to terabytes)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.uint8), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    if affine_nan:  # sform srow_x (byte 280) and qform off (byte 252): nibabel cannot write a NaN affine itself
        raw[280:284] = np.array([np.nan], dtype="<f4").tobytes()
        raw[252:254] = np.array([0], dtype="<i2").tobytes()
    else:  # dim[0..7] (byte 40)
        raw[40:56] = np.array([3, *dims, 1, 1, 1, 1], dtype="<i2").tobytes()
    path.write_bytes(bytes(raw))
    return path


def test_a_header_promising_more_memory_than_there_is_is_refused_before_reading(tmp_path):
    from bench.core.errors import UserError
    from datasets.nifti import read_nifti

    with pytest.raises(UserError, match=r"promises a 30000x30000x30000 volume .* more than the .* GB of memory available"):
        read_nifti(_hostile_nifti(tmp_path / "big.nii"))


def test_a_nan_affine_is_named(tmp_path):
    from bench.core.errors import UserError
    from datasets.nifti import read_nifti

    with pytest.raises(UserError, match="NaN or infinite affine"):
        read_nifti(_hostile_nifti(tmp_path / "nan.nii", affine_nan=True))


def test_leftover_temporaries_are_swept_on_resume(tmp_path):
    """Temp files under predictions/ and stale claim temporaries survive no resume (issue #31)."""
    import torch

    from bench.checkpoint import Checkpointer

    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    old = time.time() - 3600
    left = [run / ".metrics.json.abc.tmp", run / "predictions" / ".case_1.nii.gz.xyz.tmp", run / ".claim.0123.tmp",
            run / ".claim.dead.42"]
    for p in left:
        p.write_text("x")
        os.utime(p, (old, old))
    fresh = run / ".claim.4567.tmp"  # a live worker's, milliseconds old: kept
    fresh.write_text("x")
    Checkpointer(run, torch.device("cpu")).clean_temp()
    assert not any(p.exists() for p in left) and fresh.exists()


# -- label sets and label maps: bounded by what uint8 storage can hold (issue #31, item 7) ----------
@pytest.mark.parametrize("labels, expect", [
    ({"background": 0, "liver": 10**12}, "label id 1000000000000"),
    ({"0": "background", "300": "liver"}, "label id 300"),
    ([f"organ{i}" for i in range(10_000)], "10000 labels"),
])
def test_label_sets_beyond_uint8_are_refused_at_once(tmp_path, capsys, labels, expect):
    """A --labels file with an id of 10^12 or 10,000 names: one line, before anything is sized by
    it (earlier: 1 TiB asked for, or 4 GB in 9 s)."""
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"labels": labels}))
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    start = time.perf_counter()
    err = _one_line(capsys, ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--labels", str(path)], expect)
    assert "0..255" in err and time.perf_counter() - start < 5


def test_label_map_sizes_its_lookup_by_the_values_present(tmp_path):
    """A label value of 2^31 - 1 costs no memory (the lookup was sized by the largest value); a
    source value out of range in the map file is one line."""
    from bench.core.errors import UserError
    from datasets.importing import LabelMap

    path = tmp_path / "map.json"
    path.write_text(json.dumps({"format": "bench-label-map/1", "target": "btcv", "map": {"2147483647": "liver", "5": "spleen"}}))
    lmap = LabelMap.load(str(path))
    raw = np.array([[[0, 5], [2147483647, 7]]], dtype=np.int64)
    out = lmap.apply(raw, "case x")
    assert out.dtype == np.uint8 and out.tolist() == [[[0, lmap.labels.index("spleen")], [lmap.labels.index("liver"), 0]]]
    path.write_text(json.dumps({"format": "bench-label-map/1", "target": "btcv", "map": {str(2**40): "liver"}}))
    with pytest.raises(UserError, match="outside 0..2"):
        LabelMap.load(str(path))


def test_evaluate_names_the_labels_file_it_was_given(tmp_path, capsys):
    """A label beyond the set of the --labels file given: the message names that file, not "pass
    --labels" (which it was)."""
    import nibabel as nib

    for d in ("pred", "gt"):
        (tmp_path / d).mkdir()
        nib.save(nib.Nifti1Image(np.full((4, 4, 4), 40, np.uint8), np.eye(4)), str(tmp_path / d / "a.nii.gz"))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    err = _one_line(capsys, ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--labels", str(labels)],
                    "outside 0..1")
    assert f"--labels {labels} has 2 ids" in err and "pass --labels" not in err
    err = _one_line(capsys, ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")], "outside 0..13")
    assert "pass --labels dataset.json" in err


@pytest.mark.parametrize("kind, expect", [("loop", "is a symbolic link loop"), ("dangling", "is a symbolic link to a missing file"),
                                          ("missing", "does not exist")])
@pytest.mark.parametrize("flag", ["--split", "--data-root", "--runs", "--text-encoder"])
def test_links_that_lead_nowhere_are_named(tmp_path, capsys, kind, expect, flag):
    """A symbolic-link loop or a dangling link is said to be one, not "does not exist"."""
    path = tmp_path / "x.json"
    if kind == "loop":
        path.symlink_to(path)
    elif kind == "dangling":
        path.symlink_to(tmp_path / "gone")
    argv = {"--split": ["run", *TINY, "--split", str(path), "--out", str(tmp_path / "o")],
            "--data-root": ["run", *TINY, "--dataset", "folder", "--data-root", str(path), "--out", str(tmp_path / "o")],
            "--runs": ["report", "--runs", str(path), "--no-figures"],
            "--text-encoder": ["run", "--methods", "tak", "--preset", "tiny", "--no-progress", "--text-encoder", f"file:{path}",
                               "--out", str(tmp_path / "o")]}[flag]
    _one_line(capsys, argv, f"{path} {expect}")
    assert not (tmp_path / "o").exists()


def test_a_nifti_that_is_a_device_is_named(tmp_path):
    from bench.core.errors import UserError
    from datasets.nifti import read_nifti

    link = tmp_path / "case.nii.gz"
    link.symlink_to("/dev/zero")
    with pytest.raises(UserError, match="is a device or pipe, not a file"):
        read_nifti(link)


def test_a_cached_array_changed_after_import_is_refused(tmp_path, monkeypatch):
    """Cached imports carry their key and each array's sha256: an array changed after it was
    written (another writer, a disk error, a hand edit) is refused the first time it is loaded,
    and a cache folder holding another import's dataset.json is refused on open."""
    from bench.core.errors import UserError
    from datasets import base
    from datasets.base import Dataset
    from datasets.phantom import build_phantom

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    ds = build_phantom("btcv", "tiny", seed=0)
    cid = ds.case_ids()[0]
    assert set(ds.checksums[cid]) == {"image", "label"} and ds.key == ds.root.name
    assert ds.load_label(cid).dtype == np.uint8
    path = ds.root / "labels" / f"{cid}.npy"
    arr = np.load(path)
    arr.flat[0] = (int(arr.flat[0]) + 1) % ds.num_classes
    np.save(path, arr)
    monkeypatch.setattr(base, "_VERIFIED", set())  # a new process
    with pytest.raises(UserError, match=f"{cid}.npy differs from the array written at import.*delete"):
        Dataset.open(ds.root, ds.root.name).load_label(cid)
    with pytest.raises(UserError, match="was written for import key"):
        Dataset.open(ds.root, "another-key")


def test_a_killed_perf_leaves_no_scratch_behind(tmp_path, monkeypatch):
    """`bench perf` trains in a scratch folder under the cache: a process SIGKILLed inside it
    leaves it behind (earlier: a 38 MB checkpoint in the system temp folder forever); the next
    scratch user removes it once its writer is provably gone, and never a live writer's."""
    import subprocess
    import sys

    from bench.core.store import scratch_dir

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    code = ("import os, signal; from bench.core.store import scratch_dir\n"
            "with scratch_dir('perf') as d:\n"
            "    (d / 'checkpoint.pt').write_bytes(b'x' * 1000); print(d, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, cwd=Path(__file__).parent.parent)
    left = Path(res.stdout.strip())
    assert res.returncode == -9 and (left / "checkpoint.pt").exists()
    with scratch_dir("perf") as mine:
        assert not left.exists() and mine.exists()
        live = subprocess.Popen([sys.executable, "-c", "import sys; from bench.core.store import scratch_dir\n"
                                 "with scratch_dir('perf') as d:\n    print(d, flush=True); sys.stdin.read()"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
        theirs = Path(live.stdout.readline().strip())
        assert theirs.exists() and mine.exists()  # the second user swept; neither live folder went
        live.communicate("")
    assert not mine.exists() and not theirs.exists()


def test_figures_of_many_methods_keep_their_size(tmp_path):
    """40 methods x 2 seeds (at two labeled shares, so that Dice against the share is drawn):
    every figure shows the first MAX_SERIES rows / variants (the curves as one mean line per
    variant) and stays a few thousand pixels at most (1,000 runs made a 45,938-pixel-wide bar
    chart and a 17,451-pixel-high curve figure)."""
    import matplotlib.image as mpimg

    from reports.figures import MAX_SERIES, _first
    from reports.report import ReportRequest, make_report
    from tests.test_reports import _run

    for m in range(40):
        for s in range(2):
            _run(tmp_path / "runs", f"method_{m:02d}", s, {"spleen": 0.5 + m / 100, "liver": 0.9, "gallbladder": 0.3 + s / 10},
                 split=("labeled_10p", "labeled_20p")[s])
    written = make_report(ReportRequest(runs=str(tmp_path / "runs"), out=str(tmp_path / "rep"), formats=("html",)))
    pngs = [k for k in written if k.endswith(".png")]
    assert len(pngs) == 4
    for name in pngs:
        h, w = mpimg.imread(tmp_path / "rep" / name).shape[:2]
        assert h < 2000 and w < 3300, (name, h, w)
    assert _first(list(range(40)), MAX_SERIES, "rows") == (list(range(MAX_SERIES)),
                                                           f" (first {MAX_SERIES} of 40 rows; every one is in the table)")


def test_training_curve_is_the_mean_over_seeds_at_common_steps():
    from reports.figures import _mean_curve

    assert _mean_curve([{10: 1.0, 20: 3.0, 30: 5.0}, {10: 3.0, 20: 5.0}]) == ([10, 20], [2.0, 4.0])
    assert _mean_curve([{}, {}]) == ([], [])


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_a_cache_that_is_a_file_or_read_only_is_one_line(tmp_path, capsys, monkeypatch, kind):
    cache = tmp_path / "cache"
    if kind == "file":
        cache.write_text("")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        cache.mkdir()
        cache.chmod(0o555)
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    _one_line(capsys, ["run", *TINY, "--out", str(tmp_path / "o")], "set BENCH_CACHE to a folder")
    assert not (tmp_path / "o").exists()


_DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("kind", ["labels", "prompts", "label-map", "dataset.json", "metrics.json"])
def test_deeply_nested_inputs_of_every_kind_are_one_line(tmp_path, capsys, monkeypatch, kind):
    """JSON nested 5,000 deep (a RecursionError traceback before) in each file the suite reads:
    one line naming the file; a metrics.json is also skipped by --skip-broken."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    deep = tmp_path / "deep.json"
    deep.write_text(_DEEP)
    if kind == "metrics.json":
        from tests.test_reports import _run

        _run(tmp_path / "runs", "a", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.5})
        bad = _run(tmp_path / "runs", "b", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.5})
        (bad / "metrics.json").write_text(_DEEP)
        _one_line(capsys, ["report", "--runs", str(tmp_path / "runs"), "--no-figures", "--out", str(tmp_path / "rep")], "nests deeper")
        assert main(["report", "--runs", str(tmp_path / "runs"), "--no-figures", "--out", str(tmp_path / "rep"), "--skip-broken"]) == 0
        return
    if kind == "dataset.json":
        root = tmp_path / "data"
        root.mkdir()
        (root / "dataset.json").write_text(_DEEP)
        argv = ["run", *TINY, "--dataset", "folder", "--data-root", str(root), "--out", str(tmp_path / "o")]
    else:
        argv = {"labels": ["evaluate", "--pred", str(tmp_path), "--gt", str(tmp_path), "--labels", str(deep)],
                "prompts": ["priors", "show", str(deep), "--text-encoder", "hash"],
                "label-map": ["run", *TINY, "--dataset", "folder", "--data-root", str(tmp_path), "--label-map", str(deep),
                              "--out", str(tmp_path / "o")]}[kind]
    _one_line(capsys, argv, "nests deeper")


def test_the_catalogue_names_only_tests_that_exist():
    """docs/hardening.md maps each case of the attack to a test: every test it names exists
    (``path::name`` or ``::name`` after a path in the same cell), and every row names one."""
    import re

    root = Path(__file__).parent.parent
    rows = [line for line in (root / "docs" / "hardening.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| case") and not line.startswith("|---")]
    assert len(rows) >= 40
    last_file = None
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[-1]
        if cell == "same test":
            continue
        names = re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", cell)
        assert names, row
        for path, name in names:
            last_file = path or last_file
            assert re.search(rf"^def {name}\(", (root / last_file).read_text(), re.M), (last_file, name)
