"""Error hierarchy and the registry of error codes.

Every error the library raises on purpose is a ``PersonaMLError``. Each carries a stable ``code``
string that the service layer maps to an HTTP status and a ``details`` dict with the offending
field and value. Every code is declared exactly once, in ``ERROR_CODES`` below, with its HTTP
status and meaning; ``http_status`` of an error comes from its code's entry. A class's default
``code`` is only a fallback: an error raised without a declared code is recorded in
``UNDECLARED_CODES_SEEN`` and logged (the test suite fails on it). Subclasses also
inherit the matching built-in exception so generic handlers still work.

The README's error table lists exactly the declared codes (a test checks both directions, and that
every code the package raises is declared).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ._json import bounded, jsonable

log = logging.getLogger(__name__)

#: a message longer than this is cut (with a note of how much was cut): an error never carries a
#: multi-megabyte echo of hostile input into logs and HTTP answers
MAX_MESSAGE_CHARS = 4000


@dataclass(frozen=True)
class ErrorCode:
    """One declared error code: what the service layer answers and what it means."""

    code: str
    http_status: int
    meaning: str


ERROR_CODES: dict[str, ErrorCode] = {}

#: codes constructed at run time that are not declared (a programming error; tests fail on it)
UNDECLARED_CODES_SEEN: list[str] = []


def _declare(http_status: int, table: dict[str, str]) -> None:
    for code, meaning in table.items():
        if code in ERROR_CODES:
            raise RuntimeError(f"error code {code!r} is declared twice")
        ERROR_CODES[code] = ErrorCode(code, http_status, meaning)


def error_code(code: str) -> ErrorCode | None:
    """The declared entry of ``code`` (``None`` if it is not declared)."""
    return ERROR_CODES.get(code)


class PersonaMLError(Exception):
    """Base class. ``code`` is stable across releases; the message is for humans."""

    code: str = "persona_ml_error"
    http_status: int = 500

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        entry = ERROR_CODES.get(self.code)
        if entry is None:
            UNDECLARED_CODES_SEEN.append(self.code)
            log.error("error code %r is not declared in persona_ml.errors.ERROR_CODES", self.code)
        else:
            self.http_status = entry.http_status
        message = str(message)
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + f"... [{len(message) - MAX_MESSAGE_CHARS} more characters cut]"
            self.args = (message,)
        self.message = message
        # bounded at the root: long strings, long lists, deep nesting and huge integers are cut, so
        # no caller can put a hostile value whole into a log line or an HTTP answer
        self.details: dict[str, Any] = {str(k): bounded(v) for k, v in details.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"code", "message", "details"}``."""
        return {"code": self.code, "message": self.message, "details": jsonable(self.details)}

    def __reduce__(self):  # keep code, details and a subclass's own state (violations) across pickling
        state = {k: v for k, v in self.__dict__.items() if k not in _BASE_STATE}
        return (_rebuild, (type(self), self.message, self.code, self.details, state))


_BASE_STATE = frozenset({"code", "http_status", "message", "details"})


def _rebuild(cls, message, code, details, state=None):
    err = cls.__new__(cls)
    PersonaMLError.__init__(err, message, code=code, **details)
    err.__dict__.update(state or {})
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
    """An image could not be accepted (``image_*`` codes)."""

    code = "image_invalid"
    http_status = 422


class FaceError(PersonaMLError, ValueError):
    """A face-level problem with an otherwise valid image (``no_face``, ``multiple_faces``,
    ``face_too_small``)."""

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


class BackendError(PersonaMLError, RuntimeError):
    """A library or model backend failed while working on valid input (a fault of ours or of a
    library, never the user's): the original exception is chained as ``__cause__``."""

    code = "backend_error"
    http_status = 500


class StorageError(PersonaMLError, OSError):
    """An artefact could not be written: the disk is full (``storage_full``), or the OS refused
    the write (``write_failed``). ``details['path']`` names the file; the previous version of the
    artefact, if any, is left intact. Also an ``OSError`` so existing handlers keep working."""

    code = "write_failed"
    http_status = 500


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
        details.setdefault("violations", [v.to_dict() if hasattr(v, "to_dict") else v for v in violations])
        super().__init__(message, **details)  # bounded there, like every error's details
        self.violations = list(violations)


class TrainingError(PersonaMLError, RuntimeError):
    """A training job failed (``training_*``, ``checkpoint_invalid``, ``out_of_memory``...)."""

    code = "training_failed"
    http_status = 500


class VideoError(PersonaMLError, ValueError):
    """A video or speech track could not be accepted, or a video job failed (``video_*``, ``speech_*``)."""

    code = "video_invalid"
    http_status = 422


