"""Prior embeddings of a dataset's classes, with an on-disk cache.

:func:`prior_embeddings` returns the tensor a text-driven method consumes: ``(V * C, dim)``,
the rows of view 0 for classes 0..C-1, then view 1, ... (the layout of TAK's released file:
location rows then shape rows). A class with several texts in a view gets their mean.

The cache key hashes the prompt content (texts, views, template), the class names and the
encoder's identity including its weights, so a changed prompt or checkpoint is never served
from a stale entry. ``python -m bench priors encode`` fills the cache ahead of a GPU job, so
training never has to load the text encoder.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Sequence

from bench.core.errors import UserError
from bench.core.store import atomic_save, cache_root
from priors.encoders import TextEncoder, get_encoder
from priors.prompts import PromptSet, load_prompt_set


def cache_dir() -> Path:
    """The folder of cached prior embeddings (``$BENCH_CACHE/priors``)."""
    return cache_root() / "priors"


def cache_key(prompts: PromptSet, encoder_weights_id: str, class_names: Sequence[str]) -> str:
    """Key of one embedding tensor: the prompt texts' digest, the encoder's weights and the class names."""
    body = json.dumps({"prompts": prompts.digest(), "encoder": encoder_weights_id, "classes": list(class_names)})
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:40].strip("-")


def encode_prompts(prompts: PromptSet, encoder: TextEncoder, class_names: Sequence[str]):
    """(V * C, dim) embeddings of the prompt set for these classes (no cache)."""
    import torch

    texts = prompts.texts_for(class_names)
    flat = [t for view in texts for cls in view for t in cls]
    vecs = encoder.encode(flat)
    rows, i = [], 0
    for view in texts:
        for cls in view:
            rows.append(vecs[i : i + len(cls)].mean(0))
            i += len(cls)
    return torch.stack(rows).float()


def prior_embeddings(
    prompts: str | PromptSet,
    encoder: str | TextEncoder,
    class_names: Sequence[str],
    use_cache: bool = True,
    device: str = "cpu",
) -> "torch.Tensor":  # noqa: F821
    """The prior tensor (V * C, dim) for ``class_names`` (background included)."""
    import torch

    ps = load_prompt_set(prompts) if isinstance(prompts, str) else prompts
    enc = get_encoder(encoder, device=device) if isinstance(encoder, str) else encoder
    n = len(class_names)
    if enc.precomputed:
        t = enc.tensor  # type: ignore[attr-defined]
        if t.shape[0] % n:
            raise UserError(f"prior file {enc.encoder_id} has {t.shape[0]} rows, not a multiple of the {n} classes of this dataset")
        return t.clone()
    key = cache_key(ps, enc.weights_id, class_names)
    path = cache_dir() / f"{_slug(ps.name)}-{_slug(enc.encoder_id)}-{key}.pt"
    if use_cache and path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)["embeddings"]
        except Exception:
            path.unlink(missing_ok=True)  # unreadable: recompute
    t0 = time.perf_counter()
    emb = encode_prompts(ps, enc, class_names)
    if use_cache:
        meta = {"prompts": ps.name, "prompts_digest": ps.digest(), "encoder": enc.encoder_id, "weights": enc.weights_id,
                "classes": list(class_names), "views": list(ps.views), "seconds": time.perf_counter() - t0}
        atomic_save(path, lambda f: torch.save({"embeddings": emb, "meta": meta}, f))
    return emb


def cached_path(prompts: PromptSet, encoder: TextEncoder, class_names: Sequence[str]) -> Path:
    """Where :func:`prior_embeddings` caches the tensor of these prompts, encoder and classes."""
    return cache_dir() / f"{_slug(prompts.name)}-{_slug(encoder.encoder_id)}-{cache_key(prompts, encoder.weights_id, class_names)}.pt"
