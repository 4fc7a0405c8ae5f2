"""Character generation: one base pipeline, a validated per-character LoRA cache, identity scoring.

Public names resolve lazily so ``import persona_ml.inference`` loads neither torch nor diffusers.

Example:
    >>> from persona_ml.inference import CharacterGenerator, Character, GenerationRequest   # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "CharacterGenerator": "persona_ml.inference.generator",
    "IPAdapterSpec": "persona_ml.inference.ip_adapter",
    "SLOT_ADAPTER": "persona_ml.inference.generator",
    "Character": "persona_ml.inference.types",
    "GenerationRequest": "persona_ml.inference.types",
    "GeneratedImage": "persona_ml.inference.types",
    "GenerationResult": "persona_ml.inference.types",
    "IdentityCheck": "persona_ml.inference.types",
    "CacheStats": "persona_ml.inference.types",
    "TIERS": "persona_ml.inference.types",
    "ValidatedLora": "persona_ml.lora.validation",
    "validate_lora": "persona_ml.lora.validation",
    "linear_modules": "persona_ml.lora.validation",
    "score_faces": "persona_ml.inference.identity",
    "score_images": "persona_ml.inference.identity",
    "rank_best_of": "persona_ml.inference.identity",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
