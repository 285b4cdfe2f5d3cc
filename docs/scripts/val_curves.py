"""Validation curves and test Dice of committed run records, as a Markdown table.

Rows are runs (method, seed, and the settings in which runs of one method differ); columns the
validation Dice at every validation step, the test mean Dice and the mean Dice of the small
organs (adrenal glands, gallbladder, esophagus). docs/fidelity.md's measured effects are this
table of docs/results/fidelity:

    python docs/scripts/val_curves.py docs/results/fidelity/phantom
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

UNSET = "unset"
SMALL = ("gallbladder", "esophagus", "right adrenal gland", "left adrenal gland")


def _flat(config: dict) -> dict:
    return {**config["hparams"], **config["train"]}


def main(roots: list[str]) -> None:
    runs = []
    for m in sorted(p for root in roots for p in Path(root).rglob("metrics.json")):
        d = m.parent
        metrics = json.loads(m.read_text())
        config = json.loads((d / "config.json").read_text())
        log = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines() if line.strip()]
        val = {e["step"] + 1: e["val_dice"] for e in log if "val_dice" in e}
        runs.append((metrics, _flat(config), val))
    steps = sorted({s for _, _, v in runs for s in v})
    rows = []
    for metrics, flat, val in runs:
        same = [f for mm, f, _ in runs if mm["method"] == metrics["method"]]
        # a setting added after a record was made is "unset" there, except an off switch (the
        # released_* switches are off by default: the records made before them ran without them)
        keys = {k for f in same for k in f if not (f[k] is False and all(g.get(k, False) is False for g in same))}
        diff = sorted(k for k in keys if any(f.get(k, UNSET) != flat.get(k, UNSET) for f in same))
        tag = ", ".join(f"{k}={flat.get(k, UNSET)}" for k in diff) or "-"
        small = sum(metrics["per_organ"][o]["dice"] for o in SMALL) / len(SMALL)
        cells = [f"{100 * val[s]:.1f}" if s in val else "" for s in steps]
        rows.append((metrics["method"], tag, metrics["seed"], cells, 100 * metrics["mean"]["dice"], 100 * small))
    print("| method | seed | differs in | " + " | ".join(f"val @{s}" for s in steps) + " | test Dice | test small |")
    print("|---" * (5 + len(steps)) + "|")
    for method, tag, seed, cells, dice, small in sorted(rows, key=lambda r: r[:3]):
        print(f"| {method} | {seed} | {tag} | " + " | ".join(cells) + f" | {dice:.1f} | {small:.1f} |")

if __name__ == "__main__":
    main(sys.argv[1:] or ["docs/results/fidelity"])
