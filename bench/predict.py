"""``bench predict`` and ``bench export``: a trained model on new scans, and a model in one file.

A model is a finished run folder (``--run``, the weights its test used: ``best.pt`` where
validation kept one, else ``checkpoint.pt``) or a bundle written by ``bench export``
(``--bundle``): one file of tensors and plain data - the weights and running state, the run's
resolved config and records, label names, protocol, prompt texts and the text-prior tensor - read
with ``torch.load(weights_only=True)`` (loading never runs code) and usable with an empty cache
and no network.

Prediction follows the run's protocol: each input NIfTI is read in the suite's canonical layout
(RAS, (D, H, W)), prepared as the run's test prepared its images (window, normalisation,
resampling), passed through the sliding window with the run's patch and the protocol's stride
and fusion, and the label map (uint8) is written back on the input's own grid and affine.
Several models (``--run`` given more than once, or several bundles) average their softmax
probabilities (an ensemble of seeds or methods with the same labels and protocol).

Test-time augmentation (``tta="flip"``): the mean of the probabilities over the 8 mirrorings of
the three axes (nnU-Net's mirroring); a mirroring along W (left-right in the canonical layout)
turns a left organ into a right one, so its probabilities are mapped back with left and right
channels exchanged ("left kidney" <-> "right kidney") before averaging: a network that tells
left from right by position labels the mirrored left kidney "right kidney".
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from bench.core.errors import UserError
from bench.core.protocol import Protocol
from bench.core.store import absent

BUNDLE_FORMAT = "bench-bundle"
BUNDLE_VERSION = 1
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Model:
    """A method with trained weights and what it needs to predict like its run's test."""

    source: str
    method: object
    organs: tuple[str, ...]
    protocol: Protocol
    patch: tuple[int, int, int]
    overlap: object
    sw_batch_size: int
    amp: bool


# ----------------------------------------------------------------------------- loading
def protocol_from_record(d: dict) -> Protocol:
    """The :class:`Protocol` a run recorded (config.json's ``protocol``: its fields)."""
    names = {f.name for f in dataclasses.fields(Protocol)}
    kw = {k: v for k, v in d.items() if k in names}
    for k in ("window", "eval_shape", "stride"):
        if isinstance(kw.get(k), list):
            kw[k] = tuple(kw[k])
    if isinstance(kw.get("resample"), list):
        kind, arg = kw["resample"]
        kw["resample"] = (kind, tuple(arg))
    return Protocol(**kw)


def _read_json(path: Path, what: str) -> dict:
    import json

    if not path.is_file():
        raise UserError(f"{path} {absent(path)}: {what}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({type(e).__name__}); the run folder is damaged, re-run it")
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a bench record; the run folder is damaged, re-run it")
    return data


def _build(config: dict, organs: Sequence[str], priors: torch.Tensor | None, device: torch.device):
    """The method of ``config`` (config.json's dict) for ``organs``, untrained, on ``device``."""
    from bench.core.registry import METHODS
    from methods.base import MethodContext

    name = config.get("method")
    if name not in METHODS:
        raise UserError(f"the run's method '{name}' is not registered here; install the suite (or plugin) that trained it")
    cls = METHODS.get(name)
    train = config.get("train", {})
    classes = ("background", *organs)
    ctx = MethodContext(num_classes=len(classes), class_names=classes, patch_size=tuple(train["patch"]), width=int(train["width"]),
                        device=device, iterations=int(train.get("iterations", 1)),
                        labeled_voxel_counts=np.ones(len(classes), np.int64), seed=int(config.get("seed", 0)),
                        priors=(lambda t=priors: t.clone()) if priors is not None else None)
    return cls(ctx, **config.get("hparams", {})).to(device)


def _load_state(method, state: dict, source: str) -> None:
    try:
        for k, m in method.modules().items():
            m.load_state_dict(state["modules"][k])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{source}: the weights do not fit the method its config names ({' '.join(str(e).split())[:120]}); "
                        f"the run folder is damaged or was trained by another version")
    method.load_running_state(state.get("method_state", {}))
    method.train(False)


def _run_priors(config: dict, organs: Sequence[str]) -> tuple[torch.Tensor | None, dict]:
    """The text-prior tensor and prompt texts a run's method takes (None, {} for the others)."""
    from bench.core.registry import METHODS

    cls = METHODS.get(config["method"])
    if cls.text_priors is None:
        return None, {}
    fixed = config.get("fixed_priors") or {}
    prompts = fixed.get("prompts") or config.get("prompts")
    encoder = fixed.get("encoder") or config.get("text_encoder")
    from priors.cache import prior_embeddings
    from priors.prompts import load_prompt_set

    classes = ("background", *organs)
    emb = prior_embeddings(prompts, encoder, classes)
    texts = {}
    try:
        ps = load_prompt_set(prompts)
        texts = {"name": ps.name, "views": list(ps.views), "classes": {c: ps.classes.get(c, {}) for c in classes if c in ps.classes}}
    except UserError:
        pass  # a fixed prior (hash vectors) has no prompt file
    return emb, {"prompts": prompts, "encoder": encoder, "texts": texts}


