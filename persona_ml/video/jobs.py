"""Video jobs: talking head and motion transfer, with the training job's lifecycle.

``queued -> running -> completed | failed | cancelled``. Inputs are decoded and checked while the
job is still ``queued`` (a bad upload fails before any model runs); every denoising step emits a
``step`` event; ``cancel()`` is cooperative: the backend raises the pipeline's interrupt flag at
the next step boundary and the job ends ``cancelled`` with nothing but ``result.json`` written.
A completed job leaves, each written atomically::

    <output>/video.mp4              H.264 (+ AAC speech for a talking head)
    <output>/identity.json          the per-frame identity report (with the A/V sync estimate)
    <output>/identity_strip.png     a strip of frames framed by their outcome
    <output>/identity_similarity.png
    <output>/result.json            VideoResult

Example:
    >>> job = TalkingHeadJob(backend, "portrait.jpg", "speech.wav", "runs/th1", profile=profile,
    ...                      face_embedder=embedder, on_event=print)                    # doctest: +SKIP
    >>> job.run().status                                                                # doctest: +SKIP
    <VideoJobStatus.COMPLETED: 'completed'>
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_json
from ..errors import InputError, PersonaMLError, VideoError

log = logging.getLogger(__name__)


class VideoJobStatus(str, Enum):
    """``queued -> running -> completed | failed | cancelled`` (the training job's end states)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (VideoJobStatus.COMPLETED, VideoJobStatus.FAILED, VideoJobStatus.CANCELLED)


@dataclass(frozen=True)
class VideoProgressEvent:
    """What a progress callback receives: ``kind`` is ``status`` or ``step``."""

    kind: str
    status: VideoJobStatus
    step: int = 0
    total_steps: int = 0
    elapsed_s: float = 0.0
    message: str = ""


@dataclass
class VideoResult:
    """Outcome of a video job (``to_dict`` is what ``result.json`` holds)."""

    kind: str
    status: VideoJobStatus
    output_dir: Path
    backend: str = ""
    seed: int = 0
    video_path: Path | None = None
    report_path: Path | None = None
    num_frames: int = 0
    fps: float = 0.0
    steps_done: int = 0
    total_steps: int = 0
    identity: dict[str, Any] | None = None
    sync: dict[str, Any] | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        from .._json import jsonable

        return jsonable({"kind": self.kind, "status": self.status.value, "output_dir": str(self.output_dir),
                         "backend": self.backend, "seed": self.seed,
                         "video_path": None if self.video_path is None else str(self.video_path),
                         "report_path": None if self.report_path is None else str(self.report_path),
                         "num_frames": self.num_frames, "fps": self.fps, "steps_done": self.steps_done,
                         "total_steps": self.total_steps, "identity": self.identity, "sync": self.sync,
                         "inputs": self.inputs, "timings": {k: round(v, 4) for k, v in self.timings.items()},
                         "meta": self.meta, "error": self.error})


class _VideoJob:
    kind = ""

    def __init__(self, backend: Any, output_dir: str | os.PathLike, *, profile: Any = None, face_embedder: Any = None,
                 on_event: Callable[[VideoProgressEvent], None] | None = None) -> None:
        if (profile is None) != (face_embedder is None):
            raise InputError("profile and face_embedder go together (the identity report needs both)",
                             field="profile" if profile is None else "face_embedder", value=None)
        self.backend = backend
        self.output_dir = Path(output_dir)
        self.profile, self.face_embedder, self.on_event = profile, face_embedder, on_event
        self.status = VideoJobStatus.QUEUED
        self.error: PersonaMLError | None = None
        self._cancel = threading.Event()
        self._t0 = 0.0
        self._total = 0

    def cancel(self) -> None:
        """Ask the job to stop at the next denoising step; it ends ``cancelled``."""
        self._cancel.set()

    def _emit(self, kind: str, step: int = 0, message: str = "") -> None:
        if self.on_event is not None:
            elapsed = time.perf_counter() - self._t0 if self._t0 else 0.0
            self.on_event(VideoProgressEvent(kind, self.status, step, self._total, elapsed, message))

    def _set(self, status: VideoJobStatus, message: str = "") -> None:
        self.status = status
        log.info("%s job: %s %s", self.kind, status.value, message)
        self._emit("status", message=message)

    def _on_step(self, step: int, total: int) -> None:
        self._total = total
        self._emit("step", step=step)

    def run(self, *, raise_on_error: bool = True) -> VideoResult:
        """Run to the end. Raises the job's ``PersonaMLError`` (after writing ``result.json``) unless
        ``raise_on_error`` is False; anything unexpected becomes ``video_job_failed`` with the cause chained."""
        result = VideoResult(kind=self.kind, status=self.status, output_dir=self.output_dir,
                             backend=getattr(self.backend, "name", type(self.backend).__name__))
        try:
            try:
                self._run(result)
            except PersonaMLError:
                raise
            except Exception as exc:  # a library fault must end the job as failed, never stuck
                raise VideoError(f"{self.kind} failed in {result.backend}: {type(exc).__name__}: {exc}",
                                 code="video_job_failed", field="backend", value=result.backend) from exc
        except PersonaMLError as exc:
            self.error = exc
            result.error = exc.to_dict()
            result.status = VideoJobStatus.FAILED
            self._set(VideoJobStatus.FAILED, f"[{exc.code}] {exc.message}")
            self._write_result(result)
            if raise_on_error:
                raise
        return result

    def _write_result(self, result: VideoResult) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.output_dir / "result.json", result.to_dict())

    def _finish(self, result: VideoResult, generated, audio: np.ndarray | None, sample_rate: int | None,
                t_gen: float) -> None:
        from .io import write_video

        result.steps_done, result.total_steps = generated.steps_done, generated.total_steps
        result.timings["generate"] = time.perf_counter() - t_gen
        if generated.cancelled:
            result.status = VideoJobStatus.CANCELLED
            self._set(VideoJobStatus.CANCELLED, f"after {generated.steps_done} of {generated.total_steps} steps")
            self._write_result(result)
            return
        frames = generated.frames
        result.num_frames, result.fps, result.meta = int(len(frames)), float(generated.fps), dict(generated.meta or {})
        t = time.perf_counter()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        result.video_path = write_video(self.output_dir / "video.mp4", frames, generated.fps, audio=audio,
                                        sample_rate=sample_rate)
        result.timings["encode"] = time.perf_counter() - t
        if self.profile is not None:
            t = time.perf_counter()
            self._identity(result, frames, generated.fps, audio, sample_rate)
            result.timings["identity"] = time.perf_counter() - t
        result.status = VideoJobStatus.COMPLETED
        self._set(VideoJobStatus.COMPLETED, str(result.video_path))
        self._write_result(result)

    def _identity(self, result: VideoResult, frames: np.ndarray, fps: float, audio, sample_rate) -> None:
        from .identity import score_video
        from .report import write_report
        from .sync import estimate_av_sync, mouth_box

        report = score_video(frames, fps, self.profile, self.face_embedder)
        if audio is not None:
            boxes = [None if f.landmarks is None else mouth_box(f.landmarks) for f in report.frames]
            try:
                report.sync = estimate_av_sync(frames, fps, audio, sample_rate, boxes).to_dict()
            except InputError as exc:  # too few frames with a face: say so in the report
                report.sync = {"error": exc.to_dict()}
        result.report_path = write_report(report, frames, self.output_dir)
        result.identity = report.to_dict(with_frames=False)
        result.sync = report.sync


