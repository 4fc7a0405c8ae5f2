"""The prepared-dataset format shared by dataset preparation (writer) and the trainer (reader).

A prepared folder holds:
    dataset.json     PreparedDatasetInfo (format_version, trigger, caption_dropout, resolutions,
                     dataset_hash, profile fingerprint, counts)
    manifest.jsonl   one PreparedItem per line, sorted by ``id``
    images/<id>.png  the cropped, bucketed training image (exactly ``width`` x ``height``)
    masks/<id>.png   optional soft face mask, L mode, same size (255 = face)
    captions are in the manifest (``caption``); ``images/<id>.txt`` mirrors them for other tools.

The folder is a closed world (see ``load_prepared``): the trainer never reads a file outside it
and never trusts a file whose bytes differ from what the manifest recorded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .._json import short_repr
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
    mask_sha256: str = ""           # sha256 of the mask PNG bytes ("" in manifests written before it existed)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop"] = list(self.crop)
        d["face_bbox"] = [round(float(v), 2) for v in self.face_bbox]
        if not self.mask_sha256:
            d.pop("mask_sha256")  # the same bytes as before the field existed
        return d

    @classmethod
    def from_dict(cls, d: Any) -> PreparedItem:
        """Parse one manifest line strictly: every field of the right JSON type and range.

        Raises:
            ArtifactError: ``manifest_invalid`` naming the field.
        """
        if not isinstance(d, dict):
            raise ArtifactError(f"a manifest item must be a JSON object, got {type(d).__name__}",
                                code="manifest_invalid", field="manifest", value=short_repr(d))
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in d if k not in names)
        if unknown:
            raise ArtifactError(f"manifest item has unknown field(s) {unknown[:5]}", code="manifest_invalid",
                                field=f"manifest.{unknown[0]}", value=unknown[:5])
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                if f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
                    raise ArtifactError(f"manifest item lacks {f.name!r}", code="manifest_invalid",
                                        field=f"manifest.{f.name}", value=None, item=short_repr(d.get("id")))
                continue
            check = _ITEM_FIELDS.get(f.name)
            value = d[f.name]
            kwargs[f.name] = check(f.name, value) if check is not None else value
        if not _SHA256.match(kwargs.get("image_sha256", "")):
            raise ArtifactError(f"manifest item {kwargs['id']!r}: image_sha256 must be the 64-hex sha256 of its "
                                "image (re-run prepare)", code="manifest_invalid", field="manifest.image_sha256",
                                value=kwargs.get("image_sha256"))
        return cls(**kwargs)


def _bad(name: str, value: Any, what: str) -> ArtifactError:
    return ArtifactError(f"manifest field {name!r} must be {what}, got {short_repr(value)}", code="manifest_invalid",
                         field=f"manifest.{name}", value=value)


def _str(name: str, value: Any, *, max_len: int = 4096, empty: bool = True) -> str:
    if not isinstance(value, str) or len(value) > max_len or (not empty and not value) or "\x00" in value:
        raise _bad(name, value, f"a string of at most {max_len} characters" + ("" if empty else ", not empty"))
    return value


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(name, value, f"an integer in {lo}..{hi}")
    return value


def _numbers(name: str, value: Any, n: int, integer: bool) -> tuple:
    ok = isinstance(value, list) and len(value) == n and all(
        not isinstance(v, bool) and (isinstance(v, int) if integer else isinstance(v, (int, float)))
        and math.isfinite(v) and abs(v) <= 1 << 31 for v in value)
    if not ok:
        raise _bad(name, value, f"a list of {n} {'integers' if integer else 'finite numbers'}")
    return tuple(int(v) for v in value) if integer else tuple(float(v) for v in value)


def _opt_str(name: str, value: Any) -> str | None:
    return None if value is None else _str(name, value, empty=False)


_ITEM_FIELDS = {
    "id": lambda n, v: _str(n, v, max_len=256, empty=False),
    "image": lambda n, v: _str(n, v, empty=False),
    "caption": _str,
    "width": lambda n, v: _int(n, v, 1, 1 << 16),
    "height": lambda n, v: _int(n, v, 1, 1 << 16),
    "source_sha256": _str,
    "source": _str,
    "crop": lambda n, v: _numbers(n, v, 4, integer=True),
    "kind": lambda n, v: _str(n, v, max_len=64, empty=False),
    "face_bbox": lambda n, v: _numbers(n, v, 4, integer=False),
    "mask": _opt_str,
    "image_sha256": lambda n, v: _str(n, v, max_len=64),
    "mask_sha256": lambda n, v: _str(n, v, max_len=64),
}


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

    @classmethod
    def from_dict(cls, raw: Any, where: str = "dataset.json") -> PreparedDatasetInfo:
        """Parse ``dataset.json`` strictly (``manifest_invalid`` naming the field)."""
        if not isinstance(raw, dict):
            raise ArtifactError(f"{where} must hold a JSON object, got {type(raw).__name__}", code="manifest_invalid",
                                field="dataset.json", value=short_repr(raw))
        if raw.get("format_version") != MANIFEST_FORMAT_VERSION or isinstance(raw.get("format_version"), bool):
            raise ArtifactError(f"{where}: manifest format_version {short_repr(raw.get('format_version'))} is not "
                                f"{MANIFEST_FORMAT_VERSION}", code="manifest_invalid", field="format_version",
                                value=raw.get("format_version"))
        unknown = sorted(k for k in raw if k not in {f.name for f in fields(cls)})
        if unknown:
            raise ArtifactError(f"{where} has unknown field(s) {unknown[:5]}", code="manifest_invalid",
                                field=f"dataset.{unknown[0]}", value=unknown[:5])
        for key in ("trigger", "caption_dropout", "resolutions", "dataset_hash", "num_items", "num_source_images"):
            if key not in raw:
                raise ArtifactError(f"{where} lacks {key!r}", code="manifest_invalid", field=f"dataset.{key}",
                                    value=None)
        dropout = raw["caption_dropout"]
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise _bad("caption_dropout", dropout, "a number in [0, 1)")
        res = raw["resolutions"]
        if not isinstance(res, list) or not res or not all(
                isinstance(r, int) and not isinstance(r, bool) and 16 <= r <= 1 << 14 for r in res):
            raise _bad("resolutions", res, "a non-empty list of integers in 16..16384")
        extra = raw.get("extra", {})
        if not isinstance(extra, dict):
            raise _bad("extra", extra, "an object")
        return cls(format_version=MANIFEST_FORMAT_VERSION, trigger=_str("trigger", raw["trigger"], max_len=256,
                                                                          empty=False),
                   caption_dropout=float(dropout), resolutions=tuple(res),
                   dataset_hash=_str("dataset_hash", raw["dataset_hash"], max_len=64, empty=False),
                   profile_fingerprint=_opt_str("profile_fingerprint", raw.get("profile_fingerprint")),
                   num_items=_int("num_items", raw["num_items"], 0, 1 << 31),
                   num_source_images=_int("num_source_images", raw["num_source_images"], 0, 1 << 31),
                   extra=dict(extra))


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset folder: a closed world.

    Every file it names lies inside ``root`` (``path`` refuses ``..``, absolute paths and
    symlinks leaving it), and ``verify(item)`` checks an item's files against the size and
    sha256 its manifest recorded before anything derived from them (a cached latent) is
    trusted. ``load_prepared`` verifies every item; a dataset built by hand is verified on
    first use of each item.
    """

    root: Path
    info: PreparedDatasetInfo
    items: tuple[PreparedItem, ...]
    _verified: dict = field(default_factory=dict, compare=False, repr=False)

    def path(self, rel: str) -> Path:
        """``root / rel`` after checking that it stays inside ``root``.

        Raises:
            ArtifactError: ``dataset_path_escapes``.
        """
        return _inside(self.root, rel)

    def verify(self, item: PreparedItem) -> None:
        """Check ``item``'s image (and mask) against the manifest: inside the folder, a regular
        file, the recorded sha256 and width/height. Done once per item and dataset object.

        Raises:
            ArtifactError: ``dataset_path_escapes``, ``dataset_file_changed`` or ``manifest_invalid``.
        """
        if self._verified.get(item.id) is item:
            return
        _verify_file(self.root, item, item.image, item.image_sha256, "image")
        if item.mask:
            _verify_file(self.root, item, item.mask, item.mask_sha256, "mask")
        self._verified[item.id] = item


