"""Resolves a run request once into :class:`bench.core.plan.RunPlan` s (method x prompt set x
text encoder x seed), runs the unfinished ones, collects results.

``resolve`` validates everything without reading data (``--dry-run`` prints its plans); ``plan``
reads the dataset and split and binds each plan to its folder; ``execute`` runs them.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import (
    PRESETS,
    Layer,
    RunOptions,
    check_keys,
    cli_layer,
    file_layer,
    preset_layer,
    resolve_method,
    resolve_options,
    resolve_protocol_options,
)
from bench.core.errors import UserError
from bench.core.plan import DatasetChoice, PriorChoice, RunPlan, SplitChoice
from bench.core.records import MetricsRecord, read_record
from bench.core.registry import DATASETS, METHODS, PROTOCOLS
from bench.core.store import absent, inside, is_finished, safe_name


@dataclass
class RunRequest:
    """What ``python -m bench run`` was asked: the resolved run options, the config layers
    (config file, command line, ...; the preset's layer is added from ``options.preset``) and
    how to execute."""

    options: RunOptions
    layers: list[Layer] = field(default_factory=list)
    device: str = "auto"
    out: str = "runs"
    force: bool = False
    save_predictions: bool = False
    progress: bool = True
    #: experiment trackers each run reports to as it trains (bench/trackers.py): "tensorboard", "mlflow"
    trackers: tuple[str, ...] = ()
    #: the command line that asked for the runs (config.json's provenance; a job started by an
    #: executor runs submitit's command, not the user's); None: this process' sys.argv
    command: tuple[str, ...] | None = None
    #: (i, n): run only the i-th (1-based) of n disjoint slices of the run matrix
    shard: tuple[int, int] | None = None
    #: processes per run when they are not this process' (a scheduler's job of N tasks; None:
    #: torchrun's WORLD_SIZE): part of a multi-process run's identity, hence of its folder
    world_size: int | None = None

    @classmethod
    def build(cls, flags: dict[str, Any], sets: list[str] | dict[str, Any] = (), config: str | None = None,
              extra_layers: list[Layer] = (), shard: str | None = None, **kw) -> "RunRequest":
        """From command-line flags (run options and ``iterations``), ``--set``, a config file and
        ``--shard i/n`` (each parsed here, once).

        Raises:
            UserError: a bad flag, setting, config file or shard.
        """
        layers = ([file_layer(config)] if config else []) + [cli_layer(flags, list(sets) if not isinstance(sets, dict) else sets)]
        layers += list(extra_layers)
        return cls(resolve_options(layers), layers, shard=parse_shard(shard), **kw)

    @property
    def all_layers(self) -> list[Layer]:
        return [preset_layer(self.options.preset), *self.layers]


def _fmt(value, scale: float, spec: str) -> str:
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value * scale, spec)


def pick_device(name: str):
    """The torch device of ``--device`` (``auto``: CUDA when visible).

    Raises:
        UserError: ``cuda`` without a GPU, or a name that is not a device.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked but no CUDA GPU is visible; use --device cpu or auto")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"--device {name}: choose auto, cpu or cuda")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name; write cpu, cuda or cuda:N")


#: a lower bound of a training step's memory per (base width x patch voxel x image in the
#: batch), in bytes, below what the lightest method measured (docs/performance.md, "Peak memory")
MIN_BYTES_PER_WIDTH_VOXEL_IMAGE = 64


def check_memory(name: str, train, device) -> None:
    """Refuse a patch / width / batch that cannot fit in the machine's memory (a lower bound;
    the run could still need more)."""
    import math

    need = MIN_BYTES_PER_WIDTH_VOXEL_IMAGE * train.width * math.prod(train.patch) * (train.labeled_bs + train.unlabeled_bs)
    have = _available_memory(device)
    if have and need > have:
        raise UserError(f"{name}: patch {'x'.join(map(str, train.patch))}, width {train.width}, batch "
                        f"{train.labeled_bs}+{train.unlabeled_bs} needs at least {need / 2**30:.1f} GB for a training step "
                        f"(estimate), more than the {have / 2**30:.1f} GB available; use a smaller --set patch=, width= or batch")


