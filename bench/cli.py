"""``python -m bench``: list, run, status, evaluate, predict, export, report, tune, perf, priors.

Errors a user can cause print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bench.config import DEFAULT_LABELED, DEFAULT_PRESET, split_names
from bench.core.errors import UserError


def _check_shadowing() -> None:
    """Our ``datasets`` package shares its name with Hugging Face's; refuse a foreign one."""
    import importlib.util

    spec = importlib.util.find_spec("datasets")
    ours = Path(__file__).resolve().parent.parent / "datasets"
    if spec is None or spec.origin is None or Path(spec.origin).resolve().parent != ours:
        where = spec.origin if spec and spec.origin else "nowhere"
        raise UserError(
            f"the package 'datasets' imported from {where} is not this suite's ({ours}); a foreign package "
            f"(e.g. Hugging Face datasets) shadows it: uninstall it in this environment or use a separate venv"
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m bench`` (its errors are one line, exit 2)."""
    p = _Parser(prog="python -m bench", description="Benchmark of class-imbalanced semi-supervised 3D organ segmentation.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    for add in (_add_list_parser, _add_run_parser, _add_status_parser, _add_track_parser, _add_priors_parser, _add_evaluate_parser, _add_predict_parser,
                _add_export_parser, _add_tune_parser, _add_perf_parser, _add_report_parser):
        add(sub)
    return p


def _add_list_parser(sub) -> None:
    """The ``list`` subcommand's flags."""
    ls = sub.add_parser("list", help="list registered methods, datasets, protocols, encoders, prompts")
    ls.add_argument("kind", nargs="?", default="methods", choices=["methods", "datasets", "protocols", "encoders", "prompts"])
    ls.add_argument("--details", action="store_true", help="import each entry and show its description (datasets: + fingerprint)")
    ls.add_argument("--dataset", default=None, help="with 'datasets --details': only this dataset")
    ls.add_argument("--data-root", default=None, help="with 'datasets --details': the dataset's folder")
    ls.add_argument("--preset", default="quick", help="phantom size for 'datasets --details'")
    ls.add_argument("--dataset-opt", dest="dataset_opts", action="append", default=[], metavar="KEY=VALUE")
    ls.add_argument("--label-map", default=None)


def _add_run_parser(sub) -> None:
    """The ``run`` subcommand's flags."""
    r = sub.add_parser("run", help="train and evaluate methods")
    r.add_argument("--methods", default=None, help="comma-separated method names (or 'methods' in --config)")
    r.add_argument("--dataset", default=None, help="dataset name (default phantom)")
    r.add_argument("--data-root", default=None)
    r.add_argument("--dataset-opt", dest="dataset_opts", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. modality=ct (amos) or partition=all-test (folder)")
    r.add_argument("--label-map", default=None, help="label map NAME or FILE for foreign label values (folder)")
    r.add_argument("--protocol", default=None, help="default | dhc | ga")
    r.add_argument("--split", default=None, help="split name (yours or published, e.g. ga_10p) or JSON file (default: drawn from --labeled)")
    r.add_argument("--labeled", default=None, help=f"labeled fraction of the training cases, e.g. 10%% (default {DEFAULT_LABELED.replace('%', '%%')})")
    r.add_argument("--seeds", default=None, help="e.g. 0,1,2 (default 0)")
    r.add_argument("--iterations", type=int, default=None)
    r.add_argument("--preset", default=None, help=f"demo | quick | paper | tiny (default {DEFAULT_PRESET}: about 9 min for 3 methods on 2 CPU cores)")
    r.add_argument("--device", default="auto")
    r.add_argument("--prompts", default=None, help="prompt set(s), comma-separated (default anatomy)")
    r.add_argument("--text-encoder", default=None, help="text encoder(s), comma-separated (default minilm)")
    r.add_argument("--out", default="runs")
    r.add_argument("--config", default=None, help="TOML config file (run options, [train], [method.<name>])")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--force", action="store_true", help="re-run finished runs")
    r.add_argument("--save-predictions", action="store_true",
                   help="write each test case's prediction as <run>/predictions/<case>.nii.gz (the source image's geometry)")
    r.add_argument("--tracker", default=None, metavar="NAMES",
                   help="report each run as it trains to tensorboard and/or mlflow (comma-separated; extra: pip install -e '.[track]')")
    r.add_argument("--shard", default=None, metavar="I/N", help="run only the I-th of N disjoint slices of the run matrix")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--dry-run", action="store_true",
                   help="print the fully resolved config of every planned run (one JSON object per line); read no data")
    _add_executor_flags(r, "cell")


def _add_executor_flags(p, unit: str) -> None:
    """Where the cells (tuning workers) run and with what resources (also the config file's
    ``[executor]`` table; bench/executors.py)."""
    from bench.executors import EXECUTORS

    g = p.add_argument_group("executor", f"where each {unit} runs (config file: [executor] with the same keys, name = executor)")
    g.add_argument("--executor", dest="ex_name", default=None, choices=EXECUTORS,
                   help=f"auto (default: local on a CPU of 2+ cores with 2+ {unit}s, else process; env BENCH_EXECUTOR), process "
                        f"(here, one after another), local (subprocesses), slurm (one job per {unit}, a job array), debug (submitit, in process)")
    g.add_argument("--jobs", dest="ex_jobs", type=int, default=None, metavar="N", help=f"{unit}s running at once (Slurm: the array's limit)")
    g.add_argument("--partition", dest="ex_partition", default=None, metavar="NAME")
    g.add_argument("--time", dest="ex_time", type=int, default=None, metavar="MIN", help="time limit per job, minutes (default 1440)")
    g.add_argument("--gpus", dest="ex_gpus", type=int, default=None, metavar="N", help="GPUs per task")
    g.add_argument("--cpus", dest="ex_cpus", type=int, default=None, metavar="N", help="CPUs per task")
    g.add_argument("--mem", dest="ex_mem", default=None, metavar="SIZE", help="memory per node, e.g. 32G")
    g.add_argument("--tasks", dest="ex_tasks", type=int, default=None, metavar="N",
                   help=f"processes per {unit} (torch.distributed; one per GPU)")
    g.add_argument("--nodes", dest="ex_nodes", type=int, default=None, metavar="N")
    g.add_argument("--account", dest="ex_account", default=None, metavar="NAME")
    g.add_argument("--qos", dest="ex_qos", default=None, metavar="NAME")
    g.add_argument("--sbatch", dest="ex_sbatch", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch parameter, e.g. --sbatch constraint=a100")


def _executor_flags(args) -> dict:
    return {k[3:]: v for k, v in vars(args).items() if k.startswith("ex_")}


def _add_track_parser(sub) -> None:
    """The ``track`` subcommand's flags."""
    t = sub.add_parser("track", help="rebuild the tensorboard / mlflow view of finished runs from their records")
    t.add_argument("--runs", default="runs", help="folder that `bench run --out` wrote")
    t.add_argument("--to", required=True, choices=["mlflow", "tensorboard"])


def cmd_track(args) -> int:
    """``bench track``: finished runs into a tracker, from their records."""
    from bench.trackers import mlflow_uri, track

    n = track(Path(args.runs), args.to)
    where = (f"mlflow ui --backend-store-uri {mlflow_uri(Path(args.runs))}" if args.to == "mlflow"
             else f"tensorboard --logdir {args.runs}")
    print(f"{n} run(s) added; browse them with: {where}")
    return 0


def _add_status_parser(sub) -> None:
    """The ``status`` subcommand's flags."""
    s = sub.add_parser("status", help="every cell of a results folder: done / running / queued / failed / not started")
    s.add_argument("--runs", default="runs", help="folder that `bench run --out` wrote")


def _add_priors_parser(sub) -> None:
    """The ``priors`` subcommand's flags."""
    from priors.cli import add_parser as add_priors

    add_priors(sub)


def _add_evaluate_parser(sub) -> None:
    """The ``evaluate`` subcommand's flags."""
    e = sub.add_parser("evaluate", help="score a folder of NIfTI predictions against labels")
    e.add_argument("--pred", required=True)
    e.add_argument("--gt", required=True)
    e.add_argument("--labels", default=None, help="dataset.json with label names (default: BTCV 13 organs)")
    e.add_argument("--protocol", default="default")
    e.add_argument("--dataset", default=None, help="dataset kind for the protocol's grid (synapse | amos; default: guessed from --gt's path)")
    e.add_argument("--out", default=None, help="metrics.json path (default: <pred>/metrics.json)")
    e.add_argument("--released-empty-dice", action="store_true",
                   help="dhc protocol: an organ absent from both scores Dice 0.01 as DHC's released evaluation (docs/fidelity.md)")


def _add_tune_parser(sub) -> None:
    """The ``tune`` subcommand's flags."""
    t = sub.add_parser("tune", help="Optuna study of one method (objective: eval-split Dice)")
    t.add_argument("--method", required=True)
    t.add_argument("--dataset", default=None, help="as bench run (default phantom)")
    t.add_argument("--data-root", default=None)
    t.add_argument("--protocol", default=None, help="as bench run (default default)")
    t.add_argument("--split", default=None)
    t.add_argument("--labeled", default=None, help=f"as bench run (default {DEFAULT_LABELED.replace('%', '%%')})")
    t.add_argument("--preset", default=None, help=f"demo | quick | paper | tiny (default {DEFAULT_PRESET})")
    t.add_argument("--config", default=None, help="a bench run --config TOML file (run options, [train], [method.<name>])")
    t.add_argument("--trials", type=int, default=20, help="trials this worker runs")
    t.add_argument("--storage", default=None, help="sqlite:///file.db (default <out>/optuna.db), postgresql://..., journal:PATH")
    t.add_argument("--study-name", default=None)
    t.add_argument("--budget-iterations", type=int, default=None, help="training iterations per trial (same for every method)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs")
    t.add_argument("--export", default=None, help="write the best parameters as a bench run --config TOML")
    t.add_argument("--device", default="auto")
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--progress", action="store_true")
    t.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --executor: start N workers of the study (a Slurm job array), each running --trials trials")
    _add_executor_flags(t, "worker")


def _add_perf_parser(sub) -> None:
    """The ``perf`` subcommand's flags."""
    pf = sub.add_parser("perf", help="harness overhead, metric / inference speed, GFLOP/s (ratios side by side)")
    pf.add_argument("--methods", default="mean_teacher,dhc,tak")
    pf.add_argument("--preset", default="quick", help="phantom and patch size (tiny | quick | paper)")
    pf.add_argument("--device", default="auto")
    pf.add_argument("--out", default=None, help="write the measurements as JSON")
    pf.add_argument("--peak-gflops", type=float, default=None, help="the device's peak you assume (default: a CPU estimate)")
    pf.add_argument("--variants", action="store_true",
                    help="also time each method's step with AMP / cudnn.benchmark (CUDA), channels_last_3d and torch.compile on and off")
    pf.add_argument("--memory-limit-gb", type=float, default=None,
                    help="with --memory: cap each method's process at this much address space (fail, not swap or OOM-kill)")
    pf.add_argument("--memory", action="store_true",
                    help="only peak memory of two training steps per method, each in a fresh process ('--methods all' for every method)")


def _add_report_parser(sub) -> None:
    """The ``report`` subcommand's flags."""
    rp = sub.add_parser("report", help="per-organ tables and figures from stored results")
    rp.add_argument("--runs", default="runs", help="folder that `bench run --out` wrote")
    rp.add_argument("--out", default=None, help="output folder (default: <runs>/report)")
    rp.add_argument("--format", default="latex,markdown,csv,html", help="any of latex,markdown,csv,html")
    rp.add_argument("--reference", default=None, help="'published' (or a CSV): add the published rows, marked reported")
    rp.add_argument("--baseline", default=None,
                    help="method to test every row against (see --test); Holm-corrected across the table; writes significance.csv")
    rp.add_argument("--alpha", type=float, default=0.05, help="significance level of the corrected p-values (default 0.05)")
    rp.add_argument("--test", default="method", choices=["method", "models"],
                    help="what a mark claims: 'method' (default; permutation over seeds, needs >= 5 seeds per row) or 'models' "
                         "(these trained models on these test cases: Wilcoxon over cases, seeds averaged)")
    rp.add_argument("--std-ddof", type=int, default=1, choices=[0, 1], help="std over seeds: 1 sample (default), 0 population (DHC's np.std)")
    rp.add_argument("--missed-distance", default="exclude", choices=["exclude", "penalty"],
                    help="HD95/ASD of a missed organ: exclude (default) or penalty (the case's evaluation-grid diagonal)")
    rp.add_argument("--delta-against", default=None, help="row label: also write a per-organ delta table against it")
    rp.add_argument("--skip-broken", action="store_true", help="skip unreadable result files (named on stderr)")
    rp.add_argument("--allow-mixed-protocols", action="store_true")
    rp.add_argument("--no-figures", action="store_true")
    rp.add_argument("--study", default=None, help="Optuna study: add its history and parameter-importance figures")
    rp.add_argument("--storage", default=None, help="the study's storage (default sqlite:///<runs>/optuna.db)")


def cmd_list(args) -> int:
    """``bench list``: registered names (methods: family, paper, released code), or ``--details``."""
    from bench.core.registry import REGISTRIES

    reg = REGISTRIES[args.kind]
    names = reg.names()
    if not names:
        print(f"no {args.kind} registered")
        return 0
    if args.kind == "datasets" and args.dataset:
        names = [reg.get(args.dataset) and args.dataset]
    for n in names:
        if args.details:
            obj = reg.get(n)
            doc = (getattr(obj, "__doc__", "") or "").strip().splitlines()
            print(f"{n:24s} {doc[0] if doc else ''}")
            if hasattr(obj, "Hparams"):
                from bench.config import describe_hparams

                if describe_hparams(obj):
                    print(" " * 25 + describe_hparams(obj))
            if args.kind == "datasets":
                _print_fingerprint(n, args)
        elif args.kind == "methods":
            info = reg.static_info(n, ("family", "paper", "code"))
            code = info.get("code") or "no released code"
            print(f"{n:16s} {info.get('family', ''):20s} {info.get('paper', '')}  [{code}]")
        else:
            print(f"{n:24s} {reg.target(n)}")
    return 0


def _dataset_options(items: list[str], label_map: str | None, base: dict | None = None) -> dict:
    """Dataset factory options: ``base`` (a config's ``dataset_opts``) < ``--dataset-opt k=v`` <
    ``--label-map``."""
    from bench.config import parse_set

    opts = dict(base or {})
    opts.update(parse_set(items or [], flag="--dataset-opt"))
    if label_map:
        opts["label_map"] = label_map
    return opts


def _print_fingerprint(name: str, args) -> None:
    import inspect

    from bench.core.registry import DATASETS
    from bench.runner import load_dataset
    from datasets.fingerprint import fingerprint, format_fingerprint

    needs_root = "data_root" in inspect.signature(DATASETS.get(name)).parameters and not name.startswith("phantom")
    if needs_root and not args.data_root:
        print(" " * 25 + f"(fingerprint: python -m bench list datasets --details --dataset {name} --data-root DIR)")
        return
    ds = load_dataset(name, args.preset, args.data_root if needs_root else None, progress=True,
                      options=_dataset_options(args.dataset_opts, args.label_map))
    print(format_fingerprint(fingerprint(ds)))


def cmd_run(args) -> int:
    """``bench run``: train and test the run matrix (or print it with ``--dry-run``), then the Dice table."""
    from bench.runner import RunRequest, dry_run, execute
    from bench.trackers import parse_trackers
    from reports.render import to_markdown
    from reports.table import summary_table

    if not args.out.strip():
        raise UserError("--out is empty; give a folder for the results, e.g. --out runs")

    flags = {"methods": args.methods, "dataset": args.dataset, "data_root": args.data_root, "protocol": args.protocol,
             "split": args.split, "labeled": args.labeled, "seeds": args.seeds, "preset": args.preset, "prompts": args.prompts,
             "text_encoder": args.text_encoder, "iterations": args.iterations, "label_map": args.label_map,
             "dataset_opts": _dataset_options(args.dataset_opts, None) or None}
    req = RunRequest.build(flags, args.sets, args.config, shard=args.shard, device=args.device, out=args.out, force=args.force,
                           save_predictions=args.save_predictions, progress=not args.no_progress,
                           trackers=parse_trackers(args.tracker), command=tuple(sys.argv))
    from bench.executors import executor_options, submit_run

    ex = executor_options(req.layers, _executor_flags(args))
    if args.dry_run:
        import json

        for cfg in dry_run(req):
            print(json.dumps(cfg, sort_keys=True))
        return 0
    if ex.name == "auto":
        from bench.executors import choose_auto
        from bench.runner import pick_device, resolve

        ex = choose_auto(ex, len(resolve(req)), pick_device(req.device).type, shard=bool(req.shard), log=print)
    if ex.name != "process":
        if req.shard:
            raise UserError(f"--shard slices the matrix between processes you start; --executor {ex.name} starts one job per cell "
                            f"itself: drop --shard")
        results = submit_run(req, ex)
    else:
        from bench.executors import check_executor

        check_executor(ex)
        results = execute(req)
    from bench import distributed

    distributed.shutdown()
    if results:
        print()
        print(f"Per-organ Dice (%) on the test split, mean over seeds; HD95 in mm ({results[0].dataset}, "
              f"protocol {results[0].protocol}, split {results[0].split}):")
        print(to_markdown(summary_table(results)))
        for line in untrained_notes(results, req.options.preset):
            print(line)
        print(f"\nResults are in {Path(args.out).resolve()}")
    return 0


def _add_predict_parser(sub) -> None:
    """The ``predict`` subcommand's flags."""
    p = sub.add_parser("predict", help="label new NIfTI scans with trained runs or a bundle (ensembles, test-time flips)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", action="append", help="a finished run folder (give several for an ensemble of their probabilities)")
    src.add_argument("--bundle", action="append", help="a file written by `bench export` (several: an ensemble)")
    p.add_argument("--input", required=True, help="a NIfTI file or a folder of .nii / .nii.gz (convert DICOM first, e.g. dcm2niix)")
    p.add_argument("--out", required=True, help="folder for <case>.nii.gz label maps (uint8, each input's grid and affine)")
    p.add_argument("--tta", default="none", choices=["none", "flip"], help="flip: mean over the 8 mirrorings (left/right labels swapped back)")
    p.add_argument("--probabilities", action="store_true", help="also write <case>_probabilities.nii.gz (float32, one volume per class)")
    p.add_argument("--device", default="auto")


def _add_export_parser(sub) -> None:
    """The ``export`` subcommand's flags."""
    x = sub.add_parser("export", help="one portable file of a run: weights, config, labels, protocol, text priors")
    x.add_argument("run", help="a finished run folder")
    x.add_argument("--out", required=True, help="the bundle file to write (e.g. model.bench)")


def cmd_predict(args) -> int:
    """``bench predict``: trained runs or bundles on new scans."""
    from bench.predict import input_files, load_bundle, load_run, predict_files
    from bench.runner import pick_device

    files = input_files(args.input)  # refused before any model loads
    device = pick_device(args.device)
    models = [load_run(r, device) for r in args.run or []] + [load_bundle(b, device) for b in args.bundle or []]
    for r in predict_files(models, files, args.out, device, tta=args.tta, save_probabilities=args.probabilities):
        print(f"{Path(r['input']).name}: {'x'.join(map(str, r['shape']))} voxels, {r['seconds']:.1f} s, labels {r['labels']}")
    print(f"label maps in {args.out}")
    return 0


def cmd_export(args) -> int:
    """``bench export``: a run as one bundle file."""
    from bench.predict import export_bundle

    out = export_bundle(args.run, args.out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")
    return 0


def cmd_evaluate(args) -> int:
    """``bench evaluate``: score a folder of predictions against labels under a protocol."""
    from bench.evaluate import evaluate_folders

    evaluate_folders(args.pred, args.gt, args.labels, args.protocol, args.out, dataset=args.dataset,
                     released_empty_dice=args.released_empty_dice)
    return 0


def cmd_tune(args) -> int:
    """``bench tune``: one worker of an Optuna study."""
    import logging

    import optuna

    from bench.tune import TuneRequest, tune

    optuna.logging.set_verbosity(logging.ERROR)  # a failing trial is reported once, by us
    req = TuneRequest(
        method=args.method, dataset=args.dataset, data_root=args.data_root, protocol=args.protocol, split=args.split,
        labeled=args.labeled, preset=args.preset, config=args.config, trials=args.trials, storage=args.storage, study_name=args.study_name,
        budget_iterations=args.budget_iterations, seed=args.seed, out=args.out, export=args.export, device=args.device,
        sets=args.sets, progress=args.progress,
    )
    from bench.config import file_layer
    from bench.executors import check_executor, executor_options, submit_tune

    ex = executor_options([file_layer(args.config)] if args.config else [], _executor_flags(args))
    if ex.name == "auto":  # a study's trials run in this process unless workers are asked for
        ex = dataclasses.replace(ex, name="process")
    if ex.name == "process":
        if args.workers is not None:
            raise UserError("--workers starts workers through an executor; add --executor slurm (or local), or start "
                            "`bench tune` once per worker yourself")
        check_executor(ex)
        tune(req)
    else:
        submit_tune(req, ex, args.workers or 1)
    return 0


def cmd_status(args) -> int:
    """``bench status``: every cell of a results folder and its state."""
    from bench.executors import format_status, status

    print(format_status(status(args.runs)))
    return 0


#: best validation Dice below which a run is reported as "had not started to learn"
UNTRAINED_VAL_DICE = 0.05


def untrained_notes(results: list, preset: str) -> list[str]:
    """One line per run whose best validation Dice stayed below 5 %: its test numbers say the
    budget was too short for the method, not how good the method is."""
    from bench.core.registry import METHODS

    notes = []
    for r in results:
        v = r.val_dice
        if v is not None and v == v and v < UNTRAINED_VAL_DICE:
            why = getattr(METHODS.get(r.method), "slow_start", "") if r.method in METHODS else ""
            notes.append(f"note: {r.method} seed {r.seed} had not started to learn (best validation Dice "
                         f"{100 * v:.1f}% at step {r.checkpoint_step}, preset {preset}); its row measures the budget, "
                         f"not the method - give it more iterations (--preset quick, or --iterations N)"
                         + (f"; {r.method}: {why}" if why else ""))
    return notes


def cmd_perf(args) -> int:
    """``bench perf``: the suite's speed ratios, or each method's peak memory (``--memory``)."""
    from bench.config import PRESETS
    from bench.core.registry import METHODS
    from bench.perf import memory_table, run_perf

    if args.preset not in PRESETS:
        raise UserError(f"unknown preset '{args.preset}'; choose one of {', '.join(PRESETS)}")
    methods = METHODS.names() if args.methods == "all" else split_names(args.methods)
    for name in methods:
        METHODS.get(name)  # unknown names fail here, with the list of known ones
    if not args.memory:
        run_perf(methods, args.preset, args.device, args.out, args.peak_gflops, variants=args.variants)
        return 0
    rows = memory_table(methods, args.preset, args.device, limit_gb=args.memory_limit_gb)
    if args.out:
        import json
        from pathlib import Path

        from bench.core.store import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps({"memory": rows}, indent=1))
        print(f"written to {args.out}")
    return 0 if all("error" not in r for r in rows) else 1


def cmd_report(args) -> int:
    """``bench report``: tables and figures from stored runs."""
    from reports.report import FORMATS, ReportRequest, make_report

    if not split_names(args.format):
        raise UserError(f"--format is empty; choose any of {','.join(FORMATS)}")
    if args.out is not None and not args.out.strip():
        raise UserError("--out is empty; give a folder for the report (or leave --out out: <runs>/report)")
    make_report(ReportRequest(
        runs=args.runs, out=args.out, formats=tuple(split_names(args.format)), reference=args.reference, baseline=args.baseline,
        delta_against=args.delta_against, skip_broken=args.skip_broken, allow_mixed_protocols=args.allow_mixed_protocols,
        figures=not args.no_figures, study=args.study, storage=args.storage, alpha=args.alpha, test=args.test, std_ddof=args.std_ddof,
        missed_distance=args.missed_distance,
    ))
    return 0


def cmd_priors(args) -> int:
    """``bench priors``: prompt sets and text encoders."""
    from priors.cli import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    """The command line: returns the exit status (2 and one line for an error the user can fix,
    130 when interrupted).
    """
    try:
        _check_shadowing()
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        return {"list": cmd_list, "run": cmd_run, "status": cmd_status, "track": cmd_track, "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export, "report": cmd_report, "tune": cmd_tune, "perf": cmd_perf, "priors": cmd_priors}[args.command](args)
    except UserError as e:
        from bench.core.redact import safe_text

        print(f"error: {safe_text(e)}", file=sys.stderr)  # no credential or control character reaches the terminal
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", 2)  # SIGINT 2 -> 130, SIGTERM 15 -> 143 (the shell's convention)
        print(f"interrupted (signal {signum}); finished runs and the last checkpoints are kept (run again to resume)", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # the output was piped into e.g. `head`, which stopped reading
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
