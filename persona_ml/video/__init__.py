"""Video persona assets: video I/O, talking heads, motion transfer, and the per-frame identity report.

Heavy pieces load lazily: ``import persona_ml.video`` imports neither PyAV nor diffusers.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "VideoLimits": "persona_ml.video.io",
    "LoadedVideo": "persona_ml.video.io",
    "load_video": "persona_ml.video.io",
    "probe_video": "persona_ml.video.io",
    "write_video": "persona_ml.video.io",
    "Speech": "persona_ml.video.speech",
    "load_speech": "persona_ml.video.speech",
    "score_video": "persona_ml.video.identity",
    "VideoIdentityReport": "persona_ml.video.identity",
    "FrameScore": "persona_ml.video.identity",
    "write_report": "persona_ml.video.report",
    "estimate_av_sync": "persona_ml.video.sync",
    "SyncEstimate": "persona_ml.video.sync",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
