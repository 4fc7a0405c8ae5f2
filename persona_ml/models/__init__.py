"""Base models: named specs located explicitly on disk (never downloaded) and the tiny
FLUX stand-in built in code.

Public names resolve lazily so ``import persona_ml.models`` loads neither torch nor diffusers.

Example:
    >>> from persona_ml.models import load_base_model
    >>> base = load_base_model("tiny-flux", dtype="float32", device="cpu")   # doctest: +SKIP
    >>> base.fingerprint                                                     # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "TinyFluxConfig": "persona_ml.models.tiny_flux",
    "build_tiny_flux_pipeline": "persona_ml.models.tiny_flux",
    "build_tiny_tokenizers": "persona_ml.models.tiny_flux",
    "tiny_flux_fingerprint": "persona_ml.models.tiny_flux",
    "BaseModelSpec": "persona_ml.models.base_models",
    "LoadedBaseModel": "persona_ml.models.base_models",
    "resolve_base_model": "persona_ml.models.base_models",
    "load_base_model": "persona_ml.models.base_models",
    "list_base_models": "persona_ml.models.base_models",
    "fingerprint_flux_dir": "persona_ml.models.base_models",
    "check_flux_dev_dir": "persona_ml.models.base_models",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
