"""Significance of each table row against a baseline row (DESIGN.md, "Statistics").

Two questions, kept apart:

* **Is the method different?** (the default, ``test = "method"``). The unit that varies is the
  trained run (a seed): a row's runs and the baseline's runs are the samples, the test cases are
  paired across them. A run's score of a case is its mean Dice over organs (NaN organs
  excluded); a run's score is its mean over the cases both rows have.

  - Test: exact two-sided permutation test over runs: the run labels of the two rows are
    exchanged in every way (C(m + n, m) splits; a seeded Monte Carlo sample of 100,000 beyond
    that), statistic = the difference of the rows' mean Dice (mean over runs of the run means);
    p = share of splits at least as extreme. Holm's step-down correction across every row of
    the table tested against the baseline.
  - Effect: that difference (the location estimate the test uses) with a two-level bootstrap
    95 % CI (percentile, 9,999 resamples, seeded): cases resampled (the same cases for both
    rows: paired) and runs resampled within each row.
  - Also: P(A > B) over (run pair, case) (ties count one half) and the signs of the run-pair
    differences ("9/9 better").
  - A mark (▲ / ▼) needs the corrected p < alpha AND a CI that excludes 0, and at least
    :data:`MIN_SEEDS_FOR_MARK` runs in both rows: with 3 runs against 3 the smallest
    two-sided p is 2 / C(6, 3) = 0.10 (no mark is possible), with 5 against 5 it is
    2 / 252 = 0.008. Rows with fewer runs show their CI and no mark; a row (or baseline) of one
    run is "untestable". Rows whose seed sets differ from the baseline's are compared on the
    common seeds (``seed_sets`` says so).

* **Do these trained models differ on these cases?** (``test = "models"``; always reported in
  ``models_*`` columns). The unit is the test case, seeds averaged per case first: a paired
  two-sided Wilcoxon signed-rank test over the cases (scipy's exact null distribution where it
  gives one), Holm-corrected across the table, and a paired case bootstrap CI (BCa). It says
  nothing about a method on another seed: run-to-run variation never enters it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from bench.core.metrics import nanmean

#: columns of significance.csv, in order
FIELDS = ("group", "method", "baseline", "test", "n_cases", "n_seeds", "baseline_seeds", "seeds", "seed_sets", "mean_diff",
          "ci_low", "ci_high", "p_value", "p_adjusted", "p_min", "prob_better", "pair_signs", "direction", "alpha",
          "models_p_value", "models_p_adjusted", "models_ci_low", "models_ci_high", "models_direction")

#: runs a row and its baseline each need before a difference can carry a mark
MIN_SEEDS_FOR_MARK = 5
#: exchanges of run labels enumerated exactly up to this many splits (else a Monte Carlo sample of this size)
MAX_EXACT_SPLITS = 100_000

TESTS = {
    "method": "exact permutation test over runs (seeds exchanged between the rows; statistic: difference of mean Dice "
              "over the paired test cases), Holm-corrected across the table; two-level bootstrap CI (cases paired, runs "
              "resampled within each row)",
    "models": "these trained models on these test cases: paired two-sided Wilcoxon signed-rank over test cases (seeds "
              "averaged per case), Holm-corrected across the table; paired case bootstrap CI",
}


@dataclass
class Comparison:
    """One row tested against the baseline: sizes, estimates, p-values and the resulting mark
    (``direction``: better, worse, n.s., too few seeds, untestable)."""
    #: the labeled share of the compared rows (0.1 = 10 %; "?" where unknown)
    group: float | str
    method: str
    baseline: str
    test: str
    n_cases: int
    n_seeds: int
    baseline_seeds: int
    #: the seeds compared (space-separated) and whether both rows had the same set
    seeds: str
    seed_sets: str
    #: the row's mean Dice minus the baseline's (mean over runs of the run means over the
    #: common cases), in Dice points (0-100)
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float
    #: the smallest p the permutation test can give with these run counts
    p_min: float
    prob_better: float
    pair_signs: str
    direction: str
    alpha: float
    models_p_value: float = math.nan
    models_p_adjusted: float = math.nan
    models_ci_low: float = math.nan
    models_ci_high: float = math.nan
    models_direction: str = "n.s."


def case_scores(runs: Iterable) -> dict[str, float]:
    """{case: mean Dice over organs (0-100), averaged over the runs (seeds)}."""
    per_case: dict[str, list[float]] = {}
    for r in runs:
        for cid, organs in r.metrics.cases.items():
            per_case.setdefault(cid, []).append(nanmean([m.get("dice") for m in organs.values()]))
    return {cid: 100 * nanmean(v) for cid, v in per_case.items()}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def signed_rank_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences (1.0 when all are zero)."""
    from scipy.stats import wilcoxon

    d = np.asarray(diffs, dtype=float)
    if d.size == 0 or not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto").pvalue)


