"""Speech input for talking heads: the one function audio enters the video module through.

``load_speech`` decodes any audio file FFmpeg reads (wav, flac, mp3, m4a, ogg, the audio track of
a video) to float32 mono at the requested rate (PyAV's resampler), with limits checked from the
header before decoding.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
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
        VideoError: ``speech_empty``, ``speech_unreadable``, ``speech_no_audio_stream``, ``speech_too_long``,
            ``speech_silent``.
    """
    if isinstance(source, Speech):
        speech = source if source.sample_rate == sample_rate else Speech.from_array(
            _resample_linear(source.samples, source.sample_rate, sample_rate), sample_rate, source=source.source)
        _check(speech, max_seconds, require_voice)
        return speech
    import av

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise VideoError(f"speech file not found: {path}", code="speech_unreadable", field="speech", value=label)
        if path.stat().st_size > max_bytes:
            raise VideoError(f"{label}: larger than {max_bytes} bytes", code="speech_too_long", field="speech",
                             value=path.stat().st_size, limit=max_bytes)
        data = path.read_bytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), f"<{len(source)} bytes>"
    elif hasattr(source, "read"):
        data, label = source.read(max_bytes + 1), str(getattr(source, "name", "<file object>"))
    else:
        raise InputError(f"unsupported speech source type {type(source).__name__}", field="speech",
                         value=type(source).__name__)
    if not data:
        raise VideoError(f"{label}: empty file (0 bytes)", code="speech_empty", field="speech", value=label)
    if len(data) > max_bytes:
        raise VideoError(f"{label}: larger than {max_bytes} bytes", code="speech_too_long", field="speech",
                         value=len(data), limit=max_bytes)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"{label}: not an audio file FFmpeg can open ({exc})", code="speech_unreadable",
                         field="speech", value=label) from exc
    chunks: list[np.ndarray] = []
    try:
        if not container.streams.audio:
            raise VideoError(f"{label}: no audio stream", code="speech_no_audio_stream", field="speech", value=label)
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
            if seconds > max_seconds:
                raise VideoError(f"{label}: {seconds:.1f} s exceeds the {max_seconds:g} s limit", code="speech_too_long",
                                 field="speech", value=round(seconds, 3), limit=max_seconds)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1).astype(np.float32)
                    chunks.append(chunk)
                    total += len(chunk)
                if total > (max_seconds + 1.0) * sample_rate:
                    raise VideoError(f"{label}: longer than the {max_seconds:g} s limit", code="speech_too_long",
                                     field="speech", value=round(total / sample_rate, 3), limit=max_seconds)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.float32))
        except av.error.FFmpegError as exc:
            if not chunks:
                raise VideoError(f"{label}: the audio cannot be decoded ({exc})", code="speech_unreadable",
                                 field="speech", value=label) from exc
    finally:
        container.close()
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise VideoError(f"{label}: no audio samples", code="speech_empty", field="speech", value=label)
    speech = Speech(np.clip(samples, -1.0, 1.0), sample_rate, hashlib.sha256(data).hexdigest(), label)
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
