"""Experiment trackers (bench/trackers.py): TensorBoard event files read back with TensorBoard's
own reader, the MLflow store with ``MlflowClient`` (local SQLite, no server); live tracking and
``bench track`` rebuilding the same view from a run's records; a resumed run continues its
MLflow run; bad input refused in one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.cli import main
from bench.core.errors import UserError
from bench.trackers import final_metrics, flatten, log_metrics, parse_trackers, run_title

pytest.importorskip("tensorboard", reason="the track extra: pip install -e '.[track]'")
pytest.importorskip("mlflow", reason="the track extra: pip install -e '.[track]'")

RUN = ["run", "--methods", "supervised", "--preset", "tiny", "--set", "iterations=4", "--set", "val_every=2",
       "--set", "log_every=1", "--no-progress"]


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def _same(events, pairs, rel=1e-6):
    """TensorBoard scalars (float32) equal to (step, value) pairs of log.jsonl."""
    assert [e.step for e in events] == [p[0] for p in pairs]
    assert [e.value for e in events] == pytest.approx([p[1] for p in pairs], rel=rel, abs=1e-7)
    return True


def _run_dir(out):
    (m,) = out.rglob("metrics.json")
    return m.parent


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def _mlflow(out):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, runs


# -- the mapping, by hand ---------------------------------------------------------------------
def test_log_line_to_metrics_by_hand():
    step, values = log_metrics({"step": 9, "lr": 0.1, "loss": 1.5, "s_iter": 0.2, "best": True})
    assert step == 9 and values == {"lr": 0.1, "loss": 1.5, "s_iter": 0.2}
    # validation lines are written at the step index (steps trained - 1) and logged at steps trained
    step, values = log_metrics({"step": 9, "val_dice": 0.25, "val_dice/liver": 0.5, "val_dice/adrenal": float("nan"), "best": False})
    assert step == 10 and values == {"val_dice": 0.25, "val_dice/liver": 0.5}


def test_final_metrics_and_flat_config_by_hand():
    metrics = {"per_organ": {"liver": {"dice": 0.5}, "spleen": {"dice": None}}, "mean": {"dice": 0.25, "nsd": 0.5, "hd95": 7.0}}
    timing = {"train_s_per_iter": {"median": 0.3}, "infer_s_per_case": {"median": 1.5}, "peak_memory_mb": 100.0}
    assert final_metrics(metrics, timing) == {"test/dice/liver": 50.0, "test/dice": 25.0, "test/nsd": 50.0, "test/hd95": 7.0,
                                              "timing/train_s_per_iter": 0.3, "timing/infer_s_per_case": 1.5,
                                              "timing/peak_memory_mb": 100.0}
    assert flatten({"a": 1, "t": {"lr": 0.1, "patch": [1, 2], "amp": False, "x": None}}) == {
        "a": "1", "t.lr": "0.1", "t.patch": "[1, 2]", "t.amp": "false", "t.x": "null"}
    assert run_title({"method": "tak", "prompts": "anatomy", "text_encoder": "minilm", "seed": 2}) == "tak [anatomy x minilm] seed 2"
    assert run_title({"method": "dhc", "prompts": None, "seed": 0}) == "dhc seed 0"


# -- bad input ----------------------------------------------------------------------------------
def test_unknown_tracker_is_one_line(tmp_path, capsys):
    assert main(RUN + ["--tracker", "wandb2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--tracker wandb2: unknown tracker; choose from tensorboard, mlflow" in err
    assert not (tmp_path / "r").exists()


def test_missing_tracker_package_is_refused_before_data(monkeypatch, tmp_path, capsys):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "mlflow":
            raise ImportError("no mlflow")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(UserError, match=r"--tracker mlflow: the mlflow package is not installed; pip install"):
        parse_trackers("tensorboard,mlflow")
    assert main(RUN + ["--tracker", "mlflow", "--out", str(tmp_path / "r")]) == 2
    assert "the mlflow package is not installed" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_track_without_runs_is_one_line(tmp_path, capsys):
    assert main(["track", "--runs", str(tmp_path), "--to", "mlflow"]) == 2
    assert "no finished run (no metrics.json) under it" in capsys.readouterr().err


# -- live and rebuilt ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny run tracked live in TensorBoard and MLflow."""
    out = tmp_path_factory.mktemp("tracked")
    assert main(RUN + ["--tracker", "tensorboard,mlflow", "--out", str(out)]) == 0
    return out


