"""Face detection, embedding backends (dlib, insightface) and character FaceProfiles."""

from .types import FaceObservation, ModelProvenance, l2_normalize

__all__ = ["FaceObservation", "ModelProvenance", "l2_normalize"]
