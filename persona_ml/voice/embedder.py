"""``VoiceEmbedder``: one interface for speaker-embedding models.

The base class owns what every model needs and what is ours: audio intake at the model's rate,
voice activity (only speech is embedded, and its seconds are counted), the within-clip speaker
check over windowed embeddings, and warnings. A model supplies three things: its provenance,
how a stretch of speech becomes fixed-size input windows, and a batched forward pass.

Example:
    >>> from persona_ml.voice import load_voice_embedder
    >>> embedder = load_voice_embedder("ge2e")                    # doctest: +SKIP
    >>> a, b = embedder.embed_many(["a.wav", "b.m4a"])           # doctest: +SKIP
    >>> round(a.similarity(b), 3), a.speech_s, a.warning_codes   # doctest: +SKIP
    (0.871, 9.41, ())
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..audio import AudioLimits, AudioSource, LoadedAudio, load_audio
from ..errors import BackendError, InputError
from ..faces.types import ModelProvenance
from .types import VoiceEmbedding
from .vad import SileroVad, SpeechActivity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeakerCheckSettings:
    """Thresholds of the within-clip checks (per model: ``voice_thresholds.yaml``).

    Attributes:
        multi_speaker_max_cosine: the clip's windows split in two groups whose centroids are
            below this cosine: two speakers.
        min_windows_per_speaker: each group needs this many windows to count.
        min_windows_for_check: clips with fewer windows are not checked (too little to split).
        min_speech_s: below this the embedding is unreliable (``little_speech``).
        no_speech_s: below this there is no speech at all (``no_speech``).
    """

    multi_speaker_max_cosine: float
    min_windows_per_speaker: int
    min_windows_for_check: int
    min_speech_s: float
    no_speech_s: float


class VoiceEmbedder(abc.ABC):
    """Speaker embeddings of audio clips; subclasses wrap one model.

    Args:
        vad: the voice-activity model (default ``SileroVad()``).
        limits: audio intake limits.
        checks: within-clip check thresholds (default: this model's entry in ``voice_thresholds.yaml``).
        batch_size: windows per forward pass (windows of many clips share a batch).
    """

    #: the model's own sample rate
    sample_rate: int = 16000

    def __init__(self, *, vad: SileroVad | None = None, limits: AudioLimits | None = None,
                 checks: SpeakerCheckSettings | None = None, batch_size: int = 64) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}", field="batch_size",
                             value=batch_size)
        self.vad = vad or SileroVad()
        self.limits = limits or AudioLimits()
        self.batch_size = batch_size
        self._checks = checks

    # --- what a model provides -------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def provenance(self) -> ModelProvenance:
        """The model that makes the embeddings."""

    @abc.abstractmethod
    def windows(self, speech: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Model input windows of a stretch of speech (model-rate mono) and the sample range each covers."""

    @abc.abstractmethod
    def forward(self, windows: np.ndarray) -> np.ndarray:
        """Unit embeddings ``(n, dim)`` of a batch of windows."""

    # --- shared ----------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.provenance.dim

    @property
    def checks(self) -> SpeakerCheckSettings:
        if self._checks is None:
            from .thresholds import voice_thresholds_for

            t = voice_thresholds_for(self.provenance)
            self._checks = SpeakerCheckSettings(multi_speaker_max_cosine=t.multi_speaker_max_cosine,
                                                min_windows_per_speaker=t.min_windows_per_speaker,
                                                min_windows_for_check=t.min_windows_for_check,
                                                min_speech_s=t.min_speech_s, no_speech_s=t.no_speech_s)
        return self._checks

    def load(self, source: AudioSource, *, source_sample_rate: int | None = None) -> LoadedAudio:
        """Audio intake at the model's rate (``persona_ml.audio.load_audio`` with this embedder's limits)."""
        return load_audio(source, sample_rate=self.sample_rate, limits=self.limits, source_sample_rate=source_sample_rate)

    def embed(self, source: AudioSource, *, source_sample_rate: int | None = None) -> VoiceEmbedding:
        """Embed one clip (path, bytes, file object, array with ``source_sample_rate``, ``LoadedAudio``).

        Raises:
            AudioError: the clip is refused by the intake (see ``persona_ml.audio.load_audio``).
        """
        return self.embed_many([source], source_sample_rate=source_sample_rate)[0]

    def embed_many(self, sources: Sequence[AudioSource], *, source_sample_rate: int | None = None) -> list[VoiceEmbedding]:
        """Embed several clips; their windows go through the model in shared batches.

        Returns:
            One ``VoiceEmbedding`` per source, in order.
        """
        if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
            raise InputError("embed_many takes a sequence of sources", field="sources", value=type(sources).__name__)
        prepared = []
        for src in sources:
            clip = self.load(src, source_sample_rate=source_sample_rate)
            prepared.append(self._prepare(clip))
        all_windows = [p[3] for p in prepared if len(p[3])]
        stacked = np.concatenate(all_windows) if all_windows else np.zeros((0,), np.float32)
        vectors = self._forward_batched(stacked)
        out, at = [], 0
        for clip, activity, kept, windows, ranges in prepared:
            part = vectors[at:at + len(windows)]
            at += len(windows)
            out.append(self._assemble(clip, activity, kept, part, ranges))
        return out

    def _forward_batched(self, windows: np.ndarray) -> np.ndarray:
        if len(windows) == 0:
            return np.zeros((0, self.dim), np.float32)
        chunks = []
        for start in range(0, len(windows), self.batch_size):
            try:
                chunks.append(np.asarray(self.forward(windows[start:start + self.batch_size]), dtype=np.float32))
            except (RuntimeError, ValueError) as exc:
                raise BackendError(f"{self.provenance.model_name} forward failed on a batch of shape "
                                   f"{windows[start:start + self.batch_size].shape}: {exc}", code="backend_error",
                                   field="windows", value=list(windows.shape)) from exc
        return np.concatenate(chunks)

    def _prepare(self, clip: LoadedAudio):
        activity = self.vad.activity(clip.samples)
        if activity.speech_s >= self.checks.no_speech_s:
            kept = np.nonzero(activity.mask(len(clip.samples), clip.sample_rate))[0]
        else:  # nothing to select: embed what there is, and say so
            kept = np.arange(len(clip.samples))
        speech = clip.samples[kept]
        windows, ranges = self.windows(speech)
        return clip, activity, kept, windows, ranges

    def _assemble(self, clip: LoadedAudio, activity: SpeechActivity, kept: np.ndarray, partials: np.ndarray,
                  ranges: list[tuple[int, int]]) -> VoiceEmbedding:
        rate = float(clip.sample_rate)
        mean = partials.astype(np.float64).mean(axis=0)
        vector = (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)
        times = []
        for start, stop in ranges:  # window sample ranges in the kept (speech-only) signal -> clip time
            a = kept[min(start, len(kept) - 1)] if len(kept) else 0
            b = kept[min(max(stop - 1, start), len(kept) - 1)] if len(kept) else 0
            times.append((round(a / rate, 3), round((b + 1) / rate, 3)))
        warnings = [dict(w) for w in clip.warnings]
        checks = self.checks
        if activity.speech_s < checks.no_speech_s:
            warnings.append({"code": "no_speech", "message": f"the VAD finds {activity.speech_s:.2f} s of speech in "
                             f"{clip.duration_s:.2f} s: the embedding is of non-speech", "speech_s": activity.speech_s,
                             "limit": checks.no_speech_s})
        elif activity.speech_s < checks.min_speech_s:
            warnings.append({"code": "little_speech", "message": f"only {activity.speech_s:.2f} s of speech (under "
                             f"{checks.min_speech_s:g} s): the embedding is unreliable", "speech_s": activity.speech_s,
                             "limit": checks.min_speech_s})
        enough = len(partials) >= max(checks.min_windows_for_check, 2 * checks.min_windows_per_speaker)
        speaker_check = two_speaker_split(partials, times, checks) if enough else None
        if speaker_check is not None and speaker_check["multiple_speakers"]:
            warnings.append({"code": "multiple_speakers", "message": f"the clip's windows form two groups whose voices "
                             f"differ (cosine {speaker_check['centroid_cosine']:.3f} < {checks.multi_speaker_max_cosine:g}): "
                             f"likely {speaker_check['sizes'][0]} + {speaker_check['sizes'][1]} windows of two speakers",
                             "centroid_cosine": speaker_check["centroid_cosine"],
                             "limit": checks.multi_speaker_max_cosine, "groups": speaker_check["groups"]})
        return VoiceEmbedding(vector=vector, provenance=self.provenance, source=clip.source, sha256=clip.sha256,
                              duration_s=clip.duration_s, speech_s=activity.speech_s,
                              partials=partials.astype(np.float32), partial_times=tuple(times),
                              warnings=tuple(warnings), audio=clip.to_dict(), speaker_check=speaker_check)


def two_speaker_split(partials: np.ndarray, times: Sequence[tuple[float, float]],
                      checks: SpeakerCheckSettings, iterations: int = 20) -> dict:
    """Split a clip's window embeddings into two groups (spherical 2-means) and say whether they
    are two voices: both groups hold ``min_windows_per_speaker`` windows and their centroids'
    cosine is below ``multi_speaker_max_cosine``. One speaker's windows give one tight group whose
    split halves stay close; a second voice gives a group of its own."""
    p = partials.astype(np.float64)
    mean = p.mean(axis=0)
    a = int(np.argmin(p @ mean))              # the window least like the clip
    b = int(np.argmin(p @ p[a]))              # and the one least like that
    centroids = np.stack([p[a], p[b]])
    labels = np.zeros(len(p), dtype=int)
    for _ in range(iterations):
        new = np.argmax(p @ centroids.T, axis=1)
        if (new == labels).all() and _ > 0:
            break
        labels = new
        for k in (0, 1):
            members = p[labels == k]
            if len(members):
                c = members.mean(axis=0)
                centroids[k] = c / max(np.linalg.norm(c), 1e-12)
    sizes = [int((labels == 0).sum()), int((labels == 1).sum())]
    cosine = float(centroids[0] @ centroids[1])
    multiple = min(sizes) >= checks.min_windows_per_speaker and cosine < checks.multi_speaker_max_cosine
    groups = [[list(times[i]) for i in np.nonzero(labels == k)[0]] for k in (0, 1)]
    return {"centroid_cosine": round(cosine, 4), "sizes": sizes, "multiple_speakers": bool(multiple),
            "groups": groups, "n_windows": int(len(p))}
