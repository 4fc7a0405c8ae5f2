"""Helpers for tests, benchmarks and demos of the trainer: synthetic prepared datasets and a
tiny-flux loader that builds the model once per process and hands out copies.

Nothing here is used by the trainer itself.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def make_synthetic_dataset(root: str | os.PathLike, n: int = 3, size: int = 64, *, masks: bool = True,
                           trigger: str = "ohwx", seed: int = 0):
    """Write a prepared dataset of ``n`` smooth random ``size`` x ``size`` images (with a square
    face mask in the upper-left quadrant) and return ``load_prepared(root)``."""
    from PIL import Image

    from .._atomic import sha256_file
    from ..dataset.manifest import PreparedDatasetInfo, PreparedItem, dataset_hash, load_prepared, write_manifest

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        coarse = rng.random((4, 4, 3)) * 255
        arr = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC))
        Image.fromarray(arr).save(root / f"images/{i:03d}.png")
        mask_rel = None
        if masks:
            m = np.zeros((size, size), np.uint8)
            m[size // 8:size // 2, size // 8:size // 2] = 255
            Image.fromarray(m, "L").save(root / f"masks/{i:03d}.png")
            mask_rel = f"masks/{i:03d}.png"
        q = size // 8
        items.append(PreparedItem(id=f"{i:03d}", image=f"images/{i:03d}.png", caption=f"{trigger}, a photo, view {i}",
                                  width=size, height=size, source_sha256=f"{i:064d}", source=f"photo{i}.jpg",
                                  crop=(0, 0, size, size), kind="closeup", face_bbox=(q, q, size / 2, size / 2),
                                  mask=mask_rel, image_sha256=sha256_file(root / f"images/{i:03d}.png"),
                                  mask_sha256=sha256_file(root / mask_rel) if mask_rel else ""))
    info = PreparedDatasetInfo(format_version=1, trigger=trigger, caption_dropout=0.05, resolutions=(size,),
                               dataset_hash=dataset_hash(items), profile_fingerprint=None, num_items=n,
                               num_source_images=n)
    write_manifest(root, info, items)
    return load_prepared(root)


@dataclass
class _Loaded:
    name: str
    spec: Any
    pipeline: Any
    fingerprint: str
    architecture: str = "tiny-flux"
    quantization: str = "none"


class TinyLoader:
    """A ``_load_base_model`` stand-in: builds tiny-flux (seed 0) once, returns deep copies.

    It takes the real loader's ``parts`` (``"none"``: the fingerprint and scheduler only) and
    ``quantization``: a copy holds only the asked parts (the others are ``None``), with the same
    fingerprint whatever the parts, and a quantized transformer goes through diffusers' quantization
    config exactly as ``load_base_model`` does. ``calls`` counts loads, ``parts_loaded`` lists each
    call's ``parts``; ``on_load(pipeline)`` runs on each copy (tests attach hooks there).
    """

    def __init__(self, config: Any = None, on_load: Any = None) -> None:
        self.config = config
        self.on_load = on_load
        self.calls = 0
        self.parts_loaded: list[str] = []
        self._base: Any = None
        self._fp = ""
        self._shared: TinyLoader | None = None

    def with_hook(self, on_load: Any) -> TinyLoader:
        """A loader sharing this one's built model, with its own ``on_load`` and call count."""
        other = TinyLoader(self.config, on_load)
        other._shared = self
        return other

    def _build(self) -> None:
        from ..models.tiny_flux import TinyFluxConfig, build_tiny_flux_pipeline, tiny_flux_fingerprint

        if self._base is None:
            cfg = self.config or TinyFluxConfig()
            self._base = build_tiny_flux_pipeline(seed=0, config=cfg)
            self._fp = tiny_flux_fingerprint(self._base, 0, cfg)

    def __call__(self, name: str, *, dtype, device, path=None, parts: str = "all", quantization: str = "none"):
        from diffusers import FluxPipeline

        from ..models.quantization import quantization_config
        from ..models.tiny_flux import quantize_tiny_transformer

        self.calls += 1
        self.parts_loaded.append(parts)
        src = self._shared or self
        src._build()
        base = src._base
        keep = {"scheduler": base.scheduler}
        from ..models.base_models import _PART_MODULES

        names = _PART_MODULES[parts]  # KeyError for a part the real loader would refuse too
        for n in ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer"):
            keep[n] = copy.deepcopy(getattr(base, n)) if n in names else None
        keep["scheduler"] = copy.deepcopy(base.scheduler)
        pipe = FluxPipeline(**keep)
        for n in ("vae", "text_encoder", "text_encoder_2", "transformer"):
            module = getattr(pipe, n)
            if module is not None and (dtype != next(module.parameters()).dtype or str(device) != "cpu"):
                module.to(device=device, dtype=dtype)
        if quantization != "none" and pipe.transformer is not None:
            pipe.transformer = quantize_tiny_transformer(pipe.transformer, quantization_config(quantization, dtype),
                                                         dtype, device)
        if self.on_load is not None:
            self.on_load(pipe)
        with_transformer = parts in ("all", "transformer")
        return _Loaded("tiny-flux", None, pipe, src._fp, "tiny-flux", quantization if with_transformer else "none")
