"""Face detection, embedding backends (dlib, insightface) and character FaceProfiles.

Heavy pieces load lazily: ``import persona_ml.faces`` imports neither dlib nor onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import Any

from .types import FaceObservation, ModelProvenance, l2_normalize

_LAZY = {
    "FaceEmbedder": "persona_ml.faces.embedder",
    "FaceBackend": "persona_ml.faces.embedder",
    "select_primary_face": "persona_ml.faces.primary",
    "FaceThresholds": "persona_ml.faces.thresholds",
    "thresholds_for": "persona_ml.faces.thresholds",
    "FaceProfile": "persona_ml.faces.profile",
    "PROFILE_FORMAT_VERSION": "persona_ml.faces.profile",
    "embed_reference": "persona_ml.faces.api",
    "build_profile": "persona_ml.faces.api",
    "load_profile": "persona_ml.faces.api",
}

__all__ = ["FaceObservation", "ModelProvenance", "l2_normalize", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'persona_ml.faces' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
