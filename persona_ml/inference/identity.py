"""Identity of generated images against a character's ``FaceProfile``.

The same function scores generator outputs and, in tests, real photos: a generated image is
just an image. Flags:

- ``no_face``: nothing detected (the character is not visible);
- ``identity_bleeding``: two or more faces reach the same-person threshold: the character's face
  was put on several people (a known failure of character LoRAs in group scenes);
- ``identity_low``: faces were found but none reaches the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import BackendError
from .types import IdentityCheck

__all__ = ["score_faces", "score_images", "rank_best_of"]


def score_faces(faces: Sequence[Any], profile: Any, threshold: float | None = None) -> IdentityCheck:
    """Identity check of one image's faces.

    Args:
        faces: ``FaceObservation`` list of the image (any order).
        profile: the character's ``FaceProfile`` (``None``: faces are counted, not scored).
        threshold: same-person cosine; defaults to ``profile.thresholds.same_person_min_cosine``
            (the embedding model's own threshold).

    Returns:
        IdentityCheck.

    Raises:
        ModelMismatchError: faces embedded by another model than the profile's.
    """
    faces = list(faces)
    if profile is None:
        flags = ("not_scored",) if faces else ("no_face", "not_scored")
        return IdentityCheck(similarity=None, num_faces=len(faces), matching_faces=0, threshold=None, flags=flags)
    cut = float(profile.thresholds.same_person_min_cosine if threshold is None else threshold)
    if not faces:
        return IdentityCheck(similarity=None, num_faces=0, matching_faces=0, threshold=cut, flags=("no_face",))
    sims = [profile.similarity(f) for f in faces]
    matching = sum(1 for s in sims if s >= cut)
    flags: list[str] = []
    if matching >= 2:
        flags.append("identity_bleeding")
    if matching == 0:
        flags.append("identity_low")
    return IdentityCheck(similarity=round(max(sims), 6), num_faces=len(faces), matching_faces=matching,
                         threshold=cut, flags=tuple(flags))


def score_images(images: Sequence[Any], profile: Any, embedder: Any) -> list[IdentityCheck]:
    """Detect, embed and score each image (PIL images, arrays or paths).

    Args:
        images: the images.
        profile: the character's ``FaceProfile`` or ``None``.
        embedder: a ``FaceEmbedder`` of the profile's model, or ``None`` (nothing is scored).

    Returns:
        One ``IdentityCheck`` per image; an image the embedder refuses (``ImageError``: e.g. too
        small for its limits) counts as ``no_face``.

    Raises:
        BackendError: the face backend failed on an image: identity could not be checked, which is
            never reported as "no face" (an unchecked image must not pass as a checked one).
    """
    if embedder is None:
        return [IdentityCheck(similarity=None, num_faces=0, matching_faces=0, threshold=None,
                              flags=("not_scored",)) for _ in images]
    results = embedder.analyze(list(images))
    out = []
    for faces in results:
        if isinstance(faces, BackendError):
            raise faces
        if isinstance(faces, Exception):
            faces = []
        out.append(score_faces(faces, profile))
    return out


def rank_best_of(checks: Sequence[IdentityCheck], keep: int | None = None) -> tuple[int, ...]:
    """Indices best first: unflagged by similarity (highest first), then flagged, then unscored.

    Ties keep seed order, so the ranking is deterministic.
    """
    def key(i: int):
        c = checks[i]
        sim = c.similarity if c.similarity is not None else float("-inf")
        serious = bool(set(c.flags) - {"not_scored"})
        return (serious, -sim, i)

    order = sorted(range(len(checks)), key=key)
    return tuple(order[:keep] if keep else order)