def _weights_path(run: Path) -> Path:
    for name in ("best.pt", "checkpoint.pt"):
        if (run / name).is_file():
            return run / name
    raise UserError(f"{run} holds no checkpoint (best.pt or checkpoint.pt): a finished run keeps one; re-run it "
                    f"(runs cleaned with --keep-checkpoints false cannot predict)")


def _run_parts(run_dir: str | Path) -> tuple[Path, dict, dict, dict]:
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"--run {run} {absent(run)}; give a run folder (the one holding metrics.json)")
    metrics = _read_json(run / "metrics.json", "give a finished run folder (the one holding metrics.json)")
    config = _read_json(run / "config.json", "the run folder is incomplete; re-run it")
    state = torch.load(_weights_path(run), map_location="cpu", weights_only=True)
    return run, metrics, config, state


def load_run(run_dir: str | Path, device: torch.device) -> Model:
    """A finished run folder as a :class:`Model`."""
    run, metrics, config, state = _run_parts(run_dir)
    organs = tuple(metrics["organs"])
    priors, _ = _run_priors(config, organs)
    method = _build(config, organs, priors, device)
    _load_state(method, state, str(run))
    return _model(str(run), method, organs, config)


def _model(source: str, method, organs, config: dict) -> Model:
    train = config["train"]
    protocol = protocol_from_record(config["protocol"])
    patch = tuple(int(p) for p in train["patch"])
    overlap = protocol.window_overlap(patch) if train.get("overlap", "protocol") == "protocol" else float(train["overlap"])
    return Model(source, method, tuple(organs), protocol, patch, overlap, int(train.get("sw_batch_size", 2)), bool(train.get("amp")))


def export_bundle(run_dir: str | Path, out: str | Path) -> Path:
    """Write ``out``: one file with everything :func:`load_bundle` needs (tensors and plain data)."""
    from bench.core.store import atomic_save

    run, metrics, config, state = _run_parts(run_dir)
    organs = tuple(metrics["organs"])
    priors, prior_meta = _run_priors(config, organs)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name (e.g. model.bench)")
    bundle = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "modules": state["modules"],
              "method_state": state.get("method_state", {}), "config": config, "metrics": metrics, "organs": list(organs),
              "priors": priors, "prior_meta": prior_meta, "source": str(run.resolve())}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(out, lambda f: torch.save(bundle, f))
    return out


def load_bundle(path: str | Path, device: torch.device) -> Model:
    """A bundle written by :func:`export_bundle` as a :class:`Model` (no cache, no network)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--bundle {path} {absent(path)}; write one with `python -m bench export RUN_DIR --out FILE`")
    try:
        b = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for foreign objects, others for damage
        raise UserError(f"{path} is not a bench bundle or is corrupt ({type(e).__name__}); export it again")
    if not isinstance(b, dict) or b.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{path} is not a bench bundle (no format '{BUNDLE_FORMAT}'); export it again")
    if b.get("version", 0) > BUNDLE_VERSION:
        raise UserError(f"{path} is a bundle of version {b['version']}, newer than this suite's {BUNDLE_VERSION}; update the suite")
    method = _build(b["config"], b["organs"], b.get("priors"), device)
    _load_state(method, {"modules": b["modules"], "method_state": b.get("method_state", {})}, str(path))
    return _model(str(path), method, b["organs"], b["config"])


# ----------------------------------------------------------------------------- inputs
def input_files(path: str | Path) -> list[Path]:
    """The NIfTI files of ``path`` (a file or a folder of .nii / .nii.gz), sorted. A DICOM
    folder gets a one-line hint to convert it; nothing to read is refused."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--input {p} {absent(p)}; give a NIfTI file or a folder of them")
    if p.is_file():
        if not p.name.endswith(NIFTI_SUFFIXES):
            raise UserError(f"--input {p} is not a NIfTI file (.nii / .nii.gz); convert it first (e.g. dcm2niix for DICOM)")
        return [p]
    files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(NIFTI_SUFFIXES))
    if not files:
        if any(_is_dicom(f) for f in itertools.islice((f for f in p.rglob("*") if f.is_file()), 20)):
            raise UserError(f"--input {p} holds DICOM files, not NIfTI; convert them first, e.g. `dcm2niix -z y -o OUT {p}`")
        raise UserError(f"--input {p} holds no .nii / .nii.gz file; give a NIfTI file or a folder of them")
    return files