class TalkingHeadJob(_VideoJob):
    """A talking-head job: the character's portrait + speech (its cloned voice or an upload) -> video.

    Args:
        backend: a ``TalkingHeadBackend`` (``LTX2DFRTalkingHead`` or a dedicated model).
        portrait: the character's portrait or LoRA image (any ``persona_ml.images`` source).
        speech: a ``Speech`` (e.g. the voice module's output) or an audio file/bytes.
        output_dir: the job folder.
        settings: ``TalkingHeadSettings`` (``TalkingHeadSettings.preview()`` for a preview).
        profile, face_embedder: the character's ``FaceProfile`` and its model, for the identity report.
        on_event: progress callback.
    """

    kind = "talking_head"

    def __init__(self, backend: Any, portrait: Any, speech: Any, output_dir: str | os.PathLike, *, settings: Any = None,
                 **kw: Any) -> None:
        super().__init__(backend, output_dir, **kw)
        from .talking_head import TalkingHeadSettings

        self.portrait, self.speech = portrait, speech
        self.settings = settings or TalkingHeadSettings()
        if not isinstance(self.settings, TalkingHeadSettings):
            raise InputError("settings must be a TalkingHeadSettings", field="settings", value=type(settings).__name__)

    def _run(self, result: VideoResult) -> None:
        from ..images import load_image
        from .speech import load_speech

        self._t0 = time.perf_counter()
        portrait = load_image(self.portrait, name="portrait")
        speech = load_speech(self.speech)
        result.seed = self.settings.seed
        result.inputs = {"portrait_sha256": portrait.sha256, "speech_sha256": speech.sha256,
                         "speech_duration_s": round(speech.duration_s, 3), "settings": self.settings.__dict__}
        result.timings["inputs"] = time.perf_counter() - self._t0
        self._set(VideoJobStatus.RUNNING, f"{speech.duration_s:.2f} s of speech")
        t = time.perf_counter()
        generated = self.backend.generate(portrait.pixels, speech, self.settings, on_step=self._on_step,
                                          should_stop=self._cancel.is_set)
        self._finish(result, generated, speech.samples, speech.sample_rate, t)


