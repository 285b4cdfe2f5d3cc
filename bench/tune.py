"""``python -m bench tune``: Optuna studies with the same budget for every method.

* Each method declares its search space next to its code (``Method.search_space(trial)``,
  returning hyperparameter and engine settings, e.g. ``lr``, ``consistency``, ``ema_decay``).
* Objective: the best mean Dice on the **eval** split during ``--budget-iterations`` of
  training (the test split is never touched); each validation is reported to Optuna and
  ``MedianPruner`` stops hopeless trials; TPE seeded per trial from the study seed and the trial
  number (:class:`TrialSeededSampler`: parallel workers draw distinct trials); the published
  defaults run as trial 0.
* Storage: an SQLite file by default (``<out>/optuna.db``), any SQLAlchemy URL
  (``postgresql://user:pw@host/db`` for many workers on many machines), or
  ``journal:PATH`` (Optuna's journal file for shared filesystems). ``load_if_exists``: any
  number of ``bench tune`` processes join one study. With a database, workers send heartbeats;
  a trial whose worker died is marked failed and retried (``RetryFailedTrialCallback``) - the
  retry has the same parameters, hence the same run folder, and resumes from its checkpoint.
* ``--export best.toml`` writes the best parameters as a config for ``bench run --config``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from bench.core.errors import UserError
from bench.core.storage import make_storage, safe_url
from bench.core.store import atomic_write_text, safe_name


@dataclass
class TuneRequest:
    """What ``bench tune`` was asked (its flags). The run options (``dataset`` ... ``preset``;
    None: not given) resolve through the same layers as ``bench run`` (``bench.config``), with
    the same defaults; ``config`` is a ``bench run --config`` file."""
    method: str
    dataset: str | None = None
    data_root: str | None = None
    protocol: str | None = None
    split: str | None = None
    labeled: str | float | None = None
    preset: str | None = None
    config: str | None = None
    trials: int = 20
    storage: str | None = None
    study_name: str | None = None
    budget_iterations: int | None = None
    seed: int = 0
    out: str = "runs"
    export: str | None = None
    device: str = "auto"
    sets: list[str] = field(default_factory=list)
    progress: bool = False
    heartbeat_s: int = 60
    #: signals that stop a trial's training after a checkpoint (a Slurm job adds submitit's USR2)
    stop_signals: tuple[int, ...] | None = None


def _params_key(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class PreparedStudy:
    """A study opened and checked for a worker (:func:`prepare`)."""

    study: Any
    study_name: str
    storage_url: str
    cls: type
    base: Any
    opts: Any
    out: Path


def tune(req: TuneRequest, log=print):
    """Run ``req.trials`` trials of the study (created or joined), each a training of the budget
    scored on the eval split; returns the study.

    Raises:
        UserError: a method without search space, bad settings or storage, a study of another method.
    """
    p = prepare(req, log)
    study, cls, base, out, study_name = p.study, p.cls, p.base, p.out, p.study_name
    study.optimize(_objective(req, cls, base, out / "tune" / study_name), n_trials=req.trials, catch=())
    best = study.best_trial
    log(f"best trial #{best.number}: eval Dice {100 * best.value:.1f}%  {json.dumps(best.params)}")
    if req.export:
        export_config(req.export, req.method, best.params, p.opts, study_name, best.value)
        log(f"best parameters written to {req.export} (use: python -m bench run --config {req.export})")
    return study


def prepare(req: TuneRequest, log=print) -> PreparedStudy:
    """Check every setting, then create or join the study and check that it is the same study
    (method, definition, budget); what a worker does before its first trial.

    Raises:
        UserError: a method without search space, bad settings or storage, a study of another method.
    """
    from bench.config import Layer, train_fields
    from bench.core.registry import METHODS
    from bench.runner import RunRequest, resolve

    cls = METHODS.get(req.method)
    space_keys = _check_request(req, cls)
    out = Path(req.out)
    flags = {"methods": [req.method], "dataset": req.dataset, "data_root": req.data_root, "protocol": req.protocol,
             "split": req.split, "labeled": req.labeled, "preset": req.preset, "seeds": [req.seed], "iterations": req.budget_iterations}
    base = RunRequest.build(flags, req.sets, req.config, device=req.device, out=str(out), progress=req.progress)
    opts = base.options
    study_name = safe_name(req.study_name or study_name_for(req.method, opts), "study name",
                           "give --study-name with letters, digits and _ . + = -")
    base = dataclasses.replace(base, out=str(out / "tune" / study_name))
    resolve(base)  # every setting checked before the study (or its database file) exists
    storage_url = req.storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
    if storage_url.split("?")[0] in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):
        raise UserError(f"--storage {safe_url(storage_url)} keeps the study in memory and loses it at exit; give a file, "
                        f"e.g. sqlite:///runs/optuna.db")
    sampler = TrialSeededSampler(req.seed)
    study = _open_study(req, study_name, storage_url, sampler, opts.dataset)
    stored = study.user_attrs.get("budget_iterations")
    if req.budget_iterations and stored and req.budget_iterations != stored:
        raise UserError(f"study '{study_name}' trains {stored} iterations per trial, not {req.budget_iterations}; "
                        f"drop --budget-iterations to join it, or pick another --study-name")
    budget = req.budget_iterations or stored
    if budget:  # a worker joining a study trains the study's budget
        base = dataclasses.replace(base, layers=[*base.layers, Layer("the study's budget", train={"iterations": budget})])
    (p0,) = resolve(base)
    _check_definition(study, study_name, study_definition(p0, space_keys, opts))
    # trial 0 runs the defaults (method defaults, engine settings of the preset) of every searched
    # parameter; every later trial is drawn by a TPE sampler seeded from (study seed, trial number)
    defaults = {k: (getattr(p0.train, k) if k in train_fields() else p0.hparams.get(k)) for k in space_keys}
    sampler.first = {k: v for k, v in defaults.items() if v is not None}

    n_done = len([t for t in study.trials if t.state.is_finished()])
    log(f"study '{study_name}' ({safe_url(storage_url)}): {n_done} finished trial(s); running {req.trials} more")
    return PreparedStudy(study, study_name, storage_url, cls, base, opts, out)


def _check_request(req: TuneRequest, cls) -> list[str]:
    """The method's search-space keys, after checking the flags only tuning has (one line each)."""
    from bench.config import train_fields

    space_keys = _space_keys(cls)
    if not space_keys:
        raise UserError(f"method '{req.method}' declares no search space (search_space(trial) returns nothing)")
    known = set(train_fields()) | {f for f in cls.hparam_defaults()}
    unknown = [k for k in space_keys if k not in known]
    if unknown:
        raise UserError(f"search space of '{req.method}' names '{unknown[0]}', which is neither an engine setting nor one of its "
                        f"hyperparameters; fix its search_space()")
    if req.trials < 1:
        raise UserError(f"--trials {req.trials}: give at least 1 trial for this worker")
    if req.budget_iterations is not None and req.budget_iterations < 1:
        raise UserError(f"--budget-iterations {req.budget_iterations}: give at least 1 training iteration per trial")
    if req.export and Path(req.export).is_dir():
        raise UserError(f"--export {req.export} is a folder; give a file name such as best.toml")
    return space_keys