def bootstrap_ci(diffs: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap 95 % CI of the mean difference (BCa; percentile where BCa degenerates)."""
    from scipy.stats import bootstrap

    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or np.all(d == d[0]):
        return float(d.mean()) if d.size else math.nan, float(d.mean()) if d.size else math.nan
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=9999, method=method,
                           rng=np.random.default_rng(seed)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return float(ci.low), float(ci.high)
    return math.nan, math.nan


def smallest_p(n_cases: int) -> float:
    """The smallest two-sided exact signed-rank p that ``n_cases`` cases can reach (all of one sign)."""
    return min(1.0, 2.0 / 2 ** n_cases)


def run_scores(runs: Sequence, cases: Sequence[str]) -> np.ndarray:
    """(R, C) mean Dice over organs (0-100) of each run on each of ``cases``."""
    return np.array([[100 * nanmean([m.get("dice") for m in r.metrics.cases[c].values()]) for c in cases] for r in runs], dtype=float)


def permutation_p(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Two-sided p of the difference of mean run scores between ``a`` (m, C) and ``b`` (n, C),
    over every exchange of run labels (exact up to :data:`MAX_EXACT_SPLITS` splits)."""
    import itertools

    pooled = np.concatenate([a.mean(1), b.mean(1)])
    m, total = len(a), len(pooled)
    observed = abs(pooled[:m].mean() - pooled[m:].mean())
    n_splits = math.comb(total, m)
    if n_splits <= MAX_EXACT_SPLITS:
        idx = np.array(list(itertools.combinations(range(total), m)))
    else:
        rng = np.random.default_rng(seed)
        idx = np.array([rng.permutation(total)[:m] for _ in range(MAX_EXACT_SPLITS)])
    in_a = np.zeros((len(idx), total), dtype=bool)
    np.put_along_axis(in_a, idx, True, axis=1)
    stat = np.abs((in_a * pooled).sum(1) / m - (~in_a * pooled).sum(1) / (total - m))
    return float(np.mean(stat >= observed - 1e-9 * max(1.0, observed)))


def smallest_permutation_p(m: int, n: int) -> float:
    """The smallest two-sided p of :func:`permutation_p` with ``m`` and ``n`` runs (distinct run
    scores): the two extreme splits when m = n, one otherwise."""
    return min(1.0, (2 if m == n else 1) / math.comb(m + n, m))


def two_level_bootstrap_ci(a: np.ndarray, b: np.ndarray, n_resamples: int = 9999, seed: int = 0) -> tuple[float, float]:
    """95 % percentile CI of the difference of mean scores of ``a`` (m, C) and ``b`` (n, C):
    each resample draws the cases (the same for both: paired) and, within each row, the runs,
    with replacement."""
    rng = np.random.default_rng(seed)
    m, n, c = len(a), len(b), a.shape[1]
    wc = rng.multinomial(c, np.full(c, 1 / c), size=n_resamples)  # (K, C) case counts
    wa = rng.multinomial(m, np.full(m, 1 / m), size=n_resamples)  # (K, m) run counts
    wb = rng.multinomial(n, np.full(n, 1 / n), size=n_resamples)
    diff = np.einsum("km,mc,kc->k", wa, a, wc) / (m * c) - np.einsum("kn,nc,kc->k", wb, b, wc) / (n * c)
    low, high = np.percentile(diff, [2.5, 97.5])
    return float(low), float(high)


def prob_better(a: np.ndarray, b: np.ndarray) -> float:
    """P(A > B) over (run of A, run of B, case): the share of such triples where A's score is
    higher (ties count one half)."""
    d = a[:, None, :] - b[None, :, :]
    return float(np.mean(d > 0) + 0.5 * np.mean(d == 0))


def pair_signs(a: np.ndarray, b: np.ndarray) -> str:
    """Signs of the run-pair differences of mean scores, e.g. "9/9 better" or "5/9 better, 4/9 worse"."""
    d = a.mean(1)[:, None] - b.mean(1)[None, :]
    k, better, worse = d.size, int((d > 0).sum()), int((d < 0).sum())
    parts = [f"{better}/{k} better"] + ([f"{worse}/{k} worse"] if worse else []) + ([f"{k - better - worse}/{k} tied"] if k > better + worse else [])
    return ", ".join(parts)


def _paired_runs(row_runs: Sequence, base_runs: Sequence) -> tuple[list, list, str]:
    """The runs compared: all of both rows when their seed sets agree, else those of the common
    seeds (all of both where there is none), with a note saying which."""
    sa, sb = {r.seed for r in row_runs}, {r.seed for r in base_runs}
    if sa == sb:
        return list(row_runs), list(base_runs), "same"
    common = sa & sb
    if not common:
        return list(row_runs), list(base_runs), f"disjoint ({len(sa)} vs {len(sb)} seeds)"
    return ([r for r in row_runs if r.seed in common], [r for r in base_runs if r.seed in common],
            f"common {len(common)} of {len(sa)} / {len(sb)} seeds")


def compare_rows(row_runs: Sequence, base_runs: Sequence, alpha: float = 0.05, **names) -> Comparison:
    """One row against the baseline (both tests, before the correction across the table)."""
    ra, rb, seed_sets = _paired_runs(row_runs, base_runs)
    cases = sorted(set.intersection(*[set(r.metrics.cases) for r in [*ra, *rb]]))
    a, b = run_scores(ra, cases), run_scores(rb, cases)
    keep = np.isfinite(a).all(0) & np.isfinite(b).all(0)
    a, b, cases = a[:, keep], b[:, keep], [c for c, k in zip(cases, keep) if k]
    m, n = len(a), len(b)
    diff = float(a.mean() - b.mean()) if cases else math.nan
    testable = m >= 2 and n >= 2 and len(cases) > 0
    p = permutation_p(a, b) if testable else math.nan
    low, high = two_level_bootstrap_ci(a, b) if testable else (math.nan, math.nan)
    case_diffs = (a.mean(0) - b.mean(0)).tolist() if cases else []
    m_low, m_high = bootstrap_ci(case_diffs)
    return Comparison(**names, n_cases=len(cases), n_seeds=m, baseline_seeds=n,
                      seeds=" ".join(str(s) for s in sorted({r.seed for r in ra})), seed_sets=seed_sets, mean_diff=diff,
                      ci_low=low, ci_high=high, p_value=p, p_adjusted=math.nan,
                      p_min=smallest_permutation_p(m, n) if testable else math.nan,
                      prob_better=prob_better(a, b) if cases else math.nan, pair_signs=pair_signs(a, b) if cases else "",
                      direction="n.s." if testable else "untestable", alpha=alpha,
                      models_p_value=signed_rank_p(case_diffs), models_ci_low=m_low, models_ci_high=m_high)


def compare(rows: dict[str, dict], baseline: str, alpha: float = 0.05, test: str = "method") -> list[Comparison]:
    """Every row against the baseline row of its group; Holm across every comparison of the table.

    ``rows``: ``{row label: {"group": ..., "name": str, "variant": str, "method": str,
    "runs": [Run, ...]}}`` (the measured rows of a table). ``baseline`` matches a row's
    variant, method or name; one baseline row per group is required where it appears.
    ``test``: which test sets ``direction`` (:data:`TESTS`); the other is reported beside it.

    Raises:
        UserError: a baseline that matches several rows of a group, an unknown test.
    """
    from bench.core.errors import UserError

    if test not in TESTS:
        raise UserError(f"--test {test}: choose one of {', '.join(TESTS)}")
    out: list[Comparison] = []
    groups: dict = {}
    for label, row in rows.items():
        groups.setdefault(row["group"], []).append(label)
    for group, labels in groups.items():
        base = [lb for lb in labels if baseline in (rows[lb]["variant"], rows[lb]["method"], rows[lb]["name"])]
        if not base:
            continue
        if len(base) > 1:
            raise UserError(f"--baseline {baseline} matches {len(base)} rows of group {group} ({', '.join(base)}); "
                            f"name one row exactly (e.g. '{base[0]}')")
        b = base[0]
        out += [compare_rows(rows[lb]["runs"], rows[b]["runs"], alpha, group=group, method=rows[lb]["name"],
                             baseline=rows[b]["name"], test=test) for lb in labels if lb != b]
    tested = [c for c in out if c.direction != "untestable"]
    for c, adj in zip(tested, holm([c.p_value for c in tested])):
        c.p_adjusted = adj
        excludes_zero = (c.ci_low > 0 and c.mean_diff > 0) or (c.ci_high < 0 and c.mean_diff < 0)
        if min(c.n_seeds, c.baseline_seeds) < MIN_SEEDS_FOR_MARK:
            c.direction = "too few seeds"
        elif adj < alpha and excludes_zero:
            c.direction = "better" if c.mean_diff > 0 else "worse"
    for c, adj in zip(out, holm([c.models_p_value for c in out])):
        c.models_p_adjusted = adj
        if adj < alpha and c.mean_diff == c.mean_diff and c.mean_diff != 0:
            c.models_direction = "better" if c.mean_diff > 0 else "worse"
    return out


def mark(c: Comparison) -> str | None:
    """The mark a comparison puts on its row: "better" / "worse" under the comparison's test, else None."""
    d = c.direction if c.test == "method" else c.models_direction
    return d if d in ("better", "worse") else None


def to_csv(comparisons: Sequence[Comparison]) -> str:
    """significance.csv: one line per comparison."""
    import pandas as pd

    from bench.core.redact import csv_cell
    from reports.collect import share_text

    rows = [{k: csv_cell(v) for k, v in (asdict(c) | {"group": share_text(c.group)}).items()} for c in comparisons]
    return pd.DataFrame(rows, columns=list(FIELDS)).to_csv(index=False, float_format="%.6g")
