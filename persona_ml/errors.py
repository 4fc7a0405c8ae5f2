"""Error hierarchy: every error the library raises on purpose is a ``PersonaMLError``.

Each error carries a stable ``code`` string that the service layer maps to an HTTP status
(``http_status`` is the suggested mapping) and a ``details`` dict with the offending field and
value. Subclasses also inherit the matching built-in exception so generic handlers still work.
"""

from __future__ import annotations

from typing import Any

from ._json import jsonable


class PersonaMLError(Exception):
    """Base class. ``code`` is stable across releases; the message is for humans."""

    code: str = "persona_ml_error"
    http_status: int = 500

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": jsonable(self.details)}

    def __reduce__(self):  # keep code/details across multiprocessing pickling
        return (_rebuild, (type(self), self.message, self.code, self.details))


def _rebuild(cls, message, code, details):
    err = cls.__new__(cls)
    PersonaMLError.__init__(err, message, code=code, **details)
    return err



class ConfigError(PersonaMLError, ValueError):
    """A config file or override is invalid (unknown key, wrong type, out of range)."""

    code = "config_invalid"
    http_status = 400


class InputError(PersonaMLError, ValueError):
    """A caller passed an invalid argument (wrong type, out of range, missing file)."""

    code = "invalid_input"
    http_status = 400


class ImageError(PersonaMLError, ValueError):
    """An image could not be accepted. Codes: ``image_empty``, ``image_truncated``,
    ``image_not_an_image``, ``image_format_not_allowed``, ``image_too_large``,
    ``image_too_small``, ``image_unreadable``."""

    code = "image_invalid"
    http_status = 422


class FaceError(PersonaMLError, ValueError):
    """A face-level problem with an otherwise valid image. Codes: ``no_face``,
    ``multiple_faces``, ``face_too_small``."""

    code = "face_error"
    http_status = 422


class ModelNotFoundError(PersonaMLError, FileNotFoundError):
    """Model weights were not found locally; ``details['searched']`` lists every path tried."""

    code = "model_not_found"
    http_status = 503


class BackendUnavailableError(PersonaMLError, ImportError):
    """An optional dependency (dlib, insightface, onnxruntime, bitsandbytes) is not installed,
    or a requested accelerator provider is not available."""

    code = "backend_unavailable"
    http_status = 503


class ModelMismatchError(PersonaMLError, ValueError):
    """Two artefacts made by different models were compared or combined."""

    code = "model_mismatch"
    http_status = 409


class ArtifactError(PersonaMLError, ValueError):
    """A saved artefact (profile, checkpoint, LoRA, manifest) is corrupt or of an unknown format."""

    code = "artifact_invalid"
    http_status = 422


class LoraRuleError(PersonaMLError, ValueError):
    """A LoRA training request violates the platform's rules; ``violations`` lists all of them."""

    code = "lora_rules_violation"
    http_status = 422

    def __init__(self, message: str, violations: list | tuple = (), **details: Any) -> None:
        super().__init__(message, **details)
        self.violations = list(violations)
        self.details.setdefault("violations", [getattr(v, "to_dict", lambda: v)() for v in violations])


class TrainingError(PersonaMLError, RuntimeError):
    """A training job failed. Codes include ``training_nan_loss``, ``training_cancelled``,
    ``checkpoint_invalid``."""

    code = "training_failed"
    http_status = 500


class LoraValidationError(PersonaMLError, ValueError):
    """A LoRA file cannot be used with this base model. Codes include ``lora_format_unknown``,
    ``lora_base_mismatch``, ``lora_rank_too_large``, ``lora_unused_keys``."""

    code = "lora_invalid"
    http_status = 422
