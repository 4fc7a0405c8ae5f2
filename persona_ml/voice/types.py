"""Typed results of the voice pipeline: per-clip speaker embeddings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._json import jsonable
from ..faces.types import ModelProvenance


@dataclass(frozen=True, eq=False)
class VoiceEmbedding:
    """The speaker embedding of one clip, with what it was made from.

    Attributes:
        vector: unit ``(dim,)`` float32 embedding (mean of the partial windows, renormalised).
        provenance: the model that made it (name, weight hashes, dimension, license).
        source: the clip's path or label.
        sha256: the clip's original bytes.
        duration_s: the clip's length.
        speech_s: seconds of speech the VAD found (what the embedding is made of).
        partials: ``(n, dim)`` unit embeddings of the windows (the within-clip speaker check).
        partial_times: ``(start_s, end_s)`` of each window in the clip's own time.
        warnings: the audio intake's measured warnings plus the voice checks (``no_speech``,
            ``little_speech``, ``multiple_speakers``), each ``{"code", "message", ...values}``.
        audio: ``LoadedAudio.to_dict()`` of the clip (format, codec, rates, stats).
        speaker_check: figures of the within-clip speaker check (``None`` for clips with too few windows).
    """

    vector: np.ndarray
    provenance: ModelProvenance
    source: str
    sha256: str
    duration_s: float
    speech_s: float
    partials: np.ndarray
    partial_times: tuple[tuple[float, float], ...]
    warnings: tuple[dict, ...] = ()
    audio: dict = field(default_factory=dict)
    speaker_check: dict | None = None

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])

    @property
    def warning_codes(self) -> tuple[str, ...]:
        return tuple(w["code"] for w in self.warnings)

    def similarity(self, other: VoiceEmbedding | np.ndarray) -> float:
        """Cosine with another embedding of the same model (``ModelMismatchError`` otherwise)."""
        if isinstance(other, VoiceEmbedding):
            self.provenance.require_compatible(other.provenance, "voice embedding")
            other = other.vector
        return float(np.dot(self.vector.astype(np.float64), np.asarray(other, dtype=np.float64)))

    def to_dict(self, with_vector: bool = False) -> dict[str, Any]:
        out = {"source": self.source, "sha256": self.sha256, "duration_s": round(self.duration_s, 3),
               "speech_s": round(self.speech_s, 3), "n_partials": int(len(self.partials)),
               "warnings": [dict(w) for w in self.warnings], "model": self.provenance.to_dict(),
               "audio": self.audio, "speaker_check": self.speaker_check}
        if with_vector:
            out["vector"] = [round(float(v), 6) for v in self.vector]
        return jsonable(out)
