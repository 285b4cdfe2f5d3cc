"""Case-level significance of each table row against a baseline row (DESIGN.md, "Statistics").

* The unit is the test case. A row's score of a case is its mean Dice over organs (NaN organs
  excluded), averaged over the row's seeds first: seeds are repeated measurements of the same
  case, not more cases.
* Each measured row is compared with the baseline row of the same labeled-share group by a
  paired two-sided Wilcoxon signed-rank test over the cases both have (scipy's exact null
  distribution where it gives one: up to 50 cases without ties or zero differences, else the
  normal approximation); zero differences are dropped (``zero_method="wilcox"``).
* Holm's step-down correction across the rows compared in one group.
* A paired bootstrap 95 % confidence interval of the mean difference over cases
  (``scipy.stats.bootstrap``, BCa, 9,999 resamples, seeded).
* Direction: "better" / "worse" where the corrected p < alpha (by the sign of the mean
  difference), else "n.s.".
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from bench.core.metrics import nanmean

#: columns of significance.csv, in order
FIELDS = ("group", "method", "baseline", "n_cases", "n_seeds", "baseline_seeds", "mean_diff", "ci_low", "ci_high",
          "p_value", "p_adjusted", "direction", "alpha", "test")

TEST_NAME = "paired two-sided Wilcoxon signed-rank over test cases (seeds averaged per case), Holm-corrected per group"


@dataclass
class Comparison:
    """One row tested against the baseline: sizes, estimates, p-values and the resulting mark."""
    #: the labeled share of the compared rows (0.1 = 10 %; "?" where unknown)
    group: float | str
    method: str
    baseline: str
    n_cases: int
    n_seeds: int
    baseline_seeds: int
    #: mean over cases of (row - baseline) mean Dice, in Dice points (0-100)
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float
    direction: str
    alpha: float
    test: str = TEST_NAME


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


def compare(rows: dict[str, dict], baseline: str, alpha: float = 0.05) -> list[Comparison]:
    """Every row against the baseline row of its group.

    ``rows``: ``{row label: {"group": str, "name": str, "variant": str, "method": str,
    "runs": [Run, ...]}}`` (the measured rows of a table). ``baseline`` matches a row's
    variant or method; one baseline row per group is required where it appears.
    """
    out: list[Comparison] = []
    groups: dict[str, list[str]] = {}
    for label, row in rows.items():
        groups.setdefault(row["group"], []).append(label)
    for group, labels in groups.items():
        base = [lb for lb in labels if baseline in (rows[lb]["variant"], rows[lb]["method"], rows[lb]["name"])]
        if not base:
            continue
        if len(base) > 1:
            from bench.core.errors import UserError

            raise UserError(f"--baseline {baseline} matches {len(base)} rows of group {group} ({', '.join(base)}); "
                            f"name one row exactly (e.g. '{base[0]}')")
        b = base[0]
        b_scores = case_scores(rows[b]["runs"])
        pending = []
        for lb in labels:
            if lb == b:
                continue
            scores = case_scores(rows[lb]["runs"])
            common = sorted(c for c in set(scores) & set(b_scores) if np.isfinite(scores[c]) and np.isfinite(b_scores[c]))
            diffs = [scores[c] - b_scores[c] for c in common]
            low, high = bootstrap_ci(diffs)
            pending.append(Comparison(group=group, method=rows[lb]["name"], baseline=rows[b]["name"], n_cases=len(common),
                                      n_seeds=len(rows[lb]["runs"]), baseline_seeds=len(rows[b]["runs"]),
                                      mean_diff=float(np.mean(diffs)) if diffs else math.nan, ci_low=low, ci_high=high,
                                      p_value=signed_rank_p(diffs), p_adjusted=math.nan, direction="n.s.", alpha=alpha))
        for c, adj in zip(pending, holm([c.p_value for c in pending])):
            c.p_adjusted = adj
            if adj < alpha and c.mean_diff == c.mean_diff and c.mean_diff != 0:
                c.direction = "better" if c.mean_diff > 0 else "worse"
        out += pending
    return out


def to_csv(comparisons: Sequence[Comparison]) -> str:
    """significance.csv: one line per comparison."""
    import pandas as pd

    from reports.collect import share_text

    rows = [asdict(c) | {"group": share_text(c.group)} for c in comparisons]
    return pd.DataFrame(rows, columns=list(FIELDS)).to_csv(index=False, float_format="%.6g")
