"""Typed requests and results of character generation."""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

TIERS = ("lora", "ip_adapter", "base")

__all__ = ["TIERS", "Character", "GenerationRequest", "GeneratedImage", "GenerationResult", "IdentityCheck",
           "CacheStats"]


@dataclass(frozen=True)
class Character:
    """What the generator knows about a character.

    Attributes:
        id: the character's id (cache key; ``[A-Za-z0-9_.-]``, 1..128 chars).
        lora_path: its trained LoRA (``pytorch_lora_weights.safetensors`` or a kohya/ComfyUI file),
            ``None`` before training.
        profile: its ``FaceProfile`` (identity scoring); ``None`` skips scoring.
        reference_image: a reference photo (path or PIL image) for the ``ip_adapter`` tier.
        trigger: the LoRA's trigger word; prompts may use ``{trigger}``.
    """

    id: str
    lora_path: str | os.PathLike | None = None
    profile: Any = None
    reference_image: Any = None
    trigger: str | None = None

    def __post_init__(self) -> None:
        cid = self.id
        if not isinstance(cid, str) or not 1 <= len(cid) <= 128 or not all(c.isalnum() or c in "_.-" for c in cid):
            raise InputError(f"character id must be 1..128 chars of [A-Za-z0-9_.-], got {cid!r}",
                             field="character.id", value=repr(cid))
        if self.lora_path is not None:
            object.__setattr__(self, "lora_path", Path(self.lora_path))

    @property
    def face_consistency_tier(self) -> str | None:
        """``"lora"`` when it has a LoRA, else ``"ip_adapter"`` when it has a reference image, else ``None``."""
        if self.lora_path is not None:
            return "lora"
        if self.reference_image is not None:
            return "ip_adapter"
        return None


