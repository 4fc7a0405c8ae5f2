"""``FaceProfile``: a character's face identity built from its reference photos.

A profile holds every reference embedding, their L2-normalised centroid, each reference's
cosine to the centroid of the *other* references, and the references flagged as likely another
person. It is saved as a pair ``NAME.safetensors`` (arrays) + ``NAME.json`` (provenance,
thresholds, hashes, format version); each file is written atomically and the JSON records the
safetensors file's sha256, so a mismatched or half-replaced pair is detected on load.

Example:
    >>> from persona_ml.faces import FaceEmbedder, FaceProfile
    >>> emb = FaceEmbedder("dlib")                                           # doctest: +SKIP
    >>> profile = FaceProfile.build([emb.embed_primary(p) for p in photos])  # doctest: +SKIP
    >>> profile.save("characters/ada/face")                                  # doctest: +SKIP
    >>> FaceProfile.load("characters/ada/face").similarity(emb.embed_primary("new.jpg"))  # doctest: +SKIP
    0.953
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_bytes, atomic_write_json
from ..errors import ArtifactError, InputError, PersonaMLError
from .thresholds import FaceThresholds, thresholds_for
from .types import FaceObservation, ModelProvenance, l2_normalize

logger = logging.getLogger(__name__)

PROFILE_FORMAT_VERSION = 1
PROFILE_KIND = "persona_ml.face_profile"


def _created_by() -> str:
    from .. import __version__

    return f"persona_ml {__version__}"


def _leave_one_out_scores(embeddings: np.ndarray) -> np.ndarray:
    """Each row's cosine to the normalised mean of the other rows (NaN for a single row)."""
    n = embeddings.shape[0]
    if n < 2:
        return np.full((n,), np.nan, dtype=np.float32)
    e64 = embeddings.astype(np.float64)
    others = e64.sum(axis=0, keepdims=True) - e64
    norms = np.maximum(np.linalg.norm(others, axis=1), 1e-12)
    return (np.einsum("ij,ij->i", e64, others) / norms).astype(np.float32)


