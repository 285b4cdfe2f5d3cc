"""Per-organ result tables built with pandas from stored metrics (no torch imports)."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from datasets.labels import abbreviation


def per_organ_frame(results: Iterable[dict], metric: str = "dice") -> pd.DataFrame:
    """Rows = methods (in first-seen order), columns = organs (abbreviated) + means.

    Each cell is the mean over seeds; Dice in %, distances in mm.
    """
    rows: dict[str, list[dict]] = {}
    organs: list[str] = []
    for r in results:
        rows.setdefault(r["method"], []).append(r)
        if not organs:
            organs = list(r["organs"])
    data = {}
    for method, rs in rows.items():
        row = {}
        for o in organs:
            vals = [x["per_organ"][o]["dice"] for x in rs]
            row[abbreviation(o)] = _mean(vals) * 100
        row["Dice"] = _mean([x["mean"]["dice"] for x in rs]) * 100
        row["HD95"] = _mean([x["mean"]["hd95"] for x in rs])
        row["seeds"] = str(len(rs))
        data[method] = row
    return pd.DataFrame.from_dict(data, orient="index")


def _mean(values) -> float:
    a = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def to_markdown(df: pd.DataFrame, digits: int = 1) -> str:
    return df.to_markdown(floatfmt=f".{digits}f", missingval="-")
