"""The one way audio enters the library.

``load_audio`` accepts a path, bytes, a binary file object or a numpy array and returns a
``LoadedAudio``: mono float32 samples at the rate asked for, the sha256 of the original bytes,
what the container said about itself, and *measured* warnings (clipping, silence, low bandwidth,
channels that cancel on mix-down). Every refusal is an ``AudioError`` with a stable code.

Decoding goes through PyAV, whose wheel bundles FFmpeg (WAV, FLAC, MP3, Ogg Vorbis/Opus, M4A/AAC,
WebM/Opus from browser recorders): soundfile lacks AAC and WebM, and the PyPI torchaudio does not
import beside the pinned CPU torch. Limits are checked from the container header before a sample
is decoded (a 1.5 MB FLAC of 3 h of silence decodes to 4 GB of floats), and again while decoding,
so a header that lies (or says nothing, as live WebM recordings do) cannot make us decode more
than the limit.

Example:
    >>> from persona_ml.audio import load_audio
    >>> clip = load_audio("sample.m4a", sample_rate=16000)      # doctest: +SKIP
    >>> clip.samples.shape, clip.duration_s, clip.warning_codes  # doctest: +SKIP
    ((78848,), 4.928, ('clipping',))
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Union

import numpy as np

from .errors import AudioError, BackendUnavailableError, InputError

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], np.ndarray, "LoadedAudio"]

#: our names of the containers we can tell apart (FFmpeg demuxer names map onto these)
DEFAULT_ALLOWED_FORMATS = ("wav", "flac", "mp3", "ogg", "m4a", "mp4", "webm")
#: every container name ``LoadedAudio.format`` can hold (besides "array" for in-memory input)
KNOWN_FORMATS = DEFAULT_ALLOWED_FORMATS + ("mov", "mkv", "aac", "aiff", "caf", "w64")
#: measured warning codes (``LoadedAudio.warnings[i]["code"]``)
WARNING_CODES = ("clipping", "silence", "low_bandwidth", "channels_cancel")

_FFMPEG_AUDIO_FORMATS = {
    "wav": "wav", "flac": "flac", "mp3": "mp3", "ogg": "ogg", "aac": "aac", "aiff": "aiff",
    "caf": "caf", "w64": "w64", "mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "webm",
}
# leading bytes of the containers above: a file that starts like one but does not open is
# truncated or corrupt, anything else is not audio at all
_MAGIC = ((b"RIFF", "wav"), (b"fLaC", "flac"), (b"ID3", "mp3"), (b"OggS", "ogg"), (b"\x1a\x45\xdf\xa3", "webm"),
          (b"FORM", "aiff"), (b"caff", "caf"), (b"riff", "w64"))
_MIN_RATE, _MAX_RATE = 4000, 384000


@dataclass(frozen=True)
class AudioLimits:
    """Acceptance limits for incoming audio, checked from the container before decoding.

    Args:
        max_duration_s: longest clip accepted (header duration, then enforced while decoding).
        min_duration_s: shortest clip accepted (decoded duration).
        max_channels: most channels accepted (a 32-channel file is not a voice sample).
        max_bytes: encoded size above which the input is refused without parsing.
        allowed_formats: container names from ``KNOWN_FORMATS``.
    """

    max_duration_s: float = 600.0
    min_duration_s: float = 0.5
    max_channels: int = 8
    max_bytes: int = 256 * 1024 * 1024
    allowed_formats: tuple[str, ...] = DEFAULT_ALLOWED_FORMATS

    def __post_init__(self) -> None:
        for name in ("max_duration_s", "min_duration_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise AudioError(f"AudioLimits.{name} must be a non-negative number of seconds, got {value!r}",
                                 code="invalid_input", field=name, value=value)
        if self.max_duration_s <= 0 or self.min_duration_s > self.max_duration_s:
            raise AudioError(f"AudioLimits: need 0 <= min_duration_s <= max_duration_s and max_duration_s > 0, got "
                             f"{self.min_duration_s!r} and {self.max_duration_s!r}", code="invalid_input",
                             field="min_duration_s", value=self.min_duration_s, limit=self.max_duration_s)
        for name in ("max_channels", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise AudioError(f"AudioLimits.{name} must be a positive integer, got {value!r}",
                                 code="invalid_input", field=name, value=value)
        formats = self.allowed_formats
        if (isinstance(formats, (str, bytes)) or not formats
                or not all(isinstance(f, str) and f.lower() in KNOWN_FORMATS for f in formats)):
            # a bare "wav" would be read as the formats "w", "a", "v" and refuse every file
            raise AudioError(f"AudioLimits.allowed_formats must be a non-empty sequence of names from "
                             f"{', '.join(KNOWN_FORMATS)}, got {formats!r}", code="invalid_input",
                             field="allowed_formats", value=repr(formats))
        object.__setattr__(self, "allowed_formats", tuple(f.lower() for f in formats))


@dataclass(frozen=True)
class AudioChecks:
    """Thresholds of the measured warnings (none of them refuses a clip).

    Args:
        clip_level: absolute sample value counted as clipped (on the decoded samples, before
            resampling and mix-down).
        clip_fraction: share of clipped samples from which ``clipping`` is reported.
        silence_dbfs: a clip whose loud frames (95th percentile of 20 ms frame levels) stay
            below this is reported as ``silence``.
        min_bandwidth_hz: ``low_bandwidth`` below this effective bandwidth (8 kHz telephone audio
            carries at most 4 kHz; wideband speech 7-8 kHz).
        bandwidth_floor_db: the effective bandwidth is the highest frequency at which the loud
            frames' long-term spectrum is within this many dB of its peak.
        cancel_db: ``channels_cancel`` when the mix-down is this many dB (or more) below the
            channels' own level (one channel phase-inverted).
    """

    clip_level: float = 0.999
    clip_fraction: float = 0.001
    silence_dbfs: float = -50.0
    min_bandwidth_hz: float = 5500.0
    bandwidth_floor_db: float = 60.0
    cancel_db: float = -10.0


@dataclass(frozen=True)
class AudioStats:
    """Measurements of a loaded clip (the figures its warnings are made from).

    Attributes:
        peak: largest absolute decoded sample.
        rms_dbfs: level of the whole mono clip.
        active_dbfs: level of its loud frames (95th percentile of 20 ms frame levels).
        clipped_fraction: share of decoded samples at or above ``AudioChecks.clip_level``.
        bandwidth_hz: effective bandwidth (``None`` when the rate cannot show it).
        mixdown_db: mono level relative to the channels' mean level (``None`` for mono).
    """

    peak: float
    rms_dbfs: float
    active_dbfs: float
    clipped_fraction: float
    bandwidth_hz: float | None
    mixdown_db: float | None


@dataclass(frozen=True, eq=False)
class LoadedAudio:
    """Decoded mono audio at the requested rate.

    Attributes:
        samples: float32, mono, shape ``(n,)``, in ``[-1, 1]``.
        sample_rate: the rate asked for (resampled).
        sha256: hex digest of the original bytes (arrays: of their dtype, shape, rate and data).
        format: container, one of ``KNOWN_FORMATS`` (``"array"`` for numpy input).
        codec: FFmpeg codec name (``pcm_s16le``, ``flac``, ``opus``, ``aac``...).
        source: path or a label such as ``"<bytes>"``.
        original_sample_rate: the stream's own rate.
        original_channels: the stream's own channel count (mixed down to mono here).
        warnings: measured warnings, each ``{"code", "message", ...values}``.
        header_duration_s: what the container said before decoding (``None``: it did not say).
        stats: the measurements behind the warnings.
    """

    samples: np.ndarray
    sample_rate: int
    sha256: str
    format: str
    codec: str
    source: str
    original_sample_rate: int
    original_channels: int
    warnings: tuple[dict, ...] = ()
    header_duration_s: float | None = None
    stats: AudioStats | None = None
    extra: dict = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return float(len(self.samples)) / float(self.sample_rate)

    @property
    def warning_codes(self) -> tuple[str, ...]:
        return tuple(w["code"] for w in self.warnings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no samples)."""
        from ._json import jsonable

        out = {"source": self.source, "sha256": self.sha256, "format": self.format, "codec": self.codec,
               "duration_s": round(self.duration_s, 4), "sample_rate": self.sample_rate,
               "original_sample_rate": self.original_sample_rate, "original_channels": self.original_channels,
               "header_duration_s": self.header_duration_s, "warnings": [dict(w) for w in self.warnings]}
        if self.stats is not None:
            out["stats"] = {k: getattr(self.stats, k) for k in self.stats.__dataclass_fields__}
        return jsonable(out)


