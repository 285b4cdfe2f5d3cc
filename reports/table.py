"""The per-organ table model and its one builder: per row (method, or method with its prompt
set and encoder, per labeled share and protocol) and column (organs, Large / Small / mean Dice,
HD95, ASD, missed organs), the mean and standard deviation over seeds of one aggregation
(:func:`run_values` of each run), the row's kind (``measured`` or ``reported``), protocol and
group, each column's direction (Dice up, distances down), rank marks and significance marks.
Renderers live in :mod:`reports.render`.

No torch imports: reports read stored JSON only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from bench.core.errors import UserError
from bench.core.labels import LARGE_ORGANS, abbreviation
from bench.core.metrics import NSD_TOLERANCE, nanmean
from bench.core.records import MetricsRecord
from reports.collect import share_text

UP, DOWN = 1, -1


@dataclass
class Table:
    """Rows x columns of mean / std over seeds plus row and column metadata."""

    mean: pd.DataFrame  # index: row labels, columns: column keys
    std: pd.DataFrame
    n: pd.Series  # seeds per row
    rows: pd.DataFrame  # index: row labels; columns: group, kind, protocol, note
    headers: dict[str, str]  # column key -> short header
    direction: dict[str, int]  # column key -> UP / DOWN
    marks: dict[tuple[str, str], str] = field(default_factory=dict)  # (row, column) -> "better" / "worse"
    caption: str = ""
    #: text under the table: test, unit, correction, alpha, spread convention, distance policy
    legend: str = ""
    #: the runs behind each measured row
    members: dict[str, list] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return list(self.mean.columns)


# -- building -------------------------------------------------------------------------------


def _nanstd(values, ddof: int = 1) -> float:
    a = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    a = a[np.isfinite(a)]
    return float(a.std(ddof=ddof)) if a.size > ddof else math.nan


#: how HD95 / ASD treat an organ the prediction missed (in the label, absent from the prediction)
MISSED_POLICIES = ("exclude", "penalty")


def organ_groups(organs: Sequence[str]) -> tuple[list[str], list[str]]:
    """TAK's grouping: large = spleen, kidneys, liver, stomach (+ bladder on AMOS); small = the rest."""
    large = [o for o in organs if o in LARGE_ORGANS]
    return large, [o for o in organs if o not in LARGE_ORGANS]


def missed_count(metrics: MetricsRecord) -> float:
    """(case, organ) pairs in the label and absent from the prediction; NaN for a record
    written before missed organs were flagged (it has no penalty distances either)."""
    if not metrics.penalty_distance:
        return math.nan
    return float(sum(bool(m.get("missed")) for organs in metrics.cases.values() for m in organs.values()))


def _distance_means(metrics: MetricsRecord, policy: str) -> dict[str, float]:
    """Mean HD95 / ASD over organs of per-organ means over cases, missed organs either left out
    (``exclude``) or given the case's penalty distance (``penalty``)."""
    if policy == "exclude":
        return {"HD95": nanmean([metrics.mean.get("hd95")]), "ASD": nanmean([metrics.mean.get("asd")])}
    missing = [c for c in metrics.cases if c not in metrics.penalty_distance]
    if missing:
        raise UserError(f"run {metrics.method} seed {metrics.seed} stores no penalty distance for case '{missing[0]}' (recorded "
                        f"before they were kept); re-run it or use --missed-distance exclude")
    out = {}
    for key, col in (("hd95", "HD95"), ("asd", "ASD")):
        per_organ = []
        for o in metrics.organs:
            vals = []
            for cid, organs in metrics.cases.items():
                m = organs.get(o, {})
                vals.append(metrics.penalty_distance[cid] if m.get("missed") else m.get(key))
            per_organ.append(nanmean(vals))
        out[col] = nanmean(per_organ)
    return out


