"""Dataset screening (which photos may train a LoRA) and preparation (crops, captions, masks).

Public names resolve lazily so ``import persona_ml.dataset`` loads no face backend.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "screen_dataset": "persona_ml.dataset.screening",
    "DatasetReport": "persona_ml.dataset.report",
    "ScreeningConfig": "persona_ml.dataset.screening",
    "ScreenedImage": "persona_ml.dataset.report",
    "Coverage": "persona_ml.dataset.report",
    "DatasetConfig": "persona_ml.dataset.settings",
    "load_dataset_config": "persona_ml.dataset.settings",
    "prepare_dataset": "persona_ml.dataset.prepare",
    "PrepareConfig": "persona_ml.dataset.prepare",
    "PrepareInput": "persona_ml.dataset.prepare",
    "PreparedResult": "persona_ml.dataset.prepare",
    "PrepareIssue": "persona_ml.dataset.prepare",
    "Captioner": "persona_ml.dataset.captions",
    "CaptionItem": "persona_ml.dataset.captions",
    "SidecarCaptioner": "persona_ml.dataset.captions",
    "TemplateCaptioner": "persona_ml.dataset.captions",
    "MaskConfig": "persona_ml.dataset.masks",
    "load_prepared": "persona_ml.dataset.manifest",
    "PreparedItem": "persona_ml.dataset.manifest",
    "PreparedDatasetInfo": "persona_ml.dataset.manifest",
    "PreparedDataset": "persona_ml.dataset.manifest",
    "count_training_images": "persona_ml.dataset.count",
    "ImageCount": "persona_ml.dataset.count",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
