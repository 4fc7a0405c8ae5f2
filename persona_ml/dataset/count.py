"""One count of "training images": distinct accepted photos, the same everywhere.

A prepared folder (or its ``images/`` subfolder) is read: its ``dataset.json`` says how many
distinct photos produced its training images (``num_source_images``; a photo gives a close-up and
often a wide crop, so counting the files would count crops). A raw folder is screened exactly as
``prepare_dataset`` would take it: photos screening accepts and whose crops fit a bucket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["ImageCount", "count_training_images", "prepared_root"]


@dataclass(frozen=True)
class ImageCount:
    """How many training images a folder gives.

    Attributes:
        count: distinct accepted photos that yield at least one training crop.
        source: ``"prepared"`` (read from the dataset's own count) or ``"screened"``.
        path: the folder counted (the prepared root for a prepared dataset).
        files: image files found in a raw folder (``None`` for a prepared one).
        left_out: ``{code: n}`` of the photos that do not count (rejected by screening, or
            ``too_small_for_bucket`` / ``crop_contains_other_face``).
        report: the ``DatasetReport`` of a screened folder.
    """

    count: int
    source: str
    path: str
    files: int | None = None
    left_out: dict[str, int] = field(default_factory=dict)
    report: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "source": self.source, "path": self.path, "files": self.files,
                "left_out": dict(sorted(self.left_out.items()))}


def prepared_root(folder: str | os.PathLike) -> Path | None:
    """The prepared dataset ``folder`` is, or is the ``images/``/``masks/`` folder of; else ``None``."""
    p = Path(folder)
    for cand in (p, p.parent):
        if (cand / "dataset.json").is_file() and (cand / "manifest.jsonl").is_file():
            return cand
    return None


def count_training_images(folder: str | os.PathLike, *, profile: Any = None, embedder: Any = None,
                          screening: Any = None, prepare: Any = None) -> ImageCount:
    """Count a folder's training images the way training will see them.

    Args:
        folder: a prepared dataset (or its ``images/``) or a folder of raw photos.
        profile: the character's ``FaceProfile`` for screening a raw folder (without one, the set's
            own faces are clustered, as ``scripts/train_lora.py`` does without ``--profile``).
        embedder: a ``FaceEmbedder`` (default ``FaceEmbedder("dlib")``), for a raw folder.
        screening / prepare: ``ScreeningConfig`` / ``PrepareConfig`` (defaults otherwise).

    Returns:
        ImageCount.

    Raises:
        InputError: ``folder`` is not a folder.
        ArtifactError: a prepared dataset's manifest is broken (``manifest_invalid``).

    Example:
        >>> count_training_images("photos/").count          # doctest: +SKIP
        6
    """
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"not a folder: {path}", field="images", value=str(path))
    root = prepared_root(path)
    if root is not None:
        from .manifest import load_prepared

        info = load_prepared(root).info
        return ImageCount(count=int(info.num_source_images), source="prepared", path=str(root))
    from ..images import list_images
    from .prepare import PrepareConfig, plan_crops
    from .screening import screen_dataset

    if embedder is None:
        from ..faces.embedder import FaceEmbedder

        embedder = FaceEmbedder("dlib")
    files = list_images(path)
    report = screen_dataset(path, profile, embedder, config=screening)
    cfg = prepare or PrepareConfig()
    left_out: dict[str, int] = {}
    for s in report.rejected:
        left_out[s.code or "unknown"] = left_out.get(s.code or "unknown", 0) + 1
    count = 0
    for s in report.accepted:
        w, h = s.face.image_size
        plans, issues = plan_crops(s.face.bbox, (w, h), cfg, key=s.sha256 or "", other_faces=s.other_faces,
                                   label=s.source, content=s.content_box)
        if plans:
            count += 1
        else:
            code = issues[0].code if issues else "too_small_for_bucket"
            left_out[code] = left_out.get(code, 0) + 1
    return ImageCount(count=count, source="screened", path=str(path), files=len(files), left_out=left_out,
                      report=report)