def run_values(metrics: MetricsRecord, missed_distance: str = "exclude") -> dict[str, float]:
    """Column values of one run: per-organ Dice (%), Large / Small / mean Dice (%), NSD (%),
    HD95, ASD, and the number of missed (case, organ) pairs."""
    organs = metrics.organs
    per = metrics.per_organ
    large, small = organ_groups(organs)
    out = {o: 100 * nanmean([per[o].get("dice")]) for o in organs}
    out["Large"] = nanmean([out[o] for o in large]) if large else math.nan
    out["Small"] = nanmean([out[o] for o in small]) if small else math.nan
    out["Dice"] = 100 * nanmean([metrics.mean.get("dice")])
    # NSD (%) at the scorer's tolerance; records written before schema 3 have none (NaN, "-")
    out["NSD"] = 100 * nanmean([metrics.mean.get("nsd")])
    out.update(_distance_means(metrics, missed_distance))
    out["Missed"] = missed_count(metrics)
    return out


def build_table(runs: Iterable, reference: pd.DataFrame | None = None, allow_mixed: bool = False, caption: str = "",
                ddof: int = 1, missed_distance: str = "exclude", organs: Sequence[str] | None = None) -> Table:
    """Per-organ table from stored runs (:class:`reports.collect.Run`) + optional reported rows.

    Rows are grouped by labeled share, then ordered as first seen. Measured rows of different
    protocols are refused unless ``allow_mixed`` (they are then ranked per protocol). ``ddof``:
    the std convention over seeds (1: sample std; 0: population std, as DHC's numbers);
    ``missed_distance``: :data:`MISSED_POLICIES`.
    """
    if missed_distance not in MISSED_POLICIES:
        raise UserError(f"--missed-distance {missed_distance}: choose one of {', '.join(MISSED_POLICIES)}")
    if ddof not in (0, 1):
        raise UserError(f"--std-ddof {ddof}: choose 0 (population std) or 1 (sample std)")
    runs = list(runs)
    if not runs and (organs is None or reference is None):
        raise UserError("no results to tabulate")
    organs = list(runs[0].organs) if runs else list(organs)
    protocols = sorted({r.protocol for r in runs})
    if len(protocols) > 1 and not allow_mixed:
        raise UserError(f"results of different protocols ({', '.join(protocols)}) cannot be ranked in one table; "
                        f"report them separately (--runs <folder of one protocol>) or pass --allow-mixed-protocols")
    groups: dict[tuple[str, str, str, str], list] = {}
    for r in runs:
        groups.setdefault((r.labeled, r.variant, r.protocol, r.config_hash), []).append(r)
    tags = _config_tags(groups)
    mean_rows, std_rows, n, meta, members = {}, {}, {}, {}, {}
    multi_proto = len(protocols) > 1
    for (labeled, variant, proto, chash), rs in groups.items():
        variant = variant + tags.get((labeled, variant, proto, chash), "")
        name = f"{variant} ({proto})" if multi_proto else variant
        label = f"{name} @{share_text(labeled)}" if name in mean_rows else name  # unique row key; ``name`` is shown
        vals = [run_values(r.metrics, missed_distance) for r in rs]
        keys = vals[0].keys()
        mean_rows[label] = {k: nanmean([v[k] for v in vals]) for k in keys}
        std_rows[label] = {k: _nanstd([v[k] for v in vals], ddof) for k in keys}
        n[label] = len(rs)
        meta[label] = {"group": labeled, "kind": "measured", "protocol": proto, "note": "", "name": name, "variant": variant,
                       "method": rs[0].method}
        members[label] = rs
    if reference is not None and len(reference):
        _add_reference_rows(reference, organs, mean_rows, std_rows, n, meta)
    rows = pd.DataFrame.from_dict(meta, orient="index")
    index = [rows.index[i] for i in sorted(range(len(rows)), key=lambda i: _row_order(rows, i))]
    cols = organs + ["Large", "Small", "Dice", "NSD", "HD95", "ASD", "Missed"]
    headers = {o: abbreviation(o) for o in organs} | {c: c for c in ("Large", "Small", "Dice", "NSD", "HD95", "ASD", "Missed")}
    direction = {c: (DOWN if c in ("HD95", "ASD", "Missed") else UP) for c in cols}
    return Table(
        mean=pd.DataFrame.from_dict(mean_rows, orient="index").reindex(index)[cols],
        std=pd.DataFrame.from_dict(std_rows, orient="index").reindex(index)[cols],
        n=pd.Series(n).reindex(index),
        rows=rows.reindex(index),
        headers=headers,
        direction=direction,
        caption=caption,
        members=members,
    )