def _is_dicom(f: Path) -> bool:
    if f.suffix.lower() == ".dcm":
        return True
    try:
        with f.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def looks_like_ct(image: np.ndarray) -> bool:
    """Whether intensities look like CT in Hounsfield units: air near -1000 and soft tissue
    around 0-100 (an MR or an already normalised image does not)."""
    lo, hi = np.percentile(image[:: max(1, image.shape[0] // 16)], [1, 99])
    return lo < -500 and hi > 0


def case_name(path: Path) -> str:
    """The case name of an input file: its name without .nii / .nii.gz (the output's stem)."""
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]


# ----------------------------------------------------------------------------- prediction
def lr_swap(organs: Sequence[str]) -> list[int]:
    """Channel permutation (background first) exchanging every "left X" with "right X"."""
    names = ["background", *organs]
    index = {n: i for i, n in enumerate(names)}
    perm = list(range(len(names)))
    for i, n in enumerate(names):
        for a, b in (("left ", "right "), ("right ", "left ")):
            if n.startswith(a) and b + n[len(a):] in index:
                perm[i] = index[b + n[len(a):]]
    return perm


FLIPS = [tuple(a for a, on in zip((0, 1, 2), bits) if on) for bits in itertools.product((False, True), repeat=3)]


def grid_probabilities(model: Model, grid_image: np.ndarray, device: torch.device, tta: str = "none") -> np.ndarray:
    """Probabilities (C, D', H', W') of one image already on the protocol grid; ``tta="flip"``:
    mean over the 8 mirrorings, left / right channels exchanged under a W mirroring."""
    from bench.inference import predict_volume

    flips = FLIPS if tta == "flip" else [()]
    perm = lr_swap(model.organs)
    total = None
    for axes in flips:
        img = np.flip(grid_image, axes).copy() if axes else grid_image
        with torch.no_grad():
            p = predict_volume(model.method.predict, img, model.patch, model.overlap, device, mode=model.protocol.sw_mode,
                               sw_batch_size=model.sw_batch_size, amp=model.amp, fusion=model.protocol.fusion, probabilities=True)
        if axes:
            p = np.flip(p, tuple(a + 1 for a in axes))
            if 2 in axes:
                p = p[perm]
        total = p.astype(np.float64) if total is None else total + p
    return (total / len(flips)).astype(np.float32)


def check_ensemble(models: Sequence[Model]) -> None:
    """Models averaged together must share labels and protocol (their grids and meanings)."""
    first = models[0]
    for m in models[1:]:
        if m.organs != first.organs:
            raise UserError(f"{m.source} predicts other labels than {first.source} ({len(m.organs)} vs {len(first.organs)} organs); "
                            f"ensemble runs of one label set")
        if m.protocol.describe() != first.protocol.describe():
            raise UserError(f"{m.source} ran under protocol {m.protocol.name} v{m.protocol.version}, {first.source} under "
                            f"{first.protocol.name} v{first.protocol.version}; ensemble runs of one protocol")


def predict_files(models: Sequence[Model], files: Sequence[Path], out: str | Path, device: torch.device, tta: str = "none",
                  save_probabilities: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    """Predict every file into ``out`` (``<case>.nii.gz``: uint8 labels on the input's grid and
    affine; ``<case>_probabilities.nii.gz``: float32 (i, j, k, C) on that grid with
    ``save_probabilities``). Returns one record per file (shapes, seconds, warnings)."""
    from bench.core.protocol import resize
    from datasets.nifti import read_nifti, source_affine, write_nifti

    if tta not in ("none", "flip"):
        raise UserError(f"--tta {tta}: choose none or flip")
    check_ensemble(models)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    protocol, results = models[0].protocol, []
    for f in files:
        image, spacing = read_nifti(f)
        warn = None
        if not looks_like_ct(image):
            warn = f"{f.name}: intensities do not look like CT in HU (an MR or a normalised image?); predicted anyway"
            log(f"warning: {warn}")
        t0 = time.perf_counter()
        grid = protocol.prepare_image(image, name=str(f))
        probs = sum(grid_probabilities(m, grid, device, tta) for m in models) / len(models)
        labels = protocol.to_native(probs.argmax(0).astype(np.uint8), image.shape)
        seconds = time.perf_counter() - t0
        name = case_name(f)
        write_nifti(out / f"{name}.nii.gz", labels, spacing, source_affine(f))
        if save_probabilities:
            native = np.stack([c if c.shape == image.shape else resize(c, image.shape, "trilinear") for c in probs])
            _write_probabilities(out / f"{name}_probabilities.nii.gz", native, source_affine(f))
        results.append({"input": str(f), "shape": list(image.shape), "spacing": list(spacing), "seconds": seconds,
                        "labels": sorted(int(v) for v in np.unique(labels)), "warning": warn})
    return results


def _write_probabilities(path: Path, probs: np.ndarray, affine) -> None:
    """(C, D, H, W) probabilities as a 4D float32 NIfTI on the source's voxel order and affine."""
    import gzip

    import nibabel as nib
    from nibabel import orientations as nio

    from bench.core.store import atomic_write_bytes

    ras = np.ascontiguousarray(probs.transpose(3, 2, 1, 0))  # (i, j, k, C)
    affine = np.asarray(affine, dtype=np.float64)
    to_source = nio.ornt_transform(nio.axcodes2ornt("RAS"), nio.io_orientation(affine))
    img = nib.Nifti1Image(np.ascontiguousarray(nio.apply_orientation(ras, to_source)).astype(np.float32), affine)
    atomic_write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))


__all__ = ["BUNDLE_FORMAT", "Model", "check_ensemble", "export_bundle", "grid_probabilities", "input_files", "load_bundle",
           "load_run", "looks_like_ct", "lr_swap", "predict_files", "protocol_from_record"]
