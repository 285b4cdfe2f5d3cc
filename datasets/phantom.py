"""The embedded default dataset: a synthetic abdominal CT phantom.

Every case is drawn from a seed, so the phantom is the same on every machine. Organs sit
where they sit in a body (world coordinates in mm, RAS: +x = patient's right, +y = anterior,
+z = superior; origin at the centre of the abdomen):

* liver right-upper (with a left lobe reaching across the midline), gallbladder under it;
* spleen left-upper-posterior, stomach left-upper-anterior;
* kidneys posterior, either side of the spine, adrenal glands on their upper poles;
* aorta (left of midline) and inferior vena cava (right) along the spine, esophagus in front
  of the aorta in the upper slices, portal/splenic vein running from the liver hilum to the
  spleen, pancreas along it (head right, tail at the splenic hilum);
* AMOS variant: also duodenum (C-loop around the pancreatic head), bladder and
  prostate/uterus in the pelvis (the volume extends further down).

Around them: a body outline with subcutaneous fat, an abdominal wall, psoas muscles, the
vertebral column (bone) and gas-filled bowel loops (unlabelled). Intensities are CT-like
HU values with organ texture and scanner noise. Per case, the body size, each organ's size,
position, orientation and outline vary (smooth random deformation), and the voxel-share
imbalance is the real one: the liver holds hundreds of times the voxels of an adrenal gland.

Arrays are stored in the layout ``(D, H, W) = (z, y, x)`` (superior, anterior, right
increase with the index), spacing ``(sz, sy, sx)`` mm.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.core.labels import AMOS_15, BTCV_13
from bench.core.registry import register_dataset
from bench.core.store import cache_root
from datasets.base import Dataset, DatasetWriter

GENERATOR_VERSION = 2


@dataclass(frozen=True)
class PhantomSpec:
    """Size of a phantom variant: array shape (D, H, W), number of cases, partition sizes."""

    shape: tuple[int, int, int]
    n_train: int = 20
    n_eval: int = 4
    #: 24 test cases: the case-level signed-rank test can then reach p ~ 1e-7 (6 could not go
    #: below 0.031, which no correction for several rows survives)
    n_test: int = 24


#: presets: ``quick`` trains on 2 CPU cores in minutes; ``paper`` is CT-sized.
PHANTOM_SIZES: dict[str, PhantomSpec] = {
    "tiny": PhantomSpec(shape=(24, 48, 48), n_train=6, n_eval=2, n_test=2),
    "quick": PhantomSpec(shape=(40, 80, 80)),
    "paper": PhantomSpec(shape=(128, 256, 256)),
}

# field of view in mm: x and y in [-176, 176]; z range depends on the label set
_FOV_XY = 176.0
_Z_RANGE = {"btcv": (-110.0, 110.0), "amos": (-225.0, 110.0)}

# --- anatomy ---------------------------------------------------------------------------
# Ellipsoids: centre (x, y, z) mm, radii (rx, ry, rz) mm, HU, yaw (deg) about z.
# Tubes: polyline of points (x, y, z) and a radius (mm).
_ELLIPSOIDS: dict[str, list[tuple[tuple[float, float, float], tuple[float, float, float], float]]] = {
    "liver": [((68, 5, 40), (72, 80, 62), 0), ((5, 42, 55), (45, 32, 30), 20)],
    "spleen": [((-95, -35, 48), (24, 40, 48), -30)],
    "right kidney": [((68, -55, -18), (24, 28, 50), 15)],
    "left kidney": [((-68, -55, -8), (24, 28, 50), -15)],
    "gallbladder": [((52, 48, -8), (15, 15, 34), 20)],
    "stomach": [((-52, 30, 42), (44, 34, 48), -25)],
    "right adrenal gland": [((44, -45, 40), (10, 4.5, 15), 30)],
    "left adrenal gland": [((-44, -45, 46), (9, 4.5, 14), -30)],
    "bladder": [((0, 40, -170), (45, 35, 33), 0)],
    "prostate/uterus": [((0, 5, -200), (20, 18, 18), 0)],
}
_TUBES: dict[str, list[tuple[list[tuple[float, float, float]], float]]] = {
    "aorta": [([(-15, -42, -115), (-15, -42, 40), (-10, -38, 115)], 12.0)],
    "inferior vena cava": [([(22, -38, -115), (24, -34, 30), (30, -10, 85)], 11.0)],
    "esophagus": [([(-12, -18, 115), (-16, -10, 70), (-30, 10, 50)], 8.0)],
    "portal vein and splenic vein": [([(38, 12, 12), (10, -2, 6), (-40, -18, 14), (-78, -28, 30)], 6.0)],
    "pancreas": [([(30, 8, -5), (5, -6, 2), (-40, -22, 10), (-74, -30, 22)], 11.0)],
    "duodenum": [([(32, 18, 12), (48, 10, -10), (38, 6, -38), (10, 4, -42), (-15, 2, -34)], 10.0)],
}
_HU = {  # portal-venous phase (BTCV's phase), typical attenuation values
    "liver": 105,
    "spleen": 118,
    "right kidney": 175,
    "left kidney": 175,
    "gallbladder": 8,
    "esophagus": 45,
    "stomach": 30,
    "aorta": 165,
    "inferior vena cava": 135,
    "portal vein and splenic vein": 175,
    "pancreas": 88,
    "right adrenal gland": 62,
    "left adrenal gland": 62,
    "duodenum": 52,
    "bladder": 6,
    "prostate/uterus": 70,
}
# drawing order: large organs first, then vessels and small organs on top
_DRAW_ORDER = (
    "liver",
    "stomach",
    "spleen",
    "right kidney",
    "left kidney",
    "duodenum",
    "pancreas",
    "gallbladder",
    "inferior vena cava",
    "aorta",
    "portal vein and splenic vein",
    "esophagus",
    "right adrenal gland",
    "left adrenal gland",
    "bladder",
    "prostate/uterus",
)


class _SmoothField:
    """A smooth random scalar field: a sum of a few random plane waves (about 60 mm long)."""

    def __init__(self, rng: np.random.Generator, n: int = 4, wavelength: float = 60.0, amplitude: float = 1.0):
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        self.k = d * (2 * np.pi / (wavelength * rng.uniform(0.7, 1.4, size=(n, 1))))
        self.phase = rng.uniform(0, 2 * np.pi, size=n)
        self.amp = amplitude / np.sqrt(n)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=np.float32)
        for (kx, ky, kz), ph in zip(self.k, self.phase):
            out += np.sin(kx * x + ky * y + kz * z + ph).astype(np.float32)
        return out * self.amp


class _Grid:
    """World coordinates (mm) of the voxel centres of a (D, H, W) = (z, y, x) array."""

    def __init__(self, shape: tuple[int, int, int], z_range: tuple[float, float]):
        d, h, w = shape
        self.shape = shape
        self.spacing = ((z_range[1] - z_range[0]) / d, 2 * _FOV_XY / h, 2 * _FOV_XY / w)
        self.z = (z_range[0] + (np.arange(d) + 0.5) * self.spacing[0]).astype(np.float32)
        self.y = (-_FOV_XY + (np.arange(h) + 0.5) * self.spacing[1]).astype(np.float32)
        self.x = (-_FOV_XY + (np.arange(w) + 0.5) * self.spacing[2]).astype(np.float32)

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index box covering world box [lo, hi] (x, y, z order), or None if outside."""
        sl = []
        for axis, lo_, hi_ in ((self.z, lo[2], hi[2]), (self.y, lo[1], hi[1]), (self.x, lo[0], hi[0])):
            a, b = np.searchsorted(axis, lo_), np.searchsorted(axis, hi_, side="right")
            if b <= a:
                return None
            sl.append(slice(int(a), int(b)))
        return tuple(sl)  # type: ignore[return-value]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[box[2]][None, None, :], self.y[box[1]][None, :, None], self.z[box[0]][:, None, None]