def _available_memory(device) -> int | None:
    """Bytes free on ``device`` (MemAvailable on Linux CPUs; the GPU's free memory), or None."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    from bench.core.store import available_memory

    return available_memory()


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "monai", "numpy", "scipy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def load_dataset(name: str, preset: str, data_root: str | None, progress: bool = False, options: dict | None = None):
    """The registered dataset ``name`` at a preset's size (phantoms) or from ``data_root``, with its
    ``--dataset-opt`` options.

    Raises:
        UserError: a missing or empty ``data_root``, an option the dataset does not have.
    """
    factory = DATASETS.get(name)
    if data_root is not None:
        root = Path(data_root)
        if not root.exists():
            raise UserError(f"--data-root {root} {absent(root)}; point it at the dataset folder")
        if root.is_dir() and not any(root.iterdir()):
            raise UserError(f"--data-root {root} is empty; point it at the folder that holds the dataset")
    import inspect

    opts = dict(options or {})
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in opts if k not in params]
        if unknown:
            raise UserError(f"dataset '{name}' has no option '{unknown[0]}' (--dataset-opt / --label-map)")
    return factory(preset=PRESETS[preset].dataset_preset if preset in PRESETS else preset, data_root=data_root,
                   progress=progress, **opts)


def resolve_split(opts: RunOptions, dataset, out: Path):
    """The run's split: a named or file split (stored, then published), or one drawn from
    ``--labeled`` and stored under ``<out>/<dataset>/splits/``; validated against the dataset.

    Raises:
        UserError: an unknown or leaky split, or a stored draw that differs from the new one.
    """
    from datasets.splits import Split, draw_split

    if opts.split:
        path = Path(opts.split)
        if not path.suffix:  # a name: the dataset's split folder, then the published splits
            path = out / safe_name(dataset.name, "dataset name") / "splits" / f"{safe_name(opts.split, 'split name')}.json"
            if not path.exists():
                from datasets.splits import published_split

                return published_split(dataset.name, opts.split, dataset.case_ids()).validate(dataset.case_ids())
        split = Split.load(path)
    else:
        fraction = opts.labeled
        part = dataset.partition
        if not part.get("train"):
            raise UserError(f"dataset '{dataset.name}' defines no train/eval/test partition; give --split FILE")
        split = draw_split(part["train"], part.get("eval", []), part.get("test", []), fraction, seed=0)
        path = inside(out / safe_name(dataset.name, "dataset name") / "splits" / f"{safe_name(split.name, 'split name')}.json",
                      out, "split file")
        if path.exists():
            stored = Split.load(path)
            if stored.digest() != split.digest():
                raise UserError(f"stored split {path} differs from the one drawn now; delete it or pass --split {path}")
        else:
            split.save(path)
    return split.validate(dataset.case_ids())


def resolve(req: RunRequest) -> list[RunPlan]:
    """Every run of the request as a :class:`RunPlan` (not yet bound to a split digest and
    folder), in matrix order (method, prompt set x encoder, seed); every name, setting, device and
    the output folder validated without reading any data.

    Raises:
        UserError: the first bad name, setting, device or folder, in one line.
    """
    from bench.distributed import world_size

    opts = req.options
    classes = {m: METHODS.get(m) for m in opts.methods}  # unknown names fail here, before any work
    if any(cls.text_priors and not cls.text_priors.fixed for cls in classes.values()):
        _check_priors(opts.prompts, opts.text_encoder)
    device = pick_device(req.device)
    _check_out(Path(req.out))
    layers = req.all_layers
    check_keys(layers, classes)
    protocol = PROTOCOLS.get(opts.protocol)(opts.dataset).with_options(resolve_protocol_options(layers))
    dataset = DatasetChoice(opts.dataset, opts.data_root, dict(opts.dataset_opts))
    split = SplitChoice(name=opts.split) if opts.split else SplitChoice(labeled_fraction=opts.labeled)
    plans = []
    for name, cls in classes.items():
        st = resolve_method(name, cls, layers)
        check_memory(name, st.train, device)
        for priors in _prior_choices(cls, opts):
            plans += [RunPlan(method=name, seed=seed, train=st.train, hparams=st.hparams, dataset=dataset, preset=opts.preset,
                              protocol=protocol, split=split, priors=priors, device=str(device),
                              world_size=req.world_size or world_size())
                      for seed in opts.seeds]
    return plans


def _prior_choices(cls, opts: RunOptions) -> list[PriorChoice | None]:
    """The text priors a method runs with: the run's prompt sets x encoders, its own fixed
    pair, or none (one run without priors)."""
    spec = cls.text_priors
    if spec is None:
        return [None]
    if spec.fixed:
        return [PriorChoice(spec.prompts, spec.encoder, fixed=True)]
    return [PriorChoice(p, e) for p, e in spec.grid(list(opts.prompts), list(opts.text_encoder))]


def dry_run(req: RunRequest) -> list[dict]:
    """The fully resolved config of every planned run, reading no data and writing nothing."""
    return [p.describe() for p in resolve(req)]


def slow_start_notes(plans: list[RunPlan]) -> list[str]:
    """One line per method whose run is shorter than its known slow start (``slow_start_steps``):
    said before training, so that nobody reads its row as the method's result unwarned."""
    notes = []
    for name, steps in dict.fromkeys((p.method, p.train.iterations) for p in plans):
        cls = METHODS.get(name)
        need = cls.slow_start_steps
        if need and steps < need:
            notes.append(f"note: {name} in {steps} steps: {cls.slow_start}. Its row may measure that start, not the "
                         f"method; for a row that measures {name}, run {need} steps or more (--preset quick)")
    return notes