def test_tensorboard_events_hold_the_log_the_overlays_and_the_test(tracked):
    run_dir = _run_dir(tracked)
    lines, ea = _lines(run_dir), _scalars(run_dir)
    tags = ea.Tags()
    losses = [(r["step"], r["loss"]) for r in lines if "loss" in r]
    assert _same(ea.Scalars("loss"), losses)
    vals = [(r["step"] + 1, r["val_dice"]) for r in lines if "val_dice" in r]
    assert len(vals) == 2 and _same(ea.Scalars("val_dice"), vals)
    organs = json.loads((run_dir / "metrics.json").read_text())["organs"]
    assert {f"val_dice/{o}" for o in organs} & set(tags["scalars"])  # per organ (an organ never predicted is NaN, left out)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert ea.Scalars("test/dice")[0].value == pytest.approx(100 * metrics["mean"]["dice"], rel=1e-6)
    assert "timing/train_s_per_iter" in tags["scalars"]
    images = ea.Images("val_overlay")
    assert [i.step for i in images] == [2, 4] and images[0].width == 3 * images[0].height + 4  # image | label | prediction
    assert any(t.startswith("config") for t in tags["tensors"])


def test_mlflow_store_holds_the_run(tracked):
    run_dir = _run_dir(tracked)
    client, runs = _mlflow(tracked)
    (run,) = runs
    assert run.info.status == "FINISHED" and run.info.run_name == "supervised seed 0"
    assert run.data.tags["bench.run_dir"] == str(run_dir.resolve()) and run.data.tags["bench.method"] == "supervised"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert run.data.params["train.lr"] == str(cfg["train"]["lr"]) and run.data.params["config_hash"] == cfg["config_hash"]
    lines = _lines(run_dir)
    hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert hist == [(r["step"], r["loss"]) for r in lines if "loss" in r]  # exact: SQLite keeps doubles
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val_dice")] == [r["val_dice"] for r in lines if "val_dice" in r]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["test/dice"] == pytest.approx(100 * metrics["mean"]["dice"])
    pngs = [a.path for a in client.list_artifacts(run.info.run_id, "val_overlay")]
    assert pngs == ["val_overlay/step_000002.png", "val_overlay/step_000004.png"]
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"] == run.info.run_id


def test_bench_track_rebuilds_the_same_view_from_records(tmp_path, tracked, capsys):
    out = tmp_path / "plain"
    assert main(RUN + ["--out", str(out)]) == 0  # trained without a tracker
    run_dir = _run_dir(out)
    assert main(["track", "--runs", str(out), "--to", "mlflow"]) == 0
    assert "1 run(s) added" in capsys.readouterr().out
    client, (run,) = _mlflow(out)
    live_client, (live,) = _mlflow(tracked)
    assert sorted(run.data.params) == sorted(live.data.params) and run.info.status == "FINISHED"
    lines = _lines(run_dir)
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")) == [
        (r["step"], r["loss"]) for r in lines if "loss" in r]
    assert set(run.data.metrics) == set(live.data.metrics)  # the same config and seed: the same curves and results
    assert main(["track", "--runs", str(out), "--to", "mlflow"]) == 0  # again: nothing added
    assert "already in mlflow, skipped" in capsys.readouterr().out and len(_mlflow(out)[1]) == 1
    assert main(["track", "--runs", str(out), "--to", "tensorboard"]) == 0
    ea = _scalars(run_dir)
    assert _same(ea.Scalars("loss"), [(r["step"], r["loss"]) for r in lines if "loss" in r])
    assert "test/dice" in ea.Tags()["scalars"]


def test_a_resumed_run_continues_its_mlflow_run(tmp_path):
    from bench.runner import RunRequest, make_spec, plan
    from bench.train import run_one

    out = tmp_path / "r"
    flags = {"methods": "supervised", "preset": "tiny", "seeds": "0", "iterations": 4}
    req = RunRequest.build(flags, ["val_every=2", "log_every=1"], out=str(out), progress=False, trackers=("mlflow",))
    (r,), dataset, split = plan(req)
    import torch

    spec = make_spec(r, dataset, split, torch.device("cpu"), False, trackers=("mlflow",), results_dir=out, stop_after=2)
    assert run_one(spec) is None  # stopped after 2 steps, checkpoint written
    first = json.loads((r.dir / "trackers.json").read_text())["mlflow"]
    assert _mlflow(out)[1][0].info.status == "KILLED"  # paused: the MLflow run says so
    spec = make_spec(r, dataset, split, torch.device("cpu"), False, trackers=("mlflow",), results_dir=out)
    assert run_one(spec) is not None
    client, runs = _mlflow(out)
    assert [x.info.run_id for x in runs] == [first] and runs[0].info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(first, "loss"))
    assert steps == [0, 1, 2, 3]


def test_a_failing_tracker_warns_once_and_training_goes_on(tmp_path, capsys, monkeypatch):
    from bench import trackers

    def broken(self, values, step):
        raise RuntimeError("disk full")

    monkeypatch.setattr(trackers.TensorBoardTracker, "metrics", broken)
    out = tmp_path / "r"
    assert main(RUN + ["--tracker", "tensorboard", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: tracker tensorboard failed (RuntimeError: disk full)") == 1
    assert math.isfinite(json.loads((_run_dir(out) / "metrics.json").read_text())["mean"]["dice"])
    assert np.isfinite([r["loss"] for r in _lines(_run_dir(out)) if "loss" in r]).all()
