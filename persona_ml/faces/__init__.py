"""Face detection, embedding backends (dlib, insightface) and character FaceProfiles.

Heavy pieces load lazily: ``import persona_ml.faces`` imports neither dlib nor onnxruntime.
"""

from __future__ import annotations

from .._lazy import lazy_getattr
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


__getattr__ = lazy_getattr(__name__, _LAZY)