def bind(plans: list[RunPlan], split, out: str | Path) -> list[RunPlan]:
    """The plans bound to the resolved ``split`` (its name and digest): hash and folder set."""
    digest = split.digest()
    return [p.bound(split.name, digest, out) for p in plans]


def plan(req: RunRequest, log=None) -> tuple[list[RunPlan], Any, Any]:
    """Resolve the request (before any data), say which runs are too short for their method (to
    ``log``), then load the dataset and split and bind every plan to its folder.

    Returns:
        (bound plans, the dataset, the split).
    """
    plans = resolve(req)
    if log is not None:
        for line in slow_start_notes(plans):
            log(line)
    opts = req.options
    dataset = load_dataset(opts.dataset, opts.preset, opts.data_root, progress=req.progress, options=opts.dataset_opts)
    split = resolve_split(opts, dataset, Path(req.out))
    return bind(plans, split, req.out), dataset, split


def _check_out(out: Path) -> None:
    """--out must be a folder we can write in (or one we can create)."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--out {out}: {probe} is a file, not a folder; give a folder for the results")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable; give a folder you can write in")


def _check_priors(prompt_list, encoder_list) -> None:
    """Fail on unknown prompt sets / encoders before any run starts (without loading weights)."""
    from bench.core.registry import PROMPTS
    from priors.encoders import encoder_class

    for p in prompt_list:
        if not (p.endswith(".json") or "/" in p):
            PROMPTS.get(p)
    for e in encoder_list:
        _, arg, cls = encoder_class(e)
        cls.check_spec(arg)


def _priors_fn(prompts: str, encoder: str, class_names, device: str):
    def load():
        from priors.cache import prior_embeddings

        return prior_embeddings(prompts, encoder, class_names, device=device)

    return load


def _quiet(*args, **kwargs) -> None:
    """Log function of ranks other than 0 (only rank 0 reports)."""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` -> (2, 4): the 2nd of 4 disjoint slices (1-based).

    Raises:
        UserError: not ``i/n`` with 1 <= i <= n.
    """
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text}: write i/n, e.g. --shard 1/4")
    if not (1 <= i <= n):
        raise UserError(f"--shard {text}: i must lie in 1..n")
    return i, n


def make_spec(p: RunPlan, dataset, split, device, progress: bool, command=None, **extra):
    """The :class:`bench.train.RunSpec` of one bound plan (see :func:`plan`): the plan's fields,
    the loaded dataset and split, the device it runs on and the provenance ``config.json`` keeps."""
    from bench.train import RunSpec

    config = {**p.config(), "device": str(device), "git_commit": _git_commit(), "versions": _versions(),
              "hardware": {"platform": platform.platform(), "cpus": os.cpu_count()}, "command": list(command or sys.argv)}
    priors = _priors_fn(p.priors.prompts, p.priors.text_encoder, dataset.labels, "cpu") if p.priors else None
    names = {"prompts": p.priors.prompts, "text_encoder": p.priors.text_encoder} if p.priors and not p.priors.fixed else {}
    return RunSpec(method_name=p.method, method_cls=METHODS.get(p.method), hparams=p.hparams, train=p.train, dataset=dataset,
                   protocol=p.protocol, split=split, seed=p.seed, device=device, run_dir=p.dir, config=config, progress=progress,
                   priors=priors, priors_names=names, **extra)