#: the suite protocol that reproduces each published protocol (None: none does; GenericSSL scores
#: Synapse on its own 80x160x160 grid)
PUBLISHED_PROTOCOLS: dict[str, str | None] = {"dhc-paper": "dhc", "tak-paper": "ga", "genericssl-paper": "genericssl"}

#: reports/published/methods.csv: each published method name -> the registered method that runs it
PUBLISHED_METHODS_FILE = Path(__file__).parent / "published" / "methods.csv"


def published_methods() -> dict[str, str | None]:
    """``{published name: registered method, or None where it is not runnable yet}`` from
    reports/published/methods.csv (e.g. "V-Net(fully)" -> "fully", "Basak" -> "acisis")."""
    df = pd.read_csv(PUBLISHED_METHODS_FILE, dtype=str, keep_default_na=False)
    return {row.published: (row.method or None) for row in df.itertuples()}


def _add_reference_rows(reference: pd.DataFrame, organs: list[str], mean_rows: dict, std_rows: dict, n: dict, meta: dict) -> None:
    """Add the published rows (one per paper, protocol, labeled share and method) to the table
    being built: Dice per organ, the large / small averages, and the std of the mean where given.
    Each row's ``method`` is the registered method that runs it (:func:`published_methods`), so
    it is placed beside that method's measured row; "not runnable yet" ones are marked so."""
    runs_it = published_methods()
    for (paper, proto, pct, method), df in reference.groupby(["paper", "protocol", "labeled_percent", "method"], sort=False):
        registered = runs_it.get(method)
        label = f"{method} (reported, {paper})" + ("" if registered else " - not runnable yet")
        dice = df[df.metric == "dice"].set_index("organ")["value"]
        row = {o: float(dice.get(o, math.nan)) for o in organs}
        large, small = organ_groups(organs)
        row["Large"] = nanmean([row[o] for o in large]) if large else math.nan
        row["Small"] = nanmean([row[o] for o in small]) if small else math.nan
        row["Dice"] = float(dice.get("mean", math.nan))
        row["NSD"] = row["HD95"] = row["ASD"] = row["Missed"] = math.nan  # published distances use other units / grids
        std = df[(df.metric == "dice") & (df.organ == "mean")]["std"]
        mean_rows[label] = row
        std_rows[label] = {k: math.nan for k in row} | {"Dice": float(std.iloc[0]) if len(std) and pd.notna(std.iloc[0]) else math.nan}
        n[label] = 0
        meta[label] = {"group": round(float(pct) / 100, 9), "kind": "reported", "protocol": proto, "note": str(df["source"].iloc[0]),
                       "name": label, "variant": method, "method": registered or method,
                       "suite_protocol": PUBLISHED_PROTOCOLS.get(proto, proto)}


def _config_tags(groups: dict) -> dict:
    """Row-name suffixes ``{key=value, ...}`` for runs of one method that differ in settings
    (e.g. an ablation of one hyperparameter): only the keys that differ are shown."""
    by_variant: dict[tuple, list] = {}
    for key, rs in groups.items():
        by_variant.setdefault((key[0], key[1], key[2]), []).append((key, rs[0].settings()))
    tags = {}
    for items in by_variant.values():
        if len(items) < 2:
            continue
        keys = sorted({k for _, st in items for k in st})
        differ = [k for k in keys if len({repr(st.get(k)) for _, st in items}) > 1]
        for key, st in items:
            tags[key] = " {" + ", ".join(f"{k.removeprefix('train.')}={st.get(k)}" for k in differ) + "}" if differ else f" {{{key[3][:6]}}}"
    return tags


