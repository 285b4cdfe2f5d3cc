"""Optuna studies: SQLite and PostgreSQL storages with two worker processes in one study,
defaults as trial 0, eval-only objective, export to a run config, and the bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from tests.test_cli import _bad

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--budget-iterations", "2", "--set", "val_every=1"]
PG_URL = os.environ.get("BENCH_TEST_POSTGRES")


def _worker(storage: str, out: Path, study: str, trials: int = 1, method: str = "supervised"):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench", "tune", "--method", method, "--trials", str(trials), "--storage", storage,
                             "--study-name", study, "--out", str(out), *TINY], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _two_workers(storage: str, out: Path, study: str):
    """Two worker processes, two trials each, started together on one study: four finished
    trials (a pruned trial counts as finished), no two with the same parameters."""
    import optuna

    procs = [_worker(storage, out, study, trials=2) for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    loaded = optuna.load_study(study_name=study, storage=storage)
    finished = [t for t in loaded.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 4 and len({t.number for t in finished}) == 4
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == 4, params
    # each trial trained in its own folder (the folder is named by the parameters)
    assert len({t.user_attrs["run_dir"] for t in finished if "run_dir" in t.user_attrs}) == len(
        [t for t in finished if "run_dir" in t.user_attrs])
    assert loaded.user_attrs["method"] == "supervised"
    # trial 0 ran the defaults (the quick/tiny preset's learning rate)
    assert loaded.trials[0].params == {"lr": pytest.approx(0.01)}
    return loaded


def test_two_workers_share_one_sqlite_study(tmp_path):
    _two_workers(f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "runs", "sq")


def test_two_workers_share_one_postgresql_study(tmp_path):
    if not PG_URL:
        if os.environ.get("CI") == "true":
            pytest.fail("BENCH_TEST_POSTGRES is not set; .ci/run starts PostgreSQL and sets it")
        pytest.skip("no PostgreSQL server (set BENCH_TEST_POSTGRES=postgresql://user:pw@127.0.0.1/db)")
    import uuid

    _two_workers(PG_URL, tmp_path / "runs", f"pg-{uuid.uuid4().hex[:8]}")


def test_journal_storage_export_and_objective_uses_eval_only(tmp_path, capsys):
    out = tmp_path / "runs"
    best = tmp_path / "best.toml"
    assert main(["tune", "--method", "mean_teacher", "--trials", "2", "--storage", f"journal:{tmp_path / 'j.log'}",
                 "--out", str(out), "--export", str(best), *TINY]) == 0
    text = best.read_text()
    assert "[train]\nlr = " in text and "[method.mean_teacher]" in text and "ema_decay" in text
    # no test-split evaluation happened: trial folders hold checkpoints and logs, never metrics.json
    assert list(out.rglob("checkpoint.pt")) and not list(out.rglob("metrics.json"))
    # the exported file is a valid run config
    from bench.config import load_config_file
    from bench.runner import RunRequest, resolve

    cfg = load_config_file(best)
    (st,) = resolve(RunRequest.build({}, config=str(best)))
    assert st.train.lr == cfg["train"]["lr"] and st.hparams["ema_decay"] == cfg["method"]["mean_teacher"]["ema_decay"]


def test_study_name_reused_for_another_method(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    assert main(["tune", "--method", "supervised", "--trials", "1", "--storage", storage, "--study-name", "s", "--out", str(tmp_path), *TINY]) == 0
    _bad(capsys, ["tune", "--method", "mean_teacher", "--trials", "1", "--storage", storage, "--study-name", "s", "--out", str(tmp_path), *TINY],
         "belongs to method 'supervised'")


@pytest.mark.parametrize("change, expect", [
    (["--labeled", "50%"], "was run with labeled 0.1, this worker with 0.5"),
    (["--set", "labeled_bs=1"], "was run with train.labeled_bs=2, this worker has train.labeled_bs=1"),
    (["--dataset", "phantom_amos"], "was run with dataset 'phantom', this worker with 'phantom_amos'"),
    (["--budget-iterations", "3"], "trains 2 iterations per trial, not 3"),
])
def test_a_study_is_joined_only_with_what_defines_it(tmp_path, capsys, change, expect):
    """Issue #31: a 50 % trial must not become the best trial of a 10 % study."""
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    common = ["tune", "--method", "supervised", "--trials", "1", "--storage", storage, "--study-name", "s", "--out", str(tmp_path)]
    assert main([*common, *TINY]) == 0
    tiny = list(TINY)
    if change[0] == "--budget-iterations":
        tiny[tiny.index("--budget-iterations") + 1] = change[1]
        change = []
    _bad(capsys, [*common, *tiny, *change], expect)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_storage_is_refused(tmp_path, capsys, url):
    _bad(capsys, ["tune", "--method", "supervised", "--storage", url, "--out", str(tmp_path), *TINY], "keeps the study in memory")