def result_line(run_dir: Path) -> str:
    """``    mean Dice 55.1%  train 0.638 s/it  inference 0.50 s/case`` of a finished run folder."""
    metrics, timing = read_record(run_dir / "metrics.json", "metrics"), read_record(run_dir / "timing.json", "timing")
    return (f"    mean Dice {_fmt(metrics.mean['dice'], 100, '.1f')}%  "
            f"train {_fmt(timing.train_s_per_iter.get('median'), 1, '.3f')} s/it  "
            f"inference {_fmt(timing.infer_s_per_case.get('median'), 1, '.2f')} s/case")


def execute(req: RunRequest, log=print, only: set[Path] | None = None, claims: bool = True,
            stop_signals: tuple[int, ...] | None = None) -> list[MetricsRecord]:
    """Run every planned run that is not finished (of this shard); return the metrics of the
    finished ones. A run claimed by a live worker (another process sharing the results
    directory) is skipped, not run twice.

    ``only``: run just the runs with these folders (an executor's job runs one cell);
    ``claims=False``: take no claim (a scheduler already runs each cell once, and a requeued job
    must not wait for the lease of its own killed predecessor); ``stop_signals``: the signals that
    stop training after a checkpoint (:class:`bench.train.RunSpec`)."""
    import torch

    from bench import distributed, lock
    from bench.train import run_one

    runs, dataset, split = plan(req, log if distributed.is_main() else None)
    device = distributed.init_from_env(req.device) or torch.device(runs[0].device)
    if req.trackers and distributed.is_main():
        from bench.trackers import experiment_name, prepare

        prepare(req.trackers, Path(req.out), [experiment_name(r.config()) for r in runs])
    if only is not None:
        runs = [r for r in runs if r.dir.resolve() in {Path(p).resolve() for p in only}]
    if req.shard:
        i, n = req.shard
        runs = [r for k, r in enumerate(runs) if k % n == i - 1]
        log(f"shard {i}/{n}: {len(runs)} run(s)")
    main = distributed.is_main()
    if not main:
        log = _quiet
    results = []
    for i, r in enumerate(runs, 1):
        d: Path = r.dir
        if distributed.agree(is_finished(d) and not req.force):
            log(f"[{i}/{len(runs)}] {r.method} seed {r.seed}: finished earlier, skipped ({d})"
                + ("; its predictions were not saved then: add --force to run it again and save them"
                   if req.save_predictions and not (d / "predictions").is_dir() else ""))
            if main:
                results.append(read_record(d / "metrics.json", "metrics"))
            continue
        if claims and not distributed.agree(lock.claim(d) if main else True):
            log(f"[{i}/{len(runs)}] {r.method} seed {r.seed}: claimed by another worker, skipped ({d})")
            continue
        try:
            if distributed.agree(is_finished(d) and not req.force):  # finished while we waited for the claim
                if main:
                    results.append(read_record(d / "metrics.json", "metrics"))
                continue
            if req.force and main:
                for p in d.iterdir():  # never through a link: a planted link is removed, not followed
                    if not p.name.startswith(".claim"):
                        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            tag = f" [{r.priors.prompts} x {r.priors.text_encoder}]" if r.priors and not r.priors.fixed else ""
            log(f"[{i}/{len(runs)}] {r.method}{tag} seed {r.seed} -> {d}")
            extra = {"stop_signals": stop_signals} if stop_signals else {}
            spec = make_spec(r, dataset, split, device, req.progress, save_predictions=req.save_predictions,
                             log=log if main else None, trackers=req.trackers, results_dir=Path(req.out), command=req.command,
                             **extra)
            metrics = run_one(spec)
            distributed.barrier()
            if not main:
                continue
            log(result_line(d))
            results.append(metrics)
        finally:
            if main:
                lock.release(d)
            if main and d.is_dir() and not any(d.iterdir()):
                d.rmdir()  # a run that failed before writing anything leaves no folder
    return results
