"""Data splits: named lists of labeled / unlabeled / eval / test case ids, stored as JSON.

A split is checked before use: a case in two roles (leakage) or an id that does not exist in
the dataset is an error naming the case and the fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from bench.core.errors import UserError
from bench.core.store import atomic_write_text, read_json

ROLES = ("labeled", "unlabeled", "eval", "test")


@dataclass
class Split:
    """Case ids per role. ``labeled`` + ``unlabeled`` = the training set."""

    name: str
    labeled: list[str]
    unlabeled: list[str]
    eval: list[str]
    test: list[str]
    meta: dict = field(default_factory=dict)

    @property
    def train(self) -> list[str]:
        return self.labeled + self.unlabeled

    @property
    def labeled_fraction(self) -> float:
        """The labeled share of the training cases: the nominal one the split was drawn or
        published with (``meta["fraction"]``), else the ratio of its case counts."""
        frac = self.meta.get("fraction")
        if isinstance(frac, (int, float)) and not isinstance(frac, bool) and 0 < frac <= 1:
            return float(frac)
        return len(self.labeled) / max(len(self.train), 1)

    def digest(self) -> str:
        """Content hash (ids per role), part of a run's config hash."""
        body = json.dumps({r: getattr(self, r) for r in ROLES}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:10]

    def validate(self, known_ids: Iterable[str] | None = None) -> "Split":
        """Raise :class:`UserError` on leakage, duplicates, an empty role or unknown ids."""
        seen: dict[str, str] = {}
        for role in ROLES:
            for cid in getattr(self, role):
                if cid in seen:
                    raise UserError(
                        f"split '{self.name}' puts case '{cid}' in both '{seen[cid]}' and '{role}' "
                        f"(data leakage); remove it from one of them"
                    )
                seen[cid] = role
        for role in ("labeled", "test"):
            if not getattr(self, role):
                raise UserError(f"split '{self.name}' has no '{role}' cases; add at least one")
        if known_ids is not None:
            known = set(known_ids)
            for cid, role in seen.items():
                if cid not in known:
                    raise UserError(
                        f"split '{self.name}' names case '{cid}' ({role}) that is not in the dataset; "
                        f"fix the split file or --data-root"
                    )
        return self

    # -- files ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Split":
        path = Path(path)
        data = read_json(path, f"split file {path}", "give an existing file or a --labeled fraction")
        if not isinstance(data, dict):
            raise UserError(f"split file {path} must hold a JSON object with keys {', '.join(ROLES)}")
        missing = [r for r in ROLES if r not in data]
        if missing:
            raise UserError(f"split file {path} lacks the key(s) {', '.join(missing)}; each of {', '.join(ROLES)} is a list of case ids")
        for r in ROLES:
            if not isinstance(data[r], list) or not all(isinstance(c, str) for c in data[r]):
                raise UserError(f"split file {path}: '{r}' must be a list of case-id strings")
        return cls(
            name=str(data.get("name", path.stem)),
            labeled=list(data["labeled"]),
            unlabeled=list(data["unlabeled"]),
            eval=list(data["eval"]),
            test=list(data["test"]),
            meta=dict(data.get("meta", {})),
        )


def parse_fraction(text: str | float) -> float:
    """``"10%"``, ``"0.1"``, ``10`` (percent if > 1) -> 0.1; must lie in (0, 1] (the run options'
    own parser, :func:`bench.core.settings.parse_share`, with a one-line error).

    >>> parse_fraction("5%")
    0.05

    Raises:
        UserError: not a share in (0, 100%].
    """
    from bench.core.settings import parse_share

    try:
        return parse_share(text)
    except (TypeError, ValueError):
        raise UserError(f"--labeled {text!r} is not a labeled share in (0, 100%]; write e.g. 10% or 0.1")


def fraction_name(fraction: float) -> str:
    """The name of a drawn split: 0.1 -> ``labeled_10p``, 0.025 -> ``labeled_2_5p``."""
    pct = fraction * 100
    text = f"{pct:.0f}" if abs(pct - round(pct)) < 1e-9 else re.sub(r"\.", "_", f"{pct:g}")
    return f"labeled_{text}p"


def draw_split(
    train_ids: Sequence[str],
    eval_ids: Sequence[str],
    test_ids: Sequence[str],
    fraction: float,
    seed: int = 0,
) -> Split:
    """Draw ``round(fraction * len(train))`` labeled cases from the seed.

    Raises:
        UserError: a share that labels no case (below half a case), or a draw that would label
            every training case while the share is below 1.
    """
    n = int(round(fraction * len(train_ids)))
    if n < 1 or (n >= len(train_ids) and fraction < 1):
        pct = 100 / max(len(train_ids), 1)
        raise UserError(f"--labeled {round(100 * fraction, 6):g}% of {len(train_ids)} training cases labels {n} of them "
                        f"({round(100 * n / max(len(train_ids), 1), 3):g}%); give a share between {pct:.3g}% (one case) "
                        f"and 100% (all), e.g. --labeled {pct:.3g}%")
    order = np.random.default_rng(seed).permutation(len(train_ids))
    chosen = sorted(order[:n].tolist())
    labeled = [train_ids[i] for i in chosen]
    unlabeled = [c for i, c in enumerate(train_ids) if i not in set(chosen)]
    name = fraction_name(fraction) + (f"_s{seed}" if seed else "")
    return Split(name, labeled, unlabeled, list(eval_ids), list(test_ids), meta={"fraction": fraction, "seed": seed})


PUBLISHED_DIR = Path(__file__).parent / "published_splits"


def published_split_names(dataset: str) -> list[str]:
    """Names of the splits shipped for ``dataset`` (``synapse``, ``amos``)."""
    return sorted(p.stem for p in (PUBLISHED_DIR / dataset).glob("*.json"))


def published_split(dataset: str, name: str, case_ids: Iterable[str] | None = None) -> Split:
    """A published split shipped with the suite (facts from the papers' released code). A
    subset import of a dataset (``amos_ct``: AMOS without its MRI cases) uses the full
    dataset's splits, restricted to its own ``case_ids``."""
    base = dataset.split("_")[0]  # amos_ct uses amos' splits
    path = PUBLISHED_DIR / base / f"{name}.json"
    if not path.exists():
        names = ", ".join(published_split_names(base)) or "none"
        raise UserError(f"no published split '{name}' for dataset '{dataset}' (shipped: {names}); or give --split FILE / --labeled N%")
    split = Split.load(path)
    if dataset != base and case_ids is not None:
        known = set(case_ids)
        split = Split(split.name, *[[c for c in getattr(split, r) if c in known] for r in ROLES], meta=split.meta)
    return split
