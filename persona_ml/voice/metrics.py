"""Speaker-verification figures: the shared ``persona_ml.metrics`` (kept importable from here)."""

from __future__ import annotations

from ..metrics import VerificationMetrics, verification_metrics

__all__ = ["VerificationMetrics", "verification_metrics"]