def _segment_distance(px, py, pz, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((px - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (pz - a[2] - t * ab[2]) ** 2)


def generate_case(labels: tuple[str, ...], shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Draw one phantom case.

    Returns ``image`` (D, H, W) float32 HU, ``label`` (D, H, W) uint8 in the order of
    ``labels`` (index 0 = background) and the spacing (sz, sy, sx) in mm.
    """
    rng = np.random.default_rng(seed)
    variant = "amos" if "duodenum" in labels else "btcv"
    grid = _Grid(shape, _Z_RANGE[variant])
    d, h, w = shape
    xs, ys, zs = grid.x[None, None, :], grid.y[None, :, None], grid.z[:, None, None]

    # body: an ellipse per slice, with a random size; subcutaneous fat, wall muscle, inner fat
    body_scale = rng.uniform(0.9, 1.1, size=2)
    bx, by = 150.0 * body_scale[0], 112.0 * body_scale[1]
    outline = _SmoothField(rng, wavelength=150, amplitude=0.04)
    r_body = np.sqrt((xs / bx) ** 2 + ((ys - 5) / by) ** 2) + outline(xs, ys, zs)
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[np.broadcast_to(r_body < 1.0, shape)] = -95.0
    image[np.broadcast_to((r_body < 0.93) & (r_body >= 0.87), shape)] = 45.0  # abdominal wall
    image[np.broadcast_to(r_body < 0.87, shape)] = -80.0  # visceral fat

    # vertebral column and psoas muscles (not labelled)
    spine = (xs**2 + ((ys + 78) / 1.1) ** 2) < 19.0**2
    image[np.broadcast_to(spine, shape)] = 420.0
    canal = (xs**2 + (ys + 100) ** 2) < 8.0**2
    image[np.broadcast_to(canal & (r_body < 1), shape)] = 20.0
    for side in (-1, 1):
        psoas = ((xs - side * 38) ** 2 + (ys + 70) ** 2) < (10 + 0.08 * np.maximum(-zs, 0)) ** 2
        image[np.broadcast_to(psoas & (zs < 30), shape)] = 50.0

    # gas-filled and fluid bowel loops in the anterior abdomen (confusers, unlabelled)
    for _ in range(int(rng.integers(6, 11))):
        c = np.array([rng.uniform(-90, 90), rng.uniform(0, 85), rng.uniform(-110, 10)])
        r = rng.uniform(9, 18)
        box = grid.box(c - r, c + r)
        if box is None:
            continue
        x, y, z = grid.coords(box)
        m = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) < r**2
        image[box][m] = rng.choice([-700.0, 15.0, 35.0])

    label = np.zeros(shape, dtype=np.uint8)
    index = {name: i for i, name in enumerate(labels)}
    global_shift = rng.normal(0, 6, size=3)
    for name in _DRAW_ORDER:
        if name not in index:
            continue
        mask_box = _draw_organ(name, grid, rng, global_shift, np.array([body_scale[0], body_scale[1], 1.0]))
        if mask_box is None:
            continue
        box, m = mask_box
        hu = _HU[name] + rng.normal(0, 6)
        texture = _SmoothField(rng, wavelength=25, amplitude=8.0)
        x, y, z = grid.coords(box)
        vals = hu + texture(x, y, z)
        image[box][m] = np.broadcast_to(vals, m.shape)[m]
        label[box][m] = index[name]
        if name == "stomach" and rng.random() < 0.7:  # gas cap in the stomach, still stomach
            top = m & (np.broadcast_to(y, m.shape) > np.percentile(np.broadcast_to(y, m.shape)[m], 80))
            image[box][top] = -650.0

    # scanner: slight blur (partial volume) and noise
    image = _blur(image)
    image += rng.normal(0, 14, size=shape).astype(np.float32)
    return image.astype(np.float32), label, grid.spacing


def _blur(a: np.ndarray) -> np.ndarray:
    """A 3-tap [1, 2, 1]/4 blur along each axis (cheap partial-volume effect)."""
    out = a.copy()
    for ax in range(3):
        p = np.pad(out, [(1, 1) if i == ax else (0, 0) for i in range(3)], mode="edge")
        lo = [slice(None)] * 3
        mid = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], mid[ax], hi[ax] = slice(0, -2), slice(1, -1), slice(2, None)
        out = (p[tuple(lo)] + 2 * p[tuple(mid)] + p[tuple(hi)]) / 4
    return out


def _draw_organ(name, grid: _Grid, rng: np.random.Generator, shift: np.ndarray, body: np.ndarray):
    """Mask of one organ in its bounding box: ``(box, mask)`` or None if out of view."""
    organ_shift = shift + rng.normal(0, 5, size=3)
    size = rng.uniform(0.85, 1.15)
    deform = _SmoothField(rng, wavelength=70, amplitude=0.22)
    parts = []
    if name in _ELLIPSOIDS:
        for centre, radii, yaw in _ELLIPSOIDS[name]:
            c = np.array(centre, dtype=np.float64) * body + organ_shift
            r = np.array(radii, dtype=np.float64) * size * rng.uniform(0.92, 1.08, size=3)
            parts.append(("ell", c, r, np.deg2rad(yaw + rng.normal(0, 8))))
    else:
        for points, radius in _TUBES[name]:
            pts = np.array(points, dtype=np.float64) * body + organ_shift
            pts[1:-1] += rng.normal(0, 4, size=pts[1:-1].shape)
            parts.append(("tube", pts, radius * size, 0.0))
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for kind, c, r, _ in parts:
        ext = r * 1.35  # margin for the smooth deformation
        pts = c[None] if kind == "ell" else c
        lo = np.minimum(lo, pts.min(0) - ext)
        hi = np.maximum(hi, pts.max(0) + ext)
    box = grid.box(lo, hi)
    if box is None:
        return None
    x, y, z = grid.coords(box)
    mask = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
    noise = deform(x, y, z)
    for kind, c, r, yaw in parts:
        if kind == "ell":
            dx, dy, dz = x - c[0], y - c[1], z - c[2]
            cs, sn = np.cos(yaw), np.sin(yaw)
            u, v = cs * dx + sn * dy, -sn * dx + cs * dy
            f = (u / r[0]) ** 2 + (v / r[1]) ** 2 + (dz / r[2]) ** 2
        else:
            dist = np.full(mask.shape, np.inf, dtype=np.float32)
            for a, b in zip(c[:-1], c[1:]):
                dist = np.minimum(dist, _segment_distance(x, y, z, a, b))
            f = (dist / r) ** 2
        mask |= (f + noise) < 1.0
    if not mask.any():
        return None
    return box, mask


def _phantom_root(variant: str, preset: str, seed: int) -> Path:
    spec = PHANTOM_SIZES[preset]
    key = json.dumps({"v": GENERATOR_VERSION, "variant": variant, "seed": seed, **asdict(spec)}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return cache_root() / "phantom" / f"{variant}-{preset}-s{seed}-{digest}"


def build_phantom(variant: str = "btcv", preset: str = "quick", seed: int = 0, progress: bool = False) -> Dataset:
    """Generate (on first use) and open the phantom dataset; later calls read the cache."""
    if preset not in PHANTOM_SIZES:
        from bench.core.errors import UserError

        raise UserError(f"unknown phantom preset '{preset}'; choose one of {', '.join(PHANTOM_SIZES)}")
    root = _phantom_root(variant, preset, seed)
    if (root / "dataset.json").exists():
        return Dataset.open(root, root.name)
    spec = PHANTOM_SIZES[preset]
    labels = AMOS_15 if variant == "amos" else BTCV_13
    name = "phantom" if variant == "btcv" else "phantom_amos"
    writer = DatasetWriter(root, name, labels)
    n = spec.n_train + spec.n_eval + spec.n_test
    ids = [f"case_{i:04d}" for i in range(n)]
    iterator = ids
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(ids, desc=f"generating {name} ({preset})", unit="case", leave=False)
    try:
        for i, cid in enumerate(iterator):
            image, label, spacing = generate_case(labels, spec.shape, seed * 100_003 + i)
            writer.add(cid, image, label, spacing)
    except BaseException:
        writer.abort()
        raise
    return writer.commit(
        key=root.name,
        partition={
            "train": ids[: spec.n_train],
            "eval": ids[spec.n_train : spec.n_train + spec.n_eval],
            "test": ids[spec.n_train + spec.n_eval :],
        },
        generator={"version": GENERATOR_VERSION, "variant": variant, "preset": preset, "seed": seed},
    )


@register_dataset("phantom")
def phantom(preset: str = "quick", data_root: str | None = None, progress: bool = False) -> Dataset:
    """Synthetic abdominal CT, 13 BTCV organs (embedded default; no data needed)."""
    return build_phantom("btcv", preset, progress=progress)


@register_dataset("phantom_amos")
def phantom_amos(preset: str = "quick", data_root: str | None = None, progress: bool = False) -> Dataset:
    """Synthetic abdominal CT, 15 AMOS organs (adds duodenum, bladder, prostate/uterus)."""
    return build_phantom("amos", preset, progress=progress)
