"""Preparation of accepted training images into the prepared-dataset folder the trainer reads.

For each accepted photo: a close-up crop and, where the photo shows more than the head, a wider
crop, each cut at a bucket's aspect ratio with the face inside, resized to that bucket (never
enlarged more than ``max_upscale``), captioned as "<trigger>, <scene>", with a soft face mask.
The folder layout is ``persona_ml.dataset.manifest``'s; everything is written inside one
``atomic_dir``. Same inputs, config and seed give the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._atomic import atomic_dir, atomic_write_bytes, atomic_write_text
from ..errors import InputError, PersonaMLError
from ..faces.types import FaceObservation
from ..images import ImageLimits, load_image
from .borders import content_box
from .captions import DEFAULT_FACE_TRAIT_TERMS, Captioner, CaptionItem, SidecarCaptioner, build_caption
from .crops import CropPlan, clip_box, face_in_crop, framing_of, overlap_fraction, plan_crop
from .manifest import MANIFEST_FORMAT_VERSION, PreparedDatasetInfo, PreparedItem, dataset_hash, write_manifest
from .masks import MaskConfig, face_mask

logger = logging.getLogger(__name__)

TRIGGER_RE = re.compile(r"^[^\s,;\n][^,;\n]{0,63}$")


@dataclass(frozen=True)
class PrepareConfig:
    """How accepted photos become training images.

    Attributes:
        resolutions: nominal bucket sizes (square side); an image goes to the largest it can fill.
        aspect_ratios: bucket aspect ratios (width / height) on offer.
        max_upscale: the most a crop may be enlarged; a smaller crop goes to a smaller bucket,
            and a photo too small for the smallest one is dropped (``too_small_for_bucket``).
        crops: ``"auto"`` (close-up, plus a wide crop when it shows clearly more), ``"closeup"``
            or ``"wide"`` only.
        closeup_context: ``(least, most)`` close-up width as a multiple of the face width.
        closeup_aspect: preferred close-up aspect ratio.
        closeup_face_y: where the face centre sits in a close-up (0 top, 1 bottom).
        wide_face_y: the same for wide crops (the body goes below the face).
        wide_min_area_ratio: a wide crop is kept only if it covers this many times the close-up.
        max_other_face_overlap: a crop holding more than this share of another person's face
            box is dropped (``crop_contains_other_face``): never train on other people.
        crop_jitter: random shift of crop centres (fraction of crop size), seeded.
        caption_dropout: probability the trainer drops the caption (recorded, used by the trainer).
        caption_template: used when no sidecar caption exists (see ``TemplateCaptioner``).
        face_trait_terms: words whose phrases are removed from captions (fixed face traits).
        masks: ``"ellipse"`` writes soft face masks; ``"none"`` writes none.
        mask: the mask's shape.
        closeup_min_face_ratio / half_body_min_face_ratio: framing buckets by the face box's
            share of the frame height (for captions and coverage).
        png_compress_level: zlib level of written PNGs (fixed for identical bytes). 1: on photos
            level 6 is 5x slower to encode for files only ~10% smaller.
    """

    resolutions: tuple[int, ...] = (512, 768, 1024)
    aspect_ratios: tuple[float, ...] = (1.0, 0.8, 1.25, 0.75, 1.3333, 0.6667, 1.5)
    max_upscale: float = 1.25
    crops: Literal["auto", "closeup", "wide"] = "auto"
    closeup_context: tuple[float, float] = (2.2, 3.2)
    closeup_aspect: float = 0.8
    closeup_face_y: float = 0.45
    wide_face_y: float = 0.3
    wide_min_area_ratio: float = 2.0
    max_other_face_overlap: float = 0.2
    crop_jitter: float = 0.03
    caption_dropout: float = 0.05
    caption_template: str = "photo, {framing}, {pose}"
    face_trait_terms: tuple[str, ...] = DEFAULT_FACE_TRAIT_TERMS
    masks: Literal["ellipse", "none"] = "ellipse"
    mask: MaskConfig = field(default_factory=MaskConfig)
    closeup_min_face_ratio: float = 0.28
    half_body_min_face_ratio: float = 0.09
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        bad = [r for r in self.resolutions if r <= 0 or r % 16]
        if not self.resolutions or bad:
            raise InputError(f"PrepareConfig.resolutions must be positive multiples of 16, got {self.resolutions}",
                             field="resolutions", value=list(self.resolutions))
        if not self.aspect_ratios or any(a <= 0 for a in self.aspect_ratios):
            raise InputError(f"PrepareConfig.aspect_ratios must be positive, got {self.aspect_ratios}",
                             field="aspect_ratios", value=list(self.aspect_ratios))
        if self.max_upscale < 1.0:
            raise InputError(f"PrepareConfig.max_upscale must be >= 1, got {self.max_upscale}",
                             field="max_upscale", value=self.max_upscale)
        if not 0.0 <= self.caption_dropout < 1.0:
            raise InputError(f"PrepareConfig.caption_dropout must be in [0, 1), got {self.caption_dropout}",
                             field="caption_dropout", value=self.caption_dropout)
        lo, hi = self.closeup_context
        if not 1.0 <= lo <= hi:
            raise InputError(f"PrepareConfig.closeup_context needs 1 <= least <= most, got {self.closeup_context}",
                             field="closeup_context", value=list(self.closeup_context))
        for name, low, high in (("closeup_face_y", 0.0, 1.0), ("wide_face_y", 0.0, 1.0),
                                ("max_other_face_overlap", 0.0, 1.0), ("crop_jitter", 0.0, 0.5),
                                ("closeup_min_face_ratio", 0.0, 1.0), ("half_body_min_face_ratio", 0.0, 1.0)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise InputError(f"PrepareConfig.{name} must be in [{low}, {high}], got {value}",
                                 field=name, value=value)
        if self.wide_min_area_ratio < 1.0:
            raise InputError(f"PrepareConfig.wide_min_area_ratio must be >= 1, got {self.wide_min_area_ratio}",
                             field="wide_min_area_ratio", value=self.wide_min_area_ratio)
        try:  # a bad template would otherwise fail in the middle of writing the dataset
            self.caption_template.format(framing="close-up portrait", pose="facing the camera", kind="closeup")
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise InputError(f"PrepareConfig.caption_template {self.caption_template!r} is not a valid template "
                             f"(placeholders: {{framing}}, {{pose}}, {{kind}}): {exc!r}",
                             field="caption_template", value=self.caption_template) from exc
        if not 0 <= self.png_compress_level <= 9:
            raise InputError(f"PrepareConfig.png_compress_level must be 0..9, got {self.png_compress_level}",
                             field="png_compress_level", value=self.png_compress_level)


@dataclass(frozen=True)
class PrepareInput:
    """One accepted photo and its primary face.

    Attributes:
        image: anything ``load_image`` accepts (a path lets a sidecar caption be found).
        face: the primary face found in that image.
        name: label for reports and the sidecar lookup (default: the path or ``<array>``).
        other_faces: boxes of other people's faces in the photo; crops avoid them.
        content_box: the real content inside solid borders (``borders.content_box``); found
            from the pixels when ``None``. No crop reaches outside it.
    """

    image: Any
    face: FaceObservation
    name: str | None = None
    other_faces: tuple[tuple[float, float, float, float], ...] = ()
    content_box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class PrepareIssue:
    """A crop or a whole photo left out, with a stable ``code`` and a reason."""

    source: str
    kind: str | None
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class PreparedResult:
    """What ``prepare_dataset`` wrote.

    Attributes:
        root: the prepared folder.
        info: its ``dataset.json``.
        items: its manifest lines (sorted by id).
        issues: crops and photos left out, with codes.
        rule_violations: image-count rule checked on the photos that produced training images.
    """

    root: Path
    info: PreparedDatasetInfo
    items: tuple[PreparedItem, ...]
    issues: tuple[PrepareIssue, ...]
    rule_violations: tuple = ()

    @property
    def ok(self) -> bool:
        return not self.rule_violations

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "num_items": self.info.num_items,
                "num_source_images": self.info.num_source_images, "dataset_hash": self.info.dataset_hash,
                "trigger": self.info.trigger, "caption_dropout": self.info.caption_dropout,
                "resolutions": list(self.info.resolutions), "items": [it.to_dict() for it in self.items],
                "issues": [i.to_dict() for i in self.issues],
                "rule_violations": [v.to_dict() for v in self.rule_violations], "ok": self.ok}


def prepare_dataset(source: Any, out_dir: str | os.PathLike, *, trigger: str,
                    config: PrepareConfig | None = None, seed: int = 0, captioner: Captioner | None = None,
                    profile_fingerprint: str | None = None, limits: ImageLimits | None = None) -> PreparedResult:
    """Crop, bucket, caption and mask accepted photos into a prepared-dataset folder.

    Args:
        source: a ``DatasetReport`` (its accepted images are used) or a sequence of
            ``PrepareInput``.
        out_dir: the folder to write; replaced whole and atomically. An existing folder that is
            not a prepared dataset and not empty is refused.
        trigger: the trigger word every caption starts with (no commas or newlines).
        config: crops, buckets, captions and masks; ``PrepareConfig()`` by default.
        seed: seeds the crop jitter; the same seed gives the same bytes.
        captioner: describes each crop's scene; default ``SidecarCaptioner`` (``photo.txt`` beside
            ``photo.jpg``, else a framing/pose template).
        profile_fingerprint: recorded in ``dataset.json`` (taken from the report when given one).
        limits: image intake limits for re-reading the photos.

    Returns:
        PreparedResult (the folder reads back with ``manifest.load_prepared``).

    Raises:
        InputError: bad trigger, unusable ``source``, or ``out_dir`` is an unrelated non-empty folder.

    Example:
        >>> result = prepare_dataset(report, "prepared/", trigger="ohwx")   # doctest: +SKIP
        >>> result.info.num_items, result.ok                                 # doctest: +SKIP
        (24, True)
    """
    cfg = config or PrepareConfig()
    trigger = check_trigger(trigger)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer, got {seed!r}", field="seed", value=repr(seed))
    if config is not None and not isinstance(config, PrepareConfig):
        raise InputError(f"config must be a PrepareConfig, got {type(config).__name__}", field="config",
                         value=repr(config)[:200])
    inputs, profile_fp, report_extra = _inputs_from(source)
    profile_fingerprint = profile_fingerprint or profile_fp
    captioner = captioner or SidecarCaptioner(fallback=_template(cfg))
    out = Path(out_dir)
    check_out_dir(out)

    issues: list[PrepareIssue] = []
    items: list[PreparedItem] = []
    seen: set[str] = set()
    contributing: set[str] = set()
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        if cfg.masks != "none":
            (tmp / "masks").mkdir()
        for inp in inputs:
            label = inp.name or (str(inp.image) if isinstance(inp.image, (str, os.PathLike)) else "<image>")
            try:
                img = load_image(inp.image, limits, name=label)
            except PersonaMLError as exc:  # e.g. a file changed or removed since screening
                issues.append(PrepareIssue(label, None, exc.code, str(exc)))
                continue
            if img.sha256 in seen:
                issues.append(PrepareIssue(label, None, "duplicate_source", f"{label}: same bytes as an earlier photo"))
                continue
            if inp.face.image_sha256 and inp.face.image_sha256 != img.sha256:
                issues.append(PrepareIssue(label, None, "face_image_mismatch",
                                           f"{label}: the face observation was made on another image "
                                           f"({inp.face.image_sha256[:12]} != {img.sha256[:12]})"))
                continue
            seen.add(img.sha256)
            content = tuple(inp.content_box) if inp.content_box is not None else content_box(img.pixels).box
            plans, plan_issues = plan_crops(inp.face.bbox, img.size, cfg, seed=seed, key=img.sha256,
                                            other_faces=inp.other_faces, label=label, content=content)
            issues.extend(plan_issues)
            for plan in plans:
                item, png, mask_png, caption = _render(img.pixels, img.sha256, label, inp.face, plan, trigger, cfg,
                                                       captioner)
                atomic_write_bytes(tmp / item.image, png)
                atomic_write_text(tmp / Path(item.image).with_suffix(".txt"), caption + "\n")
                if mask_png is not None and item.mask:
                    atomic_write_bytes(tmp / item.mask, mask_png)
                items.append(item)
                contributing.add(img.sha256)
            del img  # one decoded photo in memory at a time
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):  # cannot happen with sha-based ids; guards the manifest contract
            raise InputError("duplicate prepared item ids", field="items", value=ids)
        info = PreparedDatasetInfo(
            format_version=MANIFEST_FORMAT_VERSION, trigger=trigger, caption_dropout=float(cfg.caption_dropout),
            resolutions=tuple(int(r) for r in cfg.resolutions), dataset_hash=dataset_hash(items),
            profile_fingerprint=profile_fingerprint, num_items=len(items), num_source_images=len(contributing),
            extra={"seed": int(seed), "max_upscale": float(cfg.max_upscale),
                   "aspect_ratios": [float(a) for a in cfg.aspect_ratios], "crops": cfg.crops,
                   "captioner": getattr(captioner, "name", type(captioner).__name__), "masks": cfg.masks,
                   "buckets": _bucket_counts(items),
                   "issues": [dict(i.to_dict(), source=Path(i.source).name) for i in issues], **report_extra})
        write_manifest(tmp, info, items)
    from ..rules import check_image_count

    violations = check_image_count(len(contributing))
    logger.info("prepared %d training images from %d photos into %s (%d issues)", len(items), len(contributing),
                out, len(issues))
    return PreparedResult(root=out, info=info, items=tuple(sorted(items, key=lambda i: i.id)),
                          issues=tuple(issues), rule_violations=violations)


def plan_crops(face_bbox: Sequence[float], size: tuple[int, int], cfg: PrepareConfig, *, seed: int = 0,
               key: str = "", other_faces: Iterable[Sequence[float]] = (), label: str = "",
               content: Sequence[int] | None = None) -> tuple[list[CropPlan], list[PrepareIssue]]:
    """Plan the close-up and wide crops of one photo (pure: no pixels needed).

    Args:
        content: ``(x0, y0, x1, y1)`` of the real content (borders trimmed); crops stay inside
            it. Default: the whole image.

    Returns:
        ``(plans, issues)``: zero, one or two ``CropPlan`` and the reasons for any left out.
    """
    if content is not None and tuple(int(v) for v in content) != (0, 0, int(size[0]), int(size[1])):
        cx0, cy0, cx1, cy1 = (int(v) for v in content)

        def shift(b, dx, dy):
            return (b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy)

        plans, issues = plan_crops(shift(face_bbox, -cx0, -cy0), (cx1 - cx0, cy1 - cy0), cfg, seed=seed, key=key,
                                   other_faces=[shift(o, -cx0, -cy0) for o in other_faces], label=label)
        return [dataclasses.replace(p, box=tuple(int(v) for v in shift(p.box, cx0, cy0))) for p in plans], issues
    label = Path(label).name if label else "<image>"
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)])
    jitter = tuple(float(v) for v in rng.uniform(-cfg.crop_jitter, cfg.crop_jitter, size=4))
    face = clip_box(face_bbox, size)
    issues: list[PrepareIssue] = []
    others = [clip_box(o, size) for o in other_faces]
    common = dict(aspect_ratios=cfg.aspect_ratios, resolutions=cfg.resolutions, max_upscale=cfg.max_upscale,
                  avoid=others, max_avoid_overlap=cfg.max_other_face_overlap)
    specs = {"closeup": dict(context=cfg.closeup_context, prefer_aspect=cfg.closeup_aspect,
                             face_center_y=cfg.closeup_face_y, jitter=(jitter[0], jitter[1])),
             "wide": dict(context=None, prefer_aspect=size[0] / size[1], face_center_y=cfg.wide_face_y,
                          jitter=(jitter[2], jitter[3]))}
    found: dict[str, CropPlan | None] = {}
    for kind, spec in specs.items():
        if cfg.crops not in ("auto", kind):
            continue
        found[kind] = plan_crop(kind, face, size, **spec, **common)  # type: ignore[arg-type]
        if found[kind] is None and others:
            unconstrained = plan_crop(kind, face, size, **spec, **dict(common, avoid=()))  # type: ignore[arg-type]
            if unconstrained is not None:
                share = max(overlap_fraction(unconstrained.box, o) for o in others)
                issues.append(PrepareIssue(label, kind, "crop_contains_other_face",
                                           f"{label}: every {kind} crop would show {share:.0%} or more of "
                                           "another person's face"))
    close, wide = found.get("closeup"), found.get("wide")
    kept: list[CropPlan] = []
    if close is not None:
        kept.append(close)
    if wide is not None and (cfg.crops == "wide" or close is None
                             or wide.area >= close.area * cfg.wide_min_area_ratio):
        kept.append(wide)
    if not kept and not issues:
        smallest = min(cfg.resolutions)
        issues.append(PrepareIssue(label, None, "too_small_for_bucket",
                                   f"{label}: {size[0]}x{size[1]} with a {face[2] - face[0]:.0f}px face cannot "
                                   f"fill a {smallest}px bucket without enlarging it more than "
                                   f"{cfg.max_upscale}x"))
    return kept, issues


def encode_png(pixels: np.ndarray, mode: str, compress_level: int) -> bytes:
    """PNG bytes with a fixed compression level and no metadata (same pixels -> same bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode).save(buf, format="PNG", compress_level=compress_level, optimize=False)
    return buf.getvalue()


