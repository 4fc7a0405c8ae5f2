"""Training samples from a prepared dataset, and their (cached) VAE latents and text embeddings.

Each prepared item is trained at every configured resolution that does not upscale it (a square
of side ``r`` has the same area as the sample; sides are kept to the item's aspect ratio and
rounded to 16 px, the Flux latent-packing unit). ``Encoder`` turns pixels and captions into the
tensors the transformer needs, through ``TensorCache`` when caching is on.
"""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset.manifest import PreparedDataset, PreparedItem
from .cache import CacheStats, TensorCache, latent_key, text_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSample:
    """One (item, resolution) pair the trainer draws."""

    item: PreparedItem
    resolution: int
    width: int
    height: int


def sample_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """``(w, h)`` with the area of a ``resolution`` square, the aspect of ``width x height``, multiples of 16."""
    scale = resolution / math.sqrt(width * height)
    return max(16, int(round(width * scale / 16)) * 16), max(16, int(round(height * scale / 16)) * 16)


def build_samples(dataset: PreparedDataset, resolutions: tuple[int, ...]) -> list[TrainSample]:
    """All (item, resolution) samples, in manifest order then ascending resolution.

    A resolution above the item's own size is skipped (no upscaling); an item smaller than every
    resolution is trained once at its own size rounded down to 16 px.
    """
    out: list[TrainSample] = []
    for it in dataset.items:
        native = math.sqrt(it.width * it.height)
        usable = [r for r in sorted(set(resolutions)) if r <= native + 1e-6]
        if not usable:
            out.append(TrainSample(it, int(native), max(16, it.width // 16 * 16), max(16, it.height // 16 * 16)))
            continue
        for r in usable:
            w, h = sample_size(it.width, it.height, r)
            out.append(TrainSample(it, r, w, h))
    return out


def load_pixels(dataset: PreparedDataset, sample: TrainSample):
    """``(1, 3, h, w)`` float32 in [-1, 1] and the ``(h, w)`` face mask in [0, 1] (or ``None``)."""
    import torch
    from PIL import Image

    from ..images import load_image

    loaded = load_image(dataset.path(sample.item.image))
    if sample.item.image_sha256 and loaded.sha256 != sample.item.image_sha256:  # replaced since it was verified
        from ..errors import ArtifactError

        raise ArtifactError(f"{dataset.root}: {sample.item.image} changed while training (sha256 "
                            f"{loaded.sha256[:12]}... != recorded {sample.item.image_sha256[:12]}...); re-run prepare",
                            code="dataset_file_changed", field="manifest.image_sha256", value=loaded.sha256,
                            item=sample.item.id)
    img = loaded.to_pil()
    if img.size != (sample.width, sample.height):
        img = img.resize((sample.width, sample.height), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    mask = None
    if sample.item.mask:
        with Image.open(dataset.path(sample.item.mask)) as m:
            m = m.convert("L")
            if m.size != (sample.width, sample.height):
                m = m.resize((sample.width, sample.height), Image.Resampling.BILINEAR)
            mask = torch.from_numpy(np.asarray(m, dtype=np.float32) / 255.0)
    return pixels, mask


class Encoder:
    """VAE + text encoders of a loaded Flux pipeline, behind the on-disk cache.

    ``cached_latents`` / ``cached_text`` read the cache only and need no model (the trainer asks
    them first and loads the encoders only when one entry is missing); ``encode_latents`` /
    ``encode_text`` run the encoders; ``latents`` / ``text`` do the first, then the second.

    Args:
        pipeline: a ``diffusers.FluxPipeline`` (``None`` while only the cache is read).
        fingerprint: the base model's fingerprint (part of every cache key).
        cache: the cache, or ``None`` to encode every time.
        max_sequence_length: T5 tokens.
        device: where the encoders run.
    """

    def __init__(self, pipeline: Any, fingerprint: str, cache: TensorCache | None, max_sequence_length: int,
                 device: Any) -> None:
        self.pipe = pipeline
        self.fingerprint = fingerprint
        self.cache = cache
        self.max_sequence_length = max_sequence_length
        self.device = device
        self.stats = CacheStats()
        self.released = False

    def latents(self, dataset: PreparedDataset, sample: TrainSample):
        """Normalised latents ``(1, 16, h/8, w/8)`` float32 on CPU (from the cache when it holds them)."""
        hit = self.cached_latents(dataset, sample)
        return hit if hit is not None else self.encode_latents(dataset, sample)

    def cached_latents(self, dataset: PreparedDataset, sample: TrainSample):
        """The cached latents of ``sample`` (a hit is counted), or ``None``; needs no model."""
        if self.cache is None:
            return None
        it = sample.item
        dataset.verify(it)  # the file still has the recorded sha256: a cached latent keyed by it is its latent
        hit = self.cache.get("latents", self._latent_key(sample), names=("latents",))
        if hit is None or tuple(hit["latents"].shape[-2:]) != (sample.height // 8, sample.width // 8):
            return None
        self.stats.latent_hits += 1
        return hit["latents"]

    def encode_latents(self, dataset: PreparedDataset, sample: TrainSample):
        """Encode ``sample`` with the VAE (a miss is counted) and store it in the cache."""
        self.stats.latent_misses += 1
        pixels, _mask = load_pixels(dataset, sample)
        z = self.encode_pixels(pixels)
        if self.cache is not None:
            self.cache.put("latents", self._latent_key(sample), {"latents": z})
        return z

    def _latent_key(self, sample: TrainSample) -> str:
        it = sample.item
        return latent_key(self.fingerprint, it.image_sha256, it.crop, it.width, it.height, sample.resolution)

    def encode_pixels(self, pixels):
        import torch

        vae = self.pipe.vae
        with torch.no_grad():
            dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
            z = dist.mode()
        shift = getattr(vae.config, "shift_factor", 0.0) or 0.0
        return ((z.float() - shift) * vae.config.scaling_factor).cpu()

    def text(self, caption: str):
        """``(prompt_embeds (1, seq, D), pooled (1, P))`` float32 on CPU for ``caption``."""
        hit = self.cached_text(caption)
        return hit if hit is not None else self.encode_text(caption)

    def cached_text(self, caption: str):
        """The cached ``(prompt_embeds, pooled)`` of ``caption`` (a hit is counted), or ``None``; needs no model."""
        if self.cache is None:
            return None
        hit = self.cache.get("text", self._text_key(caption), names=("prompt_embeds", "pooled"))
        if hit is None:
            return None
        self.stats.text_hits += 1
        return hit["prompt_embeds"], hit["pooled"]

    def encode_text(self, caption: str):
        """Encode ``caption`` with both text encoders (a miss is counted) and store it in the cache."""
        import torch

        self.stats.text_misses += 1
        with torch.no_grad():
            prompt_embeds, pooled, _ids = self.pipe.encode_prompt(prompt=caption, prompt_2=caption, device=self.device,
                                                                  max_sequence_length=self.max_sequence_length)
        prompt_embeds, pooled = prompt_embeds.float().cpu(), pooled.float().cpu()
        if self.cache is not None:
            self.cache.put("text", self._text_key(caption), {"prompt_embeds": prompt_embeds, "pooled": pooled})
        return prompt_embeds, pooled

    def _text_key(self, caption: str) -> str:
        return text_key(self.fingerprint, caption, self.max_sequence_length)

    def release(self, keep_decoder: bool) -> None:
        """Drop the text encoders and the VAE encoder (the decoder too unless ``keep_decoder``)."""
        import torch

        pipe = self.pipe
        for name in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            if getattr(pipe, name, None) is not None:
                setattr(pipe, name, None)
        if keep_decoder:
            drop_vae_encoder(pipe.vae)
        else:
            pipe.vae = None
        self.released = True
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("released text encoders and the VAE %s", "encoder (decoder kept for samples)" if keep_decoder else "")


def drop_vae_encoder(vae: Any) -> Any:
    """``vae`` without its encoder half (what sampling needs: the decoder); returns it."""
    if getattr(vae, "encoder", None) is not None:
        vae.encoder = None
        vae.quant_conv = None
    return vae


def bucket_batches(order, samples: list[TrainSample], batch_size: int) -> list[tuple[int, ...]]:
    """One epoch's batches: ``order`` (a permutation of sample indices) cut into same-bucket batches.

    The order is walked once; each sample joins the open batch of its bucket (width x height),
    which is emitted when it holds ``batch_size`` samples. Batches still open at the end are
    emitted last, in the order they were opened. With ``batch_size == 1`` the result is the
    order itself, one sample per batch.

    Args:
        order: sample indices in this epoch's seeded order.
        samples: the run's samples (their ``width`` / ``height`` are the bucket).
        batch_size: samples per batch.

    Returns:
        Tuples of sample indices, every tuple of one bucket.
    """
    batches: list[tuple[int, ...]] = []
    open_: dict[tuple[int, int], list[int]] = {}
    for idx in order:
        idx = int(idx)
        bucket = (samples[idx].width, samples[idx].height)
        group = open_.setdefault(bucket, [])
        group.append(idx)
        if len(group) == batch_size:
            batches.append(tuple(group))
            del open_[bucket]
    batches.extend(tuple(g) for g in open_.values())  # dicts keep insertion (opening) order
    return batches
