"""``python -m bench report``: tables and figures from the result folders, in one output folder.

Writes (atomically) ``table.md``, ``table.tex`` (a booktabs tabular to ``\\input``),
``table_standalone.tex`` (compiles with pdflatex), ``table.csv``, ``timing.md`` / ``.csv``,
optional ``delta.*`` (``--delta-against ROW``), ``figures/*.png|pdf`` and ``report.html``
(one self-contained page: tables + figures embedded).
"""

from __future__ import annotations

import base64
import html
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.core.errors import UserError
from bench.core.store import atomic_write_text
from reports import figures
from reports.collect import check_one_label_set, collect
from reports.render import latex_document, neutral_csv, to_csv, to_html, to_latex, to_markdown
from reports.table import build_table, delta_table, legend, load_reference, significance, timing_frame

FORMATS = ("markdown", "latex", "csv", "html")


@dataclass
class ReportRequest:
    """What ``bench report`` was asked (its flags)."""
    runs: str = "runs"
    out: str | None = None
    formats: tuple[str, ...] = FORMATS
    reference: str | None = None
    baseline: str | None = None
    delta_against: str | None = None
    skip_broken: bool = False
    allow_mixed_protocols: bool = False
    figures: bool = True
    study: str | None = None
    storage: str | None = None
    alpha: float = 0.05
    #: which test sets the marks: "method" (over runs) or "models" (these trained models, over cases)
    test: str = "method"
    std_ddof: int = 1
    missed_distance: str = "exclude"


def make_report(req: ReportRequest) -> dict[str, Path]:
    """Tables, figures and report.html from the run folders under ``req.runs``; returns the files
    written by name.

    Raises:
        UserError: a bad format, no results, broken records (unless skipped), mixed label sets.
    """
    bad = [f for f in req.formats if f not in FORMATS]
    if bad:
        raise UserError(f"--format {bad[0]}: choose from {', '.join(FORMATS)}")
    if req.study and not list(Path(req.runs).rglob("metrics.json")):
        runs = []  # a study alone (tuning stores no test results)
    else:
        runs = collect(req.runs, req.skip_broken)
    out = Path(req.out) if req.out else Path(req.runs) / "report"
    written: dict[str, Path] = {}

    def put(name: str, text: str) -> None:
        out.mkdir(parents=True, exist_ok=True)  # only once there is something to write
        atomic_write_text(out / name, text)
        written[name] = out / name

    tables = []
    figs: list[Path] = []
    import pandas as pd

    timing = pd.DataFrame()
    if runs:
        tables, timing, figs = _results_part(req, runs, out, put, written)
    if req.study:
        for p in study_figures(req.study, req.storage or f"sqlite:///{(Path(req.runs) / 'optuna.db').resolve()}", out / "figures"):
            figs.append(p)
            written[f"figures/{p.name}"] = p
    if "html" in req.formats:
        rows = {figures.segmentation_stem(r.variant): r.variant for r in runs}
        put("report.html", html_page(tables, timing, [p for p in figs if p.suffix == ".png"], req, rows))
    print(f"report of {len(runs)} run(s){' and study ' + req.study if req.study else ''} written to {out.resolve()}", file=sys.stderr)
    return written


def _results_part(req, runs, out, put, written):
    from reports import stats

    if not (0 < req.alpha < 1):
        raise UserError(f"--alpha {req.alpha}: give a significance level in (0, 1), e.g. 0.05")
    organs = check_one_label_set(runs)
    groups = {r.labeled for r in runs}
    datasets = sorted({r.metrics.dataset for r in runs})
    reference = load_reference(req.reference, datasets, groups) if req.reference else None
    # published rows stand beside runs of their own dataset only; otherwise in a table of their own
    separate_reference = reference is not None and not any(d.split("_")[0] in ("synapse", "amos") for d in datasets)
    caption = (f"Per-organ Dice (%) on the test split, mean ± std over seeds; {', '.join(datasets)}, protocol "
               f"{', '.join(sorted({r.protocol for r in runs}))}. Best per column bold, second underlined"
               + ("; reported rows (italic) are another protocol and not ranked." if reference is not None and not separate_reference else "."))
    table = build_table(runs, None if separate_reference else reference, req.allow_mixed_protocols, caption,
                        ddof=req.std_ddof, missed_distance=req.missed_distance)
    comparisons = significance(table, req.baseline, req.alpha, req.test) if req.baseline else []
    table.legend = legend(table, req.baseline, req.alpha, req.std_ddof, req.missed_distance, comparisons,
                          reference=reference is not None and not separate_reference)
    if comparisons:
        put("significance.csv", stats.to_csv(comparisons))
    tables = [("table", table)]
    if separate_reference:
        ref = build_table([], reference, organs=organs, caption=f"Published results on the real CT datasets (not the {', '.join(datasets)} of the "
                                                     f"table above; each paper's own protocol and std convention; never ranked).")
        ref.legend = "Reported rows: the papers' numbers, read from their tables (reports/published/)."
        tables.append(("published", ref))
    if req.delta_against:
        tables.append(("delta", delta_table(table, req.delta_against)))
    timing = timing_frame(runs)
    for name, t in tables:
        if "markdown" in req.formats:
            put(f"{name}.md", (t.caption + "\n\n" if t.caption else "") + to_markdown(t) + "\n" + (f"\n{t.legend}\n" if t.legend else ""))
        if "latex" in req.formats:
            put(f"{name}.tex", to_latex(t))
            put(f"{name}_standalone.tex", latex_document(f"{name}.tex", t.caption, t.legend))
        if "csv" in req.formats:
            put(f"{name}.csv", to_csv(t))
    if "markdown" in req.formats and len(timing):
        put("timing.md", timing_markdown(timing) + "\n")
    if "csv" in req.formats and len(timing):
        put("timing.csv", neutral_csv(timing).to_csv(index=False))
    figs: list[Path] = []
    if req.figures:
        fdir = out / "figures"
        fdir.mkdir(parents=True, exist_ok=True)
        figs += figures.dice_per_organ(table, runs, fdir)
        figs += figures.dice_vs_labeled(table, fdir)
        figs += figures.training_curves(runs, fdir)
        figs += figures.segmentations(runs, fdir)
        if len(timing):
            figs += figures.time_memory(runs, fdir)
        for p in figs:
            written[f"figures/{p.name}"] = p
    return tables, timing, figs


