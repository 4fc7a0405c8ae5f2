"""LoRA files shared by training and inference: key formats (diffusers/PEFT, kohya/BFL),
persona_ml metadata, export and validation against a base model.

Public names resolve lazily so ``import persona_ml.lora`` loads neither torch nor diffusers.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "ModuleLora": "persona_ml.lora.formats",
    "DEFAULT_LORA_TARGETS": "persona_ml.lora.formats",
    "lora_target_modules": "persona_ml.lora.formats",
    "export_lora": "persona_ml.lora.export",
    "ExportedLora": "persona_ml.lora.export",
    "LoraMetadata": "persona_ml.lora.export",
    "read_lora_metadata": "persona_ml.lora.export",
    "read_lora_file": "persona_ml.lora.export",
    "ValidatedLora": "persona_ml.lora.validation",
    "validate_lora": "persona_ml.lora.validation",
    "linear_modules": "persona_ml.lora.validation",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
