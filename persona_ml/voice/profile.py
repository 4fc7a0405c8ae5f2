"""``VoiceProfile``: a character's voice, built from its clone samples' speaker embeddings.

A profile holds one unit embedding per sample, each sample's cosine to the centroid of the
others (a low one: likely another speaker), the samples whose own windows split into two voices,
and the total seconds of speech. The centroid is the normalised mean of the samples that pass
(all of them when none does). Saved as a pair ``NAME.safetensors`` (arrays) + ``NAME.json``
(provenance, samples, thresholds, the safetensors file's sha256). Embeddings of another model
are refused; adding a sample gives exactly the profile rebuilt from all samples.

Example:
    >>> from persona_ml.voice import load_voice_embedder, VoiceProfile
    >>> embedder = load_voice_embedder()                                  # doctest: +SKIP
    >>> profile = VoiceProfile.build(embedder.embed_many(sample_paths))    # doctest: +SKIP
    >>> profile.outliers, round(profile.total_speech_s, 1)                # doctest: +SKIP
    ((), 74.3)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_bytes, atomic_write_json
from ..errors import ArtifactError, InputError, PersonaMLError
from ..faces.profile import _leave_one_out_scores  # one leave-one-out rule for faces and voices
from ..faces.types import ModelProvenance, l2_normalize
from .thresholds import VoiceThresholds, voice_thresholds_for
from .types import VoiceEmbedding

PROFILE_FORMAT_VERSION = 1
PROFILE_KIND = "persona_ml.voice_profile"
#: sample warnings that keep a sample out of the centroid
EXCLUDING_WARNINGS = ("multiple_speakers", "no_speech")


@dataclass(frozen=True)
class VoiceSample:
    """What a profile keeps of one sample besides its embedding."""

    sha256: str
    source: str
    duration_s: float
    speech_s: float
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "source": self.source, "duration_s": round(self.duration_s, 4),
                "speech_s": round(self.speech_s, 4), "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VoiceSample:
        return cls(sha256=str(data["sha256"]), source=str(data["source"]), duration_s=float(data["duration_s"]),
                   speech_s=float(data["speech_s"]), warnings=tuple(str(w) for w in data["warnings"]))

    @classmethod
    def of(cls, embedding: VoiceEmbedding) -> VoiceSample:
        return cls(sha256=embedding.sha256, source=embedding.source, duration_s=float(embedding.duration_s),
                   speech_s=float(embedding.speech_s), warnings=tuple(embedding.warning_codes))


def _created_by() -> str:
    from .. import __version__

    return f"persona_ml {__version__}"


@dataclass(frozen=True, eq=False)
class VoiceProfile:
    """A character's voice (see the module docstring).

    Attributes:
        centroid: ``(D,)`` unit mean of the samples that pass (not outliers, not multi-speaker,
            not speechless; all samples when none passes).
        embeddings: ``(N, D)`` unit rows, one per sample, in insertion order.
        samples: per-sample record (hash, source, durations, warning codes).
        sample_scores: each sample's cosine to the centroid of the others (NaN for one sample).
        outliers: samples flagged as likely another speaker: score below
            ``thresholds.outlier_max_cosine``; with exactly two samples the pairwise
            ``same_speaker_min_cosine`` is used and both are flagged when they disagree.
        provenance: the embedding model; embeddings of another model are refused.
        thresholds: the thresholds the flags were decided with.
    """

    centroid: np.ndarray
    embeddings: np.ndarray
    samples: tuple[VoiceSample, ...]
    sample_scores: np.ndarray
    outliers: tuple[int, ...]
    provenance: ModelProvenance
    thresholds: VoiceThresholds
    format_version: int = PROFILE_FORMAT_VERSION
    created_by: str = ""

    @classmethod
    def build(cls, embeddings: Sequence[VoiceEmbedding], thresholds: VoiceThresholds | None = None) -> VoiceProfile:
        """Build a profile from the embeddings of a voice's samples.

        Raises:
            VoiceError: no embeddings (``profile_empty``) or one recording twice (``duplicate_reference``).
            InputError: an item is not a ``VoiceEmbedding``.
            ModelMismatchError: embeddings of different models.
        """
        embeddings = list(embeddings)
        if not embeddings:
            from ..errors import VoiceError

            raise VoiceError("a voice profile needs at least one sample", code="profile_empty", field="samples", value=0)
        for i, e in enumerate(embeddings):
            if not isinstance(e, VoiceEmbedding):
                raise InputError(f"samples[{i}] is a {type(e).__name__}, not a VoiceEmbedding", field=f"samples[{i}]",
                                 value=type(e).__name__)
        provenance = embeddings[0].provenance
        for e in embeddings[1:]:
            provenance.require_compatible(e.provenance, "voice sample")
        rows = np.concatenate([l2_normalize(np.asarray(e.vector, np.float32).reshape(1, -1)) for e in embeddings])
        return cls._from_arrays(rows, [VoiceSample.of(e) for e in embeddings], provenance,
                                thresholds or voice_thresholds_for(provenance))

    @classmethod
    def _from_arrays(cls, rows: np.ndarray, samples: Sequence[VoiceSample], provenance: ModelProvenance,
                     thresholds: VoiceThresholds, created_by: str | None = None) -> VoiceProfile:
        from ..errors import VoiceError

        if rows.ndim != 2 or rows.shape != (len(samples), provenance.dim):
            raise InputError(f"embeddings must be ({len(samples)}, {provenance.dim}), got {rows.shape}",
                             field="embeddings", value=list(rows.shape))
        seen: dict[str, int] = {}
        for i, s in enumerate(samples):
            if s.sha256 in seen:
                raise VoiceError(f"samples {seen[s.sha256]} and {i} are the same recording ({s.sha256[:12]}...)",
                                 code="duplicate_reference", field="sha256", value=s.sha256, indices=[seen[s.sha256], i])
            seen[s.sha256] = i
        if not np.isfinite(rows).all():
            raise InputError("an embedding contains NaN or inf", field="embeddings", value="non-finite")
        rows = np.array(rows, dtype=np.float32)
        scores = _leave_one_out_scores(rows)
        n = len(samples)
        cut = thresholds.same_speaker_min_cosine if n == 2 else thresholds.outlier_max_cosine
        outliers = tuple(int(i) for i in np.flatnonzero(scores < cut)) if n >= 2 else ()
        excluded = set(outliers) | {i for i, s in enumerate(samples) if set(s.warnings) & set(EXCLUDING_WARNINGS)}
        keep = [i for i in range(n) if i not in excluded] or list(range(n))
        centroid = l2_normalize(rows[keep].astype(np.float64).mean(axis=0)).astype(np.float32)
        for arr in (rows, scores, centroid):
            arr.setflags(write=False)
        return cls(centroid=centroid, embeddings=rows, samples=tuple(samples), sample_scores=scores, outliers=outliers,
                   provenance=provenance, thresholds=thresholds, created_by=created_by or _created_by())

    def add(self, embedding: VoiceEmbedding) -> VoiceProfile:
        """A new profile with one more sample; identical to rebuilding from all samples."""
        if not isinstance(embedding, VoiceEmbedding):
            raise InputError(f"expected a VoiceEmbedding, got {type(embedding).__name__}", field="embedding",
                             value=type(embedding).__name__)
        self.provenance.require_compatible(embedding.provenance, "voice sample")
        row = l2_normalize(np.asarray(embedding.vector, np.float32).reshape(1, -1))
        return self._from_arrays(np.concatenate([self.embeddings, row]), [*self.samples, VoiceSample.of(embedding)],
                                 self.provenance, self.thresholds)

    # use --------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def total_speech_s(self) -> float:
        return float(sum(s.speech_s for s in self.samples))

    @property
    def multi_speaker_samples(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.samples) if "multiple_speakers" in s.warnings)

    def similarity(self, embedding: VoiceEmbedding) -> float:
        """Cosine of ``embedding`` to the centroid (``ModelMismatchError`` for another model's)."""
        if not isinstance(embedding, VoiceEmbedding):
            raise InputError(f"expected a VoiceEmbedding, got {type(embedding).__name__}", field="embedding",
                             value=type(embedding).__name__)
        self.provenance.require_compatible(embedding.provenance, "voice embedding")
        return float(np.dot(self.centroid.astype(np.float64), embedding.vector.astype(np.float64)))

    def is_same_speaker(self, embedding: VoiceEmbedding) -> bool:
        return self.similarity(embedding) >= self.thresholds.same_speaker_min_cosine

    def duplicates(self) -> list[tuple[int, int, float]]:
        """Pairs of samples at or above ``duplicate_min_cosine`` (one recording re-encoded)."""
        sims = self.embeddings.astype(np.float64) @ self.embeddings.astype(np.float64).T
        i, j = np.triu_indices(len(self), k=1)
        hit = sims[i, j] >= self.thresholds.duplicate_min_cosine
        return [(int(a), int(b), float(sims[a, b])) for a, b in zip(i[hit], j[hit])]

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.format_version, self.provenance.fingerprint, [s.to_dict() for s in self.samples],
                             self.thresholds.to_dict()], sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.embeddings, dtype="<f4").tobytes())
        return h.hexdigest()[:16]

    def to_summary(self) -> dict[str, Any]:
        """JSON-ready overview: per-sample scores and flags, totals, model, thresholds."""
        samples = []
        for i, s in enumerate(self.samples):
            score = float(self.sample_scores[i])
            samples.append({"index": i, **s.to_dict(), "score": None if math.isnan(score) else round(score, 4),
                            "outlier": i in self.outliers, "multiple_speakers": "multiple_speakers" in s.warnings})
        return {"kind": PROFILE_KIND, "format_version": self.format_version, "created_by": self.created_by,
                "fingerprint": self.fingerprint, "n_samples": len(self), "total_speech_s": round(self.total_speech_s, 3),
                "samples": samples, "outliers": list(self.outliers), "multi_speaker_samples": list(self.multi_speaker_samples),
                "duplicates": [[a, b, round(c, 4)] for a, b, c in self.duplicates()],
                "provenance": self.provenance.to_dict(), "thresholds": self.thresholds.to_dict()}

    # persistence ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``PATH.safetensors`` and ``PATH.json`` atomically (a suffix on ``path`` is dropped)."""
        from safetensors.numpy import save as st_save

        base = _base_path(path)
        blob = st_save({"centroid": np.ascontiguousarray(self.centroid, np.float32),
                        "embeddings": np.ascontiguousarray(self.embeddings, np.float32),
                        "sample_scores": np.ascontiguousarray(self.sample_scores, np.float32)},
                       metadata={"kind": PROFILE_KIND, "format_version": str(self.format_version)})
        meta = {"kind": PROFILE_KIND, "format_version": self.format_version, "created_by": self.created_by,
                "fingerprint": self.fingerprint, "samples": [s.to_dict() for s in self.samples],
                "outliers": list(self.outliers), "provenance": self.provenance.to_dict(),
                "thresholds": self.thresholds.to_dict(), "tensors_file": base.name + ".safetensors",
                "tensors_sha256": hashlib.sha256(blob).hexdigest()}
        atomic_write_bytes(base.with_name(base.name + ".safetensors"), blob)
        atomic_write_json(base.with_name(base.name + ".json"), meta)
        return base

    @classmethod
    def load(cls, path: str | os.PathLike) -> VoiceProfile:
        """Load a profile saved by ``save``.

        Raises:
            ArtifactError: ``profile_not_found``, ``profile_format_unknown`` or ``profile_corrupt``.
        """
        from safetensors.numpy import load as st_load

        base = _base_path(path)
        json_path, st_path = base.with_name(base.name + ".json"), base.with_name(base.name + ".safetensors")
        missing = [str(p) for p in (json_path, st_path) if not p.is_file()]
        if missing:
            raise ArtifactError(f"voice profile not found: missing {', '.join(missing)}", code="profile_not_found",
                                field="path", value=str(base), searched=[str(json_path), str(st_path)])
        from .._files import FileProblem, read_regular_file
        from .._parse import ParseProblem, loads_json

        try:
            meta = loads_json(read_regular_file(json_path, max_bytes=64 * 1024 * 1024), what=json_path.name)
        except (FileProblem, ParseProblem) as exc:
            raise ArtifactError(f"{json_path}: not valid JSON: {exc}", code="profile_corrupt", field="path",
                                value=str(json_path)) from exc
        if not isinstance(meta, dict) or meta.get("kind") != PROFILE_KIND:
            raise ArtifactError(f"{json_path}: not a persona_ml voice profile (kind "
                                f"{meta.get('kind') if isinstance(meta, dict) else None!r})",
                                code="profile_format_unknown", field="kind", value=str(json_path))
        version = meta.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= PROFILE_FORMAT_VERSION:
            raise ArtifactError(f"{json_path}: voice profile format_version {version!r} is not supported (this "
                                f"persona_ml reads 1..{PROFILE_FORMAT_VERSION})", code="profile_format_unknown",
                                field="format_version", value=version)
        try:
            blob = read_regular_file(st_path, max_bytes=1 << 30)
        except FileProblem as exc:
            raise ArtifactError(f"{st_path}: {exc.message}", code="profile_corrupt", field="path", value=str(st_path)) from None
        digest = hashlib.sha256(blob).hexdigest()
        if digest != meta.get("tensors_sha256"):
            raise ArtifactError(f"{st_path} does not belong to {json_path} (sha256 {digest[:12]}... != "
                                f"{str(meta.get('tensors_sha256'))[:12]}...)", code="profile_corrupt",
                                field="tensors_sha256", value=digest)
        try:
            tensors = st_load(blob)
            provenance = ModelProvenance.from_dict(meta["provenance"])
            thresholds = VoiceThresholds.from_dict(meta["thresholds"])
            samples = [VoiceSample.from_dict(s) for s in meta["samples"]]
            rows = np.asarray(tensors["embeddings"], dtype=np.float32)
            norms = np.linalg.norm(rows, axis=1) if rows.size else np.ones(0)
            if rows.shape != (len(samples), provenance.dim) or not np.isfinite(rows).all() or np.any(np.abs(norms - 1) > 1e-3):
                raise ValueError(f"embeddings of shape {rows.shape} are not {len(samples)} unit rows of dim {provenance.dim}")
            profile = cls._from_arrays(rows, samples, provenance, thresholds, created_by=str(meta.get("created_by", "")))
        except (KeyError, TypeError, ValueError, PersonaMLError) as exc:
            raise ArtifactError(f"{base}: voice profile is malformed: {exc}", code="profile_corrupt", field="path",
                                value=str(base)) from exc
        if list(profile.outliers) != list(meta.get("outliers", [])) or profile.fingerprint != meta.get("fingerprint"):
            raise ArtifactError(f"{base}: stored outliers/fingerprint do not match the embeddings", code="profile_corrupt",
                                field="fingerprint", value=meta.get("fingerprint"))
        return profile


def _base_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