class LoraValidationError(PersonaMLError, ValueError):
    """A LoRA file cannot be used with this base model (``lora_*`` codes)."""

    code = "lora_invalid"
    http_status = 422


class AudioError(PersonaMLError, ValueError):
    """An audio upload could not be accepted (``audio_*`` codes)."""

    code = "audio_invalid"
    http_status = 422


class VoiceError(PersonaMLError, ValueError):
    """A voice-level problem with otherwise valid audio, a voice profile or a generation request."""

    code = "voice_error"
    http_status = 422


class VoiceRuleError(PersonaMLError, ValueError):
    """A voice-clone request violates the platform's rules; ``violations`` lists all of them."""

    code = "voice_rules_violation"
    http_status = 422

    def __init__(self, message: str, violations: list | tuple = (), **details: Any) -> None:
        super().__init__(message, **details)
        self.violations = list(violations)
        self.details.setdefault("violations", [v.to_dict() if hasattr(v, "to_dict") else v for v in violations])


# --- the registry: every code, once -------------------------------------------------------------
# Each area keeps its codes in its own block so that additions do not collide.

# generic
_declare(400, {
    "config_invalid": "a config file or override is invalid (unknown key, wrong type, out of range)",
    "invalid_input": "an argument has the wrong type or value; details name the field",
})

_declare(500, {
    "backend_error": "a library or model backend failed on valid input (a fault of ours, not the caller's; cause chained)",
})

# images
_declare(422, {
    "image_empty": "the upload has no bytes",
    "image_truncated": "the image data is truncated or corrupt",
    "image_not_an_image": "the bytes are not an image in any known format",
    "image_format_not_allowed": "the image format is not on the allowlist",
    "image_too_large": "more pixels or bytes than the limit (read from the header before decoding)",
    "image_too_small": "a side is shorter than the minimum",
    "image_unreadable": "the image file or object cannot be read",
})

# faces and profiles
_declare(422, {
    "no_face": "no face was detected",
    "multiple_faces": "several faces of similar size: the primary face is ambiguous",
    "face_too_small": "the face is smaller than the minimum size",
    "profile_corrupt": "a saved profile cannot be read",
    "profile_format_unknown": "a saved profile has an unknown format version",
    "profile_not_found": "no profile at that path",
})
_declare(400, {
    "duplicate_reference": "two references come from the same image",
    "profile_empty": "no references to build a profile from",
})

# models, packs and backends
_declare(503, {
    "model_not_found": "model weights were not found locally (details list every path searched)",
    "model_corrupt": "a model weight file is damaged",
    "backend_unavailable": "an optional dependency is not installed",
    "provider_unavailable": "an accelerator was asked for and is not available",
})
_declare(422, {
    "manifest_invalid": "a dataset or pack manifest is malformed",
    "model_checksum_mismatch": "a model file does not match its recorded checksum",
    "model_load_failed": "a model file cannot be loaded",
    "model_manifest_invalid": "a model pack manifest is malformed",
    "model_signature_mismatch": "a model's inputs/outputs are not those of its declared role",
})
_declare(400, {
    "model_pack_ambiguous": "several model packs match; name one",
    "base_model_unknown": "no base model of that name is configured",
    "thresholds_missing": "no identity thresholds are configured for this model",
})
_declare(409, {
    "model_mismatch": "artefacts made by different models were compared or combined",
    "base_model_mismatch": "an artefact was made for another base model",
})

# rules and datasets
_declare(422, {
    "lora_rules_violation": "the LoRA request violates the platform's rules (details list every violation)",
})
_declare(400, {
    "invalid_trigger": "the trigger word is empty, too long or has separators",
    "out_dir_not_empty": "the output folder holds unrelated files",
})

# training and export
_declare(500, {
    "training_failed": "the training job failed (cause chained)",
    "training_nan_loss": "the loss became NaN or infinite",
    "checkpoint_invalid": "a checkpoint cannot be resumed from",
    "out_of_memory": "the device ran out of memory",
})
_declare(503, {
    "device_unavailable": "the requested device is not present",
})
_declare(400, {
    "export_dir_not_empty": "the export folder holds files that are not a LoRA export",
    "lora_metadata_mismatch": "the LoRA metadata disagrees with its tensors",
    "lora_target_unmatched": "a LoRA target module matches no layer of the model",
})
_declare(422, {
    "lora_module_unmappable": "a LoRA module has no equivalent in the requested file format",
    "lora_adapter_ambiguous": "the model holds several adapters; name one",
    "lora_empty": "there are no LoRA weights",
    "lora_format_unsupported": "the adapter kind or dtype cannot be stored in this format",
    "lora_keys_invalid": "LoRA keys are malformed or incomplete",
    "lora_metadata_missing": "the LoRA header lacks persona_ml metadata",
    "lora_not_found": "no LoRA file at that path",
})