class MotionTransferJob(_VideoJob):
    """A motion-transfer job: a driving video's motion applied to the character's image.

    Args:
        backend: a ``WanAnimateMotionTransfer`` (or another backend with the same ``generate``).
        character: the character's image.
        driving: the driving video (path/bytes, or a ``LoadedVideo``).
        output_dir: the job folder.
        settings: ``MotionSettings`` (``MotionSettings.preview()`` for a preview).
        limits: ``VideoLimits`` for the driving video.
        profile, face_embedder, on_event: as for ``TalkingHeadJob``.
    """

    kind = "motion_transfer"

    def __init__(self, backend: Any, character: Any, driving: Any, output_dir: str | os.PathLike, *,
                 settings: Any = None, limits: Any = None, **kw: Any) -> None:
        super().__init__(backend, output_dir, **kw)
        from .motion import MotionSettings

        self.character, self.driving, self.limits = character, driving, limits
        self.settings = settings or MotionSettings()
        if not isinstance(self.settings, MotionSettings):
            raise InputError("settings must be a MotionSettings", field="settings", value=type(settings).__name__)

    def _run(self, result: VideoResult) -> None:
        from ..images import load_image
        from .io import LoadedVideo, load_video

        self._t0 = time.perf_counter()
        character = load_image(self.character, name="character")
        driving = self.driving if isinstance(self.driving, LoadedVideo) else load_video(
            self.driving, self.limits, max_frames=self.settings.max_frames)
        result.seed = self.settings.seed
        result.inputs = {"character_sha256": character.sha256, "driving_sha256": driving.sha256,
                         "driving_frames": driving.num_frames, "driving_fps": driving.fps,
                         "driving_warnings": list(driving.warnings), "settings": self.settings.__dict__}
        result.timings["inputs"] = time.perf_counter() - self._t0
        self._set(VideoJobStatus.RUNNING, f"{driving.num_frames} driving frames")
        t = time.perf_counter()
        generated = self.backend.generate(character.pixels, driving.frames, driving.fps, self.settings,
                                          on_step=self._on_step, should_stop=self._cancel.is_set)
        self._finish(result, generated, None, None, t)
