"""Speech input for talking heads: the one function audio enters the video module through.

``load_speech`` decodes speech through ``persona_ml.audio.load_audio`` (the library's one audio
intake: wav, flac, mp3, m4a, ogg, webm; limits from the header before decoding; ``audio_*`` codes)
to float32 mono, and adds what a talking head needs: a length cap and a refusal of silence.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import IO, Union

import numpy as np

from ..errors import InputError, VideoError

SpeechSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], "Speech"]

#: below this RMS (about -60 dBFS) a track is treated as silence
SILENCE_RMS = 1e-3


@dataclass(frozen=True, eq=False)
class Speech:
    """A mono speech track.

    Attributes:
        samples: float32 mono samples in ``[-1, 1]``.
        sample_rate: samples per second.
        sha256: digest of the encoded bytes (of the samples for in-memory input).
        source: path or description.
    """

    samples: np.ndarray
    sample_rate: int
    sha256: str
    source: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / float(self.sample_rate)

    @classmethod
    def from_array(cls, samples: np.ndarray, sample_rate: int, *, source: str = "<array>") -> Speech:
        """Wrap in-memory mono samples (e.g. the voice module's generated speech)."""
        arr = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise InputError(f"sample_rate must be a positive integer, got {sample_rate!r}", field="sample_rate",
                             value=sample_rate)
        if arr.size == 0:
            raise VideoError(f"{source}: no samples", code="speech_empty", field="speech", value=source)
        if not np.isfinite(arr).all():
            raise InputError(f"{source}: samples contain NaN or inf", field="speech", value="non-finite")
        digest = hashlib.sha256(str(sample_rate).encode() + arr.tobytes()).hexdigest()
        return cls(np.clip(arr, -1.0, 1.0), sample_rate, digest, source)


def load_speech(source: SpeechSource, *, sample_rate: int = 16000, max_seconds: float = 120.0,
                max_bytes: int = 200 * 1024 * 1024, require_voice: bool = True) -> Speech:
    """Decode a speech track to float32 mono at ``sample_rate``.

    Args:
        source: path, bytes, binary file object, or a ``Speech`` (resampled if its rate differs).
        sample_rate: output rate.
        max_seconds: longest accepted track (checked from the header, then while decoding).
        max_bytes: largest accepted file.
        require_voice: refuse a silent track (``speech_silent``): a talking head needs speech.

    Raises:
        AudioError: the ``audio_*`` codes of ``persona_ml.audio.load_audio`` (empty, not audio, no stream,
            truncated, too long, too large...).
        VideoError: ``speech_empty`` (no samples), ``speech_too_long``, ``speech_silent``.
    """
    if isinstance(source, Speech):
        speech = source if source.sample_rate == sample_rate else Speech.from_array(
            _resample_linear(source.samples, source.sample_rate, sample_rate), sample_rate, source=source.source)
        _check(speech, max_seconds, require_voice)
        return speech
    from ..audio import AudioLimits, load_audio

    if isinstance(source, np.ndarray):
        raise InputError("wrap in-memory samples with Speech.from_array(samples, sample_rate)", field="speech",
                         value="ndarray")
    loaded = load_audio(source, sample_rate=sample_rate,
                        limits=AudioLimits(max_duration_s=max_seconds, min_duration_s=0.1, max_bytes=max_bytes))
    samples, label = loaded.samples, loaded.source
    if samples.size == 0:
        raise VideoError(f"{label}: no audio samples", code="speech_empty", field="speech", value=label)
    speech = Speech(np.clip(samples, -1.0, 1.0), sample_rate, loaded.sha256, label)
    _check(speech, max_seconds, require_voice)
    return speech


def _check(speech: Speech, max_seconds: float, require_voice: bool) -> None:
    if speech.duration_s > max_seconds + 1e-6:
        raise VideoError(f"{speech.source}: {speech.duration_s:.1f} s exceeds the {max_seconds:g} s limit",
                         code="speech_too_long", field="speech", value=round(speech.duration_s, 3), limit=max_seconds)
    if require_voice:
        rms = float(np.sqrt(np.mean(np.square(speech.samples, dtype=np.float64))))
        if rms < SILENCE_RMS:
            raise VideoError(f"{speech.source}: the track is silent (RMS {rms:.2e}); a talking head needs speech",
                             code="speech_silent", field="speech", value=rms, limit=SILENCE_RMS)


def _resample_linear(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    n = int(round(len(x) * sr_out / sr_in))
    return np.interp(np.arange(n) * (sr_in / sr_out), np.arange(len(x)), x).astype(np.float32)
