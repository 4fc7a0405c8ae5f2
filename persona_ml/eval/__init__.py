"""Identity evaluation of character LoRAs: prompt suite, per-prompt identity, contact sheet, plots.

Public names resolve lazily (no torch/matplotlib import until used).
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'persona_ml.eval' has no attribute {name!r}")
