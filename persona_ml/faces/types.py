"""Typed results of the face pipeline: model provenance and per-face observations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelMismatchError


@dataclass(frozen=True)
class ModelProvenance:
    """Which model made an embedding (or a profile, or a LoRA's identity scores).

    Attributes:
        backend: ``"dlib"`` or ``"insightface"``.
        model_name: e.g. ``"dlib_face_recognition_resnet_model_v1"``, ``"buffalo_l"``.
        files: file name -> sha256 of every weight file that shaped the embedding.
        dim: embedding dimension.
        license: license id or status, e.g. ``"BSL-1.0"`` or ``"non-commercial (no MODEL.LICENSE)"``.
        commercial_use: whether the license allows commercial use (``None`` = unknown).
    """

    backend: str
    model_name: str
    files: Mapping[str, str]
    dim: int
    license: str
    commercial_use: bool | None = None

    @property
    def fingerprint(self) -> str:
        """Short stable id over backend, model name, file hashes and dim (not license text)."""
        payload = json.dumps([self.backend, self.model_name, sorted(self.files.items()), self.dim])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def is_compatible(self, other: ModelProvenance) -> bool:
        return self.fingerprint == other.fingerprint

    def require_compatible(self, other: ModelProvenance, what: str = "embedding") -> None:
        """Raise ``ModelMismatchError`` unless ``other`` was made by the same model."""
        if not self.is_compatible(other):
            raise ModelMismatchError(
                f"{what} was made by {other.backend}/{other.model_name} (dim {other.dim}, "
                f"fingerprint {other.fingerprint}) but this one by {self.backend}/{self.model_name} "
                f"(dim {self.dim}, fingerprint {self.fingerprint}); embeddings of different models "
                "cannot be compared",
                field="provenance", value=other.fingerprint, expected=self.fingerprint)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "model_name": self.model_name, "files": dict(sorted(self.files.items())),
                "dim": self.dim, "license": self.license, "commercial_use": self.commercial_use,
                "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelProvenance:
        return cls(backend=str(data["backend"]), model_name=str(data["model_name"]),
                   files=dict(data["files"]), dim=int(data["dim"]), license=str(data["license"]),
                   commercial_use=data.get("commercial_use"))


@dataclass(frozen=True, eq=False)
class FaceObservation:
    """One detected face with its embedding.

    Attributes:
        bbox: ``(x0, y0, x1, y1)`` in pixels of the upright image.
        landmarks: ``(5, 2)`` float32: left eye, right eye, nose, left mouth, right mouth
            (image-left/right as seen, insightface order). dlib's 5-point model is mapped to
            the same order: eye centres, nose bottom, and mouth corners estimated from it.
        det_score: detector confidence (backend-specific scale, higher is better).
        face_size: ``min(bbox width, bbox height)`` in pixels.
        sharpness: variance of the Laplacian over the face crop (grey, 0..255 scale).
        pose: ``(yaw, pitch, roll)`` in degrees, estimated from landmarks; ``None`` if unknown.
        embedding: L2-normalised float32 vector of length ``provenance.dim``.
        image_sha256: sha256 of the source image (see ``LoadedImage.sha256``).
        image_size: ``(width, height)`` of the upright source image.
        provenance: the model that produced ``embedding``.
    """

    bbox: tuple[float, float, float, float]
    landmarks: np.ndarray
    det_score: float
    face_size: float
    sharpness: float
    pose: tuple[float, float, float] | None
    embedding: np.ndarray
    image_sha256: str
    image_size: tuple[int, int]
    provenance: ModelProvenance
    extra: dict = field(default_factory=dict)

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.bbox
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    def similarity(self, other: FaceObservation) -> float:
        """Cosine similarity of two embeddings; refuses embeddings of another model."""
        self.provenance.require_compatible(other.provenance)
        return float(np.dot(self.embedding, other.embedding))

    def to_dict(self, with_embedding: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bbox": [round(float(v), 2) for v in self.bbox],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(self.landmarks)],
            "det_score": round(float(self.det_score), 4),
            "face_size": round(float(self.face_size), 1),
            "sharpness": round(float(self.sharpness), 2),
            "pose": None if self.pose is None else [round(float(v), 1) for v in self.pose],
            "image_sha256": self.image_sha256,
            "image_size": list(self.image_size),
            "provenance": self.provenance.to_dict(),
        }
        if with_embedding:
            out["embedding"] = [float(v) for v in np.asarray(self.embedding, dtype=np.float32)]
        return out


def l2_normalize(v: np.ndarray, axis: int = -1) -> np.ndarray:
    """L2-normalise along ``axis`` in float32; zero vectors stay zero."""
    v = np.asarray(v, dtype=np.float32)
    norm = np.linalg.norm(v, axis=axis, keepdims=True)
    return (v / np.maximum(norm, 1e-12)).astype(np.float32)
