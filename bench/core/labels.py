"""Label sets (organ names in label order) and organ-name aliases.

Index 0 is always background. These orders are those of the public datasets: BTCV/Synapse
(13 organs) and AMOS 2022 (15 organs).
"""

from __future__ import annotations

BTCV_13: tuple[str, ...] = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "portal vein and splenic vein",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
)

AMOS_15: tuple[str, ...] = (
    "background",
    "spleen",
    "right kidney",
    "left kidney",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior vena cava",
    "pancreas",
    "right adrenal gland",
    "left adrenal gland",
    "duodenum",
    "bladder",
    "prostate/uterus",
)

LABEL_SETS: dict[str, tuple[str, ...]] = {"btcv": BTCV_13, "synapse": BTCV_13, "amos": AMOS_15}

#: Short column names for tables (TAK / DHC style abbreviations).
ABBREVIATIONS: dict[str, str] = {
    "background": "Bg",
    "spleen": "Sp",
    "right kidney": "RK",
    "left kidney": "LK",
    "gallbladder": "Ga",
    "esophagus": "Es",
    "liver": "Li",
    "stomach": "St",
    "aorta": "Ao",
    "inferior vena cava": "IVC",
    "portal vein and splenic vein": "PSV",
    "pancreas": "Pa",
    "right adrenal gland": "RAG",
    "left adrenal gland": "LAG",
    "duodenum": "Du",
    "bladder": "Bl",
    "prostate/uterus": "P/U",
}

#: Organs TAK's tables call "large" (bladder only exists on AMOS).
LARGE_ORGANS = ("spleen", "right kidney", "left kidney", "liver", "stomach", "bladder")
#: The small organs the benchmark is about.
SMALL_ORGANS = ("gallbladder", "esophagus", "right adrenal gland", "left adrenal gland")

_ALIASES: dict[str, str] = {
    "ivc": "inferior vena cava",
    "postcava": "inferior vena cava",
    "inferior_vena_cava": "inferior vena cava",
    "vena cava inferior": "inferior vena cava",
    "kidney_right": "right kidney",
    "kidney right": "right kidney",
    "r kidney": "right kidney",
    "rk": "right kidney",
    "kidney_left": "left kidney",
    "kidney left": "left kidney",
    "l kidney": "left kidney",
    "lk": "left kidney",
    "adrenal_gland_right": "right adrenal gland",
    "right adrenal": "right adrenal gland",
    "adrenal gland right": "right adrenal gland",
    "rag": "right adrenal gland",
    "adrenal_gland_left": "left adrenal gland",
    "left adrenal": "left adrenal gland",
    "adrenal gland left": "left adrenal gland",
    "lag": "left adrenal gland",
    "gall bladder": "gallbladder",
    "oesophagus": "esophagus",
    "portal vein": "portal vein and splenic vein",
    "portal_vein_and_splenic_vein": "portal vein and splenic vein",
    "portal and splenic vein": "portal vein and splenic vein",
    "portal vein & splenic vein": "portal vein and splenic vein",
    "urinary bladder": "bladder",
    "urinary_bladder": "bladder",
    "prostate": "prostate/uterus",
    "uterus": "prostate/uterus",
    "prostate or uterus": "prostate/uterus",
    "prostate_uterus": "prostate/uterus",
    "bg": "background",
}


def canonical_organ(name: str) -> str:
    """Normalise an organ name: lower case, spaces, and the usual aliases resolved.

    >>> canonical_organ("Postcava")
    'inferior vena cava'
    >>> canonical_organ("adrenal_gland_left")
    'left adrenal gland'
    """
    key = " ".join(name.strip().lower().replace("-", " ").split())
    if key in _ALIASES:
        return _ALIASES[key]
    key2 = key.replace("_", " ")
    return _ALIASES.get(key2, _ALIASES.get(key.replace(" ", "_"), key2))


def abbreviation(name: str) -> str:
    """The short table header of an organ name (its canonical name's abbreviation, else the name)."""
    return ABBREVIATIONS.get(canonical_organ(name), name)


#: label maps are stored as uint8: ids 0..255
MAX_LABELS = 256


def check_label_count(origin: str, count: int, highest: int = 0, lowest: int = 0) -> None:
    """Refuse a label set that cannot be stored as uint8 (more than 256 ids, or an id outside
    0..255) before anything is sized by it."""
    from bench.core.errors import UserError

    if count > MAX_LABELS or highest >= MAX_LABELS or lowest < 0:
        what = f"{count} labels" if count > MAX_LABELS else f"label id {highest if highest >= MAX_LABELS else lowest}"
        raise UserError(f"{origin}: {what} - label maps are stored as uint8, so ids must be 0..{MAX_LABELS - 1} "
                        f"(at most {MAX_LABELS} classes, background included); merge or drop classes")


def names_by_id(raw: dict, origin: str) -> tuple[str, ...]:
    """Label names in id order from an nnU-Net / MSD ``labels`` mapping: ``{"0": "background",
    "1": "liver"}`` (v1, id -> name) or ``{"background": 0, "liver": 1}`` (v2, name -> id).
    Ids must run 0..n-1 without gaps; ``origin`` names the file in errors."""
    from bench.core.errors import UserError

    pairs: dict[int, str] = {}
    for k, v in raw.items():
        try:
            if isinstance(v, int) or (isinstance(v, str) and v.isdigit() and not k.isdigit()):
                pairs[int(v)] = str(k)  # v2: name -> id
            else:
                pairs[int(k)] = str(v)  # v1: id -> name
        except (TypeError, ValueError):
            raise UserError(f"{origin}: label entry {k!r}: {v!r} is neither 'id': 'name' nor 'name': id (region lists are not supported)")
    check_label_count(origin, len(pairs), max(pairs, default=0), min(pairs, default=0))
    n = max(pairs) + 1
    missing = [i for i in range(n) if i not in pairs]
    if missing:
        raise UserError(f"{origin}: label ids must be 0..{n - 1} without gaps; missing {missing}")
    return tuple(pairs[i] for i in range(n))


def read_labels_json(path: str | None) -> tuple[str, ...]:
    """Label names in id order from a ``dataset.json``-style file (``--labels``); BTCV's 13 organs without one."""
    from pathlib import Path

    from bench.core.errors import UserError
    from bench.core.store import read_json

    if path is None:
        return BTCV_13
    p = Path(path)
    meta = read_json(p, f"--labels {p}")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not labels:
        raise UserError(f"--labels {p} has no 'labels' entry; write {{\"labels\": {{\"background\": 0, \"liver\": 1, ...}}}}")
    if isinstance(labels, list):
        check_label_count(f"--labels {p}", len(labels))
        return tuple(str(x) for x in labels)
    if not isinstance(labels, dict):
        raise UserError(f"--labels {p}: 'labels' must map names to integers (nnU-Net style)")
    return names_by_id(labels, f"--labels {p}")
