"""Executors: where the cells of a run matrix (and tuning workers) run, through submitit.

* ``process`` (default): this process, one cell after another (``--shard`` and claims let
  several processes share a results folder).
* ``local``: each cell in its own subprocess (submitit's LocalExecutor), at most ``--jobs`` at a
  time; the command waits for them and prints the table.
* ``slurm``: one Slurm job per cell, all cells of one submission in one job array (at most
  ``--jobs`` running at once) with the resources of the flags / the config file's
  ``[executor]`` table; the command returns once they are submitted.
* ``debug``: submitit's DebugExecutor: the jobs run in this process (a debugger works).

Bookkeeping, under the results folder (``--out``)::

    jobs/<job id>/        submitit's files: the pickled job, <job id>_0_log.out / _log.err, result
    jobs/cells.json       every cell submitted from this folder (what ``bench status`` lists)
    <cell>/job.json       the cell's latest job: executor, job id, log files, submission time

A finished cell (metrics.json) is skipped, a cell whose job is queued or running is not
submitted again, a cell whose job ended without metrics (failed, cancelled) is submitted again
and resumes from its checkpoint. Claims (``--shard``) play no part: Slurm runs a job once.

Preemption and time limits, as submitit does them: Slurm sends USR2 (submitit's signal;
``SUBMITIT_PREEMPT_SIGNAL``) ``signal_delay_s`` seconds before the time limit (and on preemption
where the cluster sends the user's signal); the loop stops at the next step boundary, writes its
checkpoint, and submitit's handler requeues the job (``scontrol requeue``); the requeued job
resumes the cell from that checkpoint. SIGTERM (``scancel``, a requeue by an administrator,
preemption) stops the loop the same way without requeueing it (submitit itself ignores SIGTERM;
a stop at a step boundary loses less than a kill after KillWait). A cell of ``--tasks N`` runs N
processes; each joins the process group from Slurm's environment
(``submitit.helpers.TorchDistributedEnvironment``) and :mod:`bench.distributed` does the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import submitit

from bench.core.errors import UserError
from bench.core.settings import convert_field, setting
from bench.core.threads import child_env, usable_cores

EXECUTORS = ("auto", "process", "local", "slurm", "debug")
#: the environment variable that sets the executor below config files and flags (e.g. tests: process)
ENV_EXECUTOR = "BENCH_EXECUTOR"
#: Slurm job states (squeue %T) of a job that waits / runs
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESIZING", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


@dataclass
class ExecutorOptions:
    """Where and with what resources cells run: defaults < config ``[executor]`` < flags."""

    #: auto | process | local | slurm | debug; auto: local subprocesses where that is faster (a CPU
    #: of two or more cores and two or more cells, see :func:`choose_auto`), else this process
    name: Literal["auto", "process", "local", "slurm", "debug"] = "auto"
    #: cells running at once (Slurm: the array's parallelism limit; local: subprocesses); None: all
    jobs: int | None = setting(None, ge=1)
    partition: str | None = setting(None, what="a partition name")
    #: time limit per job, in minutes
    time: int = setting(24 * 60, ge=1)
    #: GPUs per task (a cell of --tasks N asks for N x gpus on its node)
    gpus: int = setting(0, ge=0)
    #: CPUs per task; None: the cluster's default
    cpus: int | None = setting(None, ge=1)
    #: memory per node, as sbatch --mem writes it: 16G, 4000M
    mem: str | None = setting(None, what="a memory size such as 16G")
    #: processes per cell (one per GPU for multi-GPU runs), on each node
    tasks: int = setting(1, ge=1)
    nodes: int = setting(1, ge=1)
    account: str | None = setting(None, what="an account name")
    qos: str | None = setting(None, what="a QoS name")
    #: any further sbatch parameters, e.g. {constraint = "a100", "mail-type" = "END"}
    sbatch: dict[str, Any] = setting(default_factory=dict, what="a table of sbatch parameters")
    #: shell lines run before the job starts Python (e.g. "module load cuda")
    setup: tuple[str, ...] = setting((), what="a list of shell lines")
    #: seconds between submitit's USR2 and the time limit
    signal_delay_s: int = setting(90, ge=1)


def executor_options(layers: list, flags: dict[str, Any]) -> ExecutorOptions:
    """The executor options of the config files' ``[executor]`` tables (``layers``) and the
    command line ``flags`` (None: not given; ``sbatch``: ``KEY=VALUE`` items), typed.

    Raises:
        UserError: an unknown key or a bad value, in one line naming where it came from.
    """
    from bench.config import parse_set

    names = [f.name for f in dataclasses.fields(ExecutorOptions)]
    values: dict[str, Any] = {}
    if os.environ.get(ENV_EXECUTOR, "").strip():
        values["name"] = convert_field(ENV_EXECUTOR, ExecutorOptions, "name", os.environ[ENV_EXECUTOR].strip())
    for layer in layers:
        for k, v in getattr(layer, "executor", {}).items():
            if k not in names:
                raise UserError(f"{layer.origin} [executor]: unknown key '{k}'; known: {', '.join(names)}")
            values[k] = convert_field(f"{layer.origin} [executor]", ExecutorOptions, k, v)
    for k, v in flags.items():
        if v is None or (k == "sbatch" and not v):
            continue
        if k == "sbatch":
            v = {**values.get("sbatch", {}), **parse_set(v, flag="--sbatch")}
        values[k] = convert_field(f"--{'executor' if k == 'name' else k}", ExecutorOptions, k, v)
    opts = ExecutorOptions(**values)
    if opts.mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", opts.mem.strip(), re.IGNORECASE):
        raise UserError(f"--mem {opts.mem}: write a size as sbatch takes it, e.g. 16G or 4000M")
    return opts


def choose_auto(opts: ExecutorOptions, cells: int, device_type: str, shard: bool = False, log=None) -> ExecutorOptions:
    """``auto`` -> ``local`` or ``process``. Local subprocesses, each with its share of the cores
    (the thread rule), where that was measured faster (the README's main command on 2 cores:
    7 min 02 s against 8 min 13 s in one process, docs/performance.md): training on the CPU, two
    or more cells, two or more usable cores, one process per cell, no ``--shard`` and not under
    torchrun. Elsewhere (a GPU, one cell, one core) cells run one after another in this process.
    Other names are returned unchanged."""
    if opts.name != "auto":
        return opts
    cores = usable_cores()[0]
    local = (device_type == "cpu" and cells >= 2 and cores >= 2 and opts.tasks == 1 and opts.nodes == 1 and not shard
             and "WORLD_SIZE" not in os.environ)
    if local and log is not None:
        jobs = opts.jobs or min(cells, cores)
        log(f"running the {cells} cells side by side, {jobs} at a time in local subprocesses of "
            f"{max(1, cores // jobs)} thread(s) each (--executor process: one after another in this process)")
    return dataclasses.replace(opts, name="local" if local else "process")


def check_executor(opts: ExecutorOptions) -> None:
    """Refuse what cannot be submitted, before anything is written or submitted: a missing
    ``sbatch``, an unreachable controller, a partition the cluster does not have (or none where
    the cluster has no default partition), several tasks in this process.

    Raises:
        UserError: one line naming the problem and the fix.
    """
    if opts.name == "process" and (opts.tasks > 1 or opts.nodes > 1):
        raise UserError(f"--tasks {opts.tasks} / --nodes {opts.nodes} start processes through an executor; add --executor slurm "
                        f"(or local), or start this command with torchrun --nproc_per_node={opts.tasks}")
    if opts.name != "slurm":
        return
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm: sbatch is not on PATH (no Slurm client on this machine); run on the cluster's "
                        "login node, or use --executor local")
    parts = slurm_partitions()
    default = [p for p, d in parts.items() if d]
    if opts.partition is not None and opts.partition not in parts:
        raise UserError(f"--partition {opts.partition}: this cluster has no such partition; choose one of {', '.join(parts) or 'none'} "
                        f"(sinfo lists them)")
    if opts.partition is None and not default:
        raise UserError(f"--executor slurm: this cluster has no default partition; give --partition (one of {', '.join(parts)})")


def slurm_partitions() -> dict[str, bool]:
    """The cluster's partitions (``sinfo``), each with whether it is the default.

    Raises:
        UserError: sinfo missing or failing (no controller).
    """
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError("--executor slurm: sinfo is not on PATH; run on the cluster's login node")
    except subprocess.TimeoutExpired:
        raise UserError("--executor slurm: sinfo did not answer in 60 s; is the Slurm controller up (scontrol ping)?")
    if out.returncode != 0:
        raise UserError(f"--executor slurm: sinfo failed ({' '.join(out.stderr.split())[:160]}); is the Slurm controller up "
                        f"(scontrol ping)?")
    parts: dict[str, bool] = {}
    for line in out.stdout.split():
        parts[line.rstrip("*")] = parts.get(line.rstrip("*"), False) or line.endswith("*")
    return parts


def make_executor(opts: ExecutorOptions, folder: Path, name: str = "bench"):
    """The submitit executor of ``opts``, writing its files under ``folder/<job id>/``."""
    folder = Path(folder) / "%j"
    if opts.name == "debug":
        return submitit.DebugExecutor(folder=folder)
    if opts.name == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=opts.time, tasks_per_node=opts.tasks, nodes=1)
        return ex
    ex = submitit.SlurmExecutor(folder=folder)
    params = {"job_name": name, "partition": opts.partition, "time": opts.time, "nodes": opts.nodes,
              "ntasks_per_node": opts.tasks, "cpus_per_task": opts.cpus, "gpus_per_node": opts.gpus * opts.tasks or None,
              "mem": opts.mem, "account": opts.account, "qos": opts.qos, "signal_delay_s": opts.signal_delay_s,
              "additional_parameters": {k: v for k, v in opts.sbatch.items()} or None, "setup": list(opts.setup) or None,
              "array_parallelism": opts.jobs or 256}
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


# -- in the job ----------------------------------------------------------------------------
def _log(text: str) -> None:
    print(text, flush=True)


def _job_start() -> tuple[int, ...]:
    """In a job: the process group from the scheduler's environment (a job of several tasks)
    and the signals that stop training (SIGINT, SIGTERM, submitit's preemption signal)."""
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    _log(f"{env}")
    return signal.SIGINT, signal.SIGTERM, env._usr_sig()


def _stopped(e, usr: int):
    """After the loop stopped on a signal (its checkpoint written): on submitit's signal, hand
    over to submitit's own handler (it calls ``checkpoint`` and requeues the job, on rank 0);
    on any other signal, exit saying how to resume."""
    from bench import distributed

    if e.signum == usr:
        handler = signal.getsignal(usr)
        if callable(handler):
            handler(usr, None)  # rank 0 requeues and exits; other ranks return and end here
        if not distributed.is_main():
            return None
    print(f"error: stopped by {signal.Signals(e.signum).name}; the checkpoint is kept: submit again to resume", file=sys.stderr, flush=True)
    raise SystemExit(128 + e.signum)


class CellJob(submitit.helpers.Checkpointable):
    """One cell of a run matrix, as a job: ``bench.runner.execute`` for that cell alone, without
    claims. ``checkpoint`` (submitit's, on USR2) resubmits the same job: the cell resumes from its
    checkpoint.pt."""

    def __init__(self, req, cell: str | Path):
        self.req, self.cell = req, str(cell)

    def __call__(self) -> dict | None:
        from bench import distributed
        from bench.runner import execute
        from bench.train import Interrupted

        stop = _job_start()
        try:
            results = execute(self.req, log=_log, only={Path(self.cell)}, claims=False, stop_signals=stop)
        except Interrupted as e:
            return _stopped(e, stop[-1])
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2)
        finally:
            distributed.shutdown()
        if not results:
            return None
        m = results[0]
        return {"cell": self.cell, "method": m.method, "seed": m.seed, "mean_dice": m.mean.get("dice")}