def dataset_hash(items: list[PreparedItem] | tuple[PreparedItem, ...]) -> str:
    h = hashlib.sha256()
    for it in sorted(items, key=lambda i: i.id):
        h.update(json.dumps([it.id, it.image_sha256, it.caption, it.mask is not None, it.width, it.height]).encode())
    return h.hexdigest()


#: manifest files larger than this are refused unread (30 items are a few KB)
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: one prepared image or mask
MAX_ITEM_BYTES = 256 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _read(root: Path, name: str) -> bytes:
    from .._files import FileProblem, read_regular_file

    try:
        return read_regular_file(root / name, max_bytes=MAX_MANIFEST_BYTES)
    except FileProblem as exc:
        if exc.reason == "not_found":
            raise ArtifactError(f"{root} is not a prepared dataset (needs dataset.json and manifest.jsonl): "
                                f"{exc.message}", code="manifest_invalid", field="images", value=str(root)) from None
        code = "path_invalid" if exc.reason in ("not_a_file", "name_too_long") else "manifest_invalid"
        raise ArtifactError(f"{root}: {exc.message}", code=code, field=name, value=str(root / name),
                            **exc.details()) from None


def _inside(root: Path, rel: Any) -> Path:
    """``root / rel`` if ``rel`` is a relative path without ``..`` whose real path (symlinks
    resolved) stays inside ``root``'s real path."""
    from .._files import is_within

    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise ArtifactError(f"{root}: a manifest path must be a non-empty string, got {short_repr(rel)}",
                            code="manifest_invalid", field="manifest", value=short_repr(rel))
    pure = PurePosixPath(rel)
    if pure.is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise ArtifactError(f"{root}: the manifest names an absolute path {rel!r}; a prepared dataset names only "
                            "files inside its folder", code="dataset_path_escapes", field="manifest", value=rel)
    if ".." in pure.parts or ".." in PureWindowsPath(rel).parts:
        raise ArtifactError(f"{root}: the manifest path {rel!r} climbs out with '..'; a prepared dataset names only "
                            "files inside its folder", code="dataset_path_escapes", field="manifest", value=rel)
    full = root / rel
    try:
        inside = is_within(root, full)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{root}: the manifest path {rel!r} cannot be resolved: {exc}", code="manifest_invalid",
                            field="manifest", value=rel) from None
    if not inside:
        raise ArtifactError(f"{root}: {rel!r} is a symlink (or lies under one) that leads outside the dataset folder",
                            code="dataset_path_escapes", field="manifest", value=rel)
    return full


