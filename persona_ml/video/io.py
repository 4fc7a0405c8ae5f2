"""Video in and out: decode with limits read before decoding, write H.264/AAC mp4 atomically.

PyAV bundles FFmpeg (H.264 through libx264, AAC) in its wheel, so nothing is needed on the
worker beyond ``pip install persona-ml[video]``.

``load_video`` reads the container header first (byte size, stream list, duration, frame count,
frame size) and refuses an upload over the limits before one frame is decoded. A variable frame
rate stream is resampled onto a constant grid (the nominal rate, or the measured mean rate) by
taking, for each output tick, the latest frame shown at that time; ``LoadedVideo.warnings`` says
so. Every refusal is a ``VideoError`` with a stable code.

Example:
    >>> from persona_ml.video.io import load_video, write_video
    >>> clip = load_video("driving.mp4")                               # doctest: +SKIP
    >>> clip.frames.shape, clip.fps                                    # doctest: +SKIP
    ((120, 720, 1280, 3), 24.0)
    >>> write_video("out.mp4", clip.frames, clip.fps, audio=speech)    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np

from .._atomic import atomic_path
from ..errors import BackendUnavailableError, InputError, VideoError

log = logging.getLogger(__name__)

VideoSource = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

# Container signatures: a file that starts like a video but cannot be opened was cut short.
_SIGNATURES = (
    (4, b"ftyp"),        # ISO BMFF (mp4, mov, m4v) - box type after the 4-byte size
    (0, b"\x1aE\xdf\xa3"),  # EBML (mkv, webm)
    (0, b"RIFF"),        # avi
    (0, b"FLV"),
    (0, b"OggS"),
)
VFR_TOLERANCE = 0.10  # frame intervals spread beyond +-10% of the median: variable frame rate


def _av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is installed by the video extra
        raise BackendUnavailableError("PyAV is required for video: pip install 'persona-ml[video]'",
                                      package="av") from exc
    return av


@dataclass(frozen=True)
class VideoLimits:
    """Acceptance limits for incoming videos, checked from the header before decoding.

    Args:
        max_bytes: encoded size above which the upload is refused unread.
        max_duration_s: longest accepted duration.
        max_frames: most frames accepted (as announced by the header, and as decoded).
        max_pixels: width x height of one frame.
        min_side: shorter frame side below which the video is refused.
        max_streams: most streams in the container (a file with hundreds is hostile).
    """

    max_bytes: int = 500 * 1024 * 1024
    max_duration_s: float = 120.0
    max_frames: int = 3600
    max_pixels: int = 3840 * 2160
    min_side: int = 32
    max_streams: int = 16

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_frames", "max_pixels", "min_side", "max_streams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"VideoLimits.{name} must be a positive integer, got {value!r}", field=name,
                                 value=value)
        if not isinstance(self.max_duration_s, (int, float)) or not self.max_duration_s > 0:
            raise InputError(f"VideoLimits.max_duration_s must be > 0, got {self.max_duration_s!r}",
                             field="max_duration_s", value=self.max_duration_s)


@dataclass(frozen=True, eq=False)
class LoadedVideo:
    """A decoded video on a constant frame grid.

    Attributes:
        frames: ``(N, H, W, 3)`` uint8 RGB.
        fps: frames per second of ``frames``.
        sha256: hex digest of the encoded bytes.
        source: path or a short description, for messages and reports.
        codec: the video codec name (``h264``, ``vp9``...).
        container: the container format name.
        has_audio: whether the container holds an audio stream.
        variable_frame_rate: the stream's frame intervals varied; ``frames`` were resampled.
        source_frames: frames decoded from the stream (before resampling).
        warnings: measured oddities a caller may want to show.
    """

    frames: np.ndarray
    fps: float
    sha256: str
    source: str
    codec: str = ""
    container: str = ""
    has_audio: bool = False
    variable_frame_rate: bool = False
    source_frames: int = 0
    warnings: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return (int(self.frames.shape[2]), int(self.frames.shape[1]))

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0


def _read_source(source: VideoSource, limits: VideoLimits, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        from .._files import FileProblem, path_text, read_regular_file

        text = path_text(source)
        label = name or text
        try:
            return read_regular_file(text, max_bytes=limits.max_bytes, label=label), label
        except FileProblem as exc:
            if exc.reason == "too_large":
                raise VideoError(f"{label}: {exc.size} bytes exceeds the {limits.max_bytes}-byte limit",
                                 code="video_too_large", field="video", value=exc.size,
                                 limit=limits.max_bytes) from None
            if exc.reason in ("not_a_file", "name_too_long"):  # a folder, FIFO or device is named as such
                raise VideoError(exc.message, code="path_invalid", field="video", value=text,
                                 **exc.details()) from None
            if exc.reason == "not_found":
                raise VideoError(f"video file not found: {exc.path}", code="video_unreadable", field="video",
                                 value=text, **exc.details()) from None
            raise VideoError(f"cannot read video file {exc.message}", code="video_unreadable", field="video",
                             value=text, **exc.details()) from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = name or f"<{len(data)} bytes>"
    elif hasattr(source, "read"):
        try:
            data = source.read(limits.max_bytes + 1)
        except (OSError, ValueError) as exc:
            raise VideoError(f"{name or '<file object>'}: cannot read: {exc}", code="video_unreadable",
                             field="video", value=type(source).__name__) from exc
        if isinstance(data, str):
            raise VideoError("file object must be opened in binary mode", code="invalid_input", field="video",
                             value=type(source).__name__)
        label = str(name or getattr(source, "name", None) or "<file object>")
    else:
        raise VideoError(f"unsupported video source type {type(source).__name__}", code="invalid_input",
                         field="video", value=type(source).__name__)
    if len(data) > limits.max_bytes:
        raise VideoError(f"{label}: more than {limits.max_bytes} bytes", code="video_too_large", field="video",
                         value=len(data), limit=limits.max_bytes)
    return data, label


def _looks_like_video(data: bytes) -> bool:
    return any(data[off:off + len(sig)] == sig for off, sig in _SIGNATURES)


def probe_video(source: VideoSource, limits: VideoLimits | None = None, *, name: str | None = None) -> dict[str, Any]:
    """Read a video's header only: streams, codec, size, frame rate, duration, frame count.

    Returns:
        ``{"width", "height", "fps", "duration_s", "frames", "codec", "container", "has_audio", "streams"}``
        (``frames``/``duration_s`` are ``None`` when the header does not say).

    Raises:
        VideoError: as ``load_video`` for the checks that need no decoding.
    """
    limits = limits or VideoLimits()
    data, label = _read_source(source, limits, name)
    container, info = _open_checked(data, label, limits)
    container.close()
    return info


def _open_checked(data: bytes, label: str, limits: VideoLimits):
    av = _av()
    if not data:
        raise VideoError(f"{label}: empty file (0 bytes)", code="video_empty", field="video", value=label)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        if _looks_like_video(data):
            raise VideoError(f"{label}: the file starts like a video but cannot be opened ({exc}); it is probably "
                             "cut short (an mp4 whose index was never written)", code="video_truncated",
                             field="video", value=label) from exc
        raise VideoError(f"{label}: not a video in any format FFmpeg knows ({len(data)} bytes)",
                         code="video_not_a_video", field="video", value=label) from exc
    try:
        streams = list(container.streams)
        if len(streams) > limits.max_streams:
            raise VideoError(f"{label}: {len(streams)} streams exceeds the {limits.max_streams}-stream limit",
                             code="video_too_large", field="video", value=len(streams), limit=limits.max_streams)
        videos = [s for s in streams if s.type == "video"]
        if not videos:
            kinds = sorted({s.type for s in streams}) or ["none"]
            raise VideoError(f"{label}: no video stream (streams: {', '.join(kinds)})", code="video_no_video_stream",
                             field="video", value=kinds)
        stream = videos[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width and height:
            if width * height > limits.max_pixels:
                raise VideoError(f"{label}: {width}x{height} frames exceed the {limits.max_pixels}-pixel limit",
                                 code="video_too_large", field="video", value=[width, height],
                                 limit=limits.max_pixels)
            if min(width, height) < limits.min_side:
                raise VideoError(f"{label}: {width}x{height} is smaller than the {limits.min_side}-pixel minimum side",
                                 code="video_invalid", field="video",
                                 value=[width, height], limit=limits.min_side)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000.0
        if duration is not None and duration > limits.max_duration_s:
            raise VideoError(f"{label}: {duration:.1f} s exceeds the {limits.max_duration_s:g} s limit",
                             code="video_too_long", field="video", value=round(duration, 3),
                             limit=limits.max_duration_s)
        frames = int(stream.frames) if stream.frames else None
        if frames is not None and frames > limits.max_frames:
            raise VideoError(f"{label}: {frames} frames exceeds the {limits.max_frames}-frame limit",
                             code="video_too_large", field="video", value=frames, limit=limits.max_frames)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        info = {"width": width, "height": height, "fps": float(rate) if rate else None, "duration_s": duration,
                "frames": frames, "codec": ctx.name or "", "container": container.format.name if container.format else "",
                "has_audio": any(s.type == "audio" for s in streams), "streams": len(streams)}
    except BaseException:
        container.close()
        raise
    return container, info


def load_video(source: VideoSource, limits: VideoLimits | None = None, *, name: str | None = None,
               max_frames: int | None = None) -> LoadedVideo:
    """Decode a video into RGB frames on a constant frame grid.

    Args:
        source: path, bytes or binary file object.
        limits: acceptance limits (``VideoLimits()`` by default).
        name: label used in messages instead of the path.
        max_frames: stop after this many output frames (a preview needs only the start).

    Returns:
        LoadedVideo.

    Raises:
        VideoError: ``video_empty``, ``video_not_a_video``, ``video_no_video_stream``, ``video_truncated``
            (no decodable frame, or the stream breaks off), ``video_too_long``, ``video_too_large``,
            ``video_unreadable``, ``video_invalid`` (frames smaller than ``min_side``).
    """
    av = _av()
    limits = limits or VideoLimits()
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise InputError(f"max_frames must be a positive integer, got {max_frames!r}", field="max_frames",
                         value=max_frames)
    data, label = _read_source(source, limits, name)
    digest = hashlib.sha256(data).hexdigest()
    container, info = _open_checked(data, label, limits)
    frames: list[np.ndarray] = []
    times: list[float] = []
    warnings: list[str] = []
    broke_off = None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if len(frames) >= limits.max_frames:
                    raise VideoError(f"{label}: more than {limits.max_frames} frames decoded (the header did not "
                                     "announce them)", code="video_too_large", field="video",
                                     value=len(frames) + 1, limit=limits.max_frames)
                t = frame.time if frame.time is not None else (times[-1] + 1.0 / (info["fps"] or 25.0) if times else 0.0)
                if t > limits.max_duration_s + 1.0:
                    raise VideoError(f"{label}: frames past {limits.max_duration_s:g} s (the header did not say)",
                                     code="video_too_long", field="video", value=round(float(t), 3),
                                     limit=limits.max_duration_s)
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(float(t))
                if max_frames is not None and info["fps"] and times[-1] - times[0] >= (max_frames + 1) / info["fps"]:
                    break  # enough for the requested frames, on any frame grid
        except av.error.FFmpegError as exc:
            broke_off = exc
    finally:
        container.close()
    if not frames:
        raise VideoError(f"{label}: no frame could be decoded{f' ({broke_off})' if broke_off else ''}",
                         code="video_truncated", field="video", value=label)
    if broke_off is not None:
        if info["frames"] and len(frames) < 0.9 * info["frames"]:
            raise VideoError(f"{label}: decoding broke off after {len(frames)} of {info['frames']} frames "
                             f"({broke_off})", code="video_truncated", field="video", value=len(frames),
                             expected=info["frames"])
        warnings.append(f"decoder error after {len(frames)} frames, kept what decoded: {broke_off}")
    h, w = frames[0].shape[:2]
    if min(h, w) < limits.min_side:
        raise VideoError(f"{label}: {w}x{h} is smaller than the {limits.min_side}-pixel minimum side",
                         code="video_invalid", field="video", value=[w, h], limit=limits.min_side)
    if any(f.shape != frames[0].shape for f in frames):
        raise VideoError(f"{label}: the frame size changes mid-stream, which is not supported", code="video_invalid",
                         field="video", value=sorted({f.shape[:2] for f in frames}))
    order = np.argsort(np.asarray(times), kind="stable")  # B-frames: presentation order
    ts = np.asarray(times)[order]
    stack = [frames[i] for i in order]
    fps, vfr = _frame_rate(ts, info["fps"])
    if vfr:
        stack, ts = _resample(stack, ts, fps)
        warnings.append(f"variable frame rate: resampled {len(frames)} frames onto a constant {fps:g} fps grid")
    if max_frames is not None:
        stack = stack[:max_frames]
    return LoadedVideo(frames=np.stack(stack), fps=fps, sha256=digest, source=label, codec=info["codec"],
                       container=info["container"], has_audio=info["has_audio"], variable_frame_rate=vfr,
                       source_frames=len(frames), warnings=tuple(warnings))


def _frame_rate(ts: np.ndarray, nominal: float | None) -> tuple[float, bool]:
    if len(ts) < 3:
        return (float(nominal) if nominal else 25.0), False
    dt = np.diff(ts)
    dt = dt[dt > 0]
    if not len(dt):
        return (float(nominal) if nominal else 25.0), False
    median = float(np.median(dt))
    spread = np.abs(dt - median) > VFR_TOLERANCE * median
    vfr = bool(spread.mean() > 0.05)
    if vfr:
        measured = (len(ts) - 1) / float(ts[-1] - ts[0])
        rate = float(nominal) if nominal and abs(nominal - measured) / measured < 0.5 else measured
        return round(rate, 3), True
    return round(1.0 / median, 3) if not nominal else float(nominal), False


def _resample(frames: list[np.ndarray], ts: np.ndarray, fps: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Constant-rate frames: at each tick, the latest source frame already shown."""
    n = int(np.floor((ts[-1] - ts[0]) * fps + 1e-6)) + 1
    ticks = ts[0] + np.arange(n) / fps
    idx = np.clip(np.searchsorted(ts, ticks + 1e-6, side="right") - 1, 0, len(frames) - 1)
    return [frames[i] for i in idx], ticks


