"""Helpers for tests, benchmarks and the notebook: random character LoRAs and a tiny Flux
IP-Adapter (CLIP vision encoder + adapter weights of the right shapes), written to local files.

Nothing here is used by the generator itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["make_random_lora", "build_tiny_ip_adapter"]


def make_random_lora(
    pipe: Any,
    out_dir: str | os.PathLike,
    *,
    seed: int,
    base_model: str,
    base_fingerprint: str,
    rank: int = 4,
    alpha: float | None = None,
    targets: Sequence[str] | None = None,
    strength: float = 0.5,
    trigger: str = "ohwx",
):
    """Export a random (non-zero A and B) LoRA for ``pipe``'s transformer with ``export_lora``.

    Args:
        pipe: a FluxPipeline (its transformer's shapes are used; it is not modified).
        out_dir: export folder (diffusers file + kohya file + README).
        seed: weight seed (different seeds make different "characters").
        base_model, base_fingerprint: provenance written into the header.
        rank, alpha: LoRA rank and alpha (alpha defaults to rank).
        targets: module patterns (``DEFAULT_LORA_TARGETS`` by default).
        strength: standard deviation of B (large enough to change a tiny model's images visibly).
        trigger: trigger word recorded in the metadata.

    Returns:
        ``ExportedLora`` (``.diffusers_path``, ``.kohya_path``).
    """
    import torch

    from ..lora.export import LoraMetadata, export_lora
    from ..lora.formats import DEFAULT_LORA_TARGETS, lora_target_modules

    transformer = pipe.transformer
    modules = lora_target_modules(transformer, targets or DEFAULT_LORA_TARGETS)
    lookup = dict(transformer.named_modules())
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for m in modules:
        base = getattr(lookup[m], "base_layer", lookup[m])
        sd[f"transformer.{m}.lora_A.weight"] = torch.randn(rank, base.in_features, generator=g) / base.in_features ** 0.5
        sd[f"transformer.{m}.lora_B.weight"] = torch.randn(base.out_features, rank, generator=g) * strength
    meta = LoraMetadata(rank=rank, alpha=float(alpha if alpha is not None else rank), steps=0, trigger=trigger,
                        base_model=base_model, base_model_fingerprint=base_fingerprint)
    return export_lora(sd, out_dir, metadata=meta, name=f"char{seed}")


def build_tiny_ip_adapter(out_dir: str | os.PathLike, pipe: Any, *, seed: int = 0, image_size: int = 32,
                          projection_dim: int = 32) -> tuple[Path, Path]:
    """Write a tiny random Flux IP-Adapter for ``pipe`` (offline, seeded).

    The layout is the XLabs one diffusers loads: ``image_proj.proj/norm`` (4 image tokens of
    the transformer's ``joint_attention_dim``) and ``ip_adapter.<double block>.to_k_ip/to_v_ip``,
    plus a ``CLIPVisionModelWithProjection`` folder.

    Args:
        out_dir: folder to write ``ip_adapter.safetensors`` and ``image_encoder/`` into.
        pipe: the FluxPipeline whose transformer sizes the adapter.
        seed: weight seed.
        image_size, projection_dim: the tiny CLIP vision tower's input size and embedding width.

    Returns:
        ``(weights_file, image_encoder_dir)`` for ``IPAdapterSpec``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .._atomic import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = pipe.transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    joint = cfg.joint_attention_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=8, projection_dim=projection_dim))
        g = torch.Generator().manual_seed(seed + 1)
        sd = {
            "image_proj.proj.weight": torch.randn(4 * joint, projection_dim, generator=g) * 0.1,
            "image_proj.proj.bias": torch.zeros(4 * joint),
            "image_proj.norm.weight": torch.ones(joint),
            "image_proj.norm.bias": torch.zeros(joint),
        }
        for i in range(cfg.num_layers):
            for name in ("to_k_ip", "to_v_ip"):
                sd[f"ip_adapter.{i}.{name}.weight"] = torch.randn(hidden, joint, generator=g) * 0.2
                sd[f"ip_adapter.{i}.{name}.bias"] = torch.zeros(hidden)
    enc_dir = out / "image_encoder"
    encoder.save_pretrained(str(enc_dir))
    weights = out / "ip_adapter.safetensors"
    with atomic_path(weights, suffix=".safetensors") as tmp:
        save_file(sd, str(tmp))
    return weights, enc_dir