def load_audio(source: AudioSource, *, sample_rate: int = 16000, limits: AudioLimits | None = None,
               source_sample_rate: int | None = None, name: str | None = None,
               checks: AudioChecks | None = None) -> LoadedAudio:
    """Decode ``source`` into mono float32 at ``sample_rate``.

    Args:
        source: path, bytes, binary file object, numpy array or a ``LoadedAudio`` (resampled
            if its rate differs). Arrays are ``(n,)``, ``(n, channels)`` or ``(channels, n)``,
            float in [-1, 1] or integer PCM, and need ``source_sample_rate``.
        sample_rate: the rate to return (the model's rate: 16000 for speaker embedders).
        limits: acceptance limits; defaults to ``AudioLimits()`` (0.5 s to 10 min, 8 channels).
        source_sample_rate: the rate of an array ``source``.
        name: label used in messages instead of the path.
        checks: thresholds of the measured warnings.

    Returns:
        LoadedAudio with samples in [-1, 1] and measured ``warnings``.

    Raises:
        AudioError: codes ``audio_empty``, ``audio_not_audio``, ``audio_no_stream``,
            ``audio_format_not_allowed``, ``audio_truncated``, ``audio_too_long``,
            ``audio_too_short``, ``audio_too_many_channels``, ``audio_too_large``,
            ``audio_bad_samples`` (NaN/Inf), ``audio_unreadable``; ``invalid_input`` for bad
            arguments.
        BackendUnavailableError: PyAV is not installed (``pip install persona-ml[voice]``).
    """
    rate = _check_rate(sample_rate, "sample_rate")
    limits = limits or AudioLimits()
    checks = checks or AudioChecks()
    if isinstance(source, LoadedAudio):
        if source.sample_rate == rate:
            return source
        samples = _resample_mono(source.samples, source.sample_rate, rate)
        return replace(source, samples=samples, sample_rate=rate)
    if isinstance(source, np.ndarray):
        return _from_array(source, rate, limits, checks, source_sample_rate, name or "<array>")
    if source_sample_rate is not None:
        raise AudioError("source_sample_rate is only for numpy arrays (files carry their own rate)",
                         code="invalid_input", field="source_sample_rate", value=source_sample_rate)
    data, label = _read_bytes(source, limits, name)
    return _decode(data, label, rate, limits, checks)