class TuneJob(submitit.helpers.Checkpointable):
    """One worker of an Optuna study, as a job (``bench.tune.tune``); a requeued worker runs its
    ``--trials`` again (a trial it left unfinished is marked failed by the storage's heartbeat
    and retried, resuming from its checkpoint)."""

    def __init__(self, req):
        self.req = req

    def __call__(self) -> list[dict]:
        from bench.train import Interrupted
        from bench.tune import tune

        stop = _job_start()
        try:
            study = tune(dataclasses.replace(self.req, stop_signals=stop), log=_log)
        except Interrupted as e:
            return _stopped(e, stop[-1])
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2)
        return [{"number": t.number, "params": t.params, "value": t.value} for t in study.trials]


# -- bookkeeping ---------------------------------------------------------------------------
def _rel(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def record_job(cell: Path, out: Path, executor: str, job) -> dict:
    """Write ``<cell>/job.json`` for a submitted job (atomically) and return it."""
    from bench.core.store import atomic_write_text

    rec = {"executor": executor, "job_id": str(job.job_id), "host": socket.gethostname(), "submitted": time.time(),
           "stdout": _rel(job.paths.stdout, out), "stderr": _rel(job.paths.stderr, out)}
    Path(cell).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(cell) / "job.json", json.dumps(rec, indent=1))
    return rec


