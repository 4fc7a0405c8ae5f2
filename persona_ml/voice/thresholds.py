"""Per-model voice thresholds read from ``configs/voice_thresholds.yaml``.

Cosine scales differ between speaker models, so every threshold is looked up by the provenance
of the model that made the embeddings (``<backend>.<model_name>``); an unlisted model raises
``thresholds_missing`` rather than borrowing another model's numbers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import config_file, from_dict, read_yaml
from ..errors import ConfigError
from ..faces.types import ModelProvenance

THRESHOLDS_FILE = "voice_thresholds.yaml"


@dataclass(frozen=True)
class VoiceThresholds:
    """Identity thresholds of one speaker model (each measured; see the YAML's comments).

    Attributes:
        same_speaker_min_cosine: two clips at or above this cosine are taken as one speaker
            (the equal-error point on real speech).
        outlier_max_cosine: a profile sample below this cosine to the centroid of the other
            samples is flagged as likely another speaker.
        generated_min_cosine: generated speech below this cosine to the profile is ``voice_low``.
        multi_speaker_max_cosine: a clip whose windows split into two groups with centroids
            below this cosine holds two speakers.
        min_windows_per_speaker: windows each group needs for that split to count.
        min_windows_for_check: clips with fewer windows are not checked.
        min_speech_s: below this many seconds of speech a clip's embedding is unreliable.
        no_speech_s: below this a clip has no speech.
        duplicate_min_cosine: two samples at or above this are the same recording (a re-encode).
    """

    same_speaker_min_cosine: float
    outlier_max_cosine: float
    generated_min_cosine: float
    multi_speaker_max_cosine: float
    min_windows_per_speaker: int
    min_windows_for_check: int
    min_speech_s: float
    no_speech_s: float
    duplicate_min_cosine: float

    def __post_init__(self) -> None:
        for name in ("same_speaker_min_cosine", "outlier_max_cosine", "generated_min_cosine",
                     "multi_speaker_max_cosine", "duplicate_min_cosine"):
            value = getattr(self, name)
            if not -1.0 <= float(value) <= 1.0:
                raise ConfigError(f"VoiceThresholds.{name} must be a cosine in [-1, 1], got {value!r}",
                                  field=name, value=value)
        if self.min_windows_per_speaker < 1 or self.no_speech_s < 0 or self.min_speech_s < self.no_speech_s:
            raise ConfigError("VoiceThresholds: need min_windows_per_speaker >= 1 and 0 <= no_speech_s <= min_speech_s",
                              field="min_speech_s", value=self.min_speech_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VoiceThresholds:
        return from_dict(cls, dict(data), "thresholds")


def voice_thresholds_for(provenance: ModelProvenance, path: str | os.PathLike | None = None) -> VoiceThresholds:
    """Thresholds for the model of ``provenance``.

    Raises:
        ConfigError: ``thresholds_missing`` when the model is not listed; ``config_invalid`` for a bad file.
    """
    resolved = Path(path) if path is not None else config_file(THRESHOLDS_FILE)
    table = _load(str(resolved), resolved.stat().st_mtime_ns if resolved.is_file() else 0)
    entry = table.get(provenance.backend, {}).get(provenance.model_name)
    if entry is None:
        raise ConfigError(f"no voice thresholds for {provenance.backend}.{provenance.model_name} in {resolved}: "
                          "measure them on real speech and add an entry", code="thresholds_missing",
                          field="model", value=f"{provenance.backend}.{provenance.model_name}")
    return entry


@functools.lru_cache(maxsize=8)
def _load(path: str, _mtime: int) -> dict[str, dict[str, VoiceThresholds]]:
    data = read_yaml(path)
    out: dict[str, dict[str, VoiceThresholds]] = {}
    for backend, models in data.items():
        if not isinstance(models, Mapping):
            raise ConfigError(f"{path}: {backend} must map model names to thresholds", field=str(backend), value=models)
        out[str(backend)] = {str(name): from_dict(VoiceThresholds, dict(values), f"{backend}.{name}")
                             for name, values in models.items()}
    return out