# --- reading -----------------------------------------------------------------------------------


def _check_rate(value: Any, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not _MIN_RATE <= int(value) <= _MAX_RATE:
        raise AudioError(f"{field_name} must be an integer number of Hz in [{_MIN_RATE}, {_MAX_RATE}], got {value!r}",
                         code="invalid_input", field=field_name, value=value)
    return int(value)


def _read_bytes(source, limits: AudioLimits, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        from ._files import FileProblem, path_text, read_regular_file

        try:
            text = path_text(source)
        except (TypeError, UnicodeError) as exc:
            raise AudioError(f"not a usable audio path: {exc}", code="invalid_input", field="audio",
                             value=repr(source)) from None
        label = name or text
        try:  # a folder, FIFO or device is refused before anything is opened; never blocks, never over-reads
            return read_regular_file(text, max_bytes=limits.max_bytes, label=label), label
        except FileProblem as exc:
            if exc.reason == "too_large":
                raise AudioError(f"{label}: {exc.size} bytes exceeds the {limits.max_bytes}-byte limit"
                                 if exc.size is not None else exc.message, code="audio_too_large", field="audio",
                                 value=exc.size, limit=limits.max_bytes) from None
            if exc.reason in ("not_a_file", "name_too_long"):
                raise AudioError(exc.message, code="path_invalid", field="audio", value=text, **exc.details()) from None
            if exc.reason == "not_found":
                raise AudioError(f"audio file not found: {exc.path}", code="audio_unreadable", field="audio",
                                 value=text, **exc.details()) from None
            raise AudioError(f"cannot read audio file {exc.message}", code="audio_unreadable", field="audio",
                             value=text, **exc.details()) from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = name or f"<{len(data)} bytes>"
    elif hasattr(source, "read"):
        label = str(name or getattr(source, "name", None) or "<file object>")
        try:
            data = source.read(limits.max_bytes + 1)
        except (OSError, ValueError) as exc:  # a closed file, a broken upload stream
            raise AudioError(f"{label}: cannot read: {exc}", code="audio_unreadable",
                             field="audio", value=type(source).__name__) from exc
        if isinstance(data, str):
            raise AudioError("file object must be opened in binary mode", code="invalid_input",
                             field="audio", value=type(source).__name__)
        data = bytes(data or b"")
    else:
        raise AudioError(f"unsupported audio source type {type(source).__name__}", code="invalid_input",
                         field="audio", value=type(source).__name__)
    if len(data) > limits.max_bytes:
        raise AudioError(f"{label}: more than {limits.max_bytes} bytes", code="audio_too_large",
                         field="audio", value=len(data), limit=limits.max_bytes)
    return data, label


def _import_av():
    try:
        import av
    except ImportError as exc:
        raise BackendUnavailableError("audio decoding needs PyAV: pip install 'persona-ml[voice]'",
                                      code="backend_unavailable", backend="av") from exc
    return av


def _sniff(data: bytes) -> str | None:
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return "mp4"
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:  # MPEG audio / ADTS frame sync
        return "mp3" if data[1] & 0x06 else "aac"
    return None


def _our_format(ffmpeg_name: str, container, data: bytes) -> str | None:
    fmt = _FFMPEG_AUDIO_FORMATS.get(ffmpeg_name)
    if fmt == "mp4":
        brand = str(container.metadata.get("major_brand", "")).strip().lower()
        if brand.startswith("m4a") or brand.startswith("m4b"):
            return "m4a"
        if brand == "qt":
            return "mov"
    if fmt == "webm":
        head = data[:64]
        return "webm" if b"webm" in head else "mkv"
    return fmt


def _wav_declared_seconds(data: bytes) -> float | None:
    """Seconds the WAV header's ``data`` chunk declares (FFmpeg shortens its own duration to the
    bytes present, so a cut WAV would otherwise pass as a short one). ``None`` for streamed WAVs
    whose sizes are placeholders."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, None
    while pos + 8 <= len(data):
        chunk_id = data[pos:pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4:pos + 8])
        if chunk_id == b"fmt " and pos + 16 <= len(data):
            (byte_rate,) = struct.unpack("<I", data[pos + 16:pos + 20]) if pos + 20 <= len(data) else (None,)
        if chunk_id == b"data":
            if not byte_rate or size in (0, 0xFFFFFFFF):
                return None
            return size / float(byte_rate)
        pos += 8 + size + (size & 1)
    return None


def _decode(data: bytes, label: str, rate: int, limits: AudioLimits, checks: AudioChecks) -> LoadedAudio:
    if not data:
        raise AudioError(f"{label}: empty file (0 bytes)", code="audio_empty", field="audio", value=label)
    av = _import_av()
    digest = hashlib.sha256(data).hexdigest()
    sniffed = _sniff(data)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as exc:
        if sniffed is not None:
            raise AudioError(f"{label}: looks like {sniffed} but its container cannot be read (truncated or "
                             f"corrupt): {exc}", code="audio_truncated", field="audio", value=label,
                             format=sniffed) from exc
        raise AudioError(f"{label}: not a recognised audio file ({len(data)} bytes)", code="audio_not_audio",
                         field="audio", value=label) from exc
    try:
        return _decode_container(container, data, digest, sniffed, label, rate, limits, checks)
    finally:
        container.close()


def _decode_container(container, data, digest, sniffed, label, rate, limits, checks) -> LoadedAudio:
    av = _import_av()
    ffmpeg_name = container.format.name
    fmt = _our_format(ffmpeg_name, container, data)
    if not container.streams.audio:
        if fmt is None and sniffed is None:
            raise AudioError(f"{label}: not audio (FFmpeg reads it as {ffmpeg_name!r} with "
                             f"{[s.type for s in container.streams] or 'no'} streams)", code="audio_not_audio",
                             field="audio", value=label, detected=ffmpeg_name)
        raise AudioError(f"{label}: the {fmt or sniffed} container has no audio stream "
                         f"(streams: {[s.type for s in container.streams]})", code="audio_no_stream",
                         field="audio", value=label, format=fmt or sniffed)
    if fmt is None or fmt not in limits.allowed_formats:
        raise AudioError(f"{label}: format {fmt or ffmpeg_name} is not allowed (allowed: "
                         f"{', '.join(limits.allowed_formats)})", code="audio_format_not_allowed",
                         field="audio", value=fmt or ffmpeg_name, allowed=list(limits.allowed_formats))
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    codec = ctx.name
    src_rate = int(ctx.sample_rate or 0)
    channels = int(ctx.channels or 0)
    if src_rate <= 0 or channels <= 0:
        raise AudioError(f"{label}: the audio stream declares {src_rate} Hz and {channels} channels",
                         code="audio_truncated", field="audio", value=label, format=fmt)
    if channels > limits.max_channels:
        raise AudioError(f"{label}: {channels} channels exceeds the {limits.max_channels}-channel limit",
                         code="audio_too_many_channels", field="audio", value=channels, limit=limits.max_channels)
    header_s = _header_seconds(container, stream, data if fmt == "wav" else None)
    if header_s is not None and header_s > limits.max_duration_s:
        raise AudioError(f"{label}: the header says {header_s:.1f} s, above the {limits.max_duration_s:g} s limit "
                         "(refused before decoding)", code="audio_too_long", field="audio", value=round(header_s, 3),
                         limit=limits.max_duration_s)
    cap = int(math.ceil((limits.max_duration_s + 0.5) * src_rate))
    resampler = av.AudioResampler(format="fltp", layout=ctx.layout, rate=rate)
    raw_total, clipped, peak = 0, 0, 0.0
    chunks: list[np.ndarray] = []
    decode_error = None
    try:
        for frame in container.decode(stream):
            raw = _frame_floats(frame)
            if raw.dtype.kind == "f" and not np.isfinite(raw).all():
                bad = int((~np.isfinite(raw)).sum())
                raise AudioError(f"{label}: {bad} NaN/Inf samples at {raw_total / src_rate:.2f} s",
                                 code="audio_bad_samples", field="audio", value=label, at_s=round(raw_total / src_rate, 3))
            raw_total += frame.samples
            if raw_total > cap:
                said = f"the header said {header_s:.1f} s" if header_s is not None else "the header gave no duration"
                raise AudioError(f"{label}: longer than the {limits.max_duration_s:g} s limit ({said}; decoding "
                                 f"stopped at {raw_total / src_rate:.1f} s)", code="audio_too_long", field="audio",
                                 value=round(raw_total / src_rate, 3), limit=limits.max_duration_s)
            if raw.size:
                mag = np.abs(raw)
                clipped += int((mag >= checks.clip_level).sum())
                peak = max(peak, float(mag.max()))
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
    except av.error.FFmpegError as exc:
        decode_error = exc
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray())
    decoded_s = raw_total / float(src_rate)
    if decode_error is not None or (header_s is not None and decoded_s < header_s - max(0.25, 0.02 * header_s)):
        said = f"the header says {header_s:.2f} s" if header_s is not None else "the header gives no duration"
        cause = f": {decode_error}" if decode_error is not None else ""
        raise AudioError(f"{label}: truncated or corrupt: {said}, {decoded_s:.2f} s decode{cause}",
                         code="audio_truncated", field="audio", value=label, header_s=header_s,
                         decoded_s=round(decoded_s, 3)) from decode_error
    planar = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
    if planar.shape[0] != channels:  # FFmpeg's layout may carry a different count than the codec said
        channels = planar.shape[0]
    return _finish(planar, rate, src_rate, channels, digest, fmt, codec, label, limits, checks, header_s,
                   clipped=clipped, n_raw=raw_total * channels, peak=peak)


def _header_seconds(container, stream, wav_data: bytes | None) -> float | None:
    if wav_data is not None:
        declared = _wav_declared_seconds(wav_data)
        if declared is not None:
            return declared
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000.0
    return None


def _frame_floats(frame) -> np.ndarray:
    """The decoded frame's samples as floats in [-1, 1] (integer PCM scaled), any layout."""
    arr = frame.to_ndarray()
    kind = frame.format.name.rstrip("p")
    if kind == "s16":
        return arr.astype(np.float32) / 32768.0
    if kind == "s32":
        return arr.astype(np.float32) / 2147483648.0
    if kind == "s64":
        return (arr / 9223372036854775808.0).astype(np.float32)
    if kind == "u8":
        return (arr.astype(np.float32) - 128.0) / 128.0
    return arr


# --- arrays ------------------------------------------------------------------------------------


def _from_array(arr: np.ndarray, rate: int, limits: AudioLimits, checks: AudioChecks,
                src_rate: int | None, label: str) -> LoadedAudio:
    if src_rate is None:
        raise AudioError(f"{label}: a numpy array needs source_sample_rate (its rate in Hz)",
                         code="invalid_input", field="source_sample_rate", value=None)
    src_rate = _check_rate(src_rate, "source_sample_rate")
    if arr.size == 0:
        raise AudioError(f"{label}: empty array {arr.shape}", code="audio_empty", field="audio", value=list(arr.shape))
    if arr.ndim == 1:
        planar = arr[None, :]
    elif arr.ndim == 2:
        a, b = arr.shape
        if a <= limits.max_channels and a < b:
            planar = arr
        elif b <= limits.max_channels and b < a:
            planar = arr.T
        else:
            raise AudioError(f"{label}: array of shape {arr.shape} has more than {limits.max_channels} channels "
                             "(expected (n,), (n, channels) or (channels, n))", code="audio_too_many_channels",
                             field="audio", value=list(arr.shape), limit=limits.max_channels)
    else:
        raise AudioError(f"{label}: audio arrays are (n,), (n, channels) or (channels, n), got {arr.shape}",
                         code="invalid_input", field="audio", value=list(arr.shape))
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise AudioError(f"{label}: {int((~np.isfinite(arr)).sum())} NaN/Inf samples", code="audio_bad_samples",
                             field="audio", value=label)
        floats = planar.astype(np.float32)
    elif arr.dtype.kind in "iu" and arr.dtype.itemsize in (1, 2, 4):
        bits = 8 * arr.dtype.itemsize
        offset = 2.0 ** (bits - 1) if arr.dtype.kind == "u" else 0.0
        floats = ((planar.astype(np.float64) - offset) / 2.0 ** (bits - 1)).astype(np.float32)
    else:
        raise AudioError(f"{label}: unsupported sample dtype {arr.dtype}", code="invalid_input",
                         field="audio", value=str(arr.dtype))
    duration = floats.shape[1] / float(src_rate)
    if duration > limits.max_duration_s:
        raise AudioError(f"{label}: {duration:.1f} s exceeds the {limits.max_duration_s:g} s limit",
                         code="audio_too_long", field="audio", value=round(duration, 3), limit=limits.max_duration_s)
    digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}{src_rate}".encode() + np.ascontiguousarray(arr).tobytes()).hexdigest()
    mag = np.abs(floats)
    clipped, peak = int((mag >= checks.clip_level).sum()), float(mag.max())
    if src_rate != rate:
        floats = np.stack([_resample_mono(ch, src_rate, rate) for ch in floats])
    return _finish(floats, rate, src_rate, floats.shape[0], digest, "array", f"pcm_{arr.dtype.name}", label,
                   limits, checks, None, clipped=clipped, n_raw=int(arr.size), peak=peak)


def _resample_mono(samples: np.ndarray, src_rate: int, rate: int) -> np.ndarray:
    """Resample one channel with FFmpeg's resampler (the same path decoded files take)."""
    av = _import_av()
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    out = []
    block = 1 << 16
    for start in range(0, len(samples), block):
        frame = av.AudioFrame.from_ndarray(samples[None, start:start + block], format="fltp", layout="mono")
        frame.sample_rate = src_rate
        frame.pts = start
        out += [f.to_ndarray()[0] for f in resampler.resample(frame)]
    out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


# --- measuring ---------------------------------------------------------------------------------


def _finish(planar: np.ndarray, rate: int, src_rate: int, channels: int, digest: str, fmt: str, codec: str,
            label: str, limits: AudioLimits, checks: AudioChecks, header_s: float | None, *,
            clipped: int, n_raw: int, peak: float) -> LoadedAudio:
    planar = planar.astype(np.float32, copy=False)
    mono = planar.mean(axis=0) if planar.shape[0] > 1 else planar[0].copy()
    np.clip(mono, -1.0, 1.0, out=mono)
    duration = len(mono) / float(rate)
    if duration < limits.min_duration_s:
        raise AudioError(f"{label}: {duration:.2f} s is shorter than the {limits.min_duration_s:g} s minimum",
                         code="audio_too_short", field="audio", value=round(duration, 3), limit=limits.min_duration_s)
    warnings: list[dict] = []
    clipped_fraction = clipped / float(max(n_raw, 1))
    if clipped_fraction >= checks.clip_fraction:
        warnings.append({"code": "clipping", "message": f"{100 * clipped_fraction:.2f}% of samples are at full scale "
                         f"(|x| >= {checks.clip_level:g}): the recording is clipped",
                         "clipped_fraction": round(clipped_fraction, 5), "limit": checks.clip_fraction})
    levels = _frame_dbfs(mono, rate)
    rms_dbfs = _dbfs(float(np.sqrt(np.mean(np.square(mono, dtype=np.float64)))) if len(mono) else 0.0)
    active = float(np.percentile(levels, 95)) if len(levels) else -120.0
    if active < checks.silence_dbfs:
        warnings.append({"code": "silence", "message": f"the loudest frames reach only {active:.1f} dBFS "
                         f"(below {checks.silence_dbfs:g}): silence or nearly so",
                         "active_dbfs": round(active, 2), "limit": checks.silence_dbfs})
    bandwidth = None
    if src_rate / 2.0 < checks.min_bandwidth_hz:
        bandwidth = src_rate / 2.0
    elif rate / 2.0 > checks.min_bandwidth_hz and active >= checks.silence_dbfs:
        bandwidth = _bandwidth_hz(mono, rate, levels, checks.bandwidth_floor_db)
    if bandwidth is not None and bandwidth < checks.min_bandwidth_hz:
        warnings.append({"code": "low_bandwidth", "message": f"the audio carries about {bandwidth:.0f} Hz of bandwidth "
                         f"(under {checks.min_bandwidth_hz:g} Hz: telephone-band or heavily low-passed audio)",
                         "bandwidth_hz": round(bandwidth, 1), "limit": checks.min_bandwidth_hz,
                         "original_sample_rate": src_rate})
    mixdown_db = None
    if planar.shape[0] > 1 and len(mono):
        ch_rms = float(np.mean(np.sqrt(np.mean(np.square(planar, dtype=np.float64), axis=1))))
        mix_rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
        if ch_rms > 10 ** (checks.silence_dbfs / 20.0):
            mixdown_db = 20.0 * math.log10(max(mix_rms, 1e-12) / ch_rms)
            if mixdown_db <= checks.cancel_db:
                warnings.append({"code": "channels_cancel", "message": f"the {planar.shape[0]} channels cancel on "
                                 f"mix-down: mono is {mixdown_db:.1f} dB below the channels (a phase-inverted "
                                 "channel?)", "mixdown_db": round(mixdown_db, 2), "limit": checks.cancel_db})
    stats = AudioStats(peak=round(peak, 5), rms_dbfs=round(rms_dbfs, 2), active_dbfs=round(active, 2),
                       clipped_fraction=round(clipped_fraction, 6),
                       bandwidth_hz=None if bandwidth is None else round(bandwidth, 1),
                       mixdown_db=None if mixdown_db is None else round(mixdown_db, 2))
    return LoadedAudio(samples=np.ascontiguousarray(mono, dtype=np.float32), sample_rate=rate, sha256=digest,
                       format=fmt, codec=codec, source=label, original_sample_rate=src_rate,
                       original_channels=channels, warnings=tuple(warnings),
                       header_duration_s=None if header_s is None else round(header_s, 4), stats=stats)


def _dbfs(rms: float) -> float:
    return 20.0 * math.log10(max(rms, 1e-6))


def _frame_dbfs(mono: np.ndarray, rate: int, frame_s: float = 0.02) -> np.ndarray:
    n = max(1, int(rate * frame_s))
    usable = len(mono) // n * n
    if usable == 0:
        return np.array([_dbfs(float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))) if len(mono) else -120.0])
    frames = mono[:usable].reshape(-1, n).astype(np.float64)
    return 20.0 * np.log10(np.maximum(np.sqrt(np.mean(frames * frames, axis=1)), 1e-6))


