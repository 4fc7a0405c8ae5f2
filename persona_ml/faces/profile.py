"""``FaceProfile``: a character's face identity built from its reference photos.

A profile holds every reference embedding, their L2-normalised centroid, each reference's
cosine to the centroid of the *other* references, and the references flagged as likely another
person. It is saved as one file, ``NAME.safetensors``: the arrays, with the provenance,
thresholds, reference hashes and format version as JSON in its header, written atomically, so
two processes saving at once, a full disk or a kill leave the old profile or the new one, never
a mix. Format 1 (a ``NAME.safetensors`` + ``NAME.json`` pair whose JSON records the tensors'
sha256) is still read; saving over it removes the stale JSON.

Example:
    >>> from persona_ml.faces import FaceEmbedder, FaceProfile
    >>> emb = FaceEmbedder("dlib")                                           # doctest: +SKIP
    >>> profile = FaceProfile.build([emb.embed_primary(p) for p in photos])  # doctest: +SKIP
    >>> profile.save("characters/ada/face")                                  # doctest: +SKIP
    >>> FaceProfile.load("characters/ada/face").similarity(emb.embed_primary("new.jpg"))  # doctest: +SKIP
    0.953
"""

from __future__ import annotations

import contextlib
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

from .._atomic import atomic_write_bytes
from .._json import short_repr
from .._parse import loads_json
from ..errors import ArtifactError, InputError, PersonaMLError
from .thresholds import FaceThresholds, thresholds_for
from .types import FaceObservation, ModelProvenance, l2_normalize

logger = logging.getLogger(__name__)

