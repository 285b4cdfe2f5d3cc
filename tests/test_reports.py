"""Reports from stored results: golden tables on fixed fake result folders, ranking with ties,
NaN handling, reference rows, significance, LaTeX (pdflatex) and HTML (headless Chromium)
rendering, figures, and the bad inputs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

import reports
from bench.cli import main
from bench.core.errors import UserError
from reports.collect import collect
from reports.render import to_latex, to_markdown
from reports.report import ReportRequest, make_report
from reports.table import build_table, rank_marks, significance
from tests.test_cli import _bad

GOLDEN = Path(__file__).parent / "golden"
ORGANS = ["spleen", "liver", "gallbladder"]
IN_CI = os.environ.get("CI") == "true"


def _run(root: Path, method: str, seed: int, dice: dict, cases: dict | None = None, protocol="default", split="labeled_10p",
         organs=ORGANS, hd95=5.0, asd=1.0, timing=True, nsd: float | None = None):
    d = root / "phantom" / protocol / split / method / "abc" / f"seed_{seed}"
    d.mkdir(parents=True)
    per = {o: {"dice": dice[o], "hd95": hd95, "asd": asd, "assd": asd} for o in organs}
    finite = [v for v in dice.values() if not math.isnan(v)]
    cases = cases or {"c1": {o: {"dice": dice[o]} for o in organs}}
    metrics = {"method": method, "dataset": "phantom", "protocol": protocol, "protocol_version": "1", "split": split, "seed": seed,
               "organs": organs, "per_organ": per, "mean": {"dice": sum(finite) / len(finite), "hd95": hd95, "asd": asd},
               "cases": cases, "labeled_voxel_share": {"spleen": 0.1, "liver": 0.85, "gallbladder": 0.05},
               "labeled_fraction": 0.2 if "20p" in split else 0.1}
    if nsd is not None:  # a schema-3 record (NSD scored); without: an earlier record
        metrics["mean"]["nsd"] = nsd
        metrics["schema_version"] = 3
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "config.json").write_text(json.dumps({"method": method}))
    if timing:
        (d / "timing.json").write_text(json.dumps({"device": "CPU test", "train_s_per_iter": {"median": 0.5 if method == "a" else 1.5},
                                                   "infer_s_per_case": {"median": 0.2}, "peak_memory_mb": 100.0,
                                                   "peak_memory_kind": "process_rss", "data_wait_share": 0.01}))
        (d / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 1, "val_dice": 0.4}\n')
    return d


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "runs"
    _run(root, "a", 0, {"spleen": 0.90, "liver": 0.95, "gallbladder": 0.40})
    _run(root, "a", 1, {"spleen": 0.80, "liver": 0.93, "gallbladder": math.nan})  # gallbladder absent: NaN
    _run(root, "b", 0, {"spleen": 0.90, "liver": 0.90, "gallbladder": 0.20}, hd95=3.0)
    _run(root, "c", 0, {"spleen": 0.70, "liver": 0.97, "gallbladder": 0.30}, hd95=9.0, nsd=0.625)
    _run(root, "a", 0, {"spleen": 0.95, "liver": 0.96, "gallbladder": 0.60}, split="labeled_20p")
    return root


def test_golden_markdown_and_latex(results):
    table = build_table(collect(results))
    md, tex = to_markdown(table), to_latex(table)
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / "report_table.md").write_text(md)
        (GOLDEN / "report_table.tex").write_text(tex)
    assert md == (GOLDEN / "report_table.md").read_text()
    assert tex == (GOLDEN / "report_table.tex").read_text()


def test_means_skip_nan_and_std_over_seeds(results):
    table = build_table(collect(results))
    assert table.mean.at["a", "gallbladder"] == pytest.approx(40.0)  # NaN seed excluded
    assert math.isnan(table.std.at["a", "gallbladder"])  # one finite value: no std
    assert table.mean.at["a", "spleen"] == pytest.approx(85.0) and table.std.at["a", "spleen"] == pytest.approx(7.0711, abs=1e-3)
    assert table.mean.at["a", "Large"] == pytest.approx((85.0 + 94.0) / 2)  # spleen, liver
    assert table.n["a"] == 2


def test_bold_and_underline_with_ties(results):
    table = build_table(collect(results))
    marks = rank_marks(table)
    # spleen at 10%: a 85.0, b 90.0, c 70.0 -> b best, a second
    assert marks[("b", "spleen")] == "best" and marks[("a", "spleen")] == "second" and ("c", "spleen") not in marks
    # HD95 is lower-is-better: b (3.0) best
    assert marks[("b", "HD95")] == "best"
    # a tie for best: both bold; the next distinct value is also the worst: no underline
    table.mean.loc["c", "spleen"] = 90.0
    marks = rank_marks(table)
    assert marks[("b", "spleen")] == marks[("c", "spleen")] == "best" and ("a", "spleen") not in marks
    # one row above 0, the others tied at 0.0: the tie at 0 is not "second best"
    table.mean.loc[["a", "b"], "gallbladder"] = 0.0
    table.mean.loc["c", "gallbladder"] = 30.0
    marks = rank_marks(table)
    assert marks[("c", "gallbladder")] == "best" and ("a", "gallbladder") not in marks and ("b", "gallbladder") not in marks
    # a group with one row is not ranked
    assert not [k for k in marks if k[0] == "a @20%"]


def test_nan_cells_render_as_dash(tmp_path):
    _run(tmp_path, "a", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": math.nan})
    md = to_markdown(build_table(collect(tmp_path)))
    assert "| -" in md and "nan" not in md.lower()


def test_reference_rows_are_marked_and_not_ranked(results):
    from reports.table import load_reference

    runs = collect(results)
    ref = load_reference("published", ["phantom"], ["10%"])  # the BTCV phantom -> the Synapse table
    ref = ref[ref.method.isin(["V-Net(fully)"]) & (ref.paper == "TAK paper")]
    organs = ORGANS
    table = build_table(runs, ref)
    label = "V-Net(fully) (reported, TAK paper)"
    assert table.rows.at[label, "kind"] == "reported" and table.rows.at[label, "protocol"] == "tak-paper"
    assert table.mean.at[label, "liver"] == pytest.approx(94.8)  # the paper's number, not rescaled
    marks = rank_marks(table)
    assert not [k for k in marks if k[0] == label]
    assert marks[("c", "liver")] == "best"  # ranked among measured rows only
    assert "*V-Net(fully) (reported, TAK paper)*" in to_markdown(table)
    assert all(o in organs for o in ORGANS)


def _designed(root: Path, n_cases: int = 12, seeds: int = 5) -> None:
    """12 test cases x 5 seeds: a baseline, a row mixed across cases (+2 points on 10 cases,
    -5 / -6 on 2, the same on every seed), a row better on every case, a row worse on every case;
    the baseline's seeds differ by a little, the other rows' not at all."""
    base = [0.50 + 0.01 * i for i in range(n_cases)]
    rows = {
        "base": base,
        "mixed": [b + 0.02 for b in base[:10]] + [base[10] - 0.05, base[11] - 0.06],
        "better": [b + 0.03 + 0.001 * i for i, b in enumerate(base)],
        "worse": [b - 0.04 - 0.001 * i for i, b in enumerate(base)],
    }
    for method, vals in rows.items():
        for seed in range(seeds):
            shift = 0.002 * (seed - 2) if method == "base" else 0.0
            cases = {f"c{i:02d}": {o: {"dice": v + shift} for o in ORGANS} for i, v in enumerate(vals)}
            _run(root, method, seed, {o: 0.5 for o in ORGANS}, cases=cases)


def _rows(root: Path, spec: dict[str, list[list[float]]]) -> None:
    """Result folders from {method: [per seed: [per case: mean Dice (0-1)]]} (seeds 0, 1, ...)."""
    for method, runs in spec.items():
        for seed, vals in enumerate(runs):
            _run(root, method, seed, {o: 0.5 for o in ORGANS}, cases={f"c{i:02d}": {o: {"dice": v} for o in ORGANS} for i, v in enumerate(vals)})


CASES = [0.50 + 0.01 * i for i in range(12)]
BASE = [[c + 0.002 * (s - 2) for c in CASES] for s in range(5)]  # 5 seeds, a little apart


def test_method_level_marks_need_seed_consistency_and_a_ci_that_excludes_zero(tmp_path):
    _rows(tmp_path, {
        "base": BASE,
        # every seed +2 points on every case: all 5 run means above the baseline's 5
        "steady": [[c + 0.02 for c in CASES] for _ in range(5)],
        # seed-consistent but case-mixed: +8 / -4 points alternating (mean +2): the runs are all above,
        # the cases are not: the permutation test is small, the two-level CI includes 0
        "case_mixed": [[c + (0.08 if i % 2 == 0 else -0.04) + 0.001 * s for i, c in enumerate(CASES)] for s in range(5)],
        # case-consistent but seed-mixed: seeds far above / far below, +0.6 points on average, every
        # case above after averaging seeds: the case-level test of these models is small, the method's is not
        "seed_mixed": [[c + off + 0.0002 * i for i, c in enumerate(CASES)] for off in (0.10, -0.09, 0.10, -0.09, 0.01)],
        "one_seed": [[c + 0.05 for c in CASES]],
        "three_seeds": [[c + 0.05 for c in CASES] for _ in range(3)],
    })
    table = build_table(collect(tmp_path))
    comps = {c.method: c for c in significance(table, "base")}
    steady, case_mixed, seed_mixed = comps["steady"], comps["case_mixed"], comps["seed_mixed"]
    # 5 vs 5 runs, all of one row above all of the other: exact p = 2 / C(10, 5) = 2 / 252
    assert steady.p_value == pytest.approx(2 / 252) and steady.p_min == pytest.approx(2 / 252)
    assert steady.p_adjusted == pytest.approx(4 * 2 / 252)  # Holm over the 4 testable rows (one_seed is not)
    assert steady.ci_low > 0 and steady.direction == "better" and steady.pair_signs == "25/25 better"
    assert steady.mean_diff == pytest.approx(2.0) and steady.prob_better == pytest.approx(1.0)
    assert case_mixed.p_value == pytest.approx(2 / 252) and case_mixed.ci_low < 0 < case_mixed.ci_high
    assert case_mixed.direction == "n.s." and case_mixed.models_direction == "n.s."
    assert seed_mixed.p_value > 0.3 and seed_mixed.direction == "n.s."
    assert seed_mixed.models_p_value == pytest.approx(2 / 2**12) and seed_mixed.models_direction == "better"
    assert comps["one_seed"].direction == "untestable" and comps["one_seed"].p_value != comps["one_seed"].p_value
    three = comps["three_seeds"]  # 3 of the baseline's 5 seeds in common: 3 vs 3
    assert three.seed_sets == "common 3 of 3 / 5 seeds" and three.seeds == "0 1 2" and three.baseline_seeds == 3
    assert three.p_value == pytest.approx(2 / 20) and three.direction == "too few seeds" and three.ci_low > 0
    assert table.marks == {("steady", "Dice"): "better"}
    # the same folders under the case-level test of these models: seed_mixed gets a mark
    table = build_table(collect(tmp_path))
    significance(table, "base", test="models")
    assert table.marks[("seed_mixed", "Dice")] == "better" and ("case_mixed", "Dice") not in table.marks


def test_permutation_bootstrap_and_pair_statistics_by_hand():
    import numpy as np

    from reports.stats import pair_signs, permutation_p, prob_better, smallest_permutation_p, two_level_bootstrap_ci

    # run means 1, 2 | 3, 4: |1.5 - 3.5| = 2; the 6 splits give 2, 1, 0, 0, 1, 2: p = 2/6
    assert permutation_p(np.array([[1.0], [2.0]]), np.array([[3.0], [4.0]])) == pytest.approx(1 / 3)
    assert smallest_permutation_p(3, 3) == pytest.approx(0.1) and smallest_permutation_p(5, 5) == pytest.approx(2 / 252)
    assert smallest_permutation_p(2, 3) == pytest.approx(1 / 10)
    # constant scores: every resample gives the same difference
    assert two_level_bootstrap_ci(np.full((3, 4), 60.0), np.full((2, 4), 50.0)) == pytest.approx((10.0, 10.0))
    # (1 > 2) no, (3 > 2) yes; ties count one half
    assert prob_better(np.array([[1.0, 3.0]]), np.array([[2.0, 2.0]])) == pytest.approx(0.5)
    assert prob_better(np.array([[2.0]]), np.array([[2.0]])) == pytest.approx(0.5)
    assert pair_signs(np.array([[3.0], [1.0]]), np.array([[2.0]])) == "1/2 better, 1/2 worse"


def test_holm_adjustment_by_hand():
    from reports.stats import holm

    # sorted 0.01, 0.03, 0.04 with m = 3: 0.03, max(0.03, 2 x 0.03) = 0.06, max(0.06, 1 x 0.04) = 0.06
    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])


def test_report_writes_significance_csv_and_legends(tmp_path):
    import csv

    _designed(tmp_path / "runs")
    out = tmp_path / "rep"
    assert main(["report", "--runs", str(tmp_path / "runs"), "--out", str(out), "--baseline", "base", "--no-figures",
                 "--alpha", "0.03", "--std-ddof", "0"]) == 0
    rows = {r["method"]: r for r in csv.DictReader((out / "significance.csv").open())}
    assert set(rows) == {"mixed", "better", "worse"}
    assert {"group", "method", "baseline", "test", "n_cases", "n_seeds", "seeds", "mean_diff", "ci_low", "ci_high", "p_value",
            "p_adjusted", "prob_better", "pair_signs", "direction", "models_p_value"} <= set(rows["better"])
    assert rows["better"]["direction"] == "better" and rows["mixed"]["direction"] == "n.s." and rows["better"]["n_cases"] == "12"
    assert rows["better"]["p_value"] == f"{2 / 252:.6g}" and rows["better"]["test"] == "method"
    for name in ("table.md", "table_standalone.tex", "report.html"):
        text = (out / name).read_text()
        assert "permutation test over runs" in text and "Holm" in text and "ddof=0" in text and "0.03" in text, name
        assert "Missed" in text and "at least 5 seeds" in text, name


def test_delta_table(results):
    from reports.table import delta_table

    d = delta_table(build_table(collect(results)), "b")
    assert d.mean.at["a", "spleen"] == pytest.approx(-5.0) and d.mean.at["c", "liver"] == pytest.approx(7.0)
    assert "a @20%" not in d.mean.index


def test_report_command_writes_everything(results, capsys):
    out = results.parent / "rep"
    assert main(["report", "--runs", str(results), "--out", str(out), "--baseline", "b", "--delta-against", "b"]) == 0
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for n in ("table.md", "table.tex", "table_standalone.tex", "table.csv", "timing.md", "timing.csv", "delta.md", "report.html",
              "figures/dice_per_organ.png", "figures/dice_per_organ.pdf", "figures/dice_vs_labeled.png",
              "figures/training_curves.png", "figures/time_memory.pdf"):
        assert n in names, n
    assert not [n for n in names if n.endswith(".tmp")]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "font-weight: bold" in html and "src='http" not in html
    # section titles are words, not file names
    assert "<h2>Mean Dice against the labeled share</h2>" in html and "<h2>Time and memory per method</h2>" in html
    assert "dice vs labeled" not in html and "time memory" not in html
    csv = (out / "table.csv").read_text().splitlines()
    assert csv[0].startswith("row,group,kind,protocol,seeds,spleen_mean,spleen_std")


def test_dice_vs_labeled_is_drawn_only_for_two_or_more_shares(tmp_path):
    """One labeled share is one x value: no figure (the main command runs one share)."""
    root = tmp_path / "runs"
    _run(root, "a", 0, {"spleen": 0.90, "liver": 0.95, "gallbladder": 0.40})
    _run(root, "b", 0, {"spleen": 0.80, "liver": 0.90, "gallbladder": 0.30})
    out = tmp_path / "rep"
    assert main(["report", "--runs", str(root), "--out", str(out)]) == 0
    assert not (out / "figures" / "dice_vs_labeled.png").exists() and (out / "figures" / "dice_per_organ.png").exists()
    assert "Mean Dice against the labeled share" not in (out / "report.html").read_text()


def _tool(name):
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed; .ci/run installs it")
        pytest.skip(f"{name} not installed (CI installs it)")
    return path


def test_latex_compiles_and_first_page_renders(results, tmp_path):
    pdflatex, pdftoppm = _tool("pdflatex"), _tool("pdftoppm")
    out = tmp_path / "rep"
    make_report(ReportRequest(runs=str(results), out=str(out), formats=("latex",), figures=False))
    r = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "table_standalone.tex"], cwd=out,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    subprocess.run([pdftoppm, "-png", "-r", "50", "-f", "1", "-l", "1", "table_standalone.pdf", "page"], cwd=out, check=True, timeout=60)
    png = next(out.glob("page*.png"))
    assert png.stat().st_size > 2000
    # with significance markers (amssymb) and the legend under the table
    _designed(tmp_path / "designed")
    make_report(ReportRequest(runs=str(tmp_path / "designed"), out=str(tmp_path / "sig"), formats=("latex",), figures=False,
                              baseline="base"))
    assert r"\blacktriangle" in (tmp_path / "sig" / "table.tex").read_text()
    r = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "table_standalone.tex"], cwd=tmp_path / "sig",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]


def test_html_renders_in_headless_chromium(results, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        _tool("chromium")
    out = tmp_path / "rep"
    make_report(ReportRequest(runs=str(results), out=str(out), formats=("html",)))
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,900",
                    (out / "report.html").as_uri()], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10000
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] == 900 and img.std() > 0.05  # not a blank page


# -- bad input --------------------------------------------------------------------------------


def test_no_results(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _bad(capsys, ["report", "--runs", str(tmp_path / "empty")], "no results (metrics.json) found under")
    assert str((tmp_path / "empty").resolve()) in err
    _bad(capsys, ["report", "--runs", str(tmp_path / "nope")], "does not exist")


def test_refuses_mixed_protocols_unless_told(results, capsys):
    _run(results, "a", 0, {o: 0.5 for o in ORGANS}, protocol="dhc")
    _bad(capsys, ["report", "--runs", str(results), "--out", str(results.parent / "r")], "different protocols")
    table = build_table(collect(results), allow_mixed=True)
    assert "a (dhc/1)" in table.mean.index and "a (default/1)" in table.mean.index


def test_refuses_mixed_label_sets(tmp_path, capsys):
    _run(tmp_path, "a", 0, {o: 0.5 for o in ORGANS})
    _run(tmp_path, "b", 0, {"spleen": 0.5, "liver": 0.5}, organs=["spleen", "liver"])
    _bad(capsys, ["report", "--runs", str(tmp_path)], "different label sets")


def test_corrupt_metrics_named_and_skippable(results, capsys):
    bad = next(results.rglob("metrics.json"))
    bad.write_text('{"method": "a", "org')
    out = results.parent / "r"
    err = _bad(capsys, ["report", "--runs", str(results), "--out", str(out)], str(bad))
    assert "--skip-broken" in err and not out.exists()
    assert main(["report", "--runs", str(results), "--out", str(out), "--skip-broken", "--no-figures"]) == 0
    assert str(bad) in capsys.readouterr().err


def test_unknown_baseline_and_format(results, capsys):
    _bad(capsys, ["report", "--runs", str(results), "--baseline", "zzz", "--out", str(results.parent / "r")], "--baseline zzz")
    _bad(capsys, ["report", "--runs", str(results), "--format", "docx"], "--format docx")


def test_runs_of_one_method_with_other_settings_are_separate_rows(tmp_path):
    for chash, weight in (("h1", 0.1), ("h2", 0.3)):
        d = _run(tmp_path / chash, "mt", 0, {o: weight + 0.5 for o in ORGANS})
        (d / "config.json").write_text(json.dumps({"config_hash": chash, "hparams": {"consistency": weight, "ema_decay": 0.99},
                                                   "train": {"lr": 0.1}}))
    from reports.table import delta_table

    table = build_table(collect(tmp_path))
    assert list(table.rows["name"]) == ["mt {consistency=0.1}", "mt {consistency=0.3}"]
    d = delta_table(table, "mt {consistency=0.1}")
    assert d.mean.at["mt {consistency=0.3}", "Dice"] == pytest.approx(20.0)


def test_missed_organs_counted_and_penalty_policy(tmp_path):
    """A run that misses the gallbladder in one of two cases: Missed = 1; under `exclude` its
    distances come from the other case only, under `penalty` the missed case counts with the
    case's diagonal."""
    cases = {
        "c1": {"spleen": {"dice": 0.9, "hd95": 2.0, "asd": 1.0}, "liver": {"dice": 0.9, "hd95": 2.0, "asd": 1.0},
               "gallbladder": {"dice": 0.0, "hd95": math.nan, "asd": math.nan, "missed": True}},
        "c2": {"spleen": {"dice": 0.9, "hd95": 2.0, "asd": 1.0}, "liver": {"dice": 0.9, "hd95": 2.0, "asd": 1.0},
               "gallbladder": {"dice": 0.5, "hd95": 4.0, "asd": 3.0}},
    }
    d = _run(tmp_path, "m", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.25}, cases=cases, hd95=(2 + 2 + 4) / 3, asd=5 / 3)
    m = json.loads((d / "metrics.json").read_text())
    m["penalty_distance"] = {"c1": 100.0, "c2": 100.0}
    (d / "metrics.json").write_text(json.dumps(m))
    excl = build_table(collect(tmp_path))
    assert excl.mean.at["m", "Missed"] == 1.0
    assert excl.mean.at["m", "HD95"] == pytest.approx((2 + 2 + 4) / 3)  # the stored means: the missed organ left out
    pen = build_table(collect(tmp_path), missed_distance="penalty")
    # per organ mean over cases: spleen 2, liver 2, gallbladder (100 + 4) / 2 = 52 -> mean 56 / 3
    assert pen.mean.at["m", "HD95"] == pytest.approx((2 + 2 + 52) / 3) and pen.mean.at["m", "ASD"] == pytest.approx((1 + 1 + 51.5) / 3)
    assert pen.mean.at["m", "Missed"] == 1.0


