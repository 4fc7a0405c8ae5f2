"""The prepared-dataset format shared by dataset preparation (writer) and the trainer (reader).

A prepared folder holds:
    dataset.json     PreparedDatasetInfo (format_version, trigger, caption_dropout, resolutions,
                     dataset_hash, profile fingerprint, counts)
    manifest.jsonl   one PreparedItem per line, sorted by ``id``
    images/<id>.png  the cropped, bucketed training image (exactly ``width`` x ``height``)
    masks/<id>.png   optional soft face mask, L mode, same size (255 = face)
    captions are in the manifest (``caption``); ``images/<id>.txt`` mirrors them for other tools.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArtifactError

MANIFEST_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreparedItem:
    id: str
    image: str                      # relative to the prepared folder
    caption: str
    width: int
    height: int
    source_sha256: str              # sha256 of the original upload
    source: str                     # original file name (for reports)
    crop: tuple[int, int, int, int]  # crop box in the upright source image, before resizing
    kind: str                       # "closeup" | "wide"
    face_bbox: tuple[float, float, float, float]  # in the prepared image's pixel coords
    mask: str | None = None         # relative path, or None
    image_sha256: str = ""          # sha256 of the prepared PNG bytes (cache key)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop"] = list(self.crop)
        d["face_bbox"] = [round(float(v), 2) for v in self.face_bbox]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreparedItem:
        try:
            return cls(id=str(d["id"]), image=str(d["image"]), caption=str(d["caption"]),
                       width=int(d["width"]), height=int(d["height"]), source_sha256=str(d["source_sha256"]),
                       source=str(d.get("source", "")), crop=tuple(int(v) for v in d["crop"]),  # type: ignore[arg-type]
                       kind=str(d["kind"]), face_bbox=tuple(float(v) for v in d["face_bbox"]),  # type: ignore[arg-type]
                       mask=d.get("mask"), image_sha256=str(d.get("image_sha256", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"manifest item is malformed: {exc}: {d!r}", code="manifest_invalid",
                                field="manifest", value=d) from exc


@dataclass(frozen=True)
class PreparedDatasetInfo:
    format_version: int
    trigger: str
    caption_dropout: float
    resolutions: tuple[int, ...]
    dataset_hash: str               # sha256 over the sorted items' image_sha256 + caption + mask
    profile_fingerprint: str | None
    num_items: int
    num_source_images: int
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedDataset:
    root: Path
    info: PreparedDatasetInfo
    items: tuple[PreparedItem, ...]

    def path(self, rel: str) -> Path:
        return self.root / rel


def dataset_hash(items: list[PreparedItem] | tuple[PreparedItem, ...]) -> str:
    h = hashlib.sha256()
    for it in sorted(items, key=lambda i: i.id):
        h.update(json.dumps([it.id, it.image_sha256, it.caption, it.mask is not None, it.width, it.height]).encode())
    return h.hexdigest()


def load_prepared(root: str | os.PathLike) -> PreparedDataset:
    """Read a prepared dataset folder; raises ``ArtifactError`` (``manifest_invalid``) if broken."""
    root = Path(root)
    info_path, manifest_path = root / "dataset.json", root / "manifest.jsonl"
    if not info_path.is_file() or not manifest_path.is_file():
        raise ArtifactError(f"{root} is not a prepared dataset (needs dataset.json and manifest.jsonl)",
                            code="manifest_invalid", field="images", value=str(root))
    try:
        raw = json.loads(info_path.read_text())
        items = [PreparedItem.from_dict(json.loads(line)) for line in manifest_path.read_text().splitlines()
                 if line.strip()]
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{root}: invalid JSON: {exc}", code="manifest_invalid", field="manifest",
                            value=str(root)) from exc
    if raw.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise ArtifactError(f"{root}: manifest format_version {raw.get('format_version')!r} is not "
                            f"{MANIFEST_FORMAT_VERSION}", code="manifest_invalid", field="format_version",
                            value=raw.get("format_version"))
    info = PreparedDatasetInfo(format_version=int(raw["format_version"]), trigger=str(raw["trigger"]),
                               caption_dropout=float(raw["caption_dropout"]),
                               resolutions=tuple(int(r) for r in raw["resolutions"]),
                               dataset_hash=str(raw["dataset_hash"]),
                               profile_fingerprint=raw.get("profile_fingerprint"),
                               num_items=int(raw["num_items"]), num_source_images=int(raw["num_source_images"]),
                               extra=dict(raw.get("extra", {})))
    for it in items:
        for rel in (it.image, it.mask):
            if rel and not (root / rel).is_file():
                raise ArtifactError(f"{root}: manifest names a missing file {rel}", code="manifest_invalid",
                                    field="manifest", value=rel)
    if info.dataset_hash != dataset_hash(items):
        raise ArtifactError(f"{root}: dataset_hash does not match the manifest", code="manifest_invalid",
                            field="dataset_hash", value=info.dataset_hash)
    return PreparedDataset(root=root, info=info, items=tuple(sorted(items, key=lambda i: i.id)))


def write_manifest(root: Path, info: PreparedDatasetInfo, items: list[PreparedItem]) -> None:
    """Write dataset.json + manifest.jsonl into ``root`` (call inside ``atomic_dir``)."""
    from .._atomic import atomic_write_json, atomic_write_text

    lines = [json.dumps(it.to_dict(), sort_keys=True) for it in sorted(items, key=lambda i: i.id)]
    atomic_write_text(root / "manifest.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    d = asdict(info)
    d["resolutions"] = list(info.resolutions)
    atomic_write_json(root / "dataset.json", d)
