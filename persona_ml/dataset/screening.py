"""Screening of candidate training photos against the character's FaceProfile.

Each photo must show exactly one clear primary face of the character, large, sharp and well
exposed, and must not repeat another photo. Every rejection carries a stable code:

=====================  ==================================================================
code                   meaning
=====================  ==================================================================
image_*                the file was refused at intake (``persona_ml.images``: empty,
                       truncated, not an image, too small, too large, ...)
duplicate              same bytes, or same decoded pixels, as an earlier photo
no_face                no face found (by HOG, then by the CNN detector for turned faces)
multiple_faces         several faces of similar size (group photo): never trained on
other_people           another person is in the shot: a face at least
                       ``other_face_min_fraction`` of the main face's size, found by the
                       first detector or by the second pass (``second_pass``); the
                       verdict's ``metrics["other_faces"]`` says what was seen and where
face_cut_off           the main face runs out of the frame (more than
                       ``max_face_outside`` of its box lies beyond the real content)
face_too_small         the face's side is below ``min_face_size_px``
blurry                 the face's Laplacian variance is below ``min_sharpness``
underexposed           the face is too dark (mean luma, or too many crushed shadows)
overexposed            the face is too bright (mean luma, or too many blown highlights)
identity_mismatch      the face is not the character (cosine to the profile too low)
identity_minority      no profile given: the face is not the person most of the set shows
                       (the set's own faces are clustered; the largest cluster is kept)
identity_unclear       no profile given and no person shows in more photos than another:
                       which one is the character cannot be told
near_duplicate         a copy of one shot (crop, re-framing, padded, letterboxed, resized,
                       recompressed, colour-shifted or mirrored) of a better photo that is
                       kept: the face's surroundings match (``copies.copy_score``), or the
                       perceptual hash of the border-trimmed photo, or the face embedding
=====================  ==================================================================

Borders (letterbox bars, padding: ``borders.content_box``) are trimmed before any measure: the
perceptual hash, the framing and the content area are of the real content, and the prepared
crops stay inside it. Among copies of one shot the one with the most real content (pixels inside
the borders: scene and resolution together) is kept; ties go to the one without bars, then the
larger face, the sharper one, the earlier one.

The rules check counts accepted photos, not uploaded ones. Coverage (close-up / half-body /
full-body from the face box's share of the content height; frontal / three-quarter / profile
from the landmark yaw and the detector that saw the face, see ``quality.pose_bucket``) comes
with advice when the set is one-sided.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._files import is_dir_quiet
from ..errors import BackendError, FaceError, InputError, PersonaMLError
from ..faces.quality import crop_box, exposure_stats, pose_of, to_gray
from ..faces.types import FaceObservation
from ..images import ImageLimits, LoadedImage, list_images, load_image
from .borders import Borders, content_box, flat_free_area
from .copies import RegionSignature, copy_score, region_signature
from .crops import framing_of
from .phash import hamming, phash_pair
from .report import Coverage, DatasetReport, ScreenedImage

__all__ = ["ScreeningConfig", "screen_dataset", "DatasetReport", "ScreenedImage", "Coverage"]

logger = logging.getLogger(__name__)

FRAMINGS = ("closeup", "half_body", "full_body")
POSES = ("frontal", "three_quarter", "profile")
SECOND_PASS = ("auto", "always", "off")
# box-anchored frames tried for a face cut by the frame (its landmarks are unreliable)
BOX_SCALES = (1 / 1.15, 1.0, 1.15)
BOX_SHIFTS = (-3, -2, -1, 0, 1, 2, 3)


@dataclass(frozen=True)
class ScreeningConfig:
    """Screening thresholds. ``None`` means: take it from the embedding model's
    ``FaceThresholds`` (``configs/face_thresholds.yaml``), since scales differ between models.

    Attributes:
        min_face_size_px: smallest accepted face side in pixels (model default: dlib 48).
        min_sharpness: lowest accepted Laplacian variance of the face (model default: 25).
        min_face_luma / max_face_luma: accepted mean luma (0..255) of the face box.
        max_dark_fraction / max_bright_fraction: accepted share of crushed (< 8) or blown
            (> 247) pixels in the face box.
        identity_min_cosine: least cosine between the face and the profile's centroid. Default:
            the model's ``outlier_max_cosine``, which was measured against a centroid (cosines
            to a centroid run higher than pairwise ones; dlib 0.91).
        near_duplicate_min_cosine: embedding cosine from which two photos are copies of one
            shot (model default: dlib 0.99).
        phash_max_distance: Hamming distance (of 64 bits) at or below which two photos are
            near-copies. Distinct photos in ../shared/faces differ by 14 bits or more.
        check_mirrored: also compare against each photo's mirror image.
        allow_near_duplicates: keep near-duplicates as accepted; each stays flagged with a
            ``near_duplicate`` warning and the override is recorded in the report.
        similar_face_ratio: another face whose side is at least this share of the primary's
            (after a discount for being off-centre) makes the photo a group photo in which the
            character cannot be told (``multiple_faces``).
        other_face_min_fraction: another face whose side is at least this share of the main
            face's is another person in the shot (``other_people``); smaller ones are background
            faces (a warning; crops leave them out). Measured on ../shared/faces: real background
            faces are at most 0.2 of the main face.
        second_pass: where the first detector found one face, look again for other people of
            that size: ``"auto"`` (a finer HOG pass where the first could not see faces that
            small, and the CNN detector where HOG saw a candidate it could not confirm),
            ``"always"`` (also the CNN on every such photo: finds turned and half-hidden people
            HOG gives no hint of, at about 1-3 s a photo on a CPU core) or ``"off"``.
        copy_min_score: surroundings score (``copies.copy_score``) from which two photos are
            copies of one shot (copies measure 0.92-1.0, distinct photos of one person at most 0.86).
        max_face_outside: the most of the main face's box that may lie outside the real content
            before the face counts as cut off (``face_cut_off``).
        cluster_without_profile: without a profile, cluster the set's own faces and keep only the
            person most photos show (``identity_minority`` / ``identity_unclear``).
        closeup_min_face_ratio / half_body_min_face_ratio: framing from the face box's share
            of the image height.
        coverage_max_share: a framing or pose holding more than this share of the accepted
            photos triggers advice.
    """

    min_face_size_px: int | None = None
    min_sharpness: float | None = None
    min_face_luma: float = 40.0
    max_face_luma: float = 220.0
    max_dark_fraction: float = 0.4
    max_bright_fraction: float = 0.4
    identity_min_cosine: float | None = None
    near_duplicate_min_cosine: float | None = None
    phash_max_distance: int = 8
    check_mirrored: bool = True
    allow_near_duplicates: bool = False
    similar_face_ratio: float = 0.7
    other_face_min_fraction: float = 0.35
    second_pass: str = "auto"
    copy_min_score: float = 0.9
    max_face_outside: float = 0.3
    cluster_without_profile: bool = True
    closeup_min_face_ratio: float = 0.28
    half_body_min_face_ratio: float = 0.09
    coverage_max_share: float = 0.8

    def __post_init__(self) -> None:
        if not 0 <= self.phash_max_distance <= 64:
            raise InputError(f"phash_max_distance must be 0..64, got {self.phash_max_distance}",
                             field="phash_max_distance", value=self.phash_max_distance)
        if not 0 < self.similar_face_ratio <= 1:
            raise InputError(f"similar_face_ratio must be in (0, 1], got {self.similar_face_ratio}",
                             field="similar_face_ratio", value=self.similar_face_ratio)
        if not 0 < self.other_face_min_fraction <= 1:
            raise InputError(f"other_face_min_fraction must be in (0, 1], got {self.other_face_min_fraction}",
                             field="other_face_min_fraction", value=self.other_face_min_fraction)
        if self.second_pass not in SECOND_PASS:
            raise InputError(f"second_pass must be one of {', '.join(SECOND_PASS)}, got {self.second_pass!r}",
                             field="second_pass", value=self.second_pass)
        if not 0 < self.copy_min_score <= 1:
            raise InputError(f"copy_min_score must be in (0, 1], got {self.copy_min_score}",
                             field="copy_min_score", value=self.copy_min_score)
        for name in ("identity_min_cosine", "near_duplicate_min_cosine"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise InputError(f"{name} is a cosine in [-1, 1], got {value}", field=name, value=value)
        for name in ("min_face_size_px", "min_sharpness"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InputError(f"{name} must be >= 0, got {value}", field=name, value=value)
        for name in ("max_dark_fraction", "max_bright_fraction", "closeup_min_face_ratio", "max_face_outside",
                     "half_body_min_face_ratio", "coverage_max_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} is a fraction in [0, 1], got {value}", field=name, value=value)
        if not self.min_face_luma < self.max_face_luma:
            raise InputError("min_face_luma must be below max_face_luma", field="min_face_luma",
                             value=[self.min_face_luma, self.max_face_luma])


# --- screening ------------------------------------------------------------------------------------

@dataclass
class _Candidate:
    index: int
    source: str
    input: Any
    sha256: str | None = None
    pixel_hash: str | None = None
    size: tuple[int, int] | None = None
    error: PersonaMLError | None = None
    face: FaceObservation | None = None
    others: tuple = ()
    metrics: dict = field(default_factory=dict)
    hashes: tuple[int, int] | None = None
    code: str | None = None
    reason: str | None = None
    duplicate_of: str | None = None
    warnings: list[dict] = field(default_factory=list)
    framing: str | None = None
    pose: str | None = None
    borders: Borders | None = None
    signature: RegionSignature | None = None
    box_signatures: tuple[RegionSignature, ...] = ()
    cut_fraction: float = 0.0


def screen_dataset(images: Any, profile: Any, embedder: Any, *, config: ScreeningConfig | None = None,
                   request: Any = None, limits: ImageLimits | None = None,
                   faces: Sequence[Any] | None = None, batch_size: int = 8) -> DatasetReport:
    """Screen candidate training photos of one character.

    Args:
        images: a folder, or a sequence of paths / bytes / arrays / PIL images / ``LoadedImage``.
        profile: the character's ``FaceProfile`` (``None`` skips the identity check, with a
            report warning).
        embedder: a ``FaceEmbedder`` made with the same model as the profile.
        config: thresholds (``ScreeningConfig()``; model-specific ones from the embedder).
        request: an optional ``LoraRequest``; its rules are checked with ``num_images`` set to
            the accepted count. Without it only the image-count rule is checked.
        limits: image intake limits (default: the embedder's).
        faces: precomputed ``embedder.analyze(images)`` results, in the same order (reuse).
        batch_size: photos decoded at once (bounds memory; pixels are dropped after measuring).

    Returns:
        DatasetReport with every photo's verdict, coverage, advice and the rules check.

    Raises:
        InputError: ``images`` is not a folder or a sequence, or ``faces`` does not match it.
        ModelMismatchError: the profile was built with another embedding model.
        BackendError: the face backend failed on a photo (a fault of ours: no photo is rejected for it).

    Example:
        >>> report = screen_dataset("photos/", profile, FaceEmbedder("dlib"))   # doctest: +SKIP
        >>> print(report.summary())                                             # doctest: +SKIP
    """
    if config is not None and not isinstance(config, ScreeningConfig):
        raise InputError(f"config must be a ScreeningConfig, got {type(config).__name__}", field="config",
                         value=repr(config)[:200])
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        # 0 would take empty chunks: nothing checked, every photo "accepted"
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}", field="batch_size",
                         value=repr(batch_size))
    cfg = config or ScreeningConfig()
    limits = limits or getattr(embedder, "limits", None) or ImageLimits()
    items = _as_items(images, limits.max_bytes)
    if faces is not None and len(faces) != len(items):
        raise InputError(f"faces has {len(faces)} entries for {len(items)} images", field="faces",
                         value=len(faces))
    prov = embedder.provenance
    if profile is not None and getattr(profile, "provenance", None) is not None:
        prov.require_compatible(profile.provenance, "the profile")
    thr = _effective_thresholds(cfg, embedder)
    timings = {"decode": 0.0, "detect_embed": 0.0, "measure": 0.0, "second_pass": 0.0, "decide": 0.0}
    search = getattr(getattr(embedder, "impl", embedder), "search_faces", None) if cfg.second_pass != "off" else None

    cands = [_Candidate(index=i, source=label, input=src) for i, (src, label) in enumerate(items)]
    seen_bytes: dict[str, str] = {}
    seen_pixels: dict[str, str] = {}
    for start in range(0, len(cands), batch_size):
        chunk = cands[start:start + batch_size]
        t0 = time.perf_counter()
        loaded: list[tuple[_Candidate, LoadedImage]] = []
        for c in chunk:
            try:
                img = load_image(c.input, limits, name=c.source)
            except PersonaMLError as exc:
                c.error = exc
                c.code, c.reason = exc.code, exc.message
                continue
            c.sha256, c.size = img.sha256, img.size
            h = hashlib.sha256(repr(img.pixels.shape).encode())
            h.update(memoryview(np.ascontiguousarray(img.pixels)).cast("B"))  # no copy of the pixels
            c.pixel_hash = h.hexdigest()
            dup = seen_bytes.get(c.sha256) or seen_pixels.get(c.pixel_hash)
            if dup is not None:
                same = "bytes" if c.sha256 in seen_bytes else "pixels"
                c.code, c.duplicate_of = "duplicate", dup
                c.reason = f"exact duplicate of {Path(dup).name} (same {same})"
                continue
            seen_bytes[c.sha256] = c.source
            seen_pixels[c.pixel_hash] = c.source
            loaded.append((c, img))
        t1 = time.perf_counter()
        timings["decode"] += t1 - t0
        if faces is not None:
            results = [faces[c.index] for c, _ in loaded]
            for (c, img), res in zip(loaded, results):
                if isinstance(res, list) and res and res[0].image_sha256 != img.sha256:
                    raise InputError(f"faces[{c.index}] were detected on another image than {c.source}",
                                     field=f"faces[{c.index}]", value=res[0].image_sha256)
        else:
            results = embedder.analyze([img for _, img in loaded]) if loaded else []
        t2 = time.perf_counter()
        timings["detect_embed"] += t2 - t1
        second = 0.0
        for (c, img), res in zip(loaded, results):
            _measure(c, img, res, profile, thr, cfg)
            if search is not None and c.code is None and c.face is not None:
                t_s = time.perf_counter()
                _second_pass(c, img, search, thr, cfg)
                second += time.perf_counter() - t_s
        timings["second_pass"] += second
        timings["measure"] += time.perf_counter() - t2 - second
        del loaded, results

    t3 = time.perf_counter()
    _near_duplicates(cands, thr, cfg)
    if profile is None and cfg.cluster_without_profile:
        _cluster_identities(cands, thr)
    screened = tuple(_finish(c) for c in cands)
    accepted = [s for s in screened if s.accepted]
    coverage = _coverage(accepted, cfg)
    rule_violations, rules = _rules(len(accepted), request)
    report_warnings = []
    if profile is None and cfg.cluster_without_profile:
        report_warnings.append({"code": "identity_from_set",
                                "message": "no face profile given: the set's own faces were clustered and only the "
                                           "person most photos show is kept; give a profile to check the character"})
    elif profile is None:
        report_warnings.append({"code": "identity_not_checked",
                                "message": "no face profile given: photos of other people are not caught"})
    overrides = ("allow_near_duplicates",) if cfg.allow_near_duplicates else ()
    if overrides:
        logger.warning("screening override in force: near-duplicates are kept (flagged in the report)")
    timings["decide"] = time.perf_counter() - t3
    fp = _profile_fingerprint(profile)
    return DatasetReport(images=screened, coverage=coverage, rule_violations=rule_violations, rules=rules,
                         thresholds=thr, overrides=overrides, warnings=tuple(report_warnings),
                         profile_fingerprint=fp, provenance=prov.to_dict(), timings=timings)


# --- internals ------------------------------------------------------------------------------------

def _as_items(images: Any, max_bytes: int) -> list[tuple[Any, str]]:
    if isinstance(images, (str, os.PathLike)):
        if not is_dir_quiet(images):  # Path.is_dir raises on a name over the filesystem's limit
            raise InputError(f"images must be a folder or a sequence of images, got {images!r}",
                             field="images", value=str(images))
        return [(p, str(p)) for p in list_images(images)]
    if isinstance(images, (bytes, bytearray)) or not isinstance(images, Sequence):
        raise InputError(f"images must be a folder or a sequence of images, got {type(images).__name__}",
                         field="images", value=type(images).__name__)
    out = []
    for i, src in enumerate(images):
        if hasattr(src, "read") and not isinstance(src, (str, os.PathLike)):
            # a file object can be read once; keep its bytes so preparation can decode it again
            label = str(getattr(src, "name", None) or f"image[{i}]")
            try:  # at most one byte over the limit, so an endless stream is refused, not buffered
                data = src.read(max_bytes + 1)
            except (OSError, ValueError):  # closed or broken: load_image reports it for this photo only
                data = src
            out.append((data, label))
            continue
        if isinstance(src, (str, os.PathLike)):
            label = str(src)
        elif isinstance(src, LoadedImage):
            label = src.source
        else:
            label = f"image[{i}]"
        out.append((src, label))
    return out


def _effective_thresholds(cfg: ScreeningConfig, embedder: Any) -> dict[str, Any]:
    from ..faces.thresholds import thresholds_for

    model = getattr(embedder, "thresholds", None) or thresholds_for(embedder.provenance)

    def pick(value, default):
        return default if value is None else value

    return {
        "min_face_size_px": pick(cfg.min_face_size_px, model.min_face_size_px),
        "min_sharpness": pick(cfg.min_sharpness, model.min_sharpness),
        "identity_min_cosine": pick(cfg.identity_min_cosine, model.outlier_max_cosine),
        "near_duplicate_min_cosine": pick(cfg.near_duplicate_min_cosine, model.near_duplicate_min_cosine),
        "phash_max_distance": cfg.phash_max_distance,
        "min_face_luma": cfg.min_face_luma, "max_face_luma": cfg.max_face_luma,
        "max_dark_fraction": cfg.max_dark_fraction, "max_bright_fraction": cfg.max_bright_fraction,
        "similar_face_ratio": cfg.similar_face_ratio, "other_face_min_fraction": cfg.other_face_min_fraction,
        "second_pass": cfg.second_pass, "copy_min_score": cfg.copy_min_score,
        "max_face_outside": cfg.max_face_outside, "same_person_min_cosine": model.same_person_min_cosine,
    }


def _measure(c: _Candidate, img: LoadedImage, result: Any, profile: Any, thr: dict, cfg: ScreeningConfig) -> None:
    """Per-photo checks that need the pixels; sets ``c.code`` on the first failure."""
    from PIL import Image

    from ..faces.primary import select_primary_face

    gray = np.asarray(Image.fromarray(np.ascontiguousarray(img.pixels)).convert("L"))
    c.borders = content_box(gray)
    bx0, by0, bx1, by1 = c.borders.box
    if c.borders.any:
        c.metrics["borders"] = c.borders.to_dict()
        sides = ", ".join(f"{k} {v} px" for k, v in c.borders.trimmed.items() if v)
        c.warnings.append({"code": "borders_trimmed",
                           "message": f"solid borders trimmed ({sides}); measures and crops use the photo inside them"})
    c.hashes = phash_pair(gray[by0:by1, bx0:bx1])
    c.metrics["colourfulness"] = round(_colourfulness(img.pixels[by0:by1:8, bx0:bx1:8]), 2)
    c.metrics["blockiness"] = round(_blockiness(gray), 4)
    c.metrics["flat_free_area"] = flat_free_area(gray[by0:by1, bx0:bx1])
    c.metrics["phash"] = f"{c.hashes[0]:016x}"
    if isinstance(result, BackendError):  # the face backend failed: not a verdict on the user's photo
        raise result
    if isinstance(result, PersonaMLError):
        c.code, c.reason = result.code, result.message
        return
    faces = list(result or [])
    c.metrics["num_faces"] = len(faces)
    try:
        face = select_primary_face(faces, img.size, similar_size_ratio=cfg.similar_face_ratio)
    except FaceError as exc:
        c.code = exc.code
        if exc.code == "no_face":
            c.reason = "no face found: use a photo where the character's face is clearly visible"
        else:
            c.reason = (f"{exc.details.get('count', len(faces))} faces of similar size: group photos are not "
                        "used, upload photos of the character alone")
        return
    c.face = face
    others = [f for f in faces if f is not face]
    c.others = tuple(tuple(float(v) for v in f.bbox) for f in others)
    seen = [{"bbox": [round(float(v), 1) for v in f.bbox], "side": round(float(f.face_size), 1),
             "fraction": round(float(f.face_size) / max(1.0, float(face.face_size)), 3),
             "detector": (f.extra or {}).get("detector", "first pass"), "view": (f.extra or {}).get("hog_view")}
            for f in others]
    if seen:
        c.metrics["other_faces"] = seen
    fh = face.bbox[3] - face.bbox[1]
    content_h = max(1, by1 - by0)
    c.framing = framing_of(face.bbox, (bx0, by0, bx1, by1), cfg.closeup_min_face_ratio, cfg.half_body_min_face_ratio)
    c.pose = pose_of(face)
    expo = exposure_stats(to_gray(crop_box(img.pixels, face.bbox)))
    raw = (face.extra or {}).get("raw_bbox") or list(face.bbox)
    c.cut_fraction = _outside_fraction(raw, c.borders.box)
    c.metrics.update(face_size=round(float(face.face_size), 1), sharpness=round(float(face.sharpness), 1),
                     face_height_ratio=round(float(fh) / content_h, 3), luma_mean=round(expo["mean"], 1),
                     dark_fraction=round(expo["dark_fraction"], 3), bright_fraction=round(expo["bright_fraction"], 3),
                     yaw=None if face.pose is None else round(float(face.pose[0]), 1),
                     detector=(face.extra or {}).get("detector"), face_outside=round(c.cut_fraction, 3))
    c.signature = region_signature(gray, face.landmarks, face.bbox, c.borders.box)
    # landmarks of a face cut by the frame are guesses: pairs with one compare box-anchored frames
    c.box_signatures = tuple(region_signature(gray, None, raw, c.borders.box, k) for k in BOX_SCALES)
    bigger = [o for o in seen if o["fraction"] >= thr["other_face_min_fraction"]]
    if bigger:
        _other_people(c, bigger, thr)
    elif face.face_size < thr["min_face_size_px"]:
        c.code = "face_too_small"
        c.reason = (f"the face is {face.face_size:.0f} px, below the {thr['min_face_size_px']} px minimum: use a "
                    "closer or higher-resolution photo")
    elif c.cut_fraction > thr["max_face_outside"]:
        c.code = "face_cut_off"
        c.reason = (f"{c.cut_fraction:.0%} of the face lies outside the photo: use a photo that shows the whole "
                    "face")
    elif expo["mean"] < thr["min_face_luma"] or expo["dark_fraction"] > thr["max_dark_fraction"]:
        c.code = "underexposed"
        c.reason = (f"the face is too dark (mean {expo['mean']:.0f}/255, {expo['dark_fraction']:.0%} crushed): "
                    "use a better-lit photo")
    elif expo["mean"] > thr["max_face_luma"] or expo["bright_fraction"] > thr["max_bright_fraction"]:
        c.code = "overexposed"
        c.reason = (f"the face is too bright (mean {expo['mean']:.0f}/255, {expo['bright_fraction']:.0%} blown): "
                    "use a photo without blown highlights")
    # after exposure: a dark or flat face also has a low Laplacian variance
    if c.code is None and face.sharpness < thr["min_sharpness"]:
        c.code = "blurry"
        c.reason = (f"the face is blurred (sharpness {face.sharpness:.0f} < {thr['min_sharpness']}): use a "
                    "sharper photo")
    if profile is not None:
        cos = float(profile.similarity(face))
        c.metrics["identity_cosine"] = round(cos, 4)
        if c.code is None and cos < thr["identity_min_cosine"]:
            c.code = "identity_mismatch"
            c.reason = (f"this looks like another person (similarity {cos:.3f} to the character's profile, "
                        f"below {thr['identity_min_cosine']})")
    if c.code is None and c.others:
        c.warnings.append({"code": "background_faces",
                           "message": f"{len(c.others)} smaller face(s) in the background; crops leave them out"})


def _other_people(c: _Candidate, bigger: list[dict], thr: dict) -> None:
    where = "; ".join(f"a {o['side']:.0f} px face at [{', '.join(f'{v:.0f}' for v in o['bbox'])}] "
                      f"({o['fraction']:.0%} of the main face, {o['detector']})" for o in bigger)
    c.code = "other_people"
    c.reason = (f"another person is in the shot: {where}; at {thr['other_face_min_fraction']:.0%} of the main "
                "face's size or more they are part of the picture, and a LoRA trained on it blends them in: "
                "upload photos of the character alone")


def _second_pass(c: _Candidate, img: LoadedImage, search: Any, thr: dict, cfg: ScreeningConfig) -> None:
    """Look again for other people where the first detector found only smaller faces."""
    face = c.face
    extra = face.extra or {}
    min_px = thr["other_face_min_fraction"] * float(face.face_size)
    try:
        result = search(img, [face.bbox, *c.others], min_px, cnn="always" if cfg.second_pass == "always" else "auto",
                        hints=extra.get("hog_hints") or (), first_pass_scale=extra.get("detect_scale"))
    except PersonaMLError:
        raise
    except Exception as exc:  # the detector crashed on a decoded photo: a fault of the backend, not of the photo
        raise BackendError(f"the second-pass face search failed on {c.source}: {type(exc).__name__}: "
                           f"{str(exc)[:300]}", stage="second_pass", image=c.source) from exc
    c.metrics["second_pass"] = {name: {"seconds": round(v["seconds"], 3), "min_face_px": round(v["min_face_px"], 1)}
                                for name, v in result["passes"].items()}
    found = [{"bbox": [round(float(v), 1) for v in f["bbox"]],
              "side": round(float(min(f["bbox"][2] - f["bbox"][0], f["bbox"][3] - f["bbox"][1])), 1),
              "detector": f"second pass ({f['detector']})", "view": f.get("view")} for f in result["faces"]]
    for f in found:
        f["fraction"] = round(f["side"] / max(1.0, float(face.face_size)), 3)
    if not found:
        return
    c.metrics.setdefault("other_faces", []).extend(found)
    bigger = [f for f in found if f["fraction"] >= thr["other_face_min_fraction"]]
    if bigger:
        c.warnings = [w for w in c.warnings if w["code"] != "background_faces"]
        _other_people(c, bigger, thr)


def _colourfulness(pixels: np.ndarray) -> float:
    """Hasler and Suesstrunk's colourfulness (0 for grey; ~30 for an ordinary photo)."""
    if pixels.ndim != 3 or pixels.size == 0:
        return 0.0
    rgb = pixels[..., :3].astype(np.float32)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _blockiness(gray: np.ndarray) -> float:
    """How much more the luma jumps across 8x8 JPEG block edges than inside blocks (1.0: not
    at all; a heavily recompressed copy reads well above its original). Sampled on a central
    window of at most 512x512, aligned to the image's own block grid."""
    h, w = gray.shape[:2]
    if h < 32 or w < 32:
        return 1.0
    side = min(512, h, w) // 8 * 8
    y0 = (h - side) // 2 // 8 * 8
    x0 = (w - side) // 2 // 8 * 8
    g = gray[y0:y0 + side, x0:x0 + side].astype(np.float32)
    dx = np.abs(np.diff(g, axis=1))          # dx[:, k] is the jump between columns k and k+1
    dy = np.abs(np.diff(g, axis=0))
    edge = np.concatenate([dx[:, 7::8].ravel(), dy[7::8, :].ravel()])
    inner = np.concatenate([dx[:, 3::8].ravel(), dy[3::8, :].ravel()])
    return float(edge.mean() + 1.0) / float(inner.mean() + 1.0)


def _outside_fraction(box, content) -> float:
    """Share of ``box``'s area outside ``content``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    area = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    if area <= 0:
        return 0.0
    ix = max(0.0, min(x1, content[2]) - max(x0, content[0]))
    iy = max(0.0, min(y1, content[3]) - max(y0, content[1]))
    return max(0.0, 1.0 - ix * iy / area)


def _copy_evidence(a: _Candidate, b: _Candidate, thr: dict, cfg: ScreeningConfig) -> dict | None:
    """Why ``a`` and ``b`` are copies of one shot, or ``None``."""
    d = hamming(a.hashes[0], b.hashes[0])
    dm = hamming(a.hashes[0], b.hashes[1]) if cfg.check_mirrored else 64
    cos = float(np.dot(a.face.embedding, b.face.embedding))
    region, mirrored_region, overlap = 0.0, False, 0.0
    # a copy shows the same face: only pairs that are one person are compared pixel by pixel
    if cos >= thr["same_person_min_cosine"] and a.signature is not None and b.signature is not None:
        region, mirrored_region, overlap = copy_score(a.signature, b.signature, check_mirrored=cfg.check_mirrored)
        if region < thr["copy_min_score"] and max(a.cut_fraction, b.cut_fraction) > 0.05:
            # a face cut by the frame has guessed landmarks: compare box-anchored frames instead
            for other in b.box_signatures:
                score, mir, ov = copy_score(a.box_signatures[1], other, check_mirrored=cfg.check_mirrored,
                                            shifts=BOX_SHIFTS)
                if score > region:
                    region, mirrored_region, overlap = score, mir, ov
    hit_hash = min(d, dm) <= thr["phash_max_distance"]
    hit_region = region >= thr["copy_min_score"]
    if not (hit_hash or hit_region or cos >= thr["near_duplicate_min_cosine"]):
        return None
    mirrored = (dm < d and dm <= thr["phash_max_distance"]) or (hit_region and mirrored_region)
    return {"phash_distance": d, "mirrored_phash_distance": dm, "mirrored": bool(mirrored),
            "cosine": round(cos, 4), "region_score": round(region, 4), "region_overlap": round(overlap, 3)}


def _flat_free_area(c: _Candidate) -> int:
    """Content area with every flat edge run removed too (white padding beside a white studio
    backdrop is not a detectable bar, but it is no content either)."""
    area = c.metrics.get("flat_free_area")
    return int(area) if area is not None else _content_area(c)


def _content_area(c: _Candidate) -> int:
    if c.borders is not None:
        return c.borders.content_area
    return int(c.size[0] * c.size[1]) if c.size else 0


def _best_copy(members: list[_Candidate]) -> _Candidate:
    """The copy to keep: the most real content (pixels inside the borders and flat edge runs:
    scene and resolution together), then no bars, the larger face, the more colourful (a desaturated edit lost
    information), the less blocky (a recompressed copy), the sharper, the earlier. Each step keeps
    everything within a small tolerance of the best, so detector jitter does not decide."""
    def narrow(pool, value, tol):
        best = max(value(c) for c in pool)
        return [c for c in pool if value(c) >= best - tol(best)]

    pool = narrow(members, _flat_free_area, lambda b: 0.03 * b)
    pool = narrow(pool, lambda c: -(c.borders.border_fraction if c.borders else 0.0), lambda b: 0.005)
    pool = narrow(pool, lambda c: float(c.face.face_size), lambda b: 0.03 * b)
    pool = narrow(pool, lambda c: float(c.metrics.get("colourfulness", 0.0)), lambda b: max(1.5, 0.08 * b))
    pool = narrow(pool, lambda c: -float(c.metrics.get("blockiness", 1.0)), lambda b: 0.15)
    return max(pool, key=lambda c: (round(float(c.face.sharpness) / 10.0), -c.index))


def _near_duplicates(cands: list[_Candidate], thr: dict, cfg: ScreeningConfig) -> None:
    """Cluster surviving photos that are copies of one shot; keep the best of each cluster."""
    alive = [c for c in cands if c.code is None and c.face is not None and c.hashes is not None]
    parent = {c.index: c.index for c in alive}
    evidence: dict[tuple[int, int], dict] = {}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a_i, a in enumerate(alive):
        for b in alive[a_i + 1:]:
            ev = _copy_evidence(a, b, thr, cfg)
            if ev is not None:
                evidence[(a.index, b.index)] = ev
                parent[find(b.index)] = find(a.index)
    clusters: dict[int, list[_Candidate]] = {}
    for c in alive:
        clusters.setdefault(find(c.index), []).append(c)
    for members in clusters.values():
        if len(members) < 2:
            continue
        keep = _best_copy(members)
        for c in members:
            if c is keep:
                continue
            key = (min(c.index, keep.index), max(c.index, keep.index))
            if key in evidence:
                partner, ev = keep, evidence[key]
            else:  # linked to the kept photo only through another near-copy: name the one it resembles
                key, ev = next((k, v) for k, v in sorted(evidence.items()) if c.index in k)
                partner = next(m for m in members if m.index == (key[0] if key[1] == c.index else key[1]))
            how = "a mirrored copy" if ev["mirrored"] else "a copy"
            kept_note = ("the one with more real image content is kept" if partner is keep
                         else f"{Path(keep.source).name}, the best of this group of copies, is kept")
            message = (f"{how} of {Path(partner.source).name}, one shot (surroundings match "
                       f"{ev['region_score']:.2f}, hash distance "
                       f"{min(ev['phash_distance'], ev['mirrored_phash_distance'])}/64, face similarity "
                       f"{ev['cosine']:.3f}); {kept_note}")
            c.metrics["near_duplicate"] = ev
            c.duplicate_of = keep.source
            if cfg.allow_near_duplicates:
                c.warnings.append({"code": "near_duplicate", "message": message + "; kept by override"})
            else:
                c.code, c.reason = "near_duplicate", message


def _cluster_identities(cands: list[_Candidate], thr: dict) -> None:
    """Without a profile: keep the person most of the surviving photos show.

    Average-linkage clustering of the faces' cosines, cut at the model's pairwise
    ``same_person_min_cosine``; the largest cluster is the character. A tie means nobody can be
    told to be the character: every photo is rejected (``identity_unclear``) rather than guessed.
    """
    alive = [c for c in cands if c.code is None and c.face is not None]
    if len(alive) < 2:
        return
    emb = np.stack([np.asarray(c.face.embedding, dtype=np.float64) for c in alive])
    sims = emb @ emb.T
    clusters = [[i] for i in range(len(alive))]
    cut = thr["same_person_min_cosine"]
    while len(clusters) > 1:
        best, pair = -2.0, None
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                v = float(sims[np.ix_(clusters[i], clusters[j])].mean())
                if v > best:
                    best, pair = v, (i, j)
        if best < cut:
            break
        i, j = pair
        clusters[i] = clusters[i] + clusters.pop(j)
    clusters.sort(key=len, reverse=True)
    for k, members in enumerate(clusters):
        for m in members:
            alive[m].metrics["set_cluster"] = {"cluster": k, "size": len(members), "clusters": len(clusters)}
    if len(clusters) == 1:
        return
    main = clusters[0]
    if len(clusters[1]) == len(main):
        sizes = [len(m) for m in clusters]
        for c in alive:
            c.code = "identity_unclear"
            c.reason = (f"no profile was given and the set shows {len(clusters)} people "
                        f"({', '.join(map(str, sizes))} photos): none shows in more photos than the others, so "
                        "the character cannot be told; give the character's profile or remove the other people")
        return
    centroid = emb[main].mean(axis=0)
    centroid /= max(1e-12, float(np.linalg.norm(centroid)))
    for members in clusters[1:]:
        for m in members:
            c = alive[m]
            c.code = "identity_minority"
            c.reason = (f"no profile was given; this face is not the person {len(main)} of the set's photos show "
                        f"(similarity {float(emb[m] @ centroid):.3f} to them, {len(members)} photo(s) of this "
                        "person): another person is left out")


def _finish(c: _Candidate) -> ScreenedImage:
    if c.code is None and c.face is None:  # never examined: must not count as accepted
        c.code, c.reason = "not_screened", "this photo was not examined"
    return ScreenedImage(index=c.index, source=c.source, sha256=c.sha256, accepted=c.code is None,
                         code=c.code, reason=c.reason, face=c.face, other_faces=c.others, framing=c.framing,
                         pose=c.pose, duplicate_of=c.duplicate_of, metrics=c.metrics,
                         warnings=tuple(c.warnings), input=c.input,
                         content_box=None if c.borders is None else tuple(c.borders.box))


def _coverage(accepted: list[ScreenedImage], cfg: ScreeningConfig) -> Coverage:
    framing = {k: 0 for k in FRAMINGS}
    pose = {k: 0 for k in POSES}
    unknown_pose = 0
    for s in accepted:
        if s.framing:
            framing[s.framing] += 1
        if s.pose:
            pose[s.pose] += 1
        else:
            unknown_pose += 1
    if unknown_pose:
        pose["unknown"] = unknown_pose
    n = len(accepted)
    advice: list[str] = []
    if n >= 3:
        share = cfg.coverage_max_share
        if framing["closeup"] > share * n:
            advice.append("almost all photos are close-ups: add half-body and full-body shots so the LoRA can "
                          "place the face in wider scenes")
        elif framing["closeup"] == 0:
            advice.append("no close-ups: add a few head-and-shoulders photos so the face's detail is learned")
        elif framing["half_body"] + framing["full_body"] > share * n:
            advice.append("few close-ups: add head-and-shoulders photos for facial detail")
        if pose["frontal"] > share * n:
            advice.append("almost all photos face the camera: add three-quarter and profile views so other "
                          "angles keep the likeness")
        elif pose["frontal"] == 0 and pose["three_quarter"] + pose["profile"] > 0:
            advice.append("no frontal photos: add some photos facing the camera")
    return Coverage(framing=framing, pose=pose, advice=tuple(advice))


def _rules(num_accepted: int, request: Any) -> tuple[tuple, Any]:
    from ..rules import LoraRequest, check_image_count, check_lora_request

    if request is None:
        return check_image_count(num_accepted), None
    if isinstance(request, dict):
        given = {k: v for k, v in request.items() if k not in ("num_images", "images")}
        request = LoraRequest.from_dict({**given, "num_images": num_accepted})
    else:
        request = dataclasses.replace(request, num_images=num_accepted)
    result = check_lora_request(request)
    return result.violations, result


def _profile_fingerprint(profile: Any) -> str | None:
    if profile is None:
        return None
    fp = getattr(profile, "fingerprint", None)
    if callable(fp):
        fp = fp()
    if isinstance(fp, str):
        return fp
    centroid = getattr(profile, "centroid", None)
    if centroid is not None:
        return hashlib.sha256(np.asarray(centroid, dtype=np.float32).tobytes()).hexdigest()[:16]
    return None