def test_published_rows_of_real_ct_stay_out_of_a_phantom_table(results, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", "--runs", str(results), "--out", str(out), "--reference", "published", "--no-figures"]) == 0
    assert "reported" not in (out / "table.md").read_text()
    assert "(reported," in (out / "published.md").read_text() and "real CT" in (out / "published.md").read_text()


def test_docs_results_rebuild_from_the_committed_records(tmp_path):
    """docs/results.md cites these records: the command it shows rebuilds every table on the page
    line for line (results, timing, published), and its significance table and claims."""
    import csv

    docs = Path(__file__).resolve().parents[1] / "docs"
    out = tmp_path / "rep"
    assert main(["report", "--runs", str(docs / "results" / "runs"), "--out", str(out), "--baseline", "mean_teacher",
                 "--reference", "published", "--format", "markdown,csv", "--no-figures"]) == 0
    page = (docs / "results.md").read_text()
    for name in ("table.md", "timing.md", "published.md"):
        lines = [line for line in (out / name).read_text().splitlines() if line.startswith("|")]
        assert lines and all(line in page for line in lines), name
    rows = {r["method"]: r for r in csv.DictReader((out / "significance.csv").open())}
    tak = "tak [anatomy x minilm]"
    # the same five seeds in every row, so every row is tested; one survives the method-level test
    assert {m: (r["n_seeds"], r["seeds"], r["seed_sets"]) for m, r in rows.items()} == {
        m: ("5", "0 1 2 3 4", "same") for m in ("dhc", "ga", "supervised", tak)
    }
    assert {m: r["direction"] for m, r in rows.items()} == {"dhc": "better", "ga": "n.s.", "supervised": "n.s.", tak: "n.s."}
    dhc = rows["dhc"]
    assert float(dhc["p_value"]) == pytest.approx(2 / 252) and float(dhc["p_adjusted"]) == pytest.approx(4 * 2 / 252)
    assert dhc["pair_signs"] == "25/25 better" and float(dhc["ci_low"]) > 0
    # the page's significance rows restate the csv
    for m, r in rows.items():
        line = next(line for line in page.splitlines() if line.startswith(f"| {m} | "))
        ci = f"[{float(r['ci_low']):.1f}, {float(r['ci_high']):.1f}]"
        assert f"{float(r['mean_diff']):+.1f}" in line and ci in line and r["pair_signs"] in line and r["direction"] in line, m
    # the case-level test of these trained models separates every row (what the old marks said)
    assert all(r["models_direction"] == "better" for r in rows.values())
    assert all(r["n_cases"] == "24" for r in rows.values())


def test_results_collect_copies_records_without_checkpoints_and_refuses_unfinished_runs(tmp_path):
    """docs/scripts/results_collect.py: the records of docs/results/runs (no checkpoints, no job
    files, the split files kept); a started run without metrics.json stops it before anything is
    replaced."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "docs" / "scripts" / "results_collect.py"
    spec = importlib.util.spec_from_file_location("results_collect", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = tmp_path / "out"
    _run(src, "a", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.5})
    run = src / "phantom" / "default" / "labeled_10p" / "a" / "abc" / "seed_0"
    for name in ("checkpoint.pt", "best.pt", "job.json"):
        (run / name).write_text("x")
    (src / "phantom" / "splits").mkdir()
    (src / "phantom" / "splits" / "labeled_10p.json").write_text("{}")
    dest = tmp_path / "repo" / "docs" / "results" / "runs"
    (dest / "old").mkdir(parents=True)
    started = src / "phantom" / "default" / "labeled_10p" / "a" / "abc" / "seed_1"
    started.mkdir()
    (started / "checkpoint.pt").write_text("x")
    assert mod.main([str(src)], dest) == 2
    assert (dest / "old").is_dir()  # nothing replaced
    shutil.rmtree(started)
    assert mod.main([str(src)], dest) == 0
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == ["phantom/default/labeled_10p/a/abc/seed_0/" + n for n in ("config.json", "log.jsonl", "metrics.json", "timing.json")] + [
        "phantom/splits/labeled_10p.json"]
    assert not (dest / "old").exists()


def test_the_published_table_comes_from_the_records_dataset():
    """The dataset named in the records picks the published table, never the organ count."""
    from reports.table import load_reference

    assert set(load_reference("published", ["amos_ct"], ["5%"]).paper) and set(load_reference("published", ["amos_ct"], ["5%"]).organ) >= {"bladder"}
    assert "bladder" not in set(load_reference("published", ["synapse"], ["10%"]).organ)
    with pytest.raises(UserError, match="no published table for dataset 'folder'"):
        load_reference("published", ["folder"], ["10%"])
    with pytest.raises(UserError, match="different published tables"):
        load_reference("published", ["synapse", "amos"], ["10%"])


@pytest.mark.parametrize("protocol, named", [("dhc", True), ("ga", True), ("default", False)])
def test_legend_names_the_suites_hd95_under_published_protocols(tmp_path, protocol, named):
    from reports.table import legend

    _run(tmp_path, "a", 0, {"spleen": 0.9, "liver": 0.9, "gallbladder": 0.5}, protocol=protocol)
    table = build_table(collect(tmp_path))
    text = legend(table, None, 0.05, 1, "exclude", reference=True)
    assert ("HD95 under the dhc / ga protocols is this suite's definition" in text) is named
    assert "np.std (ddof=0) over DHC's repeated runs" in text


def test_every_published_method_maps_to_a_registered_method_or_says_not_runnable():
    """reports/published/methods.csv knows every method name of the shipped published tables, and
    each mapped name is a registered method."""
    from bench.core.registry import METHODS
    from reports.table import published_methods

    mapping = published_methods()
    shipped = set()
    for table in ("synapse", "amos"):
        shipped |= set(pd.read_csv(Path(reports.__file__).parent / "published" / f"{table}.csv")["method"])
    assert shipped - set(mapping) == set(), "published rows name methods methods.csv does not map"
    registered = set(METHODS.names())
    assert {m for m in mapping.values() if m} <= registered
    assert mapping["Basak"] == "acisis" and mapping["V-Net(fully)"] == "fully" and mapping["DeSCO"] == "desco"
    # since issue #33 every method of TAK's and DHC's tables runs
    assert all(mapping[m] for m in shipped), sorted(m for m in shipped if not mapping[m])


def test_published_rows_sit_beside_the_measured_row_of_their_method(results):
    """--reference published: a published row follows the measured row of the method that runs it
    (same labeled share); rows with no measured counterpart, or not runnable yet, come after."""
    runs = [r for r in collect(results)]
    ref = pd.DataFrame([
        {"paper": "P", "source": "s", "protocol": "default", "labeled_percent": 10, "method": m, "organ": "mean",
         "metric": "dice", "value": v, "std": None} for m, v in (("NewNet", 50.0), ("CPS", 60.0), ("DHC", 70.0))]
        + [{"paper": "Q", "source": "s", "protocol": "dhc-paper", "labeled_percent": 10, "method": "DHC", "organ": "mean",
            "metric": "dice", "value": 71.0, "std": None}])
    for r in runs:  # measured methods a, b, c stand for dhc, cps and one with no published row
        object.__setattr__(r.metrics, "method", {"a": "dhc", "b": "cps"}.get(r.metrics.method, r.metrics.method))
    table = build_table(runs, reference=ref)
    ten = [i for i in table.rows.index if table.rows.at[i, "group"] == 0.1]
    kinds = [(table.rows.at[i, "kind"], table.rows.at[i, "method"]) for i in ten]
    assert kinds.index(("reported", "dhc")) == kinds.index(("measured", "dhc")) + 1
    assert kinds.index(("reported", "cps")) == kinds.index(("measured", "cps")) + 1
    assert ten[kinds.index(("reported", "dhc"))] == "DHC (reported, P)"
    # DHC's paper protocol is reproduced by the suite's dhc protocol, not by these default-protocol
    # runs: that row and the not-runnable one come after every row placed beside its method
    assert set(ten[-2:]) == {"DHC (reported, Q)", "NewNet (reported, P) - not runnable yet"}


def test_readme_states_the_runnable_published_row_count():
    from reports.table import published_methods

    mapping, total, runnable = published_methods(), 0, 0
    for table in ("synapse", "amos"):
        df = pd.read_csv(Path(reports.__file__).parent / "published" / f"{table}.csv")
        for (_, _, _, method), _ in df.groupby(["paper", "protocol", "labeled_percent", "method"]):
            total += 1
            runnable += mapping[method] is not None
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"Of the {total} published rows" in readme and f"{runnable} name a runnable method" in readme
    assert f"({total - runnable} rows \"not runnable yet\"" in readme