PROFILE_FORMAT_VERSION = 2  # 1: a NAME.safetensors + NAME.json pair (still read)
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
        """Write the profile as one file, ``PATH.safetensors`` (a ``.json``/``.safetensors``
        suffix on ``path`` is dropped), atomically.

        The arrays and the provenance/thresholds/hashes (JSON in the safetensors header) are one
        unit: concurrent savers, a full disk or a kill at any instant leave either the previous
        profile or this one, and a reader racing a writer reads one of the two. A ``PATH.json``
        of the format-1 pair is removed once the new file is in place.

        Returns:
            The base path (without suffix).

        Raises:
            StorageError: ``storage_full`` / ``write_failed`` naming the file (the old profile is intact).
            InputError: ``path_invalid`` for an empty, ``.`` or ``/`` path.
        """
        from safetensors.numpy import save as st_save

        from .._atomic import check_output_path

        base = _base_path(check_output_path(path))
        st_path = base.with_name(base.name + ".safetensors")
        tensors = {"centroid": np.ascontiguousarray(self.centroid, dtype=np.float32),
                   "embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32),
                   "reference_scores": np.ascontiguousarray(self.reference_scores, dtype=np.float32)}
        meta = {
            "kind": PROFILE_KIND, "format_version": PROFILE_FORMAT_VERSION, "created_by": self.created_by,
            "fingerprint": self.fingerprint, "image_sha256s": list(self.image_sha256s),
            "outliers": list(self.outliers), "provenance": self.provenance.to_dict(),
            "thresholds": self.thresholds.to_dict(), "arrays_sha256": _arrays_sha256(tensors),
        }
        blob = st_save(tensors, metadata={"kind": PROFILE_KIND, "format_version": str(PROFILE_FORMAT_VERSION),
                                          _PROFILE_META_KEY: json.dumps(meta, sort_keys=True)})
        atomic_write_bytes(st_path, blob)
        legacy = base.with_name(base.name + ".json")
        if legacy.is_file() and _is_legacy_pair_json(legacy):
            with contextlib.suppress(OSError):  # a stale half of the old pair; the profile is already saved
                legacy.unlink()
        return base

    @classmethod
    def load(cls, path: str | os.PathLike) -> FaceProfile:
        """Load a profile saved by ``save`` (``PATH``, ``PATH.json`` or ``PATH.safetensors``);
        format-1 pairs (``PATH.safetensors`` + ``PATH.json``) are read too.

        Every number is checked: a format version, dimension or threshold out of range, a
        NaN, a 5000-digit integer or a header nested 10,000 deep is ``profile_corrupt``, never
        a traceback or a wrong profile.

        Raises:
            ArtifactError: ``profile_not_found``, ``profile_format_unknown`` (another kind or a
                newer format version) or ``profile_corrupt`` (unreadable, mismatched pair, bad
                shapes or values); ``path_invalid`` when the path is a folder, FIFO or device, or
                over the filesystem's name limit.
        """
        from .._files import FileProblem, read_regular_file
        from .._parse import ParseProblem, parse_safetensors_header, safetensors_header_length

        try:
            base = _base_path(path)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"not a profile path: {exc}", code="profile_not_found", field="path",
                                value=repr(path)) from None
        json_path = base.with_name(base.name + ".json")
        st_path = base.with_name(base.name + ".safetensors")
        try:
            blob = read_regular_file(st_path, max_bytes=MAX_PROFILE_BYTES)
        except FileProblem as exc:
            _raise_file_problem(exc, base, st_path, json_path)
        try:
            n = safetensors_header_length(blob[:8], len(blob), st_path.name)
            _tensors_header, st_meta = parse_safetensors_header(blob[8:8 + n], len(blob), st_path.name)
        except ParseProblem as exc:
            raise ArtifactError(f"{st_path}: {exc.message}", code="profile_corrupt", field="path",
                                value=str(st_path), reason=exc.reason) from None
        if _PROFILE_META_KEY in st_meta:
            try:
                meta = loads_json(st_meta[_PROFILE_META_KEY], what=f"{st_path.name} profile metadata")
            except ParseProblem as exc:
                raise ArtifactError(f"{st_path}: {exc.message}", code="profile_corrupt", field="path",
                                    value=str(st_path), reason=exc.reason) from None
            _check_kind_and_version(meta, st_path, (2, PROFILE_FORMAT_VERSION))
        else:
            meta = _read_legacy_meta(json_path, st_path, blob)
        return cls._from_saved(meta, blob, base, st_path)

    @classmethod
    def _from_saved(cls, meta: dict, blob: bytes, base: Path, st_path: Path) -> FaceProfile:
        from safetensors.numpy import load as st_load

        try:
            try:
                tensors = st_load(blob)
            except Exception as exc:  # noqa: BLE001 (safetensors raises its own error types on damaged data)
                raise ValueError(f"{st_path.name} is not a readable safetensors file: {exc}") from None
            _check_meta_types(meta)
            provenance = ModelProvenance.from_dict(meta["provenance"])
            thresholds = FaceThresholds.from_dict(meta["thresholds"])
            hashes = list(meta["image_sha256s"])
            embeddings = tensors.get("embeddings")
            if embeddings is None or embeddings.dtype != np.float32:
                raise ValueError("the embeddings tensor is missing or not float32")
            recorded = meta.get("arrays_sha256")
            if recorded is not None and recorded != _arrays_sha256(tensors):  # format 1 relies on tensors_sha256
                raise ValueError("its arrays do not match the sha256 recorded when it was saved (damaged file)")
        except (KeyError, TypeError, ValueError, OverflowError, PersonaMLError) as exc:
            raise ArtifactError(f"{base}: face profile is malformed: {exc}", code="profile_corrupt",
                                field="path", value=str(base)) from None
        if embeddings.ndim != 2 or embeddings.shape != (len(hashes), provenance.dim):
            raise ArtifactError(f"{st_path}: embeddings have shape {embeddings.shape}, expected "
                                f"({len(hashes)}, {provenance.dim})", code="profile_corrupt",
                                field="embeddings", value=list(embeddings.shape))
        norms = np.linalg.norm(embeddings, axis=1) if embeddings.size else np.ones(0)
        if not np.isfinite(embeddings).all() or np.any(np.abs(norms - 1.0) > 1e-3):
            raise ArtifactError(f"{st_path}: embeddings are not unit vectors (norms {np.round(norms, 4).tolist()})",
                                code="profile_corrupt", field="embeddings", value="not normalised")
        try:
            profile = cls._from_arrays(embeddings, hashes, provenance, thresholds, created_by=str(meta["created_by"]))
        except InputError as exc:  # duplicate references, an empty profile: not something save() writes
            raise ArtifactError(f"{base}: face profile is malformed: {exc.message}", code="profile_corrupt",
                                field="path", value=str(base)) from None
        if profile.fingerprint != meta["fingerprint"]:
            raise ArtifactError(f"{base}: stored outliers/fingerprint do not match the embeddings",
                                code="profile_corrupt", field="fingerprint", value=meta.get("fingerprint"))
        if list(profile.outliers) != list(meta.get("outliers", [])):
            # the arrays are intact (fingerprint): the outliers are derived, and the rule that
            # decides them may have changed since the profile was saved (2-3 references: pairwise)
            logger.info("%s: outliers %s recomputed as %s by this persona_ml's rule", base, meta.get("outliers"),
                        list(profile.outliers))
        return profile


#: header key of the profile's JSON metadata (format 2)
_PROFILE_META_KEY = "persona_ml.face_profile"
#: a profile file larger than this is refused unread (10,000 references of dim 512 are 20 MB)
MAX_PROFILE_BYTES = 256 * 1024 * 1024