def _bandwidth_hz(mono: np.ndarray, rate: int, levels: np.ndarray, floor_db: float) -> float:
    """Highest frequency at which the loud frames' long-term spectrum is within ``floor_db`` of its
    peak. Wideband speech on ../shared/voices measures 6.7-8 kHz at 60 dB; the same files through
    an 8 kHz telephone rate measure at most 4.6 kHz (the resampler's transition band)."""
    n_fft, hop = 512, 256
    if len(mono) < n_fft:
        return rate / 2.0
    idx = np.arange(0, len(mono) - n_fft + 1, hop)
    # loud frames only: pauses are mostly the noise floor, which is what we are not measuring
    frame_level = levels[np.minimum((idx + n_fft // 2) // max(1, int(rate * 0.02)), len(levels) - 1)]
    keep = idx[frame_level >= float(np.max(levels)) - 30.0]
    if len(keep) == 0:
        return rate / 2.0
    if len(keep) > 2000:  # a long-term spectrum needs no more than ~30 s of frames
        keep = keep[np.linspace(0, len(keep) - 1, 2000).astype(int)]
    window = np.hanning(n_fft).astype(np.float32)
    frames = mono[keep[:, None] + np.arange(n_fft)[None, :]] * window
    power = np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)
    db = 10.0 * np.log10(power + 1e-20)
    above = np.nonzero(db > db.max() - floor_db)[0]
    return float(above[-1] * rate / n_fft)


# --- writing -----------------------------------------------------------------------------------

_ENCODERS = {  # format -> (FFmpeg muxer, codec, the rates the codec takes or None for any)
    "wav": ("wav", "pcm_s16le", None),
    "flac": ("flac", "flac", None),
    "mp3": ("mp3", "libmp3lame", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
    "ogg": ("ogg", "libopus", (8000, 12000, 16000, 24000, 48000)),
    "webm": ("webm", "libopus", (8000, 12000, 16000, 24000, 48000)),
    "m4a": ("ipod", "aac", None),
}


def encode_audio(samples: np.ndarray, sample_rate: int, format: str = "wav") -> bytes:
    """Encode mono (``(n,)``) or multi-channel (``(channels, n)``) float samples in [-1, 1].

    Args:
        samples: float samples; values beyond [-1, 1] are clipped.
        sample_rate: their rate. Opus (ogg/webm) and MP3 take only some rates: others are
            resampled to the next supported rate up.
        format: ``wav`` (PCM16), ``flac``, ``mp3``, ``ogg`` (Opus), ``webm`` (Opus) or ``m4a`` (AAC).

    Returns:
        The encoded file's bytes.

    Raises:
        InputError: unknown format, bad samples or rate.
    """
    import fractions

    if format not in _ENCODERS:
        raise InputError(f"cannot encode format {format!r} (one of {', '.join(_ENCODERS)})", field="format", value=format)
    rate = _check_rate(sample_rate, "sample_rate")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] > 8 or x.shape[1] == 0:
        raise InputError(f"samples must be (n,) or (channels<=8, n) and non-empty, got {np.shape(samples)}",
                         field="samples", value=list(np.shape(samples)))
    if not np.isfinite(x).all():
        raise InputError("samples contain NaN or Inf", field="samples", value="non-finite")
    av = _import_av()
    muxer, codec, rates = _ENCODERS[format]
    out_rate = rate if rates is None or rate in rates else next((r for r in rates if r >= rate), rates[-1])
    layout = {1: "mono", 2: "stereo"}.get(x.shape[0], f"{x.shape[0]}c")
    x = np.clip(x, -1.0, 1.0)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=muxer) as container:
        stream = container.add_stream(codec, rate=out_rate, layout=layout)
        block = 4096
        for start in range(0, x.shape[1], block):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, start:start + block]), format="fltp",
                                               layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = fractions.Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def save_audio(path: str | os.PathLike, samples: np.ndarray, sample_rate: int, format: str | None = None) -> Path:
    """Encode and write ``samples`` atomically; ``format`` defaults to the path's suffix."""
    from ._atomic import atomic_write_bytes

    path = Path(path)
    fmt = format or path.suffix.lower().lstrip(".") or "wav"
    return atomic_write_bytes(path, encode_audio(samples, sample_rate, fmt))