def write_video(path: str | os.PathLike, frames: np.ndarray | list, fps: float, *, audio: np.ndarray | None = None,
                sample_rate: int | None = None, crf: int = 18, preset: str = "medium") -> Path:
    """Write frames (and an optional mono speech track) as an H.264 + AAC mp4, atomically.

    Args:
        path: the final ``.mp4`` path (a temp file beside it is renamed onto it when complete).
        frames: ``(N, H, W, 3)`` uint8 RGB (or floats in ``[0, 1]``); odd sides are padded by one
            edge pixel (yuv420p needs even sides).
        fps: frame rate (may be fractional, e.g. 23.976).
        audio: float32 mono samples in ``[-1, 1]`` to mux in, trimmed or zero-padded to the video's length.
        sample_rate: the audio's sample rate (required with ``audio``).
        crf: x264 quality (lower is better; 18 is visually lossless for most content).
        preset: x264 speed preset.

    Returns:
        The path.

    Raises:
        InputError: empty or mis-shaped frames, a non-positive fps, audio without a sample rate.
    """
    av = _av()
    arr = _as_uint8_frames(frames)
    if not isinstance(fps, (int, float)) or not fps > 0:
        raise InputError(f"fps must be > 0, got {fps!r}", field="fps", value=fps)
    if audio is not None:
        if not sample_rate or sample_rate <= 0:
            raise InputError("sample_rate is required with audio", field="sample_rate", value=sample_rate)
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        want = int(round(arr.shape[0] / fps * sample_rate))
        audio = np.pad(audio[:want], (0, max(0, want - len(audio))))
        audio = np.clip(audio, -1.0, 1.0)
    h, w = arr.shape[1:3]
    if h % 2 or w % 2:
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path, suffix=".mp4") as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as out:
            vs = out.add_stream("libx264", rate=rate)
            vs.width, vs.height = arr.shape[2], arr.shape[1]
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": str(int(crf)), "preset": preset}
            as_ = None
            if audio is not None:
                as_ = out.add_stream("aac", rate=int(sample_rate))
                as_.layout = "mono"
            for i, img in enumerate(arr):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, 1) / rate
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode():
                out.mux(packet)
            if as_ is not None:
                chunk = 1024
                for start in range(0, len(audio), chunk):
                    piece = audio[start:start + chunk][None, :]
                    aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="flt", layout="mono")
                    aframe.sample_rate = int(sample_rate)
                    aframe.pts = start
                    aframe.time_base = Fraction(1, int(sample_rate))
                    for packet in as_.encode(aframe):
                        out.mux(packet)
                for packet in as_.encode():
                    out.mux(packet)
    return Path(path)


def _as_uint8_frames(frames) -> np.ndarray:
    if isinstance(frames, list):
        if not frames:
            raise InputError("no frames to write", field="frames", value=0)
        frames = np.stack([np.asarray(f) for f in frames])
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] == 0:
        raise InputError(f"frames must be (N, H, W, 3), got {arr.shape}", field="frames", value=list(arr.shape))
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError("frames contain NaN or inf", field="frames", value="non-finite")
        arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr
