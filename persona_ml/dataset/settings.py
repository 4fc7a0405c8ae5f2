"""One YAML for dataset screening and preparation settings.

Example ``dataset.yaml`` (every key optional; unknown keys are errors)::

    screening:
      allow_near_duplicates: false
      phash_max_distance: 8
    prepare:
      resolutions: [512, 768, 1024]
      max_upscale: 1.25
      caption_dropout: 0.05
      mask: {feather: 0.5}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import load_config
from .prepare import PrepareConfig
from .screening import ScreeningConfig


@dataclass(frozen=True)
class DatasetConfig:
    """``screening`` and ``prepare`` sections (see ``ScreeningConfig`` and ``PrepareConfig``)."""

    screening: ScreeningConfig = field(default_factory=ScreeningConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)


def load_dataset_config(source: str | os.PathLike | Mapping[str, Any] | None = None,
                        overrides: Sequence[str] = ()) -> DatasetConfig:
    """Strictly load a ``DatasetConfig`` from YAML or a mapping, with ``section.key=value`` overrides.

    Raises:
        ConfigError: unknown key (with its dotted path), wrong type or invalid value.
    """
    return load_config(DatasetConfig, source if source is not None else {}, overrides)
