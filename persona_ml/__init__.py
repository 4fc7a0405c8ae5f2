"""persona_ml: the ML behind the Characters API.

Public API (see README): image intake, face embeddings and profiles, LoRA training rules,
dataset screening and preparation, Flux LoRA training, character generation and evaluation.
Importing this package sets no environment variables, seeds nothing and configures no logging;
heavy modules (torch, diffusers) load only when their functions are first used.
"""

from __future__ import annotations

from ._lazy import lazy_getattr

__version__ = "0.1.0"

from .errors import (
    ArtifactError,
    BackendUnavailableError,
    ConfigError,
    FaceError,
    ImageError,
    InputError,
    LoraRuleError,
    LoraValidationError,
    ModelMismatchError,
    ModelNotFoundError,
    PersonaMLError,
    TrainingError,
)
from .images import ImageLimits, LoadedImage, load_image

# name -> module that defines it; resolved on first access so `import persona_ml` stays light.
_LAZY = {
    "FaceEmbedder": "persona_ml.faces.embedder",
    "FaceObservation": "persona_ml.faces.types",
    "ModelProvenance": "persona_ml.faces.types",
    "FaceProfile": "persona_ml.faces.profile",
    "embed_reference": "persona_ml.faces.api",
    "build_profile": "persona_ml.faces.api",
    "load_profile": "persona_ml.faces.api",
    "check_lora_request": "persona_ml.rules",
    "enforce_lora_request": "persona_ml.rules",
    "LoraRequest": "persona_ml.rules",
    "screen_dataset": "persona_ml.dataset",
    "prepare_dataset": "persona_ml.dataset",
    "DatasetReport": "persona_ml.dataset",
    "TrainingJob": "persona_ml.training",
    "train_lora": "persona_ml.training",
    "CharacterGenerator": "persona_ml.inference",
    "evaluate_lora": "persona_ml.eval",
}

__all__ = [
    "__version__", "PersonaMLError", "ConfigError", "InputError", "ImageError", "FaceError",
    "ModelNotFoundError", "BackendUnavailableError", "ModelMismatchError", "ArtifactError",
    "LoraRuleError", "TrainingError", "LoraValidationError", "ImageLimits", "LoadedImage",
    "load_image", *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY)
