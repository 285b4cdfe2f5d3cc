"""Experiment trackers: a run as TensorBoard and MLflow show it, live or rebuilt from its records.

``bench run --tracker tensorboard,mlflow`` sends what a run writes to log.jsonl (losses, learning
rates, step time, validation Dice per organ) to each tracker as it trains, with the resolved
config as parameters, one small-organ overlay image at each validation and, at the end, the test
metrics and timing. log.jsonl and the records stay the source of truth: ``bench track --runs DIR
--to mlflow|tensorboard`` rebuilds the same view from finished run folders (runs from a cluster,
another machine, or trained without ``--tracker``), through the same mapping
(:func:`log_metrics`, :func:`final_metrics`).

Where each tracker writes:

* **tensorboard**: ``<run folder>/tensorboard/`` (``tensorboard --logdir RUNS`` finds every run);
  a resumed run purges the events after its checkpoint's step.
* **mlflow**: the store of ``MLFLOW_TRACKING_URI`` if set, else a local SQLite file
  ``<results folder>/mlflow.db`` with artifacts under ``<results folder>/mlartifacts/``
  (``mlflow ui --backend-store-uri sqlite:///RUNS/mlflow.db``); one experiment per dataset /
  protocol / split, one MLflow run per run folder (its id kept in ``<run folder>/trackers.json``,
  so a resumed run goes on in the same MLflow run).

A tracker that fails while a run trains prints one warning and is dropped; training goes on (the
records can rebuild the view later). A tracker whose package is missing is refused before any
data loads.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.core.errors import UserError

TRACKERS = ("tensorboard", "mlflow")
#: the package each tracker needs and how to install it
_NEEDS = {"tensorboard": ("tensorboard", "pip install -e '.[track]' (or: pip install tensorboard)"),
          "mlflow": ("mlflow", "pip install -e '.[track]' (or: pip install mlflow-skinny sqlalchemy alembic)")}
#: log.jsonl keys that are bookkeeping, not metrics
_NOT_METRICS = {"step", "best"}
#: the file of a run folder that keeps each tracker's run id (a resumed run continues it)
IDS_FILE = "trackers.json"


def parse_trackers(text: str | None) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` -> ``("tensorboard", "mlflow")``, each checked to be known and
    installed (a missing package is refused in one line, before any data loads).

    Raises:
        UserError: an unknown tracker or one whose package is missing.
    """
    names = tuple(dict.fromkeys(n.strip().lower() for n in (text or "").split(",") if n.strip()))
    for n in names:
        if n not in TRACKERS:
            raise UserError(f"--tracker {n}: unknown tracker; choose from {', '.join(TRACKERS)} (comma-separated)")
        module, fix = _NEEDS[n]
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"--tracker {n}: the {module} package is not installed; {fix}") from None
    return names