def test_exported_toml_is_valid_for_any_split_name(tmp_path):
    import tomllib
    from types import SimpleNamespace

    from bench.tune import export_config

    opts = SimpleNamespace(dataset="phantom", protocol="default", split="/data/splits/é\udcff\"x\\.json", labeled=0.1, preset="tiny")
    export_config(str(tmp_path / "b.toml"), "mean_teacher", {"lr": 0.02, "ema_decay": 0.95}, opts, "s\u00e9", 0.5)
    doc = tomllib.loads((tmp_path / "b.toml").read_text())
    assert doc["split"].startswith("/data/splits/é") and doc["train"]["lr"] == 0.02 and doc["method"]["mean_teacher"]["ema_decay"] == 0.95


def test_unreachable_storage(tmp_path, capsys):
    err = _bad(capsys, ["tune", "--method", "supervised", "--storage", "postgresql://u:secret@127.0.0.1:1/none", *TINY], "is not reachable")
    assert "secret" not in err


def test_search_space_with_an_invalid_value(tmp_path, capsys, monkeypatch):
    from bench.core.registry import METHODS

    cls = METHODS.get("supervised")
    monkeypatch.setattr(cls, "search_space", staticmethod(lambda trial: {"lr": trial.suggest_float("lr", 0.01, 0.1), "no_such_knob": 1}))
    _bad(capsys, ["tune", "--method", "supervised", "--trials", "1", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--out", str(tmp_path), *TINY],
         "no_such_knob")


def test_report_study_figures(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["tune", "--method", "supervised", "--trials", "2", "--out", str(out), "--study-name", "st", *TINY]) == 0
    assert main(["report", "--runs", str(out), "--study", "st", "--out", str(tmp_path / "rep")]) == 0
    figs = {p.name for p in (tmp_path / "rep" / "figures").iterdir()}
    assert {"study_st_history.png", "study_st_importance.pdf"} <= figs
    assert "data:image/png;base64," in (tmp_path / "rep" / "report.html").read_text()
    capsys.readouterr()
    _bad(capsys, ["report", "--runs", str(out), "--study", "nope"], "--study nope: no such study")


def test_trial_seeded_sampler_is_reproducible_and_workers_draw_distinct_points():
    """One worker: the same study seed gives the same parameters. Two workers on one storage with
    the same seed (each its own sampler object, as two processes have): all trials distinct.
    The sampler it replaces - one TPESampler(seed) per worker - draws the same points."""
    import optuna

    from bench.tune import TrialSeededSampler

    def objective(trial):
        return trial.suggest_float("x", 0.0, 1.0) + trial.suggest_float("y", 1e-3, 1.0, log=True)

    def one_worker():
        study = optuna.create_study(sampler=TrialSeededSampler(7, first={"x": 0.5, "y": 0.1}))
        study.optimize(objective, n_trials=4)
        return [t.params for t in study.trials]

    first = one_worker()
    assert first == one_worker() and first[0] == {"x": 0.5, "y": 0.1}

    def interleaved(make_sampler):
        storage = optuna.storages.InMemoryStorage()
        name = optuna.create_study(storage=storage).study_name
        workers = [optuna.load_study(study_name=name, storage=storage, sampler=make_sampler()) for _ in range(2)]
        for _ in range(3):
            trials = [w.ask() for w in workers]  # both ask before either tells, as parallel processes do
            for w, t in zip(workers, trials):
                w.tell(t, objective(t))
        return [tuple(sorted(t.params.items())) for t in workers[0].trials]

    ours = interleaved(lambda: TrialSeededSampler(7))
    assert len(set(ours)) == len(ours) == 6
    old = interleaved(lambda: optuna.samplers.TPESampler(seed=7))
    assert len(set(old)) < len(old)  # the defect this sampler fixes
