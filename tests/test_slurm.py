"""Executors (bench/executors.py) on a real Slurm cluster: a 2-method x 2-seed matrix as one job
array with a requeue (scontrol: SIGTERM) and a preemption signal (submitit's USR2) while it
trains, equal to the same cells run in one process; a cell of two Slurm tasks (gloo); a tuning
array of two workers; `bench status`. Plus the local executor and the bad inputs.

.ci/slurm starts a single-node cluster; CI sets BENCH_TEST_SLURM=1, which makes a missing
cluster a failure. Elsewhere the Slurm tests skip, saying how to start one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main
from tests.test_cli import _bad

SLURM_REQUIRED = os.environ.get("BENCH_TEST_SLURM") == "1"
MATRIX = ["--methods", "supervised,mean_teacher", "--seeds", "0,1", "--preset", "tiny", "--iterations", "16", "--no-progress"]
#: a time limit far from the test's minutes: submitit reads USR2 as a preemption, not a timeout
SLURM = ["--executor", "slurm", "--time", "60", "--cpus", "1"]


def _slurm_missing() -> str | None:
    """Why no Slurm cluster can take jobs here (None: one can)."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in ping.stdout:
        return f"the controller does not answer ({' '.join((ping.stdout + ping.stderr).split())[:120]})"
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    if not any(s.startswith(("idle", "mixed", "allocated")) for s in state):
        return f"no node takes jobs (sinfo: {' '.join(state) or 'no nodes'})"
    return None


@pytest.fixture
def slurm(monkeypatch):
    why = _slurm_missing()
    if why:
        if SLURM_REQUIRED:
            pytest.fail(f"BENCH_TEST_SLURM=1 but no Slurm cluster: {why}; .ci/slurm starts one")
        pytest.skip(f"no Slurm cluster ({why}); start a single-node one with .ci/slurm (root), or set BENCH_TEST_SLURM=1 to require it")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # sbatch passes this environment to the jobs


def _queue() -> dict[str, tuple[str, str]]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r"], capture_output=True, text=True, check=True).stdout
    return {i: (s, r) for i, s, r in (line.split("|") for line in out.splitlines())}


def _wait(cond, timeout: float, what: str, every: float = 0.3):
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; queue: {_queue()}")


