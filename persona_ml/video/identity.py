"""Identity in every video: sampled frames scored against the character's ``FaceProfile``.

Detecting and embedding a face is the expensive part (dlib: tens of milliseconds a frame on a
CPU core); comparing two small grey thumbnails costs microseconds. So the report does not embed
every frame. It embeds a sparse grid (``stride``), then keeps bisecting any gap whose two ends
disagree (one has a face and the other not, the flags differ, the similarities differ by more
than ``refine_delta``, or one is within ``refine_margin`` of the threshold), and embeds both
sides of every cut (a thumbnail jump) inside a gap, so a stranger spliced in for a few frames is
found. Frames left unscored inherit the nearer scored neighbour's outcome (similarities are
interpolated linearly between two face frames). ``benchmarks/bench_video.py`` measures the
speed-up against embedding every frame and the difference in min / mean.

Per-frame flags: ``face_lost`` (no face found) and ``identity_low`` (faces found, none reaches
the embedding model's same-person threshold: the face is someone else, or drifted away).

Example:
    >>> from persona_ml.video.identity import score_video
    >>> report = score_video(clip.frames, clip.fps, profile, embedder)    # doctest: +SKIP
    >>> report.detection_rate, report.similarity_min, report.flags         # doctest: +SKIP
    (1.0, 0.93, ())
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BackendError, InputError

log = logging.getLogger(__name__)

FLAG_FACE_LOST = "face_lost"
FLAG_IDENTITY_LOW = "identity_low"
THUMB = 24  # thumbnail side for change detection


@dataclass(frozen=True)
class FrameScore:
    """One frame's identity outcome.

    Attributes:
        index: frame index; time_s: its time.
        scored: the face model ran on this frame (``False``: inherited from ``source``).
        source: the scored frame the outcome was taken from (itself when scored).
        num_faces: faces detected (of the source frame).
        similarity: best face's cosine to the profile (``None`` without a face).
        flags: ``face_lost`` / ``identity_low`` (empty: the character is there).
        bbox, landmarks: the best face's box and 5 points (of the source frame).
    """

    index: int
    time_s: float
    scored: bool
    source: int
    num_faces: int
    similarity: float | None
    flags: tuple[str, ...]
    bbox: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "time_s": round(self.time_s, 4), "scored": self.scored, "source": self.source,
                "num_faces": self.num_faces,
                "similarity": None if self.similarity is None else round(float(self.similarity), 5),
                "flags": list(self.flags),
                "bbox": None if self.bbox is None else [round(float(v), 1) for v in self.bbox]}


@dataclass(frozen=True)
class FlaggedSpan:
    """A run of consecutive frames with the same flag."""

    flag: str
    start_frame: int
    end_frame: int  # inclusive
    start_s: float
    end_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"flag": self.flag, "start_frame": self.start_frame, "end_frame": self.end_frame,
                "start_s": round(self.start_s, 4), "end_s": round(self.end_s, 4)}


@dataclass
class VideoIdentityReport:
    """Identity of a video against a character's profile.

    Attributes:
        frames: per-frame outcomes (every frame; ``scored`` says which ran the face model).
        fps, threshold: the frame rate and the same-person cosine used.
        detection_rate: fraction of frames with a face.
        similarity_min / similarity_mean / similarity_p10: over frames with a face (``None`` if none).
        drift: mean similarity of the last third minus the first third (negative: the face drifts away).
        flags: the flags any frame carries, sorted.
        spans: runs of flagged frames.
        frames_scored: how many frames ran the face model.
        provenance: the face model's provenance dict.
        sync: the audio-visual sync estimate (talking heads), as a dict.
        strip_path, plot_path: the PNGs, once written.
    """

    frames: list[FrameScore]
    fps: float
    threshold: float
    detection_rate: float
    similarity_min: float | None
    similarity_mean: float | None
    similarity_p10: float | None
    drift: float | None
    flags: tuple[str, ...]
    spans: list[FlaggedSpan]
    frames_scored: int
    provenance: dict[str, Any] = field(default_factory=dict)
    sync: dict[str, Any] | None = None
    strip_path: str | None = None
    plot_path: str | None = None

    @property
    def passed(self) -> bool:
        """No frame is flagged."""
        return not self.flags

    def to_dict(self, *, with_frames: bool = True) -> dict[str, Any]:
        def r(v):
            return None if v is None else round(float(v), 5)

        out = {"fps": self.fps, "threshold": self.threshold, "num_frames": len(self.frames),
               "frames_scored": self.frames_scored, "detection_rate": round(self.detection_rate, 5),
               "similarity_min": r(self.similarity_min), "similarity_mean": r(self.similarity_mean),
               "similarity_p10": r(self.similarity_p10), "drift": r(self.drift), "flags": list(self.flags),
               "passed": self.passed, "spans": [s.to_dict() for s in self.spans], "provenance": self.provenance,
               "sync": self.sync, "strip_path": self.strip_path, "plot_path": self.plot_path}
        if with_frames:
            out["frames"] = [f.to_dict() for f in self.frames]
        return out


def thumbnails(frames: np.ndarray, side: int = THUMB) -> np.ndarray:
    """``(N, side, side)`` float32 grey thumbnails (block means; no resampling library needed)."""
    arr = np.asarray(frames)
    n, h, w = arr.shape[:3]
    grey = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    ys = (np.arange(side + 1) * h) // side
    xs = (np.arange(side + 1) * w) // side
    out = np.empty((n, side, side), np.float32)
    for i in range(side):
        band = grey[:, ys[i]:max(ys[i + 1], ys[i] + 1)].mean(axis=1)
        for j in range(side):
            out[:, i, j] = band[:, xs[j]:max(xs[j + 1], xs[j] + 1)].mean(axis=1)
    return out


class _Scorer:
    def __init__(self, frames: np.ndarray, profile: Any, embedder: Any, threshold: float) -> None:
        self.frames, self.profile, self.embedder, self.threshold = frames, profile, embedder, threshold
        self.done: dict[int, tuple] = {}

    def score(self, indices: Sequence[int]) -> None:
        from ..inference.identity import score_faces

        todo = sorted({int(i) for i in indices if int(i) not in self.done})
        if not todo:
            return
        results = self.embedder.analyze([self.frames[i] for i in todo])
        for i, faces in zip(todo, results):
            if isinstance(faces, BackendError):  # identity could not be checked: never reported as face_lost
                raise faces
            if isinstance(faces, Exception):
                faces = []
            check = score_faces(faces, self.profile, self.threshold)
            best = None
            if faces:
                sims = [self.profile.similarity(f) for f in faces]
                best = faces[int(np.argmax(sims))]
            flags = tuple(sorted({FLAG_FACE_LOST if f == "no_face" else f for f in check.flags
                                  if f in ("no_face", "identity_low")}))
            self.done[i] = (len(faces), check.similarity, flags, best)


def _disagree(a: tuple, b: tuple, threshold: float, delta: float, margin: float) -> bool:
    if a[2] != b[2]:
        return True
    sa, sb = a[1], b[1]
    if sa is None or sb is None:
        return (sa is None) != (sb is None)
    return abs(sa - sb) > delta or abs(sa - threshold) < margin or abs(sb - threshold) < margin


def score_video(frames: np.ndarray, fps: float, profile: Any, embedder: Any, *, stride: int | None = None,
                refine_delta: float | None = None, refine_margin: float | None = None, cut_threshold: float = 12.0,
                every_frame: bool = False, threshold: float | None = None) -> VideoIdentityReport:
    """Score a video's frames against a character's profile.

    Args:
        frames: ``(N, H, W, 3)`` uint8 RGB (``LoadedVideo.frames`` or a pipeline's output).
        fps: frame rate (for times and the drift).
        profile: the character's ``FaceProfile``.
        embedder: a ``FaceEmbedder`` of the profile's model.
        stride: frames between grid samples (default: about 4 samples per second).
        refine_delta: similarity difference that makes a gap be bisected (default: a quarter of the
            distance between the model's same-person and near-duplicate cosines).
        refine_margin: a similarity this close to the threshold makes its gaps be bisected
            (default: the same as ``refine_delta``).
        cut_threshold: mean absolute grey difference (0..255) of consecutive thumbnails taken as a cut.
        every_frame: embed every frame (the naive baseline; for benchmarks and audits).
        threshold: same-person cosine; the profile's model threshold by default.

    Returns:
        VideoIdentityReport (no PNGs yet; see ``persona_ml.video.report``).

    Raises:
        InputError: empty or mis-shaped frames, fps not positive, a bad stride.
        ModelMismatchError: the embedder is not the profile's model.
        BackendError: the face backend failed on a frame (cause chained): never reported as ``face_lost``.
    """
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[0] == 0 or arr.shape[-1] != 3:
        raise InputError(f"frames must be (N, H, W, 3) with N >= 1, got {arr.shape}", field="frames",
                         value=list(arr.shape))
    if not isinstance(fps, (int, float)) or not fps > 0:
        raise InputError(f"fps must be > 0, got {fps!r}", field="fps", value=fps)
    if profile is None or embedder is None:
        raise InputError("score_video needs the character's FaceProfile and a FaceEmbedder", field="profile",
                         value=None)
    profile.provenance.require_compatible(embedder.provenance, "face embedder")
    t = profile.thresholds
    cut = float(t.same_person_min_cosine if threshold is None else threshold)
    delta = refine_delta if refine_delta is not None else max(0.005, (t.near_duplicate_min_cosine - t.same_person_min_cosine) / 4)
    margin = refine_margin if refine_margin is not None else delta
    n = arr.shape[0]
    if stride is None:
        stride = max(1, int(round(fps / 4)))
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise InputError(f"stride must be a positive integer, got {stride!r}", field="stride", value=stride)
    scorer = _Scorer(arr, profile, embedder, cut)
    if every_frame:
        scorer.score(range(n))
    else:
        thumbs = thumbnails(arr)
        jumps = np.abs(np.diff(thumbs, axis=0)).mean(axis=(1, 2)) if n > 1 else np.zeros(0)
        grid = sorted(set(range(0, n, stride)) | {n - 1})
        cuts = np.flatnonzero(jumps > cut_threshold)
        scorer.score(grid + [int(c) for c in cuts] + [int(c) + 1 for c in cuts])
        while True:
            known = sorted(scorer.done)
            todo = [(a + b) // 2 for a, b in zip(known, known[1:])
                    if b - a > 1 and _disagree(scorer.done[a], scorer.done[b], cut, delta, margin)]
            if not todo:
                break
            scorer.score(todo)
    return _build_report(scorer, n, float(fps), cut, profile)


def _build_report(scorer: _Scorer, n: int, fps: float, cut: float, profile: Any) -> VideoIdentityReport:
    known = sorted(scorer.done)
    frames: list[FrameScore] = []
    pos = 0
    for i in range(n):
        while pos + 1 < len(known) and known[pos + 1] <= i:
            pos += 1
        left = known[pos]
        right = known[pos + 1] if pos + 1 < len(known) and known[pos] < i else left
        if i < known[0]:
            left = right = known[0]
        src = left if (i - left) <= (right - i) else right
        nf, sim, flags, face = scorer.done[src]
        if i not in scorer.done and left != right:
            sl, sr = scorer.done[left][1], scorer.done[right][1]
            if sl is not None and sr is not None and scorer.done[left][2] == scorer.done[right][2]:
                w = (i - left) / (right - left)
                sim = (1 - w) * sl + w * sr
        frames.append(FrameScore(index=i, time_s=i / fps, scored=i in scorer.done, source=src, num_faces=nf,
                                 similarity=None if sim is None else float(sim), flags=flags,
                                 bbox=None if face is None else tuple(float(v) for v in face.bbox),
                                 landmarks=None if face is None else np.asarray(face.landmarks, np.float32)))
    sims = np.array([f.similarity for f in frames if f.similarity is not None], dtype=np.float64)
    with_face = [f for f in frames if f.num_faces > 0]
    drift = None
    if len(sims) >= 3:
        k = max(1, len(sims) // 3)
        drift = float(sims[-k:].mean() - sims[:k].mean())
    spans: list[FlaggedSpan] = []
    for flag in (FLAG_FACE_LOST, FLAG_IDENTITY_LOW):
        start = None
        for f in [*frames, None]:
            on = f is not None and flag in f.flags
            if on and start is None:
                start = f.index
            elif not on and start is not None:
                end = (f.index if f is not None else n) - 1
                spans.append(FlaggedSpan(flag, start, end, start / fps, (end + 1) / fps))
                start = None
    spans.sort(key=lambda s: s.start_frame)
    all_flags = tuple(sorted({fl for f in frames for fl in f.flags}))
    return VideoIdentityReport(
        frames=frames, fps=fps, threshold=cut, detection_rate=len(with_face) / n,
        similarity_min=float(sims.min()) if len(sims) else None,
        similarity_mean=float(sims.mean()) if len(sims) else None,
        similarity_p10=float(np.percentile(sims, 10)) if len(sims) else None,
        drift=drift, flags=all_flags, spans=spans, frames_scored=len(scorer.done),
        provenance=profile.provenance.to_dict())
