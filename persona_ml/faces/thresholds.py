"""Per-backend identity thresholds read from ``configs/face_thresholds.yaml``.

Cosine scales differ between models (dlib's ResNet puts two photos of one person near 0.9,
ArcFace near 0.5), so every threshold is looked up by the provenance of the model that made
the embeddings: ``thresholds_for(provenance)``.

Example:
    >>> from persona_ml.faces.thresholds import thresholds_for
    >>> t = thresholds_for(embedder.provenance)        # doctest: +SKIP
    >>> t.same_person_min_cosine                       # doctest: +SKIP
    0.86
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import config_file, from_dict, read_yaml
from ..errors import ConfigError
from .types import ModelProvenance

logger = logging.getLogger(__name__)

THRESHOLDS_FILE = "face_thresholds.yaml"
GENERIC_KEY = "generic"


@dataclass(frozen=True)
class FaceThresholds:
    """Identity and quality thresholds for one embedding model.

    Attributes:
        same_person_min_cosine: two faces at or above this cosine are taken as one person.
        outlier_max_cosine: a profile reference whose cosine to the centroid of the other
            references is below this is flagged as likely another person.
        near_duplicate_min_cosine: two faces at or above this are (near-)copies of one photo.
        min_face_size_px: the smallest face side (pixels) accepted for a reference photo.
        min_sharpness: the lowest Laplacian variance (``quality.laplacian_variance``) of a usable face.
    """

    same_person_min_cosine: float
    outlier_max_cosine: float
    near_duplicate_min_cosine: float
    min_face_size_px: int
    min_sharpness: float

    def __post_init__(self) -> None:
        for name in ("same_person_min_cosine", "outlier_max_cosine", "near_duplicate_min_cosine"):
            value = getattr(self, name)
            if not -1.0 <= float(value) <= 1.0:
                raise ConfigError(f"FaceThresholds.{name} must be a cosine in [-1, 1], got {value!r}",
                                  field=name, value=value)
        # outlier_max_cosine is compared with a cosine to a centroid, which runs higher than
        # pairwise cosines, so it may exceed same_person_min_cosine; both stay below duplicates.
        for name in ("same_person_min_cosine", "outlier_max_cosine"):
            if getattr(self, name) > self.near_duplicate_min_cosine:
                raise ConfigError(f"FaceThresholds.{name} ({getattr(self, name)}) must not exceed "
                                  f"near_duplicate_min_cosine ({self.near_duplicate_min_cosine})",
                                  field=name, value=getattr(self, name))
        if self.min_face_size_px < 1:
            raise ConfigError(f"FaceThresholds.min_face_size_px must be >= 1, got {self.min_face_size_px!r}",
                              field="min_face_size_px", value=self.min_face_size_px)
        if self.min_sharpness < 0:
            raise ConfigError(f"FaceThresholds.min_sharpness must be >= 0, got {self.min_sharpness!r}",
                              field="min_sharpness", value=self.min_sharpness)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaceThresholds:
        """Strict: unknown or missing keys raise ``ConfigError``."""
        return from_dict(cls, dict(data), "thresholds")


def load_thresholds_table(path: str | os.PathLike | None = None) -> dict[str, dict[str, FaceThresholds]]:
    """Read the whole table: ``{backend: {model_name: FaceThresholds}}``.

    Args:
        path: YAML file; defaults to ``configs/face_thresholds.yaml``.

    Raises:
        ConfigError: missing file, unknown key (with its dotted path) or a bad value.
    """
    path = Path(path) if path is not None else config_file(THRESHOLDS_FILE)
    data = read_yaml(path)
    table: dict[str, dict[str, FaceThresholds]] = {}
    for backend, models in data.items():
        if not isinstance(models, Mapping):
            raise ConfigError(f"{path}: section {backend!r} must map model names to thresholds",
                              field=str(backend), value=models)
        table[str(backend)] = {str(name): from_dict(FaceThresholds, values, f"{backend}.{name}")
                               for name, values in models.items()}
    return table


_GENERIC_WARNED: set[tuple[str, str]] = set()
_TABLE_CACHE: dict[tuple[str, float], dict[str, dict[str, FaceThresholds]]] = {}


def thresholds_for(provenance: ModelProvenance, path: str | os.PathLike | None = None) -> FaceThresholds:
    """Thresholds for the model that made ``provenance``'s embeddings.

    Looks up ``<backend>.<model_name>``; a model name containing a known key (``buffalo_l`` in
    ``buffalo_l_v2``) matches it; otherwise the backend's ``generic`` entry.

    Args:
        provenance: the embedding model (``FaceEmbedder.provenance`` / ``FaceObservation.provenance``).
        path: alternative YAML table (tests); defaults to ``configs/face_thresholds.yaml``.

    Returns:
        FaceThresholds for that model.

    Raises:
        ConfigError: code ``thresholds_missing`` when the backend has no section or no usable entry.
    """
    file = Path(path) if path is not None else config_file(THRESHOLDS_FILE)
    try:
        key = (str(file.resolve()), file.stat().st_mtime)
    except OSError:
        key = (str(file), 0.0)
    table = _TABLE_CACHE.get(key)
    if table is None:
        table = _TABLE_CACHE[key] = load_thresholds_table(file)
    models = table.get(provenance.backend)
    if not models:
        raise ConfigError(f"{file}: no face thresholds for backend {provenance.backend!r} "
                          f"(sections: {', '.join(sorted(table))})", code="thresholds_missing",
                          field="backend", value=provenance.backend)
    name = provenance.model_name
    if name in models:
        return models[name]
    lowered = name.lower()
    for known in sorted(models, key=len, reverse=True):
        if known != GENERIC_KEY and known.lower() in lowered:
            return models[known]
    if GENERIC_KEY in models:
        if (provenance.backend, name) not in _GENERIC_WARNED:
            _GENERIC_WARNED.add((provenance.backend, name))
            logger.warning("no face thresholds measured for %s/%s in %s; using the %r %s entry: re-measure "
                           "them for this model before trusting identity decisions", provenance.backend, name,
                           file, GENERIC_KEY, provenance.backend)
        return models[GENERIC_KEY]
    raise ConfigError(f"{file}: no face thresholds for {provenance.backend}/{name} and no "
                      f"'{GENERIC_KEY}' entry (known: {', '.join(sorted(models))})", code="thresholds_missing",
                      field="model_name", value=name)
