"""Flux LoRA training: presets, caches, resumable checkpoints, the job lifecycle and export.

Public names resolve lazily so ``import persona_ml.training`` loads neither torch nor diffusers.

Example:
    >>> from persona_ml.training import train_lora
    >>> result = train_lora("tiny-cpu", "prepared/", "runs/demo")   # doctest: +SKIP
    >>> result.status.value, result.lora_path                        # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "TrainingJob": "persona_ml.training.job",
    "train_lora": "persona_ml.training.job",
    "TrainConfig": "persona_ml.training.config",
    "load_train_config": "persona_ml.training.config",
    "write_resolved": "persona_ml.training.config",
    "JobStatus": "persona_ml.training.types",
    "ProgressEvent": "persona_ml.training.types",
    "TrainResult": "persona_ml.training.types",
    "CheckpointRecord": "persona_ml.training.types",
    "api_status": "persona_ml.training.types",
    "IdentityScore": "persona_ml.training.samples",
    "SampleScore": "persona_ml.training.samples",
    "load_checkpoint": "persona_ml.training.checkpoint",
    "latest_checkpoint": "persona_ml.training.checkpoint",
    "export_lora": "persona_ml.lora.export",
    "LoraMetadata": "persona_ml.lora.export",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
