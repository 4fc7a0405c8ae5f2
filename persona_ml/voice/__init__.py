"""Voice persona assets: speaker embeddings, voice activity, voice profiles, clone rules and
speech generation scored for likeness.

Importing this package loads no model and imports no torch; names resolve on first use.

Example:
    >>> from persona_ml.voice import load_voice_embedder, VoiceProfile
    >>> embedder = load_voice_embedder()                           # doctest: +SKIP
    >>> profile = VoiceProfile.build(embedder.embed_many(paths))    # doctest: +SKIP
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_NAMES = {
    "VoiceEmbedder": "persona_ml.voice.embedder",
    "SpeakerCheckSettings": "persona_ml.voice.embedder",
    "GE2EEmbedder": "persona_ml.voice.ge2e",
    "load_voice_embedder": "persona_ml.voice.api",
    "SileroVad": "persona_ml.voice.vad",
    "SpeechActivity": "persona_ml.voice.vad",
    "VoiceEmbedding": "persona_ml.voice.types",
    "VoiceThresholds": "persona_ml.voice.thresholds",
    "voice_thresholds_for": "persona_ml.voice.thresholds",
    "verification_metrics": "persona_ml.voice.metrics",
}

__all__ = sorted(_NAMES)
__getattr__ = lazy_getattr(__name__, _NAMES)
