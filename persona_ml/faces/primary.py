"""The primary-face policy for reference photos: the largest, most central face, unambiguous."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..errors import FaceError, InputError
from .types import FaceObservation

# How much being off-centre costs: a face at the very corner counts as 30% smaller.
CENTRALITY_WEIGHT = 0.3


def _centrality(face: FaceObservation, image_size: tuple[int, int]) -> float:
    """0 at the image centre, 1 at a corner."""
    w, h = image_size
    cx, cy = face.center
    half_diag = math.hypot(w / 2.0, h / 2.0) or 1.0
    return min(1.0, math.hypot(cx - w / 2.0, cy - h / 2.0) / half_diag)


def select_primary_face(faces: Sequence[FaceObservation], image_size: tuple[int, int], *,
                        similar_size_ratio: float = 0.7) -> FaceObservation:
    """Pick the reference face of a photo: the largest, most central face.

    Each face is ranked by its side length discounted for being off-centre:
    ``face_size * (1 - 0.3 * d)``, ``d`` = distance of the face centre from the image centre
    over half the diagonal (a corner face counts as 30% smaller). When any other face ranks at
    least ``similar_size_ratio`` x the chosen face, the photo is ambiguous (a group or couple
    photo) and ``multiple_faces`` is raised instead of guessing.

    Args:
        faces: every face detected in the image (any order).
        image_size: ``(width, height)`` of the upright image.
        similar_size_ratio: side-length ratio in ``(0, 1]`` from which another face counts as
            "of similar size" (after the centrality discount); smaller background faces are ignored.

    Returns:
        The primary ``FaceObservation``.

    Raises:
        FaceError: ``no_face`` when ``faces`` is empty; ``multiple_faces`` (details ``count``:
            faces of similar size including the primary, ``sizes``: their sides in pixels) when
            the choice is ambiguous.
        InputError: ``similar_size_ratio`` outside ``(0, 1]``.

    Example:
        >>> face = select_primary_face(embedder.analyze_one("me.jpg"), (w, h))   # doctest: +SKIP
    """
    if not 0.0 < float(similar_size_ratio) <= 1.0:
        raise InputError(f"similar_size_ratio must be in (0, 1], got {similar_size_ratio!r}",
                         field="similar_size_ratio", value=similar_size_ratio)
    faces = list(faces)
    if not faces:
        raise FaceError("no face found in the image", code="no_face", field="image",
                        value=list(image_size), image_size=list(image_size))

    def rank(face: FaceObservation) -> float:
        return face.face_size * (1.0 - CENTRALITY_WEIGHT * _centrality(face, image_size))

    primary = max(faces, key=rank)
    best = rank(primary)
    similar = [f for f in faces if f is not primary and rank(f) >= similar_size_ratio * best]
    if similar:
        group = [primary, *sorted(similar, key=lambda f: -f.face_size)]
        sizes = [round(float(f.face_size), 1) for f in group]
        raise FaceError(
            f"{len(group)} faces of similar size (sides {sizes} px); a reference photo must show one "
            "person clearly larger than anyone else", code="multiple_faces", field="image",
            value=len(group), count=len(group), sizes=sizes,
            bboxes=[[round(float(v), 1) for v in f.bbox] for f in group])
    return primary