def study_definition(plan, space_keys, opts) -> dict:
    """What defines a study's trials besides the searched parameters: dataset, split or labeled
    share, protocol, preset, budget, and every engine setting and hyperparameter not searched."""
    ident = plan.identity()
    fixed = {**{f"train.{k}": v for k, v in ident["train"].items() if k not in space_keys},
             **{k: v for k, v in ident["hparams"].items() if k not in space_keys}}
    return {"dataset": opts.dataset, "data_root": opts.data_root, "dataset_opts": dict(opts.dataset_opts),
            "split": opts.split, "labeled": None if opts.split else opts.labeled, "protocol": ident["protocol"]["name"],
            "preset": opts.preset, "budget_iterations": plan.train.iterations, "fixed": json.loads(json.dumps(fixed, default=str))}


def _check_definition(study, name: str, definition: dict) -> None:
    """Record the study's definition when it is new; refuse to join it with another one (one line,
    naming the first difference)."""
    stored = study.user_attrs.get("definition")
    if stored is None:
        study.set_user_attr("definition", definition)
        return
    for key in definition:
        a, b = stored.get(key), definition[key]
        if key == "fixed":
            diff = sorted(k for k in set(a or {}) | set(b) if (a or {}).get(k) != b.get(k))
            if diff:
                k = diff[0]
                raise UserError(f"study '{name}' was run with {k}={(a or {}).get(k)!r}, this worker has {k}={b.get(k)!r}; "
                                f"join it with the same settings, or pick another --study-name")
        elif a != b:
            raise UserError(f"study '{name}' was run with {key} {a!r}, this worker with {b!r}; join it with the same "
                            f"{key}, or pick another --study-name")


def _open_study(req: TuneRequest, study_name: str, storage_url: str, sampler, dataset: str):
    """The study, created or joined; a study of another method is refused."""
    storage = make_storage(storage_url, req.heartbeat_s)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="maximize", load_if_exists=True)
    except Exception as e:
        raise UserError(f"--storage {safe_url(storage_url)}: cannot open study '{study_name}' ({type(e).__name__}: {' '.join(str(e).split())[:100]})")
    owner = study.user_attrs.get("method")
    if owner is None:
        study.set_user_attr("method", req.method)
        study.set_user_attr("dataset", dataset)
        study.set_user_attr("budget_iterations", req.budget_iterations)
    elif owner != req.method:
        raise UserError(f"study '{study_name}' belongs to method '{owner}', not '{req.method}'; pick another --study-name")
    return study