def _row_order(rows: pd.DataFrame, i: int) -> tuple:
    """Sort key of row ``i``: by labeled share; measured rows as first seen, each published row
    right after the measured row of the method that runs it under the suite protocol that
    reproduces the published one (:data:`PUBLISHED_PROTOCOLS`), the other published rows last."""
    group, kind = rows["group"].iloc[i], rows["kind"].iloc[i]
    if kind == "measured":
        return (_group_key(group), 0, i, 0, i)
    same = [j for j in range(len(rows)) if rows["kind"].iloc[j] == "measured" and rows["group"].iloc[j] == group
            and rows["method"].iloc[j] == rows["method"].iloc[i] and str(rows["protocol"].iloc[j]).split("/")[0] == rows["suite_protocol"].iloc[i]]
    return (_group_key(group), 0, same[0], 1, i) if same else (_group_key(group), 1, 0, 0, i)


def _group_key(g: float | str) -> tuple:
    """Groups in order: labeled shares by number, then unknown ones."""
    return (0, float(g)) if isinstance(g, (int, float)) else (1, str(g))


#: the published table (reports/published/<name>.csv) of each dataset's label set and cases
PUBLISHED_TABLE = {"synapse": "synapse", "phantom": "synapse", "amos": "amos", "amos_ct": "amos", "phantom_amos": "amos"}


def load_reference(name: str, datasets: Iterable[str], groups: Iterable[float | str]) -> pd.DataFrame:
    """Published rows for the runs' dataset (named in their records; ``published``:
    reports/published/<table>.csv by :data:`PUBLISHED_TABLE`), restricted to the labeled shares
    present (all of them when none match).

    Raises:
        UserError: no published table for the dataset, datasets of two tables, an unreadable CSV.
    """
    if name != "published" and not Path(name).exists():
        raise UserError(f"--reference {name}: give 'published' or a CSV in the reports/published format")
    if name == "published":
        datasets = sorted(set(datasets))
        unknown = [d for d in datasets if d not in PUBLISHED_TABLE]
        if unknown:
            raise UserError(f"--reference published: no published table for dataset '{unknown[0]}' (there are tables for "
                            f"{', '.join(sorted(PUBLISHED_TABLE))}); give --reference FILE.csv")
        tables = sorted({PUBLISHED_TABLE[d] for d in datasets})
        if len(tables) != 1:
            raise UserError(f"--reference published: the runs' datasets ({', '.join(datasets)}) have different published "
                            f"tables; report each dataset separately")
        path = Path(__file__).parent / "published" / f"{tables[0]}.csv"
    else:
        path = Path(name)
    try:
        df = pd.read_csv(path)
    except Exception as e:
        raise UserError(f"reference table {path} is unreadable ({type(e).__name__}); fix or remove it")
    need = {"paper", "source", "protocol", "labeled_percent", "method", "organ", "metric", "value"}
    if not need <= set(df.columns):
        raise UserError(f"reference table {path} lacks columns {', '.join(sorted(need - set(df.columns)))}")
    if "std" not in df.columns:
        df["std"] = np.nan
    wanted = {round(100 * g, 6) for g in groups if isinstance(g, (int, float))}
    sub = df[df.labeled_percent.astype(float).round(6).isin(wanted)]
    return sub if len(sub) else df


# -- ranking and marks ----------------------------------------------------------------------


def rank_marks(table: Table, digits: int = 1) -> dict[tuple[str, str], str]:
    """(row, column) -> "best" / "second" among measured rows of one group (and protocol)."""
    out: dict[tuple[str, str], str] = {}
    measured = table.rows[table.rows.kind == "measured"]
    for _, rows in measured.groupby(["group", "protocol"], sort=False):
        if len(rows) < 2:
            continue
        for col in table.columns:
            vals = table.mean.loc[rows.index, col].round(digits)
            vals = vals[np.isfinite(vals)]
            distinct = sorted(set(vals.tolist()), reverse=table.direction[col] == UP)
            if not distinct:
                continue
            for label, v in vals.items():
                if v == distinct[0] and len(distinct) > 1:
                    out[(label, col)] = "best"
                elif len(distinct) > 2 and v == distinct[1]:  # a "second" that is also the worst is no mark
                    out[(label, col)] = "second"
    return out


