"""Flux flow-matching math: timestep sampling, latent packing, masked loss.

These are the formulas the Flux trainers users trust share (diffusers'
``train_dreambooth_lora_flux.py``, kohya's ``flux_train_utils``, ai-toolkit): latents are the
VAE's ``(z - shift_factor) * scaling_factor``; the noisy input is ``(1 - s) * x0 + s * noise``;
the transformer sees it packed into 2 x 2 patches (``FluxPipeline._pack_latents``) with
``_prepare_latent_image_ids`` positions, the timestep ``s`` and the guidance value; it predicts
the velocity ``noise - x0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import NoiseConfig


def flux_mu(image_seq_len: int, base_shift: float = 0.5, max_shift: float = 1.15,
            base_seq_len: int = 256, max_seq_len: int = 4096) -> float:
    """The Flux scheduler's shift exponent for ``image_seq_len`` packed tokens (linear in tokens)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def sample_sigmas(noise: NoiseConfig, batch: int, image_seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``batch`` noise levels ``sigma`` in (0, 1) (``t = 1000 * sigma``), on CPU, float32.

    Args:
        noise: the sampling scheme (see ``NoiseConfig``).
        batch: how many.
        image_seq_len: packed image tokens of the sample (sets the ``flux_shift`` exponent).
        generator: the run's training generator (its state is checkpointed).
    """
    if noise.timestep_sampling == "uniform":
        return torch.rand(batch, generator=generator)
    s = torch.sigmoid(torch.randn(batch, generator=generator) * noise.sigmoid_scale)
    if noise.timestep_sampling == "sigmoid":
        return s
    if noise.timestep_sampling == "shift":
        return noise.shift * s / (1 + (noise.shift - 1) * s)
    mu = flux_mu(image_seq_len, noise.base_shift, noise.max_shift)
    return math.exp(mu) / (math.exp(mu) + (1 / s - 1))


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H/2 * W/2, 4C)`` like ``FluxPipeline._pack_latents``."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def image_ids(latent_h: int, latent_w: int, device, dtype) -> torch.Tensor:
    """Positions of the packed tokens (``FluxPipeline._prepare_latent_image_ids``)."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, latent_h // 2, latent_w // 2, device, dtype)


def mask_to_packed_weights(mask: torch.Tensor | None, latent_h: int, latent_w: int, face_weight: float,
                           channels: int) -> torch.Tensor | None:
    """Per-element loss weights on the packed latent grid from a pixel-space face mask.

    The mask (``(H, W)`` or ``(B, H, W)`` in [0, 1]) is area-averaged down to the latent grid,
    broadcast over the latent channels and packed exactly like the latents, so weight
    ``1 + (face_weight - 1) * mask`` lands on the tokens that carry the face.

    Returns:
        ``(B, tokens, 4 * channels)`` weights, or ``None`` when there is no mask or the weight is 1.
    """
    if mask is None or face_weight == 1.0:
        return None
    m = mask.float()
    if m.dim() == 2:
        m = m[None]
    m = torch.nn.functional.adaptive_avg_pool2d(m[:, None], (latent_h, latent_w))
    w = 1.0 + (face_weight - 1.0) * m.clamp(0, 1)
    return pack(w.expand(-1, channels, -1, -1).contiguous())


@dataclass
class FluxBatch:
    """Samples of one bucket ready for the transformer (cached tensors, already on the device)."""

    latents: torch.Tensor          # (B, C, h, w), normalised
    prompt_embeds: torch.Tensor    # (B, seq, joint_attention_dim)
    pooled: torch.Tensor           # (B, pooled_projection_dim)
    mask: torch.Tensor | None = None   # (H, W) or (B, H, W) pixel masks in [0, 1]

    @classmethod
    def stack(cls, items: list[FluxBatch]) -> FluxBatch:
        """One batch from single-sample batches of the same bucket (a missing mask counts as 1s:
        the unweighted loss)."""
        if len(items) == 1:
            return items[0]
        masks = None
        if any(it.mask is not None for it in items):
            h, w = next(it.mask.shape[-2:] for it in items if it.mask is not None)
            masks = torch.stack([it.mask.reshape(h, w) if it.mask is not None else torch.ones(h, w) for it in items])
        return cls(torch.cat([it.latents for it in items]), torch.cat([it.prompt_embeds for it in items]),
                   torch.cat([it.pooled for it in items]), masks)


def flow_matching_loss(transformer, batch: FluxBatch, noise_cfg: NoiseConfig, generator: torch.Generator,
                       *, face_weight: float = 1.0, dtype: torch.dtype = torch.float32,
                       guidance_embeds: bool | None = None) -> torch.Tensor:
    """The flow-matching loss of ``batch``: the mean over its samples of each sample's (masked)
    mean squared error (scalar float32 tensor). One forward and backward pass for the batch.

    Noise and sigma are drawn from ``generator`` on CPU and moved to the device, so a run is
    reproducible from the generator's state on any device.

    Args:
        transformer: the (possibly DDP-wrapped) ``FluxTransformer2DModel``.
        guidance_embeds: whether the model has a guidance embedding; read from
            ``transformer.config`` when ``None`` (pass it for a wrapped model).
    """
    x0 = batch.latents.float()
    b, c, h, w = x0.shape
    device = x0.device
    seq_len = (h // 2) * (w // 2)
    sigmas = sample_sigmas(noise_cfg, b, seq_len, generator).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    s = sigmas.view(b, 1, 1, 1)
    noisy = (1.0 - s) * x0 + s * noise
    target = pack(noise - x0)
    guidance = None
    if guidance_embeds is None:
        guidance_embeds = bool(getattr(transformer.config, "guidance_embeds", False))
    if guidance_embeds:
        guidance = torch.full((b,), float(noise_cfg.guidance), device=device, dtype=dtype)
    txt_ids = torch.zeros(batch.prompt_embeds.shape[1], 3, device=device, dtype=dtype)
    pred = transformer(hidden_states=pack(noisy).to(dtype), timestep=sigmas.to(dtype), guidance=guidance,
                       pooled_projections=batch.pooled.to(dtype), encoder_hidden_states=batch.prompt_embeds.to(dtype),
                       txt_ids=txt_ids, img_ids=image_ids(h, w, device, dtype), return_dict=False)[0]
    err = (pred.float() - target) ** 2
    weights = mask_to_packed_weights(batch.mask, h, w, face_weight, c)
    if weights is not None:
        weights = weights.to(device).expand_as(err)
        per_sample = (err * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2))
    else:
        per_sample = err.mean(dim=(1, 2))
    return per_sample.mean()