def _pairwise_outliers(embeddings: np.ndarray, cut: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Outliers and undecided references of a 2- or 3-reference profile from pairwise cosines."""
    n = embeddings.shape[0]
    sims = embeddings.astype(np.float64) @ embeddings.astype(np.float64).T
    match = sims >= cut
    if n == 2:
        return ((), ()) if match[0, 1] else ((), (0, 1))
    pairs = [(i, j) for i in range(3) for j in range(i + 1, 3) if match[i, j]]
    if len(pairs) == 3:
        return (), ()
    if len(pairs) == 1:  # two agree, the third matches neither: the intruder
        (i, j), = pairs
        return (({0, 1, 2} - {i, j}).pop(),), ()
    if len(pairs) == 2:  # a chain a~b~c: b is the person, a or c may be the intruder
        ends = tuple(sorted(k for k in range(3) if sum(k in p for p in pairs) == 1))
        return (), ends
    return (), (0, 1, 2)


def _unit_row(embedding: np.ndarray) -> np.ndarray:
    """One embedding as a unit ``(1, D)`` row; normalised one at a time so that building from
    all references and adding one to an existing profile give bit-identical arrays."""
    return l2_normalize(np.asarray(embedding, dtype=np.float32).reshape(1, -1))


def _base_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p


@dataclass(frozen=True, eq=False)
class FaceProfile:
    """A character's face identity (see the module docstring).

    Attributes:
        centroid: ``(D,)`` float32, L2-normalised mean of the non-outlier references (of all
            references when every one is flagged).
        embeddings: ``(N, D)`` float32, one L2-normalised row per reference, in insertion order.
        image_sha256s: the source image hash of each row.
        reference_scores: ``(N,)`` float32, each reference's cosine to the centroid of the
            others (NaN when there is a single reference).
        outliers: indices of references flagged as likely another person. With 4 or more
            references: score below ``thresholds.outlier_max_cosine``. With 2 or 3, a "centroid
            of the others" is one or two photos and an intruder drags it (two genuine references
            and an intruder flagged genuine ones 4.4 times in 100), so the decision is pairwise
            against ``thresholds.same_person_min_cosine``: a reference that matches none of the
            others while the others match each other is the outlier (see ``undecided``).
        undecided: indices of references about which the pairwise decision cannot be made (two
            references that disagree: which one is the intruder cannot be told; three with no
            matching pair, or a chain a~b~c with a and c apart). They are not flagged as outliers
            and stay in the centroid; add references to decide.
        provenance: the embedding model; observations of another model are refused.
        thresholds: the thresholds the outliers were decided with.
        format_version: on-disk format version.
        created_by: ``"persona_ml <version>"`` that built the profile.
    """

    centroid: np.ndarray
    embeddings: np.ndarray
    image_sha256s: tuple[str, ...]
    reference_scores: np.ndarray
    outliers: tuple[int, ...]
    provenance: ModelProvenance
    thresholds: FaceThresholds
    format_version: int = PROFILE_FORMAT_VERSION
    created_by: str = ""
    undecided: tuple[int, ...] = ()

    # construction ------------------------------------------------------------------------

    @classmethod
    def build(cls, observations: Sequence[FaceObservation], thresholds: FaceThresholds | None = None) -> FaceProfile:
        """Build a profile from reference faces (one per reference photo).

        Args:
            observations: primary faces of the reference photos (``FaceEmbedder.embed_primary``),
                all from one model.
            thresholds: defaults to ``thresholds_for(provenance)`` from ``configs/face_thresholds.yaml``.

        Returns:
            FaceProfile.

        Raises:
            InputError: no observations (``profile_empty``), not FaceObservations, or two from
                the same image (``duplicate_reference``).
            ModelMismatchError: observations from different models.
        """
        observations = list(observations)
        if not observations:
            raise InputError("a face profile needs at least one reference face", code="profile_empty",
                             field="observations", value=0)
        for i, obs in enumerate(observations):
            if not isinstance(obs, FaceObservation):
                raise InputError(f"observations[{i}] is a {type(obs).__name__}, not a FaceObservation",
                                 field=f"observations[{i}]", value=type(obs).__name__)
        provenance = observations[0].provenance
        for obs in observations[1:]:
            provenance.require_compatible(obs.provenance, "reference face")
        embeddings = np.concatenate([_unit_row(o.embedding) for o in observations])
        return cls._from_arrays(embeddings, [o.image_sha256 for o in observations], provenance,
                                thresholds or thresholds_for(provenance))

    @classmethod
    def _from_arrays(cls, embeddings: np.ndarray, hashes: Sequence[str], provenance: ModelProvenance,
                     thresholds: FaceThresholds, created_by: str | None = None) -> FaceProfile:
        if embeddings.ndim != 2 or embeddings.shape[1] != provenance.dim:
            raise InputError(f"embeddings must be (N, {provenance.dim}) for {provenance.model_name}, "
                             f"got {embeddings.shape}", field="embeddings", value=list(embeddings.shape))
        seen: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if h in seen:
                raise InputError(f"references {seen[h]} and {i} come from the same image ({h[:12]}...); "
                                 "use one face per reference photo", code="duplicate_reference",
                                 field="image_sha256", value=h, indices=[seen[h], i])
            seen[h] = i
        if not np.isfinite(embeddings).all():
            raise InputError("an embedding contains NaN or inf", field="embeddings", value="non-finite")
        embeddings = np.array(embeddings, dtype=np.float32)  # private copy; rows are unit already
        scores = _leave_one_out_scores(embeddings)
        n = embeddings.shape[0]
        undecided: tuple[int, ...] = ()
        if n in (2, 3):
            outliers, undecided = _pairwise_outliers(embeddings, thresholds.same_person_min_cosine)
        elif n >= 4:
            outliers = tuple(int(i) for i in np.flatnonzero(scores < thresholds.outlier_max_cosine))
        else:
            outliers = ()
        keep = [i for i in range(n) if i not in outliers] or list(range(n))
        centroid = l2_normalize(embeddings[keep].astype(np.float64).mean(axis=0))
        embeddings.setflags(write=False)
        scores.setflags(write=False)
        centroid.setflags(write=False)
        return cls(centroid=centroid, embeddings=embeddings, image_sha256s=tuple(hashes),
                   reference_scores=scores, outliers=outliers, provenance=provenance, thresholds=thresholds,
                   created_by=created_by or _created_by(), undecided=undecided)

    def add(self, observation: FaceObservation) -> FaceProfile:
        """A new profile with one more reference; identical to rebuilding from all references.

        Raises:
            ModelMismatchError: ``observation`` was made by another model.
            InputError: its image is already a reference (``duplicate_reference``).
        """
        if not isinstance(observation, FaceObservation):
            raise InputError(f"expected a FaceObservation, got {type(observation).__name__}",
                             field="observation", value=type(observation).__name__)
        self.provenance.require_compatible(observation.provenance, "reference face")
        return self._from_arrays(np.concatenate([self.embeddings, _unit_row(observation.embedding)]),
                                 [*self.image_sha256s, observation.image_sha256], self.provenance, self.thresholds)

    # use ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def outlier_rule(self) -> str:
        """How the outliers were decided: ``"none"`` (one reference), ``"pairwise"`` (2-3) or
        ``"leave_one_out"`` (4+)."""
        n = len(self)
        return "none" if n < 2 else "pairwise" if n <= 3 else "leave_one_out"

    @property
    def outlier_sha256s(self) -> tuple[str, ...]:
        """Image hashes of the flagged references."""
        return tuple(self.image_sha256s[i] for i in self.outliers)

    def similarity(self, observation: FaceObservation) -> float:
        """Cosine of ``observation``'s embedding to the profile centroid.

        Raises:
            ModelMismatchError: the observation was made by another model.
        """
        if not isinstance(observation, FaceObservation):
            raise InputError(f"expected a FaceObservation, got {type(observation).__name__}",
                             field="observation", value=type(observation).__name__)
        self.provenance.require_compatible(observation.provenance, "observation")
        return float(np.dot(self.centroid.astype(np.float64), np.asarray(observation.embedding, dtype=np.float64)))

    @property
    def fingerprint(self) -> str:
        """Short stable id of the profile's content (model, references, embeddings)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.format_version, self.provenance.fingerprint, list(self.image_sha256s),
                             self.thresholds.to_dict()], sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.embeddings, dtype="<f4").tobytes())
        return h.hexdigest()[:16]

    def near_duplicates(self) -> list[tuple[int, int, float]]:
        """Pairs of references at or above ``thresholds.near_duplicate_min_cosine`` (copies, crops)."""
        sims = self.embeddings.astype(np.float64) @ self.embeddings.astype(np.float64).T
        i, j = np.triu_indices(len(self), k=1)
        hit = sims[i, j] >= self.thresholds.near_duplicate_min_cosine
        return [(int(a), int(b), float(sims[a, b])) for a, b in zip(i[hit], j[hit])]

    def to_summary(self) -> dict[str, Any]:
        """JSON-ready overview: counts, per-reference scores, outliers, provenance, thresholds."""
        refs = []
        for i, h in enumerate(self.image_sha256s):
            s = float(self.reference_scores[i])
            refs.append({"index": i, "image_sha256": h, "score": None if math.isnan(s) else round(s, 4),
                         "outlier": i in self.outliers, "undecided": i in self.undecided})
        return {
            "kind": PROFILE_KIND, "format_version": self.format_version, "created_by": self.created_by,
            "fingerprint": self.fingerprint, "n_references": len(self), "references": refs,
            "outliers": list(self.outliers), "outlier_sha256s": list(self.outlier_sha256s),
            "undecided": list(self.undecided), "outlier_rule": self.outlier_rule,
            "near_duplicates": [[a, b, round(c, 4)] for a, b, c in self.near_duplicates()],
            "provenance": self.provenance.to_dict(), "thresholds": self.thresholds.to_dict(),
        }

    # persistence -------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``PATH.safetensors`` and ``PATH.json`` (a ``.json``/``.safetensors`` suffix on
        ``path`` is dropped). Each file is written atomically.

        Returns:
            The base path (without suffix).
        """
        from safetensors.numpy import save as st_save

        base = _base_path(path)
        tensors = {"centroid": np.ascontiguousarray(self.centroid, dtype=np.float32),
                   "embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32),
                   "reference_scores": np.ascontiguousarray(self.reference_scores, dtype=np.float32)}
        blob = st_save(tensors, metadata={"kind": PROFILE_KIND, "format_version": str(self.format_version)})
        meta = {
            "kind": PROFILE_KIND, "format_version": self.format_version, "created_by": self.created_by,
            "fingerprint": self.fingerprint, "image_sha256s": list(self.image_sha256s),
            "outliers": list(self.outliers), "provenance": self.provenance.to_dict(),
            "thresholds": self.thresholds.to_dict(), "tensors_file": base.name + ".safetensors",
            "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        }
        atomic_write_bytes(base.with_name(base.name + ".safetensors"), blob)
        atomic_write_json(base.with_name(base.name + ".json"), meta)
        return base

    @classmethod
    def load(cls, path: str | os.PathLike) -> FaceProfile:
        """Load a profile saved by ``save`` (``PATH``, ``PATH.json`` or ``PATH.safetensors``).

        Raises:
            ArtifactError: ``profile_not_found``, ``profile_format_unknown`` (another kind or a
                newer format version) or ``profile_corrupt`` (unreadable, mismatched pair, bad shapes).
        """
        from safetensors.numpy import load as st_load

        base = _base_path(path)
        json_path = base.with_name(base.name + ".json")
        st_path = base.with_name(base.name + ".safetensors")
        missing = [str(p) for p in (json_path, st_path) if not p.is_file()]
        if missing:
            raise ArtifactError(f"face profile not found: missing {', '.join(missing)}", code="profile_not_found",
                                field="path", value=str(base), searched=[str(json_path), str(st_path)])
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{json_path}: not valid JSON: {exc}", code="profile_corrupt",
                                field="path", value=str(json_path)) from exc
        if not isinstance(meta, dict) or meta.get("kind") != PROFILE_KIND:
            raise ArtifactError(f"{json_path}: not a persona_ml face profile (kind "
                                f"{meta.get('kind') if isinstance(meta, dict) else None!r})",
                                code="profile_format_unknown", field="kind", value=str(json_path))
        version = meta.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= PROFILE_FORMAT_VERSION:
            raise ArtifactError(f"{json_path}: face profile format_version {version!r} is not supported "
                                f"(this persona_ml reads 1..{PROFILE_FORMAT_VERSION}); upgrade persona_ml",
                                code="profile_format_unknown", field="format_version", value=version)
        blob = st_path.read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        if digest != meta.get("tensors_sha256"):
            raise ArtifactError(f"{st_path} does not belong to {json_path} (sha256 {digest[:12]}... != "
                                f"{str(meta.get('tensors_sha256'))[:12]}...): the pair is mismatched or damaged",
                                code="profile_corrupt", field="tensors_sha256", value=digest)
        try:
            try:
                tensors = st_load(blob)
            except Exception as exc:
                raise ValueError(f"{st_path.name} is not a readable safetensors file: {exc}") from exc
            provenance = ModelProvenance.from_dict(meta["provenance"])
            thresholds = FaceThresholds.from_dict(meta["thresholds"])
            hashes = [str(h) for h in meta["image_sha256s"]]
            embeddings = np.asarray(tensors["embeddings"], dtype=np.float32)
        except (KeyError, TypeError, ValueError, PersonaMLError) as exc:
            raise ArtifactError(f"{base}: face profile is malformed: {exc}", code="profile_corrupt",
                                field="path", value=str(base)) from exc
        if embeddings.ndim != 2 or embeddings.shape != (len(hashes), provenance.dim):
            raise ArtifactError(f"{st_path}: embeddings have shape {embeddings.shape}, expected "
                                f"({len(hashes)}, {provenance.dim})", code="profile_corrupt",
                                field="embeddings", value=list(embeddings.shape))
        norms = np.linalg.norm(embeddings, axis=1) if embeddings.size else np.ones(0)
        if not np.isfinite(embeddings).all() or np.any(np.abs(norms - 1.0) > 1e-3):
            raise ArtifactError(f"{st_path}: embeddings are not unit vectors (norms {np.round(norms, 4).tolist()})",
                                code="profile_corrupt", field="embeddings", value="not normalised")
        profile = cls._from_arrays(embeddings, hashes, provenance, thresholds, created_by=str(meta.get("created_by", "")))
        if profile.fingerprint != meta.get("fingerprint"):
            raise ArtifactError(f"{base}: stored outliers/fingerprint do not match the embeddings",
                                code="profile_corrupt", field="fingerprint", value=meta.get("fingerprint"))
        if list(profile.outliers) != list(meta.get("outliers", [])):
            # the arrays are intact (fingerprint): the outliers are derived, and the rule that
            # decides them may have changed since the profile was saved (2-3 references: pairwise)
            logger.info("%s: outliers %s recomputed as %s by this persona_ml's rule", base, meta.get("outliers"),
                        list(profile.outliers))
        return profile