def read_job(cell: Path) -> dict | None:
    """The cell's latest job record (None: never submitted, or unreadable)."""
    try:
        rec = json.loads((Path(cell) / "job.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "job_id" in rec else None


def _record_cells(out: Path, runs) -> None:
    """Add the submitted cells to ``<out>/jobs/cells.json`` (what ``bench status`` lists)."""
    from bench.core.store import atomic_write_text

    path = out / "jobs" / "cells.json"
    try:
        cells = json.loads(path.read_text())
    except (OSError, ValueError):
        cells = {}
    for r in runs:
        cells[_rel(r.dir, out)] = _describe(r.method, r.seed, r.priors.prompts if r.priors and not r.priors.fixed else None,
                                            r.priors.text_encoder if r.priors and not r.priors.fixed else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(cells, indent=1, sort_keys=True))


def _describe(method: str, seed: int, prompts: str | None, encoder: str | None) -> dict:
    return {"method": method, "seed": seed, **({"prompts": prompts, "text_encoder": encoder} if prompts else {})}


def slurm_states(user: str | None = None) -> dict[str, str] | None:
    """``{job id: state}`` of this user's jobs in the Slurm queue (array tasks as ``<array>_<i>``);
    None when squeue is unavailable."""
    import getpass

    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", user or getpass.getuser(), "-o", "%i|%T"], capture_output=True,
                             text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def job_state(rec: dict | None, queue: dict[str, str] | None) -> str | None:
    """``queued`` / ``running`` for a job the scheduler still holds, None for one that ended
    (or no job), ``unknown`` when the scheduler cannot be asked."""
    if rec is None:
        return None
    if rec.get("executor") == "slurm":
        if queue is None:
            return "unknown"
        st = queue.get(rec["job_id"])
        return "queued" if st in QUEUED_STATES else "running" if st in RUNNING_STATES else None
    if rec.get("executor") == "local" and rec.get("host") == socket.gethostname():
        return "running" if rec["job_id"].isdigit() and _pid_alive(int(rec["job_id"])) else None
    return None


def last_log_line(out: Path, rec: dict) -> str:
    """The last line of a job's stderr log, else of its stdout log, that the job itself wrote."""
    for key in ("stderr", "stdout"):
        p = out / rec.get(key, "")
        try:
            lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines()
                     if ln.strip() and not ln.startswith(("srun:", "slurmstepd", "submitit "))]  # the scheduler's own lines
        except OSError:
            continue
        if lines:
            return lines[-1][:200]
    return "(no log)"


# -- submission ----------------------------------------------------------------------------
def submit_run(req, opts: ExecutorOptions, log=print) -> list:
    """Submit every unfinished cell of ``req`` that no job runs, one job per cell (one Slurm
    array), and record the jobs. Slurm: returns [] once submitted; local / debug: waits and
    returns the metrics of every finished cell of the matrix.

    Raises:
        UserError: a bad executor setting or a refused submission, before anything is submitted.
    """
    from bench import lock
    from bench.core.records import read_record
    from bench.core.store import is_finished
    from bench.runner import pick_device, plan, resolve

    check_executor(opts)
    out = Path(req.out).resolve()
    if opts.name == "slurm":  # the device is the job's; here only its spelling is checked
        if req.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", req.device):
            raise UserError(f"--device {req.device}: choose auto, cpu, cuda or cuda:N")
    else:
        pick_device(req.device)
    req = dataclasses.replace(req, out=str(out), world_size=opts.tasks * opts.nodes if opts.tasks * opts.nodes > 1 else None)
    here = dataclasses.replace(req, device="cpu")
    resolve(here)  # every setting checked before any data is read or written
    runs, _, _ = plan(here, log)
    if req.trackers:  # the MLflow store and experiments made once, before jobs run side by side
        from bench.trackers import experiment_name, prepare

        prepare(req.trackers, out, [experiment_name(r.config()) for r in runs])
    queue = slurm_states() if opts.name == "slurm" else None
    todo = []
    for r in runs:
        tag = f"{r.method} seed {r.seed}"
        if is_finished(r.dir) and not req.force:
            log(f"{tag}: finished earlier, skipped ({r.dir})")
            continue
        rec = read_job(r.dir)
        state = job_state(rec, queue)
        if state in ("queued", "running", "unknown"):
            log(f"{tag}: job {rec['job_id']} is {state}, not submitted again")
            continue
        if (r.dir / ".claim").exists() and not lock.is_stale(r.dir / ".claim"):
            log(f"{tag}: claimed by a live worker, not submitted ({r.dir})")
            continue
        todo.append(r)
    if not todo:
        log("nothing to submit")
    elif opts.name == "slurm":
        _submit_slurm(req, opts, todo, out, log)
        return []
    else:
        _run_here(req, opts, todo, out, log)
    return [read_record(r.dir / "metrics.json", "metrics") for r in runs if is_finished(r.dir)]


def _job_request(req):
    """The request a job runs: no --force (the submitter cleared the cells; a requeued job must
    resume, not start over), no progress bars in log files, no shard."""
    return dataclasses.replace(req, force=False, progress=False, shard=None)


def _clear(cells) -> None:
    """--force: empty the cells before their jobs start (a claim file is left to its owner)."""
    for r in cells:
        if r.dir.is_dir():
            for p in r.dir.iterdir():
                if not p.name.startswith(".claim"):
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _submit_slurm(req, opts: ExecutorOptions, todo, out: Path, log) -> None:
    if req.force:
        _clear(todo)
    ex = make_executor(opts, out / "jobs")
    job_req = _job_request(req)
    try:
        with ex.batch():
            jobs = [ex.submit(CellJob(job_req, r.dir)) for r in todo]
    except (subprocess.CalledProcessError, OSError, RuntimeError) as e:
        detail = getattr(e, "output", b"") or str(e)
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
        raise UserError(f"--executor slurm: sbatch refused the jobs ({' '.join(detail.split())[-200:]}); check --partition, "
                        f"--time, --mem, --gpus and the [executor] sbatch parameters")
    for r, j in zip(todo, jobs):
        record_job(r.dir, out, "slurm", j)
        log(f"{r.method} seed {r.seed}: job {j.job_id} -> {r.dir}")
    _record_cells(out, todo)
    array = str(jobs[0].job_id).split("_")[0]
    log(f"submitted {len(jobs)} job(s) as Slurm job array {array}" + (f", at most {opts.jobs} at once" if opts.jobs else "")
        + f"; follow them with: python -m bench status --runs {out}")


@contextlib.contextmanager
def _environment(env: dict | None):
    """``os.environ`` replaced by ``env`` (None: unchanged) while submitit starts a local job."""
    if env is None:
        yield
        return
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _raise_interrupted(signum, frame) -> None:
    from bench.train import Interrupted

    raise Interrupted(signum)


@contextlib.contextmanager
def _no_sigint(active: bool):
    """SIGINT ignored while submitit starts a local job's controller, which inherits that: Ctrl-C
    in a terminal reaches the whole process group, and a controller that took it would kill its
    job one second later, mid-step. The job itself catches SIGINT (the training loop installs its
    own handler) and stops at a step boundary with a checkpoint."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _run_here(req, opts: ExecutorOptions, todo, out: Path, log) -> None:
    """local / debug: run the cells' jobs, at most ``opts.jobs`` at a time, and wait for them."""
    if req.force:
        _clear(todo)
    ex = make_executor(opts, out / "jobs")
    job_req = _job_request(req)
    limit = 1 if opts.name == "debug" else (opts.jobs or max(1, min(len(todo), usable_cores()[0])))
    # local: the jobs split this machine's cores by the thread rule (bench/core/threads.py), each
    # job's threads written into the environment its subprocess starts with
    env = child_env(share=limit) if opts.name == "local" else None
    from bench.core.store import is_finished
    from bench.runner import result_line

    pending, running, failed = list(todo), [], []
    _record_cells(out, todo)
    term = signal.getsignal(signal.SIGTERM)
    try:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupted)  # kill / a closing session: stop the jobs too
        while pending or running:
            while pending and len(running) < limit:
                r = pending.pop(0)
                with _environment(env), _no_sigint(opts.name == "local"):
                    job = ex.submit(CellJob(job_req, r.dir))
                record_job(r.dir, out, opts.name, job)
                log(f"{r.method} seed {r.seed}: job {job.job_id} -> {r.dir}")
                running.append((r, job))
            for r, job in list(running):
                if opts.name == "debug" or job.done():
                    running.remove((r, job))
                    try:
                        job.result()
                        if is_finished(r.dir):
                            log(f"{r.method} seed {r.seed} finished:\n{result_line(r.dir)}")
                    except Exception:  # the job's error is in its log; the other cells go on
                        failed.append(f"{r.method} seed {r.seed}: {last_log_line(out, read_job(r.dir) or {})}")
            time.sleep(0 if opts.name == "debug" else 0.5)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: SIGTERM to each job's controller, which forwards it to the job; the
        # job stops at its next step boundary and writes its checkpoint (run again to resume).
        # (submitit's cancel sends SIGINT, on which the controller kills the job after 1 s.)
        for _, job in running:
            if opts.name == "local":
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(job.job_id), signal.SIGTERM)
        deadline = time.time() + 300
        while any(not job.done() for _, job in running) and time.time() < deadline:
            time.sleep(0.5)
        raise
    finally:
        signal.signal(signal.SIGTERM, term)
    for line in failed:
        log(f"failed: {line}")


