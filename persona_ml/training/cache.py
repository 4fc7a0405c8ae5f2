"""On-disk cache of VAE latents and text embeddings, shared by every run on one base model.

Keys are sha256 over JSON of what determines the tensor:
    latents  (base-model fingerprint, prepared image sha256, crop box, bucket width x height,
             training resolution)
    text     (base-model fingerprint, caption, max_sequence_length)
so a new base model, another crop, size or caption never reads a stale entry. Entries are
safetensors files ``<root>/<kind>/<key[:2]>/<key>.safetensors`` written atomically, with their
kind, key and a sha256 of the tensors (names, dtypes, shapes, bytes) in the header; an entry
that cannot be read, belongs to another key or whose tensors no longer match that sha256 (a
flipped byte) is deleted and recomputed. Entries written before the sha256 was recorded are read
as they are.

Latents are stored already normalised, ``(z - shift_factor) * scaling_factor`` of the VAE's
posterior mean (the Flux VAE's posterior std is tiny, and a mean keeps runs reproducible).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._atomic import atomic_path

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$PERSONA_ML_CACHE_DIR`` or ``~/.cache/persona_ml/train``."""
    env = os.environ.get("PERSONA_ML_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "persona_ml" / "train"


def cache_key(kind: str, **parts: Any) -> str:
    """Stable hex key over ``kind`` and ``parts`` (JSON with sorted keys)."""
    blob = json.dumps({"kind": kind, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def latent_key(fingerprint: str, image_sha256: str, crop: tuple[int, ...], width: int, height: int,
               resolution: int) -> str:
    return cache_key("latents", model=fingerprint, image=image_sha256, crop=list(crop), bucket=[width, height],
                     resolution=resolution)


def text_key(fingerprint: str, caption: str, max_sequence_length: int) -> str:
    return cache_key("text", model=fingerprint, caption=caption, max_sequence_length=max_sequence_length)


@dataclass
class CacheStats:
    """Hits and misses per kind during one run."""

    latent_hits: int = 0
    latent_misses: int = 0
    text_hits: int = 0
    text_misses: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class TensorCache:
    """Read/write named-tensor entries by key under ``root``.

    Args:
        root: the cache folder (created on first write).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def get(self, kind: str, key: str, names: tuple[str, ...] = ()):
        """The tensors stored under ``key``, or ``None`` when there is no readable entry.

        Args:
            kind: ``"latents"`` or ``"text"``.
            key: the entry's key.
            names: tensors the entry must hold (a file without one of them is a miss).

        An entry that cannot be read, was written under another kind or key, lacks one of
        ``names`` or fails its recorded sha256 is removed and ``None`` returned.
        """
        from safetensors import safe_open

        p = self.path(kind, key)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {n: fh.get_tensor(n) for n in fh.keys()}
            problem = None
            if meta.get("kind", kind) != kind or meta.get("key", key) != key:
                problem = f"written for {meta.get('kind')}/{meta.get('key')}"
            elif any(n not in tensors for n in names):
                problem = f"holds {sorted(tensors)}, not {list(names)}"
            elif "sha256" in meta and meta["sha256"] != tensors_sha256(tensors):
                problem = "its tensors do not match their recorded sha256"
        except Exception as exc:  # noqa: BLE001 (a truncated or foreign file is a miss, never a crash)
            problem = str(exc) or type(exc).__name__
        if problem is not None:
            log.warning("cache entry %s is unreadable (%s); recomputing", p, problem)
            p.unlink(missing_ok=True)
            return None
        return tensors

    def put(self, kind: str, key: str, tensors: dict) -> Path:
        """Store ``tensors`` (moved to CPU, contiguous) atomically under ``key``, with their sha256."""
        from safetensors.torch import save_file

        p = self.path(kind, key)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        with atomic_path(p, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"kind": kind, "key": key, "sha256": tensors_sha256(tensors)})
        return p


def tensors_sha256(tensors: dict) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order (CPU tensors)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