def _objective(req: TuneRequest, cls, base, folder: Path):
    """Optuna's objective: one training of the trial's parameters (in ``folder/params_<key>``,
    where a retried trial resumes), reported at each validation; returns the best eval Dice."""
    from bench.config import Layer
    from bench.runner import make_spec, plan
    from bench.train import Trainer

    def objective(trial):
        params = cls.search_space(trial)
        for k, v in params.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"search space of '{req.method}' gave {k}={v}; fix its search_space()")
        # the trial's typed values, one level above the command line, for this method only
        trial_layer = Layer(f"trial {trial.number}", per_method={req.method: dict(params)})
        runs, dataset, split = plan(dataclasses.replace(base, layers=[*base.layers, trial_layer]))
        r = dataclasses.replace(runs[0], dir=folder / f"params_{_params_key(params)}")

        def report(step: int, score: float) -> None:
            trial.report(score, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        extra = {"stop_signals": req.stop_signals} if req.stop_signals else {}
        trainer = Trainer(make_spec(r, dataset, split, torch.device(r.device), req.progress, on_validate=report, **extra))
        if not split.eval:
            raise UserError("tuning needs eval cases in the split (the objective never looks at test cases)")
        trainer.fit()
        if trainer.best["step"] < 0:
            trainer.validate()
        trial.set_user_attr("run_dir", str(r.dir))
        return float(trainer.best["score"])

    return objective


def study_name_for(method: str, opts) -> str:
    """The default study name: ``<method>-<dataset>-<split>``, the split named by ``--split`` or
    by its labeled share as a number (``10%`` and ``0.1`` both give ``tak-phantom-10p``)."""
    if opts.split:
        return f"{method}-{opts.dataset}-{Path(opts.split).stem}"
    return f"{method}-{opts.dataset}-{round(100 * opts.labeled, 6):g}p"


def _derived_seed(seed: int, number: int) -> int:
    """A sampler seed for trial ``number`` of a study seeded ``seed`` (independent streams)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE, seeded per trial from (study seed, trial number); trial 0 takes ``first`` (the defaults).

    Parallel workers of one study (processes on a shared storage) never get the same trial
    number, so they draw from different random streams and, on continuous search spaces, never
    evaluate the same parameters (one ``TPESampler(seed)`` per worker made every worker draw the
    same points). One worker reproduces its study: trial n's parameters depend on the seed, n
    and the trials finished before it. With several workers that history depends on timing, so
    which parameters are drawn is not reproducible (trial 0 always is). On a small categorical
    space two trials can still draw the same combination.
    """

    def __init__(self, seed: int, first: dict[str, Any] | None = None):
        self.seed, self.first = seed, dict(first or {})
        self._number, self._tpe = -1, None

    def _for(self, trial) -> optuna.samplers.TPESampler:
        if trial.number != self._number:  # one TPE per trial: its random stream belongs to that trial number
            self._number, self._tpe = trial.number, optuna.samplers.TPESampler(seed=_derived_seed(self.seed, trial.number))
        return self._tpe

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if trial.number == 0 and param_name in self.first:
            return self.first[param_name]
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)


def _space_keys(cls) -> list[str]:
    """Parameter names of the method's search space (probed with a recording trial)."""

    class Probe:
        def __init__(self):
            self.keys: list[str] = []

        def _rec(self, name, low=None, *a, **k):
            self.keys.append(name)
            return low if low is not None else 0

        suggest_float = suggest_int = _rec

        def suggest_categorical(self, name, choices):
            self.keys.append(name)
            return choices[0]

    p = Probe()
    cls.search_space(p)
    return p.keys


def export_config(path: str, method: str, params: dict, opts, study: str, value: float) -> None:
    """Write the best parameters of a study (and its resolved run options ``opts``) as a
    ``bench run --config`` TOML file."""
    from bench.config import train_fields

    engine = {k: v for k, v in params.items() if k in train_fields()}
    hparams = {k: v for k, v in params.items() if k not in train_fields()}

    lines = [f"# best trial of Optuna study {toml_value(study)} (eval Dice {100 * value:.2f}%)",
             f"methods = [{toml_value(method)}]", f"dataset = {toml_value(opts.dataset)}", f"protocol = {toml_value(opts.protocol)}"]
    if opts.split:
        lines.append(f"split = {toml_value(opts.split)}")
    else:
        lines.append(f"labeled = {toml_value(opts.labeled)}")
    lines.append(f"preset = {toml_value(opts.preset)}")
    if engine:
        lines += ["", "[train]"] + [f"{k} = {toml_value(v)}" for k, v in engine.items()]
    if hparams:
        lines += ["", f"[method.{toml_value(method) if not method.isidentifier() else method}]"] + [
            f"{k} = {toml_value(v)}" for k, v in hparams.items()]
    text = "\n".join(lines) + "\n"
    import tomllib

    tomllib.loads(text)  # what is written always parses (a bug here must not leave a broken file)
    atomic_write_text(Path(path), text)


def toml_value(v: Any) -> str:
    """``v`` (text, number, bool or a list of them) as a TOML value: text as a basic string with
    every non-printable or non-ASCII character escaped (a character TOML cannot hold, such as
    the lone surrogate of a path that is not valid UTF-8, becomes "?")."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, int) or math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    out = []
    for ch in str(v).encode("utf-8", "replace").decode("utf-8"):
        o = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\uFFFD")
        else:
            out.append(f"\\u{o:04X}" if o <= 0xFFFF else f"\\U{o:08X}")
    return '"' + "".join(out) + '"'
