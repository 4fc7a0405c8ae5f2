"""The result of dataset screening: each photo's verdict, coverage with advice, the rules check.

Built by ``persona_ml.dataset.screening.screen_dataset``; serialised with ``to_dict``/``to_json``
and read by people through ``summary``; ``prepare_dataset`` takes it directly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._json import jsonable
from ..faces.types import FaceObservation


@dataclass(frozen=True)
class ScreenedImage:
    """The verdict on one candidate photo.

    Attributes:
        index: position in the input.
        source: path or label.
        sha256: sha256 of the original bytes (``None`` when the file could not be read).
        accepted: whether it may be trained on.
        code: rejection code (``None`` when accepted).
        reason: a sentence a user can act on.
        face: the primary face (when one was found).
        other_faces: boxes of smaller background faces (crops avoid them).
        framing: ``closeup`` / ``half_body`` / ``full_body``.
        pose: ``frontal`` / ``three_quarter`` / ``profile`` (``None`` when unknown).
        duplicate_of: for duplicates, the source of the photo that is kept.
        metrics: measured values (face size, sharpness, luma, identity cosine, hashes ...).
        warnings: ``{"code", "message"}`` entries that did not reject the photo.
        input: the original input, for preparation (not serialised).
        content_box: ``(x0, y0, x1, y1)`` of the real content inside solid borders (``None``
            when the photo could not be read); prepared crops stay inside it.
    """

    index: int
    source: str
    sha256: str | None
    accepted: bool
    code: str | None = None
    reason: str | None = None
    face: FaceObservation | None = None
    other_faces: tuple[tuple[float, float, float, float], ...] = ()
    framing: str | None = None
    pose: str | None = None
    duplicate_of: str | None = None
    metrics: dict = field(default_factory=dict)
    warnings: tuple[dict, ...] = ()
    input: Any = field(default=None, repr=False, compare=False)
    content_box: tuple[int, int, int, int] | None = None

    @property
    def status(self) -> str:
        return "accepted" if self.accepted else "rejected"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "source": self.source, "sha256": self.sha256, "status": self.status,
                "code": self.code, "reason": self.reason,
                "face": None if self.face is None else self.face.to_dict(),
                "other_faces": [[round(float(v), 1) for v in b] for b in self.other_faces],
                "framing": self.framing, "pose": self.pose, "duplicate_of": self.duplicate_of,
                "content_box": None if self.content_box is None else list(self.content_box),
                "metrics": jsonable(self.metrics), "warnings": list(self.warnings)}


@dataclass(frozen=True)
class Coverage:
    """How varied the accepted photos are, with advice when the set is one-sided."""

    framing: dict[str, int]
    pose: dict[str, int]
    advice: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"framing": dict(self.framing), "pose": dict(self.pose), "advice": list(self.advice)}


@dataclass(frozen=True)
class DatasetReport:
    """Result of ``screen_dataset``.

    Attributes:
        images: every candidate's verdict, in input order.
        coverage: framing and pose counts of the accepted photos, with advice.
        rule_violations: the LoRA rules checked on the ACCEPTED count (``RuleViolation``).
        rules: the full ``RuleCheckResult`` when a ``LoraRequest`` was given, else ``None``.
        thresholds: the effective thresholds used.
        overrides: overrides in force (e.g. ``allow_near_duplicates``), recorded for audit.
        warnings: report-level warnings (e.g. identity not checked).
        profile_fingerprint: the profile's id, when a profile was used.
        provenance: the embedding model's provenance dict.
        timings: seconds per stage (decode, detect_embed, measure, second_pass, decide).
    """

    images: tuple[ScreenedImage, ...]
    coverage: Coverage
    rule_violations: tuple = ()
    rules: Any = None
    thresholds: dict = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    warnings: tuple[dict, ...] = ()
    profile_fingerprint: str | None = None
    provenance: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def accepted(self) -> list[ScreenedImage]:
        return [s for s in self.images if s.accepted]

    @property
    def rejected(self) -> list[ScreenedImage]:
        return [s for s in self.images if not s.accepted]

    @property
    def ok(self) -> bool:
        """Whether the accepted photos satisfy the rules."""
        return not self.rule_violations

    def by_source(self, source: str | os.PathLike) -> ScreenedImage:
        """The verdict for one input (matched by path or file name)."""
        key = str(source)
        for s in self.images:
            if s.source == key or Path(s.source).name == key:
                return s
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        rejected_codes: dict[str, int] = {}
        for s in self.rejected:
            rejected_codes[s.code or "unknown"] = rejected_codes.get(s.code or "unknown", 0) + 1
        return {
            "ok": self.ok, "num_images": len(self.images), "num_accepted": len(self.accepted),
            "num_rejected": len(self.rejected), "rejected_by_code": dict(sorted(rejected_codes.items())),
            "accepted": [s.to_dict() for s in self.accepted], "rejected": [s.to_dict() for s in self.rejected],
            "coverage": self.coverage.to_dict(),
            "rule_violations": [v.to_dict() for v in self.rule_violations],
            "rules": None if self.rules is None else self.rules.to_dict(),
            "thresholds": jsonable(self.thresholds), "overrides": list(self.overrides),
            "warnings": list(self.warnings), "profile_fingerprint": self.profile_fingerprint,
            "provenance": jsonable(self.provenance), "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def summary(self) -> str:
        """A readable multi-line summary: counts, each rejection, warnings, coverage, rules."""
        lines = [f"{len(self.accepted)} of {len(self.images)} photos accepted"]
        for s in self.rejected:
            lines.append(f"  rejected {Path(s.source).name}: [{s.code}] {s.reason}")
        for s in self.images:
            for w in s.warnings:
                lines.append(f"  warning {Path(s.source).name}: [{w['code']}] {w['message']}")
        for w in self.warnings:
            lines.append(f"  warning: [{w['code']}] {w['message']}")
        if self.overrides:
            lines.append(f"  overrides in force: {', '.join(self.overrides)}")
        cov = self.coverage
        lines.append("  framing: " + ", ".join(f"{k} {v}" for k, v in cov.framing.items()))
        lines.append("  pose: " + ", ".join(f"{k} {v}" for k, v in cov.pose.items()))
        lines += [f"  advice: {a}" for a in cov.advice]
        if self.rule_violations:
            lines += [f"  rules: [{v.code}] {v.message}" for v in self.rule_violations]
        else:
            lines.append("  rules: the accepted photos satisfy the LoRA rules")
        return "\n".join(lines)

    # --- used by prepare_dataset ---
    def prepare_inputs(self) -> list:
        """The accepted photos as ``PrepareInput`` for ``prepare_dataset``."""
        from .prepare import PrepareInput

        return [PrepareInput(image=s.input if s.input is not None else s.source, face=s.face, name=s.source,
                             other_faces=s.other_faces, content_box=s.content_box)
                for s in self.accepted if s.face is not None]

    def prepare_extra(self) -> dict[str, Any]:
        """Screening facts recorded in the prepared ``dataset.json`` (no paths, no timings)."""
        flagged = sorted({Path(s.source).name for s in self.accepted for w in s.warnings
                          if w.get("code") == "near_duplicate"})
        return {"screening": {"num_images": len(self.images), "num_accepted": len(self.accepted),
                              "overrides": list(self.overrides), "near_duplicates_kept": flagged,
                              "coverage": self.coverage.to_dict()}}

