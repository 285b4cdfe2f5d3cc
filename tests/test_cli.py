"""The CLI end to end on the tiny preset, and every bad input: one line, exit 2, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bench.cli import main
from bench.core.labels import BTCV_13
from bench.core.registry import DATASETS
from datasets.base import Dataset, DatasetWriter


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _bad(capsys, argv, expect: str, out: Path | None = None):
    before = _files(out) if out else []
    code = main(argv)
    # progress bars redraw with carriage returns; what a terminal shows is after the last one
    err = "\n".join(line.rsplit("\r", 1)[-1] for line in capsys.readouterr().err.split("\n")).strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert expect in err, err
    assert "Traceback" not in err
    if out is not None:
        after = _files(out)
        assert after == before, f"files written: {set(after) - set(before)}"
        assert not [p for p in after if p.suffix == ".tmp"]
    return err


def test_run_end_to_end_then_skip(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["run", "--methods", "supervised,mean_teacher", "--preset", "tiny", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| supervised" in text and "| mean_teacher" in text and "Results are in" in text
    metrics = sorted(out.rglob("metrics.json"))
    assert len(metrics) == 2
    for m in metrics:
        parts = m.relative_to(out).parts  # dataset/protocol/split/method/hash/seed_0/metrics.json
        assert parts[0] == "phantom" and parts[1] == "default" and parts[5] == "seed_0"
        for f in ("config.json", "timing.json", "log.jsonl", "checkpoint.pt"):
            assert (m.parent / f).exists()
    assert main(argv) == 0
    assert "finished earlier, skipped" in capsys.readouterr().out


def test_set_overrides_reach_the_run(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["run", "--methods", "mean_teacher", "--preset", "tiny", "--out", str(out), "--no-progress",
            "--set", "ema_decay=0.9", "--set", "iterations=2", "--seeds", "1"]
    assert main(argv) == 0
    cfg = json.loads(next(out.rglob("config.json")).read_text())
    assert cfg["hparams"]["ema_decay"] == 0.9 and cfg["train"]["iterations"] == 2 and cfg["seed"] == 1


def test_config_file_precedence(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\niterations = 3\nlr = 0.5\n[method.mean_teacher]\nema_decay = 0.95\n")
    out = tmp_path / "runs"
    argv = ["run", "--methods", "mean_teacher", "--preset", "tiny", "--out", str(out), "--no-progress",
            "--config", str(cfg), "--set", "lr=0.2"]
    assert main(argv) == 0
    c = json.loads(next(out.rglob("config.json")).read_text())
    assert c["train"]["iterations"] == 3  # config file beats preset
    assert c["train"]["lr"] == 0.2  # --set beats config file
    assert c["hparams"]["ema_decay"] == 0.95


def test_unknown_method_suggests(tmp_path, capsys):
    err = _bad(capsys, ["run", "--methods", "mean_techer", "--preset", "tiny", "--out", str(tmp_path)], "unknown method 'mean_techer'", tmp_path)
    assert "did you mean 'mean_teacher'" in err


def test_unknown_dataset(tmp_path, capsys):
    _bad(capsys, ["run", "--methods", "supervised", "--dataset", "phantm", "--out", str(tmp_path)], "did you mean 'phantom'", tmp_path)


def test_data_root_missing_or_empty(tmp_path, capsys):
    out = tmp_path / "out"
    _bad(capsys, ["run", "--methods", "supervised", "--preset", "tiny", "--data-root", str(tmp_path / "nope"), "--out", str(out)], "does not exist", out)
    (tmp_path / "empty").mkdir()
    _bad(capsys, ["run", "--methods", "supervised", "--preset", "tiny", "--data-root", str(tmp_path / "empty"), "--out", str(out)], "is empty", out)


@pytest.mark.parametrize(
    "setting,expect",
    [("emadecay=0.9", "unknown setting"), ("lr=fast", "expected a number"), ("iterations=2.5", "expected an integer"),
     ("patch=10,20,30", "multiples of 16"), ("novalue", "not key=value")],
)
def test_bad_set(tmp_path, capsys, setting, expect):
    _bad(capsys, ["run", "--methods", "mean_teacher", "--preset", "tiny", "--out", str(tmp_path), "--set", setting], expect, tmp_path)


@pytest.mark.parametrize("labeled", ["0%", "150%", "-1", "many"])
def test_labeled_out_of_range(tmp_path, capsys, labeled):
    _bad(capsys, ["run", "--methods", "supervised", "--preset", "tiny", "--labeled", labeled, "--out", str(tmp_path)], "--labeled", tmp_path)


def test_split_with_missing_case_or_leakage(tmp_path, capsys, tiny_dataset):
    p = tiny_dataset.partition
    out = tmp_path / "out"
    bad = tmp_path / "missing.json"
    bad.write_text(json.dumps({"labeled": ["case_9999"], "unlabeled": p["train"][1:], "eval": p["eval"], "test": p["test"]}))
    _bad(capsys, ["run", "--methods", "supervised", "--preset", "tiny", "--split", str(bad), "--out", str(out)], "case_9999", out)
    leak = tmp_path / "leak.json"
    leak.write_text(json.dumps({"labeled": p["train"][:1], "unlabeled": p["train"][1:], "eval": p["eval"], "test": p["test"] + p["train"][:1]}))
    _bad(capsys, ["run", "--methods", "supervised", "--preset", "tiny", "--split", str(leak), "--out", str(out)], "leakage", out)


def _custom_dataset(tmp_path: Path, name: str, nan: bool = False, bad_label: bool = False) -> None:
    writer = DatasetWriter(tmp_path / name, name, BTCV_13)
    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(5)]
    for i, cid in enumerate(ids):
        img = rng.normal(0, 100, (16, 32, 32)).astype(np.float32)
        lab = rng.integers(0, 14, (16, 32, 32)).astype(np.uint8)
        if nan and i == 2:
            img[3, 3, 3] = np.nan
        if bad_label and i == 0:
            lab[0, 0, 0] = 20
        writer.add(cid, img, lab, (2.0, 1.0, 1.0))
    ds = writer.commit(partition={"train": ids[:3], "eval": ids[3:4], "test": ids[4:]})
    DATASETS.add(name, lambda **kw: Dataset.open(ds.root), replace=True)


def test_nan_image_is_refused(tmp_path, capsys):
    _custom_dataset(tmp_path, "nan_ds", nan=True)
    out = tmp_path / "out"
    err = _bad(capsys, ["run", "--methods", "supervised", "--dataset", "nan_ds", "--preset", "tiny", "--labeled", "100%",
                        "--out", str(out), "--no-progress"], "NaN", None)
    assert "c2" in err
    assert not list(out.rglob("seed_*"))


def test_label_out_of_range_is_refused(tmp_path, capsys):
    _custom_dataset(tmp_path, "badlab_ds", bad_label=True)
    out = tmp_path / "out"
    _bad(capsys, ["run", "--methods", "supervised", "--dataset", "badlab_ds", "--preset", "tiny", "--labeled", "100%",
                  "--out", str(out), "--no-progress"], "holds value 20", None)
    assert not list(out.rglob("seed_*"))


def _nifti(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> None:
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))


def test_evaluate_folder(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:5, 2:5, 2:5] = 6
    _nifti(gt / "a.nii.gz", lab)
    _nifti(pred / "a.nii.gz", lab)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 0
    m = json.loads((pred / "metrics.json").read_text())
    assert m["per_organ"]["liver"]["dice"] == 1.0 and m["per_organ"]["liver"]["hd95"] == 0.0
    assert m["per_organ"]["spleen"]["dice"] is None  # absent on both sides -> NaN -> null
    # DHC's released scale bug one flag away, on the dhc protocol only
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--protocol", "dhc", "--dataset", "synapse",
                 "--released-empty-dice", "--out", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["per_organ"]["spleen"]["dice"] == pytest.approx(0.01)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--released-empty-dice", "--out", str(tmp_path / "x.json")]) == 2
    assert "applies to the dhc protocol" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_evaluate_shape_mismatch_and_bad_labels(tmp_path, capsys):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    _nifti(gt / "a.nii.gz", np.zeros((8, 8, 8), np.uint8))
    _nifti(pred / "a.nii.gz", np.zeros((8, 8, 9), np.uint8))
    _bad(capsys, ["evaluate", "--pred", str(pred), "--gt", str(gt)], "differs from label shape", pred)
    _nifti(pred / "a.nii.gz", np.full((8, 8, 8), 40, np.uint8))
    _bad(capsys, ["evaluate", "--pred", str(pred), "--gt", str(gt)], "outside 0..13", pred)
    (pred / "a.nii.gz").write_bytes(b"\x1f\x8b garbage")
    _bad(capsys, ["evaluate", "--pred", str(pred), "--gt", str(gt)], "not a readable NIfTI", pred)


def test_perf_memory_command(tmp_path):
    """`python -m bench perf --memory`: one fresh process per method; a method that cannot run
    at the preset is reported as such (exit 1), not measured as zero."""
    import json

    from bench.cli import main

    rc = main(["perf", "--memory", "--methods", "mean_teacher,tak", "--preset", "tiny", "--device", "cpu",
               "--out", str(tmp_path / "mem.json")])
    rows = json.loads((tmp_path / "mem.json").read_text())["memory"]
    assert rc == 0
    assert [r["method"] for r in rows] == ["mean_teacher", "tak"]
    assert all(r["peak_memory_mb"] > 0 and r["batch"] == [2, 2] and r["patch"] == [32, 32, 64] for r in rows)
    # a method that cannot run (here: under an address-space cap too small to import torch) is an error row
    rc = main(["perf", "--memory", "--methods", "mean_teacher", "--preset", "tiny", "--device", "cpu", "--memory-limit-gb", "0.05",
               "--out", str(tmp_path / "mem2.json")])
    rows = json.loads((tmp_path / "mem2.json").read_text())["memory"]
    assert rc == 1 and "error" in rows[0] and "peak_memory_mb" not in rows[0]


def test_untrained_runs_are_called_out():
    from types import SimpleNamespace as R  # the fields of a MetricsRecord the notes read

    from bench.cli import untrained_notes

    results = [R(method="tak", seed=0, val_dice=0.012, checkpoint_step=200),
               R(method="dhc", seed=0, val_dice=0.6, checkpoint_step=300),
               R(method="fully", seed=0, val_dice=None, checkpoint_step=None)]
    notes = untrained_notes(results, "demo")
    assert len(notes) == 1 and notes[0].startswith("note: tak seed 0 had not started to learn (best validation Dice 1.2% at step 200")
    assert "text-driven head starts almost flat" in notes[0]  # the method's own known reason
    other = untrained_notes([R(method="mean_teacher", seed=1, val_dice=0.0, checkpoint_step=4)], "tiny")
    assert len(other) == 1 and other[0].endswith("(--preset quick, or --iterations N)")  # no reason known


def test_perf_memory_cap_reports_out_of_memory(tmp_path):
    """--memory-limit-gb: a method beyond the cap is reported as such, never OOM-killed."""
    import json

    from bench.cli import main

    rc = main(["perf", "--memory", "--methods", "mean_teacher", "--preset", "tiny", "--device", "cpu",
               "--memory-limit-gb", "0.5", "--out", str(tmp_path / "mem.json")])
    row = json.loads((tmp_path / "mem.json").read_text())["memory"][0]
    assert rc == 1 and row["error"].startswith("needs more than the 0.5 GB address-space cap")