@dataclass(frozen=True)
class GenerationRequest:
    """One generation call: ``len(seeds)`` images of one character.

    Attributes:
        character_id: a registered character.
        prompt: the prompt; ``{trigger}`` is replaced by the character's trigger word.
        seeds: one seed per image; image ``i``'s noise depends only on ``seeds[i]`` (and the other
            fields), so any image of a batch can be reproduced alone: bit for bit on CPU; on CUDA in
            bf16 the batch size can change kernel choice and so the lowest bits of a pixel.
        lora_scale: strength of the character's LoRA (0 runs the base model, 1 as trained).
        tier: ``None`` picks the character's own tier; ``"lora"`` or ``"ip_adapter"`` forces one;
            ``"base"`` renders the plain base model (no LoRA, no IP-Adapter: A/B baselines).
        height, width: output size in pixels (multiples of 16).
        steps: denoising steps.
        guidance: Flux guidance-embedding value.
        reference_image: overrides the character's reference image (``ip_adapter`` tier).
        ip_adapter_scale: strength of the reference image in the ``ip_adapter`` tier.
        keep: with best-of-N, how many images ``GenerationResult.selected`` keeps (``None``: all).
        max_sequence_length: T5 tokens (512 for FLUX.1-dev).
    """

    character_id: str
    prompt: str
    seeds: Sequence[int] = (0,)
    lora_scale: float = 1.0
    tier: str | None = None
    height: int = 1024
    width: int = 1024
    steps: int = 28
    guidance: float = 3.5
    reference_image: Any = None
    ip_adapter_scale: float = 1.0
    keep: int | None = None
    max_sequence_length: int = 512

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InputError("prompt must be a non-empty string", field="prompt", value=repr(self.prompt))
        seeds = tuple(self.seeds)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2 ** 63 for s in seeds):
            raise InputError(f"seeds must be a non-empty list of integers in [0, 2^63), got {list(seeds)!r}",
                             field="seeds", value=list(seeds))
        object.__setattr__(self, "seeds", seeds)
        for name in ("lora_scale", "guidance", "ip_adapter_scale"):  # None/"high" used to raise a bare TypeError
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise InputError(f"{name} must be a number, got {v!r}", field=name, value=repr(v)[:100])
        if not 0.0 <= float(self.lora_scale) <= 4.0:
            raise InputError(f"lora_scale must be in [0, 4], got {self.lora_scale!r}", field="lora_scale",
                             value=self.lora_scale)
        if self.tier is not None and self.tier not in TIERS:
            raise InputError(f"tier must be one of {TIERS} or None, got {self.tier!r}", field="tier", value=self.tier)
        for name in ("height", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 16 or v > 4096 or v % 16:
                raise InputError(f"{name} must be a multiple of 16 in [16, 4096], got {v!r}", field=name, value=v)
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 200:
            raise InputError(f"steps must be in [1, 200], got {self.steps!r}", field="steps", value=self.steps)
        if not 0.0 <= float(self.guidance) <= 30.0:
            raise InputError(f"guidance must be in [0, 30], got {self.guidance!r}", field="guidance",
                             value=self.guidance)
        if not 0.0 <= float(self.ip_adapter_scale) <= 2.0:
            raise InputError(f"ip_adapter_scale must be in [0, 2], got {self.ip_adapter_scale!r}",
                             field="ip_adapter_scale", value=self.ip_adapter_scale)
        if self.keep is not None and (not isinstance(self.keep, int) or not 1 <= self.keep <= len(seeds)):
            raise InputError(f"keep must be in [1, {len(seeds)}] (the number of seeds), got {self.keep!r}",
                             field="keep", value=self.keep)


@dataclass(frozen=True)
class IdentityCheck:
    """Identity of one image against a character's profile.

    Attributes:
        similarity: best cosine of any face in the image to the profile (``None``: no face).
        num_faces: faces detected.
        matching_faces: faces at or above the same-person threshold.
        threshold: the same-person threshold used (the embedding model's).
        flags: ``no_face``, ``identity_bleeding`` (2+ faces look like the character),
            ``identity_low`` (no face reaches the threshold), ``not_scored`` (no profile).
    """

    similarity: float | None
    num_faces: int
    matching_faces: int
    threshold: float | None
    flags: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        return {"similarity": self.similarity, "num_faces": self.num_faces, "matching_faces": self.matching_faces,
                "threshold": self.threshold, "flags": list(self.flags)}


@dataclass(frozen=True, eq=False)
class GeneratedImage:
    """One output image.

    Attributes:
        image: the PIL image.
        seed: its seed (``GenerationRequest(seeds=[seed])`` reproduces it alone).
        index: position in the request's seed list.
        identity: its identity check (``not_scored`` flag when the character has no profile or
            the generator no face embedder).
    """

    image: Any
    seed: int
    index: int
    identity: IdentityCheck

    @property
    def identity_score(self) -> float | None:
        return self.identity.similarity

    @property
    def flags(self) -> tuple[str, ...]:
        return self.identity.flags


@dataclass(frozen=True, eq=False)
class GenerationResult:
    """All images of a request plus the best-of-N choice.

    Attributes:
        character_id, tier: who and how (``"lora"``, ``"ip_adapter"`` or ``"base"``).
        images: one per seed, in seed order.
        selected: indices into ``images``, best first: unflagged images by identity similarity,
            then flagged ones; truncated to ``request.keep``.
        lora_sha256: the LoRA file used (``None`` in the ip_adapter tier).
        timings: seconds for ``switch``, ``generate``, ``score``.
    """

    character_id: str
    tier: str
    images: tuple[GeneratedImage, ...]
    selected: tuple[int, ...]
    lora_sha256: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> GeneratedImage:
        return self.images[self.selected[0]]


@dataclass(frozen=True)
class CacheStats:
    """Adapter cache state: what sits where and how often each tier answered.

    Attributes:
        active: character whose LoRA is in the transformer's adapter slot (``None``: empty).
        memory: characters held validated in CPU memory, least recently used first.
        memory_bytes, memory_budget_bytes: bytes held / allowed in CPU memory.
        hits_active, hits_memory, loads_disk: how switches were served.
        evictions: entries dropped from CPU memory for the byte budget.
        slot_modules, slot_rank, slot_bytes: the pipeline's LoRA slot now (modules covered,
            rank, bytes of its tensors); shared by every generator on the pipeline.
        slot_allocations: how often the slot was (re)allocated (1 + the number of growths).
    """

    active: str | None
    memory: tuple[str, ...]
    memory_bytes: int
    memory_budget_bytes: int
    hits_active: int
    hits_memory: int
    loads_disk: int
    evictions: int
    slot_modules: int = 0
    slot_rank: int = 0
    slot_bytes: int = 0
    slot_allocations: int = 0