def _verify_file(root: Path, item: PreparedItem, rel: str, sha256: str, what: str) -> None:
    import io

    from PIL import Image

    from .._files import FileProblem, read_regular_file

    path = _inside(root, rel)
    try:
        data = read_regular_file(path, max_bytes=MAX_ITEM_BYTES)
    except FileProblem as exc:
        code = "path_invalid" if exc.reason in ("not_a_file", "name_too_long") else "manifest_invalid"
        if exc.reason == "not_found":
            message = f"{root}: manifest names a missing file {rel}"
        else:
            message = f"{root}: the {what} of item {item.id!r}: {exc.message}"
        raise ArtifactError(message, code=code, field="manifest", value=rel, item=item.id, **exc.details()) from None
    if sha256:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise ArtifactError(f"{root}: {rel} was changed after the dataset was prepared (sha256 {digest[:12]}... "
                                f"!= recorded {sha256[:12]}...); re-run prepare", code="dataset_file_changed",
                                field=f"manifest.{what}_sha256", value=digest, expected=sha256, item=item.id)
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = tuple(img.size)
    except Exception as exc:  # noqa: BLE001 (Pillow raises many types on a damaged header)
        raise ArtifactError(f"{root}: {rel} is not a readable image ({type(exc).__name__})", code="dataset_file_changed",
                            field="manifest", value=rel, item=item.id) from None
    if size != (item.width, item.height):
        raise ArtifactError(f"{root}: {rel} is {size[0]}x{size[1]} but the manifest records "
                            f"{item.width}x{item.height}; re-run prepare", code="dataset_file_changed",
                            field=f"manifest.{what}", value=list(size), expected=[item.width, item.height],
                            item=item.id)