# -- what a tracker is told -------------------------------------------------------------------
def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"train.lr": "0.1", ...}`` (values as text: trackers' parameters)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple, bool)) or v is None else str(v)
    return out


def log_metrics(record: dict) -> tuple[int, dict[str, float]]:
    """One log.jsonl line -> ``(step, {name: value})`` for a tracker: every finite number except
    the bookkeeping keys; validation values (``val_dice``, ``val_dice/<organ>``) are logged at the
    number of steps trained (log.jsonl writes them at the step index, one less)."""
    step = int(record.get("step", 0))
    values = {k: float(v) for k, v in record.items()
              if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if any(k.startswith("val_") for k in values):
        step += 1
    return step, values


def final_metrics(metrics: dict, timing: dict | None) -> dict[str, float]:
    """A finished run's test results and timing as flat tracker metrics: ``test/dice``,
    ``test/nsd``, ``test/hd95``, ``test/dice/<organ>`` (%, mm; means over the test cases) and
    ``timing/train_s_per_iter``, ``timing/infer_s_per_case``, ``timing/peak_memory_mb``."""
    out: dict[str, float] = {}
    per_organ = metrics.get("per_organ") or {}
    for organ, vals in per_organ.items():
        d = (vals or {}).get("dice")
        if isinstance(d, (int, float)) and math.isfinite(d):
            out[f"test/dice/{organ}"] = float(d) * 100
    for k, v in (metrics.get("mean") or {}).items():
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[f"test/{k}"] = float(v) * (100 if k in ("dice", "nsd") else 1)
    for key, name in (("train_s_per_iter", "train_s_per_iter"), ("infer_s_per_case", "infer_s_per_case")):
        v = (timing or {}).get(key)
        v = v.get("median") if isinstance(v, dict) else v
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[f"timing/{name}"] = float(v)
    peak = (timing or {}).get("peak_memory_mb")
    if isinstance(peak, (int, float)) and math.isfinite(peak):
        out["timing/peak_memory_mb"] = float(peak)
    return out


def run_title(config: dict, metrics: dict | None = None) -> str:
    """``tak [anatomy x minilm] seed 0``: a run's name in a tracker."""
    src = metrics or config
    prompts, encoder = src.get("prompts"), src.get("text_encoder")
    prior = f" [{prompts} x {encoder}]" if prompts and encoder else ""
    return f"{src.get('method', 'run')}{prior} seed {src.get('seed', 0)}"


# -- trackers -----------------------------------------------------------------------------------
class TensorBoardTracker:
    """Events under ``<run_dir>/tensorboard`` (``torch.utils.tensorboard.SummaryWriter``)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, title: str, tags: dict, resume_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run drops the events after its checkpoint (they are redone)
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_step or None)
        self.title, self.tags = title, tags

    def params(self, params: dict[str, str]) -> None:
        text = "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
        self.writer.add_text("config", text, 0)
        self.writer.add_text("run", self.title + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in sorted(self.tags.items())), 0)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def close(self, status: str = "FINISHED") -> None:
        self.writer.flush()
        self.writer.close()


def _quiet_mlflow() -> None:
    """MLflow's and alembic's INFO lines (creating tables, migrations) off the run's output."""
    import logging

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def mlflow_uri(out: Path) -> str:
    """The MLflow store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<out>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def mlflow_experiment(client, name: str, out: Path) -> str:
    """The id of experiment ``name`` (created with artifacts under ``<out>/mlartifacts`` for a
    local store); safe when several processes create it at once."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    local = not os.environ.get("MLFLOW_TRACKING_URI")
    try:
        return client.create_experiment(name, artifact_location=(Path(out).resolve() / "mlartifacts").as_uri() if local else None)
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class MlflowTracker:
    """One MLflow run per run folder, in the store of :func:`mlflow_uri` (``MlflowClient``: no
    global state, several runs of one process each keep their own)."""

    name = "mlflow"

    def __init__(self, run_dir: Path, title: str, tags: dict, out: Path, experiment: str, run_id: str | None = None):
        from mlflow.tracking import MlflowClient

        _quiet_mlflow()
        self.client = MlflowClient(tracking_uri=mlflow_uri(out))
        if run_id is not None:
            try:
                self.client.get_run(run_id)
            except Exception:
                run_id = None
        if run_id is None:
            exp = mlflow_experiment(self.client, experiment, out)
            run_id = self.client.create_run(exp, run_name=title, tags={f"bench.{k}": str(v) for k, v in tags.items()}).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        have = set(self.client.get_run(self.run_id).data.params)
        items = [Param(k, v[:6000]) for k, v in sorted(params.items()) if k not in have]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self.client.log_image(self.run_id, rgb, artifact_file=f"{tag}/step_{step:06d}.png")

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def _name(v) -> str:
    """A config entry's name (protocol and split are tables with a ``name``)."""
    return str(v.get("name", "?")) if isinstance(v, dict) else str(v)


def run_tags(config: dict, run_dir: Path) -> dict:
    """The tags a tracker stores with a run: where it is and what it is."""
    tags = {"run_dir": str(Path(run_dir).resolve())}
    for k in ("method", "seed", "dataset", "protocol", "split", "preset", "prompts", "text_encoder", "config_hash"):
        if config.get(k) is not None:
            tags[k] = _name(config[k])
    return tags


def experiment_name(config: dict) -> str:
    """One experiment per dataset / protocol / split: ``phantom/default/labeled_10p``."""
    return "/".join(_name(config.get(k, "?")) for k in ("dataset", "protocol", "split"))


class Trackers:
    """The trackers of one run: told every log.jsonl line, images, and the end. A tracker that
    raises is reported once (stderr) and dropped; training goes on."""

    def __init__(self, names, run_dir: Path, out: Path, config: dict, resume_step: int = 0):
        self.run_dir, self.items = Path(run_dir), []
        ids = _read_ids(self.run_dir)
        title, tags = run_title(config), run_tags(config, run_dir)
        for n in names:
            try:
                if n == "tensorboard":
                    t = TensorBoardTracker(self.run_dir, title, tags, resume_step)
                else:
                    t = MlflowTracker(self.run_dir, title, tags, out, experiment_name(config), ids.get("mlflow"))
                    ids["mlflow"] = t.run_id
                t.params(flatten(config))
                self.items.append(t)
            except Exception as e:  # noqa: BLE001 - a tracker never stops a run
                _warn(n, e)
        if "mlflow" in ids:
            _write_ids(self.run_dir, ids)

    def __bool__(self) -> bool:
        return bool(self.items)

    def _each(self, fn) -> None:
        for t in list(self.items):
            try:
                fn(t)
            except Exception as e:  # noqa: BLE001
                _warn(t.name, e)
                self.items.remove(t)

    def log(self, record: dict) -> None:
        step, values = log_metrics(record)
        if values:
            self._each(lambda t: t.metrics(values, step))

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self._each(lambda t: t.image(tag, rgb, step))

    def finish(self, metrics: dict | None, timing: dict | None, step: int, status: str = "FINISHED") -> None:
        if metrics is not None:
            values = final_metrics(metrics, timing)
            self._each(lambda t: t.metrics(values, step))
        self._each(lambda t: t.close(status))
        self.items = []


def _warn(name: str, e: Exception) -> None:
    print(f"warning: tracker {name} failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
          f"training goes on, the records keep everything: rebuild the view later with `bench track`", file=sys.stderr, flush=True)


def _read_ids(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / IDS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_ids(run_dir: Path, ids: dict) -> None:
    from bench.core.store import atomic_write_text

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(run_dir) / IDS_FILE, json.dumps(ids, indent=1))


def prepare(names, out: Path, experiments: list[str]) -> None:
    """Before the runs start (one process): create the MLflow store and its experiments, so
    that jobs running side by side do not race to create the schema."""
    if "mlflow" not in names:
        return
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    Path(out).mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=mlflow_uri(out))
    for e in dict.fromkeys(experiments):
        mlflow_experiment(client, e, out)


# -- rebuilding from records -------------------------------------------------------------------
def _records(run_dir: Path) -> tuple[dict, dict, dict | None, list[dict]]:
    from bench.core.records import read_record

    metrics = read_record(run_dir / "metrics.json", "metrics").to_dict()
    config = read_record(run_dir / "config.json", "config").to_dict()
    try:
        timing = read_record(run_dir / "timing.json", "timing").to_dict()
    except Exception:  # noqa: BLE001 - a run without timing still has its curves
        timing = None
    lines = []
    log = run_dir / "log.jsonl"
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return config, metrics, timing, lines


def track(runs: Path, to: str, log=print) -> int:
    """Rebuild the ``to`` view of every finished run under ``runs`` from its records: parameters,
    every log.jsonl line, test metrics and timing, and (if the run kept them) its overlays of the
    test cases. A run already in that tracker is skipped (mlflow: a run tagged with its folder;
    tensorboard: a run folder that has event files). Returns the number of runs added.

    Raises:
        UserError: an unknown tracker, its package missing, or no finished run under ``runs``.
    """
    from bench.core.store import is_finished
    from reports.overlays import OVERLAY_FILE, read_overlays, render_case

    (name,) = parse_trackers(to) or (None,)
    if name is None:
        raise UserError("--to is empty; choose mlflow or tensorboard")
    runs = Path(runs)
    if not runs.is_dir():
        raise UserError(f"--runs {runs}: not a folder; give the results folder of `bench run --out`")
    dirs = sorted(p.parent for p in runs.rglob("metrics.json") if is_finished(p.parent))
    if not dirs:
        raise UserError(f"--runs {runs}: no finished run (no metrics.json) under it; give the results folder of `bench run --out`")
    added = 0
    for d in dirs:
        config, metrics, timing, lines = _records(d)
        if name == "tensorboard" and any((d / "tensorboard").glob("events.out.tfevents.*")):
            log(f"{run_title(config, metrics)}: already in tensorboard, skipped ({d})")
            continue
        if name == "mlflow" and _ids_in_store(d, runs):
            log(f"{run_title(config, metrics)}: already in mlflow, skipped ({d})")
            continue
        t = Trackers((name,), d, runs, config)
        for rec in lines:
            t.log(rec)
        last = max([int(r.get("step", 0)) + 1 for r in lines] or [int(config.get("iterations", 0) or 0)])
        if (d / OVERLAY_FILE).exists():
            cases, _ = read_overlays(d / OVERLAY_FILE)
            for cid, slices in cases.items():
                t.image(f"test_overlay/{cid}", render_case(slices), last)
        t.finish(metrics, timing, last)
        added += 1
        log(f"{run_title(config, metrics)}: added to {name} ({d})")
    return added


def _ids_in_store(run_dir: Path, out: Path) -> bool:
    """Whether the MLflow store already holds this run folder (tag ``bench.run_dir``)."""
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()
    client = MlflowClient(tracking_uri=mlflow_uri(out))
    path = str(Path(run_dir).resolve())
    found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               filter_string=f"tags.`bench.run_dir` = '{path}' and attributes.status = 'FINISHED'", max_results=1)
    return bool(found)