def _steps(cell: Path) -> int:
    try:
        return sum('"loss"' in line for line in (cell / "log.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _release_when_pending(job: str) -> None:
    """A requeued job waits 2 minutes (Slurm's requeue delay, its BeginTime); start it now."""
    _wait(lambda: _queue().get(job, ("", ""))[0] == "PENDING", 60, f"job {job} to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, capture_output=True)


def _log(out: Path, job: str) -> str:
    return "".join(p.read_text() for p in sorted((out / "jobs" / job).glob("*_log.*")))


def _metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    return {k: m[k] for k in ("per_organ", "mean", "cases", "checkpoint_step", "val_dice")}


def test_matrix_array_with_requeue_and_preemption_equals_one_process(slurm, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", *MATRIX, *SLURM, "--jobs", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    jobs = {job: Path(d) for job, d in re.findall(r"job (\S+) -> (\S+)", text)}
    assert len(jobs) == 4 and re.search(r"as Slurm job array \d+, at most 2 at once", text), text
    # the array's first two tasks run first (at most 2 at once): requeue one while it trains
    # (SIGTERM: it stops at a step boundary), send submitit's USR2 to the other (it checkpoints
    # and requeues itself)
    first, second = sorted(jobs, key=lambda j: int(j.split("_")[1]))[:2]
    _wait(lambda: _steps(jobs[first]) >= 3 and _steps(jobs[second]) >= 3, 180, "the first two cells to train 3 steps")
    subprocess.run(["scontrol", "requeue", first], check=True, capture_output=True, timeout=30)
    # scancel delivers the signal to the job's step, then keeps retrying the job itself, which is
    # already requeueing ("can not be altered now"): it is not waited for
    sig = subprocess.Popen(["scancel", "--signal=USR2", second], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for job in (first, second):
            _release_when_pending(job)
    finally:
        sig.kill()
        sig.wait()
    assert main(["status", "--runs", str(out)]) == 0
    during = capsys.readouterr().out
    assert re.search(r"^(queued|running) ", during, re.M), during

    _wait(lambda: all((d / "metrics.json").exists() for d in jobs.values()) and not set(jobs) & set(_queue()), 240,
          "all four cells to finish")
    assert main(["status", "--runs", str(out)]) == 0
    after = capsys.readouterr().out
    assert after.strip().splitlines()[-1] == "4 done", after

    resumed = {}
    for job, how in ((first, "SIGTERM"), (second, "SIGUSR2")):
        log = _log(out, job)
        stop = re.search(rf"stopped by {how} after step (\d+); checkpoint written", log)
        start = re.search(r"resumed from its checkpoint at step (\d+) of 16", log)
        assert stop and start and int(stop.group(1)) == int(start.group(1)) > 0, log
        resumed[job] = int(start.group(1))
    assert "Requeued job" in _log(out, second)  # submitit's handler requeued it

    ref = tmp_path / "ref"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the jobs (OMP_NUM_THREADS=1): reductions in the same order, the same trajectories
    try:
        assert main(["run", *MATRIX, "--out", str(ref)]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    for d in jobs.values():
        rel = d.relative_to(out)
        assert _metrics(d / "metrics.json") == _metrics(ref / rel / "metrics.json"), rel
    with capsys.disabled():
        print(f"\n{text.strip()}\nrequeued {first} (scontrol requeue, SIGTERM) and {second} (USR2, submitit requeue); "
              f"resumed at steps {resumed}; all four cells equal to one process\n{after.strip()}")


def test_a_cell_of_two_slurm_tasks(slurm, tmp_path, capsys):
    """--tasks 2: two processes of one cell join a gloo process group from Slurm's environment."""
    out = tmp_path / "runs"
    assert main(["run", "--methods", "mean_teacher", "--preset", "tiny", "--no-progress", *SLURM, "--tasks", "2",
                 "--out", str(out)]) == 0
    (job,) = re.findall(r"job (\S+) ->", capsys.readouterr().out)
    cfg = _wait(lambda: list(out.rglob("metrics.json")) and job not in _queue() and next(out.rglob("config.json")), 180,
                "the two-task cell")
    assert json.loads(cfg.read_text())["world_size"] == 2
    log = _log(out, job)
    assert "global_rank=0(2)" in log and "global_rank=1(2)" in log, log


def test_tuning_array_workers_draw_distinct_trials(slurm, tmp_path, capsys):
    import optuna

    storage = f"journal:{tmp_path / 'study.log'}"
    assert main(["tune", "--method", "supervised", "--trials", "2", "--storage", storage, "--study-name", "arr",
                 "--out", str(tmp_path / "runs"), "--preset", "tiny", "--budget-iterations", "2", "--set", "val_every=1",
                 *SLURM, "--workers", "2"]) == 0
    text = capsys.readouterr().out
    jobs = re.search(r"jobs (\S+), (\S+);", text).groups()
    _wait(lambda: not set(jobs) & set(_queue()), 240, "the two tuning workers")
    from bench.core.storage import make_storage

    study = optuna.load_study(study_name="arr", storage=make_storage(storage, 60))
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    params = [t.params["lr"] for t in done]
    assert len(done) == 4 and len(set(params)) == 4, params
    with capsys.disabled():
        print(f"\n{text.strip()}\ntrials: {[(t.number, t.params) for t in done]}")


def test_local_executor_runs_cells_in_subprocesses(tmp_path, capsys, monkeypatch):
    # what this process' environment says is not what a job gets: the thread rule splits the
    # cores between the jobs (or keeps the thread count the user set before the suite started)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    out = tmp_path / "runs"
    argv = ["run", "--methods", "supervised", "--seeds", "0,1", "--preset", "tiny", "--iterations", "2", "--no-progress",
            "--executor", "local", "--jobs", "2", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| supervised" in text and len(list(out.rglob("metrics.json"))) == 2, text
    pids = {json.loads(p.read_text())["job_id"] for p in out.rglob("job.json")}
    assert len(pids) == 2 and str(os.getpid()) not in pids
    from bench.core.threads import plan_threads

    threads = {json.loads(p.read_text())["threads"]["threads"] for p in out.rglob("timing.json")}
    assert threads == {plan_threads(share=2).threads} != {7}, threads
    assert main(["status", "--runs", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("2 done")
    assert main(argv) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 2


@pytest.mark.parametrize("extra, expect", [
    (["--executor", "nope"], "argument --executor: invalid choice: 'nope'"),
    (["--executor", "slurm", "--mem", "lots"], "--mem lots: write a size as sbatch takes it"),
    (["--tasks", "2"], "--tasks 2 / --nodes 1 start processes through an executor"),
    (["--executor", "slurm", "--shard", "1/2"], "drop --shard"),
])
def test_bad_executor_input_is_one_line(tmp_path, capsys, extra, expect):
    out = tmp_path / "runs"
    _bad(capsys, ["run", "--methods", "supervised", "--preset", "tiny", "--out", str(out), *extra], expect, out)


def test_executor_table_of_a_config_file_is_checked(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('methods = ["supervised"]\n[executor]\nname = "slurm"\npartiton = "gpu"\n')
    _bad(capsys, ["run", "--config", str(cfg), "--out", str(tmp_path / "runs")], "[executor]: unknown key 'partiton'", tmp_path / "runs")


def test_sbatch_absent_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "runs"
    _bad(capsys, ["run", "--methods", "supervised", "--preset", "tiny", "--executor", "slurm", "--out", str(out)],
         "sbatch is not on PATH", out)
    assert not out.exists()


def test_unknown_partition_and_sqlite_tuning_array_are_refused(slurm, tmp_path, capsys):
    out = tmp_path / "runs"
    _bad(capsys, ["run", "--methods", "supervised", "--preset", "tiny", "--executor", "slurm", "--partition", "nope",
                  "--out", str(out)], "--partition nope: this cluster has no such partition; choose one of", out)
    _bad(capsys, ["tune", "--method", "supervised", "--preset", "tiny", "--executor", "slurm", "--workers", "2",
                  "--out", str(out)], "need one storage they all reach", out)
    assert not out.exists()


@pytest.mark.parametrize("cells, device, cores, extra, env, expect", [
    (3, "cpu", 2, {}, {}, "local"),
    (2, "cpu", 16, {"jobs": 4}, {}, "local"),
    (1, "cpu", 2, {}, {}, "process"),          # one cell: nothing to run side by side
    (3, "cuda", 2, {}, {}, "process"),         # one GPU: not measured faster shared
    (3, "cpu", 1, {}, {}, "process"),          # one core
    (3, "cpu", 2, {"tasks": 2}, {}, "process"),  # a multi-process cell (check_executor refuses it in this process)
    (3, "cpu", 2, {}, {"WORLD_SIZE": "2"}, "process"),  # under torchrun
])
def test_auto_executor_rule(monkeypatch, cells, device, cores, extra, env, expect):
    from bench import executors

    monkeypatch.setattr(executors, "usable_cores", lambda: (cores, "affinity"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    lines = []
    opts = executors.choose_auto(executors.ExecutorOptions(**extra), cells, device, log=lines.append)
    assert opts.name == expect and bool(lines) == (expect == "local")
    assert executors.choose_auto(executors.ExecutorOptions(name="process"), cells, device).name == "process"
    assert executors.choose_auto(executors.ExecutorOptions(), 3, "cpu", shard=True).name == "process"


def test_auto_is_the_default_and_runs_cells_side_by_side(tmp_path, capsys, monkeypatch):
    from bench.core.threads import usable_cores

    if usable_cores()[0] < 2:
        pytest.skip("auto runs cells side by side only with two or more usable cores")
    monkeypatch.delenv("BENCH_EXECUTOR")
    out = tmp_path / "runs"
    assert main(["run", "--methods", "supervised", "--seeds", "0,1", "--preset", "tiny", "--iterations", "2", "--no-progress",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "running the 2 cells side by side, 2 at a time in local subprocesses" in text
    assert text.count("finished:\n    mean Dice") == 2 and "| supervised" in text
    assert len(list(out.rglob("job.json"))) == 2
    import sys

    commands = {tuple(json.loads(p.read_text())["command"]) for p in out.rglob("config.json")}
    assert commands == {tuple(sys.argv)}  # the user's command, not submitit's
    monkeypatch.setenv("BENCH_EXECUTOR", "nope")
    assert main(["run", "--methods", "supervised", "--out", str(out)]) == 2
    assert "BENCH_EXECUTOR" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_local_jobs_stop_at_a_step_with_a_checkpoint_and_resume(tmp_path, how):
    """Ctrl-C in a terminal (SIGINT to the whole process group) or SIGTERM to `bench run`: every
    local job stops at a step boundary and writes its checkpoint (none was due: ckpt_every is
    larger than the run), and no process is left; the same command again resumes there."""
    import signal
    import sys

    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "bench", "run", "--methods", "supervised", "--seeds", "0,1", "--preset", "tiny",
            "--iterations", "150", "--set", "ckpt_every=5000", "--set", "val_every=5000", "--set", "log_every=1",
            "--executor", "local", "--jobs", "2", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def steps(run):
        log = run / "log.jsonl"
        return len(log.read_text().splitlines()) if log.exists() else 0

    deadline = time.time() + 240
    while time.time() < deadline:
        runs = sorted(p.parent for p in out.rglob("job.json"))
        if len(runs) == 2 and all(steps(r) >= 3 for r in runs):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the two jobs did not start training: " + (proc.communicate()[0] or "")[-2000:])
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == (130 if how == "ctrl-c" else 143), text[-2000:]
    logs = "".join(p.read_text() for p in (out / "jobs").rglob("*_log.*"))
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    stopped = sorted(int(n) for n in re.findall(rf"stopped by {name} after step (\d+); checkpoint written", logs))
    assert len(stopped) == 2 and stopped[0] < 150, logs[-3000:]
    assert all((r / "checkpoint.pt").exists() and not (r / "metrics.json").exists() for r in runs)
    left = subprocess.run(["pgrep", "-f", str(out / "jobs")], capture_output=True, text=True).stdout.split()
    assert not left, f"processes left: {left}"
    if how == "sigterm":
        return
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    logs = "".join(p.read_text() for p in (out / "jobs").rglob("*_log.out"))
    resumed = sorted(int(n) for n in re.findall(r"resumed from its checkpoint at step (\d+) of 150", logs))
    assert resumed == stopped and len(list(out.rglob("metrics.json"))) == 2, logs[-3000:]