def significance(table: Table, baseline: str, alpha: float = 0.05, test: str = "method") -> list:
    """Comparisons of every measured row with ``baseline`` (:mod:`reports.stats`; ``test``:
    "method" over runs, or "models" over cases); marks the Dice column of the rows that test
    finds better or worse."""
    from reports.stats import compare, mark

    measured = table.rows[table.rows.kind == "measured"]
    names = set(measured["variant"]) | set(measured["method"]) | set(measured["name"])
    if baseline not in names:
        raise UserError(f"--baseline {baseline} is not among the reported methods ({', '.join(sorted(names))})")
    rows = {label: {**measured.loc[label].to_dict(), "runs": table.members[label]} for label in measured.index}
    comparisons = compare(rows, baseline, alpha, test)
    by_name = {(c.group, c.method): c for c in comparisons}
    for label, row in measured.iterrows():
        c = by_name.get((row["group"], row["name"]))
        if c is not None and mark(c):
            table.marks[(label, "Dice")] = mark(c)
    return comparisons


MARKERS = {"better": "▲", "worse": "▼"}


def legend(table: Table, baseline: str | None, alpha: float, ddof: int, missed_distance: str, comparisons=(),
           reference: bool = False) -> str:
    """The text under every table: what ± is, how distances treat missed organs, and the test."""
    parts = [f"± = std over seeds (ddof={ddof}: {'sample' if ddof == 1 else 'population'} std)."]
    if missed_distance == "exclude":
        parts.append("HD95 / ASD: mean over organs of the mean over cases; an organ the prediction missed has no distance "
                     "and is left out (so missing an organ cannot worsen them: read them with Missed).")
    else:
        parts.append("HD95 / ASD: mean over organs of the mean over cases; an organ the prediction missed gets the "
                     "diagonal of its case's evaluation grid (mm; voxels under voxel-unit protocols).")
    parts.append("Missed = (case, organ) pairs present in the label and absent from the prediction, per run, mean over seeds.")
    parts.append(f"NSD = normalised surface Dice (%): the share of both surfaces' voxels within {NSD_TOLERANCE:g} of the "
                 "other surface (mm; voxels under voxel-unit protocols), mean over organs; '-' for runs recorded before "
                 "NSD was scored.")
    measured = set(table.rows.loc[table.rows.kind == "measured", "protocol"])
    if any(p.split("/")[0] in ("dhc", "ga") for p in measured):
        parts.append("HD95 under the dhc / ga protocols is this suite's definition (95th percentile of the symmetric surface "
                     "distances, in voxels): DHC's released evaluation reports none (its hd95 variable holds the ASD) and "
                     "TAK / GA's test writes 0, so it has no published counterpart.")
    if baseline:
        parts.append(_significance_legend(baseline, alpha, comparisons))
    if reference:
        parts.append("Reported rows (italic): the papers' numbers under their own protocols; never ranked or tested. Their ± "
                     "is the paper's own: np.std (ddof=0) over DHC's repeated runs for DHC's rows, as GenericSSL's paper gives "
                     "it for its rows; TAK's rows carry none (TAK's released test prints a std over test cases, not seeds).")
    return " ".join(parts)