# --- internals ------------------------------------------------------------------------------------

def _render(pixels: np.ndarray, sha: str, label: str, face: FaceObservation, plan: CropPlan, trigger: str,
            cfg: PrepareConfig, captioner: Captioner) -> tuple[PreparedItem, bytes, bytes | None, str]:
    from PIL import Image

    x0, y0, x1, y1 = plan.box
    crop = Image.fromarray(np.ascontiguousarray(pixels[y0:y1, x0:x1]), "RGB")
    size = (plan.bucket.width, plan.bucket.height)
    out = np.asarray(crop.resize(size, Image.LANCZOS) if crop.size != size else crop, dtype=np.uint8)
    png = encode_png(out, "RGB", cfg.png_compress_level)
    fbox = face_in_crop(face.bbox, plan)
    item_id = f"{sha[:16]}-{plan.kind}"
    mask_png = None
    mask_rel = None
    if cfg.masks != "none":
        mask_png = encode_png(face_mask(size, fbox, cfg.mask), "L", cfg.png_compress_level)
        mask_rel = f"masks/{item_id}.png"
    framing = framing_of(clip_box(face.bbox, (pixels.shape[1], pixels.shape[0])), plan.box,
                         cfg.closeup_min_face_ratio, cfg.half_body_min_face_ratio)
    pose = _pose_name(face)
    scene = captioner.caption(CaptionItem(source=label, kind=plan.kind, framing=framing, pose=pose, pixels=out))
    caption, _removed = build_caption(trigger, scene, cfg.face_trait_terms)
    item = PreparedItem(id=item_id, image=f"images/{item_id}.png", caption=caption, width=size[0], height=size[1],
                        source_sha256=sha, source=Path(label).name, crop=tuple(int(v) for v in plan.box),
                        kind=plan.kind, face_bbox=tuple(round(float(v), 2) for v in fbox), mask=mask_rel,
                        image_sha256=hashlib.sha256(png).hexdigest(),
                        mask_sha256=hashlib.sha256(mask_png).hexdigest() if mask_png is not None else "")
    return item, png, mask_png, caption


