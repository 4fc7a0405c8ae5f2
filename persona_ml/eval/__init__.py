"""Identity evaluation of character LoRAs: prompt suite, per-prompt identity, contact sheet, plots.

Public names resolve lazily (no torch/matplotlib import until used).
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "evaluate_lora": "persona_ml.eval.report",
    "IdentityReport": "persona_ml.eval.report",
    "PromptResult": "persona_ml.eval.report",
    "CheckpointResult": "persona_ml.eval.report",
    "EvalPrompt": "persona_ml.eval.report",
    "DEFAULT_PROMPT_SUITE": "persona_ml.eval.report",
    "contact_sheet": "persona_ml.eval.contact_sheet",
    "plot_loss_curve": "persona_ml.eval.plots",
    "plot_similarity_per_checkpoint": "persona_ml.eval.plots",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