def _significance_legend(baseline: str, alpha: float, comparisons) -> str:
    """What the marks mean, for the test that set them, and what a mark needs."""
    from reports.stats import MIN_SEEDS_FOR_MARK, smallest_permutation_p

    test = comparisons[0].test if comparisons else "method"
    n_rows = len(comparisons)
    n = sorted({c.n_cases for c in comparisons})
    few = sorted({c.method for c in comparisons if c.direction == "too few seeds"})
    single = sorted({c.method for c in comparisons if c.direction == "untestable"})
    if test == "models":
        text = (f"{MARKERS['better']} / {MARKERS['worse']} = these trained models score higher / lower than {baseline}'s on these "
                f"test cases (not a claim about the methods: seed-to-seed variation is not in it): paired two-sided Wilcoxon "
                f"signed-rank test over the {'/'.join(map(str, n)) or '-'} test cases (a case's score is its mean Dice over "
                f"organs, averaged over seeds first), Holm-corrected across the {n_rows} rows of this table, shown where "
                f"p_adj < {alpha:g}.")
    else:
        text = (f"{MARKERS['better']} / {MARKERS['worse']} = mean Dice higher / lower than {baseline} as a method: exact "
                f"permutation test over runs (seeds exchanged between the two rows; statistic: the difference of mean Dice "
                f"over the {'/'.join(map(str, n)) or '-'} paired test cases), Holm-corrected across the {n_rows} rows of this "
                f"table, shown where p_adj < {alpha:g} and the two-level bootstrap 95 % CI (cases paired, runs resampled "
                f"within each row) excludes 0. A mark needs at least {MIN_SEEDS_FOR_MARK} seeds in both rows (3 vs 3 seeds: "
                f"smallest p {smallest_permutation_p(3, 3):.2f}; 5 vs 5: {smallest_permutation_p(5, 5):.3f})"
                + (f"; rows with fewer seeds carry none ({', '.join(few)})" if few else "")
                + (f"; one seed is untestable ({', '.join(single)})" if single else "") + ".")
    return (text + " significance.csv holds, per row, the seeds compared, p and corrected p, the CI, P(row > baseline) over "
                   "(seed pair, case), the seed-pair signs, and the case-level Wilcoxon test of these trained models "
                   "(models_* columns).")


# -- other tables ---------------------------------------------------------------------------


def delta_table(table: Table, reference_row: str) -> Table:
    """Every measured row minus ``reference_row`` in the same group (per-organ ablation deltas)."""
    if reference_row not in table.mean.index:
        raise UserError(f"--delta-against '{reference_row}' is not a row; rows: {', '.join(table.mean.index)}")
    group = table.rows.at[reference_row, "group"]
    keep = [i for i in table.mean.index if table.rows.at[i, "group"] == group and table.rows.at[i, "kind"] == "measured" and i != reference_row]
    cols = [c for c in table.columns if c not in ("NSD", "HD95", "ASD", "Missed")]
    mean = table.mean.loc[keep, cols] - table.mean.loc[reference_row, cols]
    return Table(mean=mean, std=pd.DataFrame(np.nan, index=keep, columns=cols), n=table.n.loc[keep], rows=table.rows.loc[keep],
                 headers={c: "Δ" + table.headers[c] for c in cols}, direction={c: UP for c in cols},
                 caption=f"Dice difference (points) against {reference_row}")


def timing_frame(runs: Iterable) -> pd.DataFrame:
    """Train s/iter (median), inference s/case (median), peak memory (MB) per method and device,
    mean over seeds."""
    rows: dict[tuple[str, str], list] = {}
    for r in runs:
        if r.timing is not None:
            rows.setdefault((r.variant, r.timing.device), []).append(r.timing.to_dict())
    data = []
    for (variant, device), ts in rows.items():
        data.append({
            "Method": variant,
            "Device": device,
            "Train s/iter": nanmean([t.get("train_s_per_iter", {}).get("median") for t in ts]),
            "Infer s/case": nanmean([t.get("infer_s_per_case", {}).get("median") for t in ts]),
            "Peak MB": nanmean([t.get("peak_memory_mb") for t in ts]),
            "Memory kind": ts[0].get("peak_memory_kind", "?"),
            "Data wait %": 100 * nanmean([t.get("data_wait_share") for t in ts]),
            "Runs": len(ts),
        })
    return pd.DataFrame(data)


# -- the summary printed after `bench run` and `bench evaluate` ------------------------------


def summary_table(results: Iterable[MetricsRecord], missed_distance: str = "exclude") -> Table:
    """The table of metrics records (a run's results, an evaluation) by the one builder: a row
    per method (mean ± std over its seeds)."""
    from reports.collect import Run

    runs = [Run.from_record(r) for r in results]
    return build_table(runs, allow_mixed=True, missed_distance=missed_distance)
