"""Evaluation protocols: named, versioned bundles of preprocessing and metric conventions.

The ``default`` protocol is the suite's own: CT window [-125, 275] HU scaled to [0, 1],
native label resolution, spacing-aware metrics in millimetres, an organ empty on both sides
is not counted (NaN), one side empty gives Dice 0 and no distance (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.registry import register_protocol


@dataclass(frozen=True)
class Protocol:
    """Preprocessing and metric conventions. Patch size and iterations come from the preset."""

    name: str
    version: str
    window: tuple[float, float] = (-125.0, 275.0)
    overlap: float = 0.5
    sw_mode: str = "gaussian"
    distance_unit: str = "mm"
    empty_both: str = "nan"

    def normalize(self, image: np.ndarray, name: str = "image") -> np.ndarray:
        """Clip to the window and scale to [0, 1]; (D, H, W) float32."""
        lo, hi = self.window
        if not np.isfinite(image).all():
            from bench.errors import UserError

            raise UserError(f"{name} contains NaN or infinite values; fix or re-export that image")
        out = (np.clip(np.asarray(image, dtype=np.float32), lo, hi) - lo) / (hi - lo)
        return out.astype(np.float32)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "window": list(self.window),
            "overlap": self.overlap,
            "sw_mode": self.sw_mode,
            "distance_unit": self.distance_unit,
            "empty_both": self.empty_both,
        }


@register_protocol("default")
def default_protocol() -> Protocol:
    """Ours: window [-125, 275] HU, native resolution, metrics in mm, empty-on-both = NaN."""
    return Protocol(name="default", version="1")