def submit_tune(req, opts: ExecutorOptions, workers: int, log=print) -> list:
    """Start ``workers`` workers of one study as jobs (one Slurm array; local: subprocesses, waited
    for). The study is created (or joined and checked) here first, so that bad settings or an
    unreachable storage are refused before anything is submitted.

    Raises:
        UserError: bad settings, a storage the workers cannot share.
    """
    from bench.tune import prepare

    check_executor(opts)
    if workers < 1:
        raise UserError(f"--workers {workers}: give at least 1 worker")
    storage = req.storage or ""
    if opts.name == "slurm" and not (storage.startswith("postgresql") or storage.startswith("mysql") or storage.startswith("journal:")):
        raise UserError("--executor slurm: the workers run on cluster nodes and need one storage they all reach; give --storage "
                        "postgresql://user:pw@host/db or journal:PATH on a shared folder (SQLite on a network filesystem is not safe)")
    req = dataclasses.replace(req, out=str(Path(req.out).resolve()))
    prepared = prepare(req, log)
    out = Path(req.out)
    ex = make_executor(dataclasses.replace(opts, jobs=opts.jobs or workers), out / "jobs", name="bench-tune")
    job_req = dataclasses.replace(req, study_name=prepared.study_name, export=None, progress=False)
    if opts.name == "slurm":
        try:
            with ex.batch():
                jobs = [ex.submit(TuneJob(job_req)) for _ in range(workers)]
        except (subprocess.CalledProcessError, OSError, RuntimeError) as e:
            raise UserError(f"--executor slurm: sbatch refused the jobs ({' '.join(str(e).split())[-200:]})")
        log(f"submitted {workers} worker(s) of study '{prepared.study_name}' as Slurm job array "
            f"{str(jobs[0].job_id).split('_')[0]}: jobs {', '.join(j.job_id for j in jobs)}; logs in {out / 'jobs'}")
        return []
    jobs = [ex.submit(TuneJob(job_req)) for _ in range(workers)]
    log(f"started {workers} worker(s) of study '{prepared.study_name}': jobs {', '.join(str(j.job_id) for j in jobs)}")
    return [j.result() for j in jobs]


