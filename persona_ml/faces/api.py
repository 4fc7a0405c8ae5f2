"""Service-facing face API, re-exported at the package top (``persona_ml.embed_reference`` ...).

Example:
    >>> import persona_ml
    >>> embedder = persona_ml.FaceEmbedder("dlib")                          # doctest: +SKIP
    >>> refs = [persona_ml.embed_reference(p, embedder) for p in uploads]  # doctest: +SKIP
    >>> profile = persona_ml.build_profile(refs)                            # doctest: +SKIP
    >>> profile.save("characters/ada/face")                                 # doctest: +SKIP
    >>> persona_ml.load_profile("characters/ada/face").outliers            # doctest: +SKIP
    ()
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..images import ImageSource
from .embedder import FaceEmbedder
from .profile import FaceProfile
from .thresholds import FaceThresholds
from .types import FaceObservation


def embed_reference(image: ImageSource, embedder: FaceEmbedder) -> FaceObservation:
    """Embed the one clear face of a reference photo (run on every reference-image upload).

    Args:
        image: path, bytes, file object, PIL image or array.
        embedder: a ``FaceEmbedder`` (its backend decides the embedding model).

    Returns:
        The primary face (largest, most central), with its L2-normalised embedding and provenance.

    Raises:
        ImageError: the image was refused (``image_empty``, ``image_truncated``, ``image_too_large``...).
        FaceError: ``no_face``, ``multiple_faces`` (several faces of similar size) or ``face_too_small``.
    """
    return embedder.embed_primary(image)


def build_profile(observations: Sequence[FaceObservation], thresholds: FaceThresholds | None = None) -> FaceProfile:
    """Build a character's ``FaceProfile`` from its reference faces (see ``FaceProfile.build``).

    Raises:
        InputError: empty input or two references from one image.
        ModelMismatchError: references embedded by different models.
    """
    return FaceProfile.build(observations, thresholds)


def load_profile(path: str | os.PathLike) -> FaceProfile:
    """Load a saved profile (``PATH``, ``PATH.json`` or ``PATH.safetensors``).

    Raises:
        ArtifactError: ``profile_not_found``, ``profile_format_unknown`` or ``profile_corrupt``.
    """
    return FaceProfile.load(path)