# LoRA validation and generation
_declare(422, {
    "lora_format_unknown": "the LoRA keys are in no format diffusers can convert",
    "lora_file_invalid": "the LoRA file is not a readable safetensors file",
    "lora_base_mismatch": "the LoRA was made for another base model",
    "lora_base_unknown": "the LoRA does not say which base model it was made for",
    "lora_rank_too_large": "the LoRA's rank is above the generator's slot",
    "lora_shape_mismatch": "a LoRA tensor's shape does not fit its module",
    "lora_unused_keys": "keys that no module of the base model would use",
    "ip_adapter_invalid": "the IP-Adapter weights or image encoder are not usable safetensors files (pickles refused)",
})
_declare(400, {
    "base_has_adapters": "the base pipeline already holds adapters",
    "character_unknown": "no character of that id is registered",
    "character_has_no_lora": "the character has no LoRA",
    "tier_unavailable": "the character lacks what the requested tier needs",
})

# screening (issue 10)

# hostile input and faults (issue 12)
_declare(400, {
    "path_invalid": "a path cannot be used as given: over the filesystem's name limit, a folder, FIFO or device "
                    "where a file is expected, or an empty, '.' or '/' output name",
})
_declare(422, {
    "image_array_invalid": "an image array has an unsupported dtype (strings, dates, objects, complex) or values "
                           "outside the documented range",
    "dataset_path_escapes": "a prepared dataset names a file outside its folder (.., an absolute path, a symlink "
                            "leaving it)",
    "dataset_file_changed": "a prepared dataset's file no longer matches the size or sha256 its manifest recorded",
    "lora_dtype_invalid": "a LoRA tensor is not floating point",
    "lora_metadata_invalid": "the LoRA's adapter metadata has the wrong JSON type, or r/alpha are not positive numbers",
})
_declare(500, {
    "write_failed": "an artefact could not be written (permission, read-only or I/O error); details name the path; "
                    "the previous version is intact",
    "checkpoint_damaged": "a checkpoint file does not match the checksum recorded when it was written",
    "internal_error": "a fault inside persona_ml or a library it calls (a bug, never the input); -vv logs the "
                      "traceback",
})
_declare(507, {
    "storage_full": "no space left on the device (or the quota is used up) while writing; details name the path; "
                    "the previous version is intact",
})

# voice (issue 13)
_declare(422, {
    "audio_empty": "the audio upload has no bytes (or the array no samples)",
    "audio_not_audio": "the bytes are not audio in any known container (an image renamed .wav)",
    "audio_no_stream": "the container holds no audio stream (a video with no sound track)",
    "audio_format_not_allowed": "the audio container is not on the allowlist",
    "audio_truncated": "the audio is cut short or corrupt (details give the header's and the decoded duration)",
    "audio_too_long": "longer than the limit (read from the header before decoding, enforced while decoding)",
    "audio_too_short": "shorter than the minimum duration",
    "audio_too_many_channels": "more channels than the limit",
    "audio_too_large": "more bytes than the limit",
    "audio_bad_samples": "the samples hold NaN or Inf",
    "audio_unreadable": "the audio file or object cannot be read",
    "voice_rules_violation": "the voice-clone request violates the platform's rules (details list every violation)",
    "voice_generation_empty": "the speech model produced no audio to save",
})

# video (issue 14)
_declare(422, {
    "video_invalid": "the video cannot be accepted (details say why)",
    "video_empty": "the video upload has no bytes",
    "video_not_a_video": "the bytes are not a container PyAV/FFmpeg can open",
    "video_no_video_stream": "the container has no video stream",
    "video_truncated": "the video data is truncated or corrupt (no decodable frame, or fewer than announced)",
    "video_too_long": "the video is longer than the limit (read from the header before decoding)",
    "video_too_large": "more pixels per frame, frames or bytes than the limit (read before decoding)",
    "video_unreadable": "the video file or object cannot be read",
    "speech_empty": "the speech track has no bytes or no samples",
    "speech_too_long": "the speech is longer than the limit",
    "speech_silent": "the speech track is silent (nothing to lip-sync to)",
})
_declare(500, {
    "video_job_failed": "a video job failed inside a model or library (cause chained)",
})
