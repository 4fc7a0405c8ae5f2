"""On-disk cache of VAE latents and text embeddings, shared by every run on one base model.

Keys are sha256 over JSON of what determines the tensor:
    latents  (base-model fingerprint, prepared image sha256, crop box, bucket width x height,
             training resolution)
    text     (base-model fingerprint, caption, max_sequence_length)
so a new base model, another crop, size or caption never reads a stale entry. Entries are
safetensors files ``<root>/<kind>/<key[:2]>/<key>.safetensors`` written atomically; a corrupt
entry is deleted and recomputed.

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

    def get(self, kind: str, key: str):
        """The tensors stored under ``key``, or ``None`` (a corrupt entry is removed)."""
        from safetensors.torch import load_file

        p = self.path(kind, key)
        if not p.is_file():
            return None
        try:
            return load_file(str(p))
        except Exception as exc:  # noqa: BLE001 (a truncated or foreign file is a miss, never a crash)
            log.warning("cache entry %s is unreadable (%s); recomputing", p, exc)
            p.unlink(missing_ok=True)
            return None

    def put(self, kind: str, key: str, tensors: dict) -> Path:
        """Store ``tensors`` (moved to CPU, contiguous) atomically under ``key``."""
        from safetensors.torch import save_file

        p = self.path(kind, key)
        with atomic_path(p, suffix=".safetensors") as tmp:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp),
                      metadata={"kind": kind, "key": key})
        return p
