"""Voice activity: which parts of a clip are speech, and how many seconds of it.

Silero VAD (MIT) ships its weights in the ``silero-vad`` wheel; we run its "sequence" ONNX export
with onnxruntime (up to 512 frames of 32 ms per call instead of a Python loop per frame) and turn
the per-frame probabilities into segments with hysteresis. The ``silero_vad`` package itself is
never imported: importing it sets torch's process-wide thread count to 1.

Example:
    >>> from persona_ml.voice.vad import SileroVad
    >>> vad = SileroVad()                                  # doctest: +SKIP
    >>> act = vad.activity(clip.samples)                  # doctest: +SKIP
    >>> act.speech_s, act.segments[:2]                    # doctest: +SKIP
    (9.41, ((0.29, 3.74), (3.97, 6.11)))
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import BackendError, BackendUnavailableError, InputError
from ..faces.types import ModelProvenance
from .models import VadSpec, locate_package_file, vad_spec

FRAME = 512    # samples per frame at 16 kHz (32 ms)
CONTEXT = 64   # samples of the previous frame the model sees
BLOCK = 512    # frames per ONNX call (16.4 s)


@dataclass(frozen=True)
class SpeechActivity:
    """Speech found in one clip.

    Attributes:
        segments: ``(start_s, end_s)`` of each speech run, padded and merged.
        speech_s: total seconds inside ``segments``.
        duration_s: the clip's length.
        frame_s: the probability frame length (0.032 s).
        probabilities: per-frame speech probability.
    """

    segments: tuple[tuple[float, float], ...]
    speech_s: float
    duration_s: float
    frame_s: float
    probabilities: np.ndarray

    @property
    def speech_ratio(self) -> float:
        return self.speech_s / self.duration_s if self.duration_s > 0 else 0.0

    def mask(self, n_samples: int, sample_rate: int) -> np.ndarray:
        """Boolean per-sample mask of the speech segments."""
        out = np.zeros(n_samples, dtype=bool)
        for start, end in self.segments:
            out[int(round(start * sample_rate)):int(round(end * sample_rate))] = True
        return out


class SileroVad:
    """Silero VAD over 16 kHz mono float32 samples.

    Args:
        spec: the model spec (default: ``voice_models.yaml`` ``vad.silero``).
        threads: onnxruntime intra-op threads (1: the VAD is small; leave cores to the embedder).
    """

    sample_rate = 16000

    def __init__(self, spec: VadSpec | None = None, *, threads: int = 1) -> None:
        self.spec = spec or vad_spec("silero")
        if self.spec.sample_rate != self.sample_rate:
            raise InputError(f"SileroVad runs at 16000 Hz, the spec says {self.spec.sample_rate}",
                             field="sample_rate", value=self.spec.sample_rate)
        self.path = locate_package_file(self.spec.package, self.spec.file, self.spec.sha256, what="silero VAD")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("the VAD needs onnxruntime: pip install onnxruntime",
                                          code="backend_unavailable", backend="onnxruntime") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()  # one session state at a time (h/c are passed explicitly, but keep runs whole)
        self.provenance = ModelProvenance(backend="silero-vad", model_name=f"silero_vad_16k_sequence-{self.spec.package_version}",
                                          files={self.path.name: self.spec.sha256}, dim=1, license=self.spec.license,
                                          commercial_use=True)

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Per-32 ms-frame speech probabilities of ``samples`` (16 kHz mono float32)."""
        x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        n_frames = (len(x) + FRAME - 1) // FRAME
        if n_frames == 0:
            return np.zeros(0, dtype=np.float32)
        frames = np.zeros((n_frames, FRAME), dtype=np.float32)
        frames.reshape(-1)[: len(x)] = x
        context = np.zeros((n_frames, CONTEXT), dtype=np.float32)
        context[1:] = frames[:-1, -CONTEXT:]
        inputs = np.concatenate([context, frames], axis=1)
        h = np.zeros((1, 1, 128), dtype=np.float32)
        c = np.zeros((1, 1, 128), dtype=np.float32)
        out = []
        try:
            with self._lock:
                for start in range(0, n_frames, BLOCK):
                    probs, h, c = self._session.run(["speech_probs", "hn", "cn"],
                                                    {"input": inputs[start:start + BLOCK], "h": h, "c": c})
                    out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
        except Exception as exc:
            raise BackendError(f"silero VAD failed on {len(x)} samples: {exc}", code="backend_error",
                               field="samples", value=len(x)) from exc
        return np.concatenate(out)

    def activity(self, samples: np.ndarray) -> SpeechActivity:
        """Speech segments of ``samples`` (16 kHz mono float32) with hysteresis:
        speech starts at ``threshold``, ends after ``min_silence_s`` below ``neg_threshold``;
        runs shorter than ``min_speech_s`` are dropped, the rest padded by ``pad_s`` and merged."""
        probs = self.probabilities(samples)
        return segments_from_probabilities(probs, len(samples) / float(self.sample_rate), self.spec)


def segments_from_probabilities(probs: np.ndarray, duration_s: float, spec: VadSpec,
                                frame_s: float = FRAME / 16000.0) -> SpeechActivity:
    """Hysteresis segmentation of per-frame probabilities (pure numpy; see ``SileroVad.activity``)."""
    runs: list[list[float]] = []
    in_speech, start, silence_from = False, 0, None
    min_silence = max(1, int(math.ceil(spec.min_silence_s / frame_s - 1e-9)))  # at least min_silence_s
    for i, p in enumerate(probs):
        if not in_speech:
            if p >= spec.threshold:
                in_speech, start, silence_from = True, i, None
        elif p < spec.neg_threshold:
            if silence_from is None:
                silence_from = i
            if i - silence_from + 1 >= min_silence:
                runs.append([start * frame_s, silence_from * frame_s])
                in_speech, silence_from = False, None
        else:
            silence_from = None
    if in_speech:
        runs.append([start * frame_s, len(probs) * frame_s])
    runs = [r for r in runs if r[1] - r[0] >= spec.min_speech_s]
    merged: list[list[float]] = []
    for s, e in runs:
        s, e = max(0.0, s - spec.pad_s), min(duration_s, e + spec.pad_s)
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    segments = tuple((round(s, 4), round(e, 4)) for s, e in merged if e > s)
    speech = float(sum(e - s for s, e in segments))
    return SpeechActivity(segments=segments, speech_s=round(speech, 4), duration_s=round(duration_s, 4),
                          frame_s=frame_s, probabilities=probs)