# -- status --------------------------------------------------------------------------------
@dataclass
class CellStatus:
    """One cell of ``bench status``."""

    cell: str
    state: str
    method: str = "?"
    seed: Any = "?"
    job: str = "-"
    detail: str = ""
    extra: dict = field(default_factory=dict)


def status(runs: str | Path) -> list[CellStatus]:
    """Every cell of the results folder ``runs`` - submitted ones (``jobs/cells.json``) and any
    with a job record or results - as done / running / queued / failed / not started.

    Raises:
        UserError: ``runs`` is not a results folder.
    """
    from bench import lock
    from bench.core.store import absent

    out = Path(runs)
    if not out.is_dir():
        raise UserError(f"--runs {out} {absent(out) if not out.exists() else 'is a file'}; give the folder that bench run --out wrote")
    try:
        cells: dict[str, dict] = json.loads((out / "jobs" / "cells.json").read_text())
    except (OSError, ValueError):
        cells = {}
    for marker in ("job.json", "metrics.json"):
        for p in out.rglob(marker):
            rel = _rel(p.parent, out)
            if rel not in cells and not rel.startswith("tune"):
                cells[rel] = {}
    recs = {c: read_job(out / c) for c in cells}
    queue = slurm_states() if any(r and r.get("executor") == "slurm" for r in recs.values()) else None
    rows = []
    for c, desc in sorted(cells.items()):
        d, rec = out / c, recs[c]
        if not desc:
            try:
                cfg = json.loads((d / "config.json").read_text())
                desc = _describe(cfg.get("method", "?"), cfg.get("seed", "?"), cfg.get("prompts"), cfg.get("text_encoder"))
            except (OSError, ValueError):
                parts = Path(c).parts
                desc = {"method": parts[-3] if len(parts) >= 3 else "?", "seed": parts[-1].removeprefix("seed_")}
        row = CellStatus(c, "not started", desc.get("method", "?"), desc.get("seed", "?"), rec["job_id"] if rec else "-")
        if desc.get("prompts"):
            row.extra = {"prompts": desc["prompts"], "text_encoder": desc.get("text_encoder")}
        state = job_state(rec, queue)
        if (d / "metrics.json").exists():
            row.state = "done"
        elif state in ("queued", "running"):
            row.state = state
            row.detail = _progress(d)
        elif state == "unknown":
            row.state, row.detail = "unknown", "squeue did not answer"
        elif (d / ".claim").exists() and not lock.is_stale(d / ".claim"):
            row.state, row.detail = "running", "claimed by a bench run worker; " + _progress(d)
        elif rec is not None:
            row.state, row.detail = "failed", last_log_line(out, rec)
        rows.append(row)
    return rows


def _progress(d: Path) -> str:
    """``step k`` of the latest log line of a cell (empty when it has not logged yet)."""
    try:
        lines = (d / "log.jsonl").read_text().splitlines()
        return f"step {json.loads(lines[-1])['step'] + 1}" if lines else ""
    except (OSError, ValueError, KeyError, IndexError):
        return ""


def format_status(rows: list[CellStatus]) -> str:
    """The status table, then one count per state."""
    if not rows:
        return "no cells here (nothing was submitted or run in this folder)"
    lines = [f"{'state':12s} {'method':16s} {'seed':>4s} {'job':>12s}  detail / folder"]
    for r in rows:
        tag = f" [{r.extra['prompts']} x {r.extra['text_encoder']}]" if r.extra else ""
        lines.append(f"{r.state:12s} {r.method + tag:16s} {str(r.seed):>4s} {r.job:>12s}  {r.detail + '  ' if r.detail else ''}{r.cell}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