def _pose_name(face: FaceObservation) -> str | None:
    from ..faces.quality import pose_of

    return pose_of(face)


def _template(cfg: PrepareConfig):
    from .captions import TemplateCaptioner

    return TemplateCaptioner(template=cfg.caption_template)


def _bucket_counts(items: Sequence[PreparedItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for it in items:
        key = f"{it.width}x{it.height}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def check_trigger(trigger: Any) -> str:
    """The stripped trigger word; raises ``InputError`` (``invalid_trigger``) when unusable."""
    if not isinstance(trigger, str) or not TRIGGER_RE.match(trigger.strip()):
        raise InputError(f"trigger must be 1-64 characters without commas, semicolons or newlines, got {trigger!r}",
                         code="invalid_trigger", field="trigger", value=trigger)
    return trigger.strip()


def check_out_dir(out: Path) -> None:
    """Refuse an output path that is a file, lies under a file, or is a non-empty folder that is
    not a prepared dataset (checked before any screening work, which would otherwise be lost)."""
    try:
        _check_out_dir(out)
    except OSError as exc:  # a name over the filesystem's limit, an unreadable parent
        raise InputError(f"output {out}: {exc.strerror or exc}", code="path_invalid", field="out_dir",
                         value=str(out)) from None


def _check_out_dir(out: Path) -> None:
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"output {out}: {parent} is a file, not a folder", field="out_dir",
                                 value=str(out))
            break
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder", field="out_dir", value=str(out))
    if out.is_dir() and any(out.iterdir()) and not (out / "dataset.json").is_file():
        raise InputError(f"output folder {out} is not empty and is not a prepared dataset; refusing to replace it",
                         code="out_dir_not_empty", field="out_dir", value=str(out))


def _inputs_from(source: Any) -> tuple[list[PrepareInput], str | None, dict[str, Any]]:
    """``DatasetReport`` or sequence of ``PrepareInput`` -> inputs, profile fingerprint, extra info."""
    to_inputs = getattr(source, "prepare_inputs", None)
    if callable(to_inputs):
        inputs = list(to_inputs())
        return inputs, getattr(source, "profile_fingerprint", None), dict(getattr(source, "prepare_extra", lambda: {})())
    if isinstance(source, (str, bytes, os.PathLike)) or not isinstance(source, Iterable):
        raise InputError("prepare_dataset needs a DatasetReport or a sequence of PrepareInput, got "
                         f"{type(source).__name__}", field="source", value=repr(source)[:200])
    inputs = list(source)
    for i, inp in enumerate(inputs):
        if not isinstance(inp, PrepareInput):
            raise InputError(f"source[{i}] is {type(inp).__name__}, not a PrepareInput", field=f"source[{i}]",
                             value=repr(inp)[:200])
    return inputs, None, {}