def timing_markdown(timing) -> str:
    """The timing table with plain units (1,890 MB, not 1.89e+03)."""
    t = timing.copy()
    for col, fmt in (("Train s/iter", "{:.3f}"), ("Infer s/case", "{:.2f}"), ("Peak MB", "{:,.0f}"), ("Data wait %", "{:.2f}")):
        if col in t:
            t[col] = [fmt.format(v) if v == v else "-" for v in t[col]]
    return t.to_markdown(index=False, disable_numparse=True)


def html_page(tables, timing, pngs, req: ReportRequest, rows: dict[str, str] | None = None) -> str:
    """One self-contained page (figures embedded as data URIs); ``rows``: segmentation figure
    stem -> its table row (for the figure's title)."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>bench report</title><style>",
        "body{font-family:sans-serif;margin:2em;color:#222} table.results{border-collapse:collapse;font-size:12px}"
        " table.results td,table.results th{padding:3px 6px;border-bottom:1px solid #ddd;text-align:right}"
        " table.results td:nth-child(2),table.results th:nth-child(2){text-align:left} img{max-width:100%}",
        "</style></head><body>",
        f"<h1>Benchmark report</h1><p>Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {html.escape(str(Path(req.runs).resolve()))}.</p>",
    ]
    for name, t in tables:
        title = {"table": "Per-organ Dice", "published": "Published results (another dataset)"}.get(name, "Ablation deltas")
        parts.append(f"<h2>{title}</h2><p>{html.escape(t.caption)}</p>")
        parts.append(to_html(t))
        if t.legend:
            parts.append(f"<p class='legend'>{html.escape(t.legend)}</p>")
    if len(timing):
        parts.append("<h2>Time and memory</h2>" + timing.to_html(index=False, border=0, classes="results", formatters={
            "Peak MB": lambda v: f"{v:,.0f}", "Train s/iter": lambda v: f"{v:.3f}", "Infer s/case": lambda v: f"{v:.2f}",
            "Data wait %": lambda v: f"{v:.2f}"}))
    for p in pngs:
        data = base64.b64encode(p.read_bytes()).decode()
        title = figures.TITLES.get(p.stem) or (
            f"Segmentations, {(rows or {}).get(p.stem, p.stem[len('segmentations_'):])}: best, median and worst test case"
            if p.stem.startswith("segmentations_") else p.stem.replace("_", " ").capitalize())
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def study_figures(name: str, storage: str, out: Path) -> list[Path]:
    """Optimisation history and parameter importances of an Optuna study (PNG + PDF)."""
    import warnings

    import optuna

    from bench.core.storage import make_storage, safe_url
    from bench.core.store import safe_name
    from reports.figures import _plt, _save

    safe_name(name, "study name", "give --study with letters, digits and _ . + = -")  # it names the figure files
    _plt()
    try:
        study = optuna.load_study(study_name=name, storage=make_storage(storage))
    except KeyError:
        raise UserError(f"--study {name}: no such study in {safe_url(storage)}; `bench tune` names it METHOD-DATASET-LABELEDp")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise UserError(f"--study {name} has no completed trial yet")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_optimization_history(study)
        paths += _save(ax.figure, out, f"study_{name}_history")
        if len(done) >= 2 and len({json.dumps(t.params, sort_keys=True) for t in done}) >= 2:
            ax = optuna.visualization.matplotlib.plot_param_importances(study)
            paths += _save(ax.figure, out, f"study_{name}_importance")
    return paths
