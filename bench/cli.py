"""``python -m bench``: list, run, evaluate.

Errors a user can cause print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import UserError


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


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise UserError(f"--seeds '{text}' must be integers separated by commas, e.g. 0,1,2")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m bench", description="Benchmark of class-imbalanced semi-supervised 3D organ segmentation.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    ls = sub.add_parser("list", help="list registered methods, datasets, protocols, encoders, prompts")
    ls.add_argument("kind", nargs="?", default="methods", choices=["methods", "datasets", "protocols", "encoders", "prompts"])
    ls.add_argument("--details", action="store_true", help="import each entry and show its description")

    r = sub.add_parser("run", help="train and evaluate methods")
    r.add_argument("--methods", required=True, help="comma-separated method names")
    r.add_argument("--dataset", default="phantom")
    r.add_argument("--data-root", default=None)
    r.add_argument("--protocol", default="default")
    r.add_argument("--split", default=None, help="split name or JSON file (default: drawn from --labeled)")
    r.add_argument("--labeled", default="10%", help="labeled fraction of the training cases, e.g. 10%%")
    r.add_argument("--seeds", default="0")
    r.add_argument("--iterations", type=int, default=None)
    r.add_argument("--preset", default="quick", help="quick | paper | tiny")
    r.add_argument("--device", default="auto")
    r.add_argument("--prompts", default="anatomy")
    r.add_argument("--text-encoder", default="minilm")
    r.add_argument("--out", default="runs")
    r.add_argument("--config", default=None, help="TOML config file")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--force", action="store_true", help="re-run finished runs")
    r.add_argument("--no-progress", action="store_true")

    from priors.cli import add_parser as add_priors

    add_priors(sub)

    e = sub.add_parser("evaluate", help="score a folder of NIfTI predictions against labels")
    e.add_argument("--pred", required=True)
    e.add_argument("--gt", required=True)
    e.add_argument("--labels", default=None, help="dataset.json with label names (default: BTCV 13 organs)")
    e.add_argument("--protocol", default="default")
    e.add_argument("--out", default=None, help="metrics.json path (default: <pred>/metrics.json)")
    return p


def cmd_list(args) -> int:
    from bench.registry import REGISTRIES

    reg = REGISTRIES[args.kind]
    names = reg.names()
    if not names:
        print(f"no {args.kind} registered")
        return 0
    for n in names:
        if args.details:
            obj = reg.get(n)
            doc = (getattr(obj, "__doc__", "") or "").strip().splitlines()
            print(f"{n:24s} {doc[0] if doc else ''}")
            hp = getattr(obj, "hparam_defaults", None)
            if callable(hp) and hp():
                print(" " * 25 + ", ".join(f"{k}={v}" for k, v in hp().items()))
        else:
            print(f"{n:24s} {reg.target(n)}")
    return 0


def cmd_run(args) -> int:
    from bench.runner import RunRequest, execute
    from reports.tables import per_organ_frame, to_markdown

    req = RunRequest(
        methods=_csv(args.methods),
        dataset=args.dataset,
        data_root=args.data_root,
        protocol=args.protocol,
        split=args.split,
        labeled=args.labeled,
        seeds=_seeds(args.seeds),
        iterations=args.iterations,
        preset=args.preset,
        device=args.device,
        prompts=args.prompts,
        text_encoder=args.text_encoder,
        out=args.out,
        force=args.force,
        sets=args.sets,
        config=args.config,
        progress=not args.no_progress,
    )
    results = execute(req)
    if results:
        print()
        print(f"Per-organ Dice (%) on the test split, mean over seeds; HD95 in mm ({results[0]['dataset']}, "
              f"protocol {results[0]['protocol']}, split {results[0]['split']}):")
        print(to_markdown(per_organ_frame(results)))
        print(f"\nResults are in {Path(args.out).resolve()}")
    return 0


def cmd_evaluate(args) -> int:
    from bench.evaluate import evaluate_folders

    evaluate_folders(args.pred, args.gt, args.labels, args.protocol, args.out)
    return 0


def cmd_priors(args) -> int:
    from priors.cli import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    try:
        _check_shadowing()
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        return {"list": cmd_list, "run": cmd_run, "evaluate": cmd_evaluate, "priors": cmd_priors}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs and the last checkpoints are kept (run again to resume)", file=sys.stderr)
        return 130