def load_prepared(root: str | os.PathLike) -> PreparedDataset:
    """Read and verify a prepared dataset folder.

    The folder is a closed world: every image and mask path must resolve inside it (no ``..``,
    no absolute path, no symlink leaving it), ids are unique, and each file must still have
    the sha256 and width/height recorded when it was prepared (so no stale cached latent of a
    replaced image is ever trusted). ``dataset.json`` and ``manifest.jsonl`` are parsed within
    the bounds of ``persona_ml._parse`` and checked field by field.

    Raises:
        ArtifactError: ``manifest_invalid`` (missing, malformed or inconsistent files, with the
            field), ``dataset_path_escapes``, ``dataset_file_changed``, ``path_invalid`` (a
            folder/FIFO/device named as a manifest file).
    """
    from .._parse import ParseProblem, loads_json

    try:
        root = Path(root)
    except TypeError as exc:
        raise ArtifactError(f"not a dataset folder: {exc}", code="manifest_invalid", field="images",
                            value=short_repr(root)) from None
    info_raw, manifest_raw = _read(root, "dataset.json"), _read(root, "manifest.jsonl")
    try:
        info = PreparedDatasetInfo.from_dict(loads_json(info_raw, what=f"{root}/dataset.json"), f"{root}/dataset.json")
        text = manifest_raw.decode("utf-8")
    except ParseProblem as exc:
        raise ArtifactError(exc.message, code="manifest_invalid", field="dataset.json", value=str(root),
                            reason=exc.reason) from None
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{root}/manifest.jsonl is not UTF-8 text (offset {exc.start})", code="manifest_invalid",
                            field="manifest", value=str(root)) from None
    items: list[PreparedItem] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = loads_json(line, what=f"{root}/manifest.jsonl line {lineno}")
        except ParseProblem as exc:
            raise ArtifactError(exc.message, code="manifest_invalid", field="manifest", value=str(root),
                                line=lineno, reason=exc.reason) from None
        try:
            items.append(PreparedItem.from_dict(raw))
        except ArtifactError as exc:
            raise ArtifactError(f"{root}/manifest.jsonl line {lineno}: {exc.message}", code="manifest_invalid",
                                line=lineno, **exc.details) from None
    ids: dict[str, int] = {}
    for n, it in enumerate(items):
        if it.id in ids:
            raise ArtifactError(f"{root}: the manifest lists the id {it.id!r} twice (items {ids[it.id] + 1} and "
                                f"{n + 1})", code="manifest_invalid", field="manifest.id", value=it.id)
        ids[it.id] = n
    if info.num_items != len(items):
        raise ArtifactError(f"{root}: dataset.json says {info.num_items} items, manifest.jsonl holds {len(items)}",
                            code="manifest_invalid", field="num_items", value=info.num_items, actual=len(items))
    if info.dataset_hash != dataset_hash(items):
        raise ArtifactError(f"{root}: dataset_hash does not match the manifest", code="manifest_invalid",
                            field="dataset_hash", value=info.dataset_hash)
    dataset = PreparedDataset(root=root, info=info, items=tuple(sorted(items, key=lambda i: i.id)))
    for it in dataset.items:
        dataset.verify(it)
    return dataset


def write_manifest(root: Path, info: PreparedDatasetInfo, items: list[PreparedItem]) -> None:
    """Write dataset.json + manifest.jsonl into ``root`` (call inside ``atomic_dir``)."""
    from .._atomic import atomic_write_json, atomic_write_text

    lines = [json.dumps(it.to_dict(), sort_keys=True) for it in sorted(items, key=lambda i: i.id)]
    atomic_write_text(root / "manifest.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    d = asdict(info)
    d["resolutions"] = list(info.resolutions)
    atomic_write_json(root / "dataset.json", d)
