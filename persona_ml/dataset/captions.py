"""Training captions: the trigger word plus a description of the scene, never of the face.

A LoRA should learn the face's fixed traits (eye colour, nose, skin, face shape) through the
trigger word; if captions name them, the model binds them to those words instead and the
likeness weakens. So captions describe framing, pose and scene, and phrases that name fixed face
traits are removed from any caption that comes from elsewhere.

No captioning model can be downloaded here: ``SidecarCaptioner`` reads ``photo.txt`` beside
``photo.jpg`` when present and falls back to ``TemplateCaptioner``. Anything with a
``caption(item) -> str`` method (a VLM on a GPU worker) plugs in the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

logger = logging.getLogger(__name__)

# Words that describe what the LoRA must learn, not the scene. Matched as whole words.
DEFAULT_FACE_TRAIT_TERMS: tuple[str, ...] = (
    "eyes", "eye", "eyebrows", "eyebrow", "nose", "lips", "lip", "freckles", "freckled", "mole", "moles",
    "cheekbones", "jawline", "jaw", "chin", "dimples", "dimple", "complexion", "skin", "face shape",
    "facial features", "forehead", "wrinkles", "birthmark", "scar",
)

FRAMING_PHRASES = {"closeup": "close-up portrait", "half_body": "half-body shot", "full_body": "full-body shot"}
POSE_PHRASES = {"frontal": "facing the camera", "three_quarter": "three-quarter view", "profile": "in profile"}


@dataclass(frozen=True)
class CaptionItem:
    """What a captioner may look at for one prepared image.

    Attributes:
        source: the original image's path or label.
        kind: ``"closeup"`` or ``"wide"`` crop.
        framing: ``"closeup"``, ``"half_body"`` or ``"full_body"`` of the crop.
        pose: ``"frontal"``, ``"three_quarter"``, ``"profile"`` or ``None`` if unknown.
        pixels: the prepared (cropped, resized) RGB image, for model-based captioners.
    """

    source: str
    kind: str
    framing: str
    pose: str | None
    pixels: object = field(default=None, repr=False, compare=False)


@runtime_checkable
class Captioner(Protocol):
    """Describes the scene of a prepared image (without the trigger word)."""

    name: str

    def caption(self, item: CaptionItem) -> str:
        ...


@dataclass(frozen=True)
class TemplateCaptioner:
    """``"photo, close-up portrait, facing the camera"`` from framing and pose."""

    template: str = "photo, {framing}, {pose}"
    name: str = "template"

    def caption(self, item: CaptionItem) -> str:
        framing = FRAMING_PHRASES.get(item.framing, item.framing.replace("_", " "))
        pose = POSE_PHRASES.get(item.pose or "", "")
        text = self.template.format(framing=framing, pose=pose, kind=item.kind)
        return _tidy(text)


@dataclass(frozen=True)
class SidecarCaptioner:
    """Reads ``<image>.txt`` beside the source image; else falls back to ``fallback``."""

    fallback: Captioner = field(default_factory=TemplateCaptioner)
    name: str = "sidecar"
    encoding: str = "utf-8"

    def caption(self, item: CaptionItem) -> str:
        path = Path(item.source)
        sidecar = path.with_suffix(".txt")
        if path.suffix and sidecar.is_file():
            try:
                text = sidecar.read_text(encoding=self.encoding).strip()
            except (OSError, UnicodeDecodeError) as exc:
                logger.warning("cannot read caption %s (%s); using the template", sidecar, exc)
                text = ""
            if text:
                return " ".join(text.split())
        return self.fallback.caption(item)


def strip_face_traits(text: str, terms: Sequence[str] = DEFAULT_FACE_TRAIT_TERMS) -> tuple[str, list[str]]:
    """Remove comma/semicolon-separated phrases that name fixed face traits.

    Returns:
        ``(cleaned caption, removed phrases)``.

    Example:
        >>> strip_face_traits("a woman with green eyes, smiling, on a beach")
        ('a woman, smiling, on a beach', ['with green eyes'])
    """
    if not terms:
        return _tidy(text), []
    pattern = re.compile(r"\b(" + "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)) + r")\b",
                         re.IGNORECASE)
    kept: list[str] = []
    removed: list[str] = []
    for chunk in re.split(r"[,;]", text):
        piece = chunk.strip()
        if not piece:
            continue
        if pattern.search(piece):
            # "a woman with green eyes" -> keep "a woman", drop the trait clause
            m = re.search(r"\b(with|has|having|showing)\b", piece, re.IGNORECASE)
            if m and not pattern.search(piece[:m.start()]):
                head = piece[:m.start()].strip()
                removed.append(piece[m.start():].strip())
                if head:
                    kept.append(head)
            else:
                removed.append(piece)
            continue
        kept.append(piece)
    return ", ".join(kept), removed


def build_caption(trigger: str, scene: str, terms: Sequence[str] = DEFAULT_FACE_TRAIT_TERMS) -> tuple[str, list[str]]:
    """``"<trigger>, <scene without face traits>"``; the trigger is not repeated if present.

    Returns:
        ``(caption, removed phrases)``.
    """
    cleaned, removed = strip_face_traits(scene, terms)
    if removed:
        logger.info("caption: removed face-trait phrase(s) %s", removed)
    if re.search(r"(?<!\w)" + re.escape(trigger) + r"(?!\w)", cleaned):
        return cleaned, removed
    return (f"{trigger}, {cleaned}" if cleaned else trigger), removed


def _tidy(text: str) -> str:
    parts = [p.strip() for p in text.split(",")]
    return ", ".join(p for p in parts if p)