def _arrays_sha256(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(json.dumps([name, arr.dtype.str, list(arr.shape)]).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _raise_file_problem(exc, base: Path, st_path: Path, json_path: Path):
    if exc.reason == "not_found":
        searched = [str(st_path), str(json_path)]
        if json_path.is_file() and _is_legacy_pair_json(json_path):
            raise ArtifactError(f"{st_path} is missing: the profile pair is incomplete", code="profile_corrupt",
                                field="path", value=str(base), searched=searched) from None
        raise ArtifactError(f"face profile not found: {exc.message}", code="profile_not_found", field="path",
                            value=str(base), searched=searched) from None
    if exc.reason in ("not_a_file", "name_too_long"):
        raise ArtifactError(exc.message, code="path_invalid", field="path", value=str(base), **exc.details()) from None
    raise ArtifactError(f"face profile cannot be read: {exc.message}", code="profile_corrupt", field="path",
                        value=str(base), **exc.details()) from None


def _is_legacy_pair_json(json_path: Path) -> bool:
    """Whether ``json_path`` is the JSON half of a format-1 profile pair."""
    from .._files import FileProblem, read_regular_file
    from .._parse import ParseProblem

    try:
        meta = loads_json(read_regular_file(json_path, max_bytes=MAX_PROFILE_BYTES), what=json_path.name)
    except (FileProblem, ParseProblem):
        return False
    return isinstance(meta, dict) and meta.get("kind") == PROFILE_KIND and "tensors_sha256" in meta


def _check_kind_and_version(meta: Any, where: Path, versions: tuple[int, int]) -> None:
    if not isinstance(meta, dict) or meta.get("kind") != PROFILE_KIND:
        kind = meta.get("kind") if isinstance(meta, dict) else None
        raise ArtifactError(f"{where}: not a persona_ml face profile (kind {short_repr(kind)})",
                            code="profile_format_unknown", field="kind", value=str(where))
    version = meta.get("format_version")
    lo, hi = versions
    if isinstance(version, bool) or not isinstance(version, int) or not lo <= version <= hi:
        raise ArtifactError(f"{where}: face profile format_version {short_repr(version)} is not supported here "
                            f"(this persona_ml reads 1..{PROFILE_FORMAT_VERSION}); upgrade persona_ml",
                            code="profile_format_unknown", field="format_version", value=version)


def _read_legacy_meta(json_path: Path, st_path: Path, blob: bytes) -> dict:
    """The JSON half of a format-1 pair, checked against the tensors file's sha256."""
    from .._files import FileProblem, read_regular_file
    from .._parse import ParseProblem

    try:
        meta = loads_json(read_regular_file(json_path, max_bytes=MAX_PROFILE_BYTES), what=json_path.name)
    except FileProblem as exc:
        code = "profile_corrupt" if exc.reason in ("not_found", "unreadable", "too_large") else "path_invalid"
        raise ArtifactError(f"{st_path} has no profile metadata and its {json_path.name} cannot be read: "
                            f"{exc.message}", code=code, field="path", value=str(json_path)) from None
    except ParseProblem as exc:
        raise ArtifactError(f"{json_path}: not valid JSON: {exc.message}", code="profile_corrupt",
                            field="path", value=str(json_path), reason=exc.reason) from None
    _check_kind_and_version(meta, json_path, (1, 1))
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.get("tensors_sha256"):
        raise ArtifactError(f"{st_path} does not belong to {json_path} (sha256 {digest[:12]}... != "
                            f"{str(meta.get('tensors_sha256'))[:12]}...): the pair is mismatched or damaged",
                            code="profile_corrupt", field="tensors_sha256", value=digest)
    return meta


def _check_meta_types(meta: dict) -> None:
    """Raise ``ValueError``/``KeyError`` for a metadata field of the wrong JSON type or range
    (``ModelProvenance.from_dict`` would otherwise coerce a list to a string)."""
    for key in ("provenance", "thresholds", "image_sha256s", "outliers", "fingerprint", "created_by"):
        if key not in meta:
            raise KeyError(key)
    prov = meta["provenance"]
    if not isinstance(prov, dict):
        raise ValueError("provenance must be an object")
    for key in ("backend", "model_name", "license"):
        if not isinstance(prov.get(key), str):
            raise ValueError(f"provenance.{key} must be a string")
    files = prov.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ValueError("provenance.files must map file names to sha256 strings")
    dim = prov.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65536:
        raise ValueError(f"provenance.dim must be an integer in 1..65536, got {short_repr(dim)}")
    if prov.get("commercial_use") not in (None, True, False):
        raise ValueError("provenance.commercial_use must be true, false or null")
    if not isinstance(meta["thresholds"], dict):
        raise ValueError("thresholds must be an object")
    hashes = meta["image_sha256s"]
    if not isinstance(hashes, list) or not all(isinstance(h, str) and 0 < len(h) <= 256 for h in hashes):
        raise ValueError("image_sha256s must be a list of image hash strings")
    outliers = meta["outliers"]
    if not isinstance(outliers, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(hashes) for i in outliers):
        raise ValueError(f"outliers must be indices into the {len(hashes)} references")
    if not isinstance(meta["fingerprint"], str) or not isinstance(meta["created_by"], str):
        raise ValueError("fingerprint and created_by must be strings")
