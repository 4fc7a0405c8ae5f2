"""Face-aware crops and aspect-ratio buckets for Flux training images.

A bucket is a ``(width, height)`` of about ``resolution**2`` pixels whose sides are multiples of
16: Flux's VAE downsamples 8x and its transformer packs latents 2x2, so a side that is not a
multiple of 16 cannot be encoded without padding. A crop is planned in source pixels around the
face, at the bucket's aspect ratio, and is assigned the largest configured resolution it can fill
without being upscaled by more than ``max_upscale``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

BUCKET_MULTIPLE = 16  # 8x VAE downsampling x 2x2 latent packing


@dataclass(frozen=True)
class Bucket:
    """A training image size: ``width`` x ``height`` pixels at nominal ``resolution``."""

    width: int
    height: int
    resolution: int

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def to_list(self) -> list[int]:
        return [self.width, self.height]


@dataclass(frozen=True)
class CropPlan:
    """Where to cut a training image from the upright source image.

    Attributes:
        kind: ``"closeup"`` or ``"wide"``.
        box: ``(x0, y0, x1, y1)`` integer crop box in source pixels (x1, y1 exclusive).
        bucket: the output size the crop is resized to.
        upscale: output pixels per source pixel (> 1 means the crop is enlarged).
    """

    kind: str
    box: tuple[int, int, int, int]
    bucket: Bucket
    upscale: float

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> int:
        return self.width * self.height


def make_buckets(resolution: int, aspect_ratios: Sequence[float], multiple: int = BUCKET_MULTIPLE) -> list[Bucket]:
    """Buckets of about ``resolution**2`` pixels for each aspect ratio (width / height).

    Example:
        >>> [b.to_list() for b in make_buckets(1024, (1.0, 0.75))]
        [[1024, 1024], [880, 1184]]
    """
    if resolution % multiple:
        raise ValueError(f"resolution {resolution} is not a multiple of {multiple}")
    out: list[Bucket] = []
    for ar in aspect_ratios:
        w = max(multiple, int(round(resolution * math.sqrt(ar) / multiple)) * multiple)
        h = max(multiple, int(round(resolution / math.sqrt(ar) / multiple)) * multiple)
        b = Bucket(w, h, resolution)
        if b not in out:
            out.append(b)
    return out


def clip_box(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Clip ``(x0, y0, x1, y1)`` to an image of ``size = (width, height)``."""
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    return (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))


def fit_box(face: Sequence[float], size: tuple[int, int], aspect: float, want_w: float,
            center: tuple[float, float], jitter: tuple[float, float] = (0.0, 0.0)) -> tuple[int, int, int, int] | None:
    """An integer crop box of the given ``aspect`` that contains ``face`` and lies inside the image.

    The box is ``want_w`` wide (grown to hold the face, shrunk to fit the image), centred on
    ``center`` plus ``jitter`` (fractions of the box size), then shifted to stay inside the image.

    Returns:
        ``(x0, y0, x1, y1)``, or ``None`` when no box of this aspect can hold the face inside
        the image.
    """
    W, H = size
    fx0, fy0, fx1, fy1 = clip_box(face, size)
    fw, fh = fx1 - fx0, fy1 - fy0
    w = max(float(want_w), fw, fh * aspect)
    h = w / aspect
    scale = min(1.0, W / w, H / h)
    w, h = w * scale, h * scale
    iw, ih = int(math.floor(w)), int(math.floor(h))
    if iw < math.ceil(fw) or ih < math.ceil(fh) or iw < 1 or ih < 1:
        return None
    cx = center[0] + jitter[0] * iw
    cy = center[1] + jitter[1] * ih
    x0 = int(round(cx - iw / 2.0))
    y0 = int(round(cy - ih / 2.0))
    # keep the face inside, then the box inside the image
    x0 = min(max(x0, int(math.ceil(fx1)) - iw), int(math.floor(fx0)))
    y0 = min(max(y0, int(math.ceil(fy1)) - ih), int(math.floor(fy0)))
    x0 = min(max(x0, 0), W - iw)
    y0 = min(max(y0, 0), H - ih)
    box = (x0, y0, x0 + iw, y0 + ih)
    if not contains(box, (fx0, fy0, fx1, fy1)):
        return None
    return box


def contains(box: Sequence[float], inner: Sequence[float], tol: float = 1.0) -> bool:
    """Whether ``inner`` lies inside ``box`` (within ``tol`` pixels, for rounding)."""
    return (inner[0] >= box[0] - tol and inner[1] >= box[1] - tol and inner[2] <= box[2] + tol
            and inner[3] <= box[3] + tol)


def overlap_fraction(box: Sequence[float], other: Sequence[float]) -> float:
    """Fraction of ``other``'s area that lies inside ``box``."""
    ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
    iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
    area = max(0.0, other[2] - other[0]) * max(0.0, other[3] - other[1])
    return ix * iy / area if area > 0 else 0.0


def plan_crop(kind: str, face: Sequence[float], size: tuple[int, int], *,
              context: tuple[float, float] | None,
              aspect_ratios: Sequence[float], resolutions: Sequence[int], max_upscale: float,
              prefer_aspect: float, face_center_y: float = 0.5,
              jitter: tuple[float, float] = (0.0, 0.0), avoid: Sequence[Sequence[float]] = (),
              max_avoid_overlap: float = 0.0) -> CropPlan | None:
    """Plan one crop: the best bucket for it and a box of that bucket's aspect around the face.

    Args:
        kind: ``"closeup"`` or ``"wide"`` (recorded in the plan).
        face: face box ``(x0, y0, x1, y1)`` in source pixels.
        size: source ``(width, height)``.
        context: ``(least, most)`` crop width as a multiple of the face width: the crop starts at
            ``least`` and grows up to ``most`` to fill a bigger bucket without upscaling;
            ``None`` means as large as the image allows.
        aspect_ratios: candidate aspect ratios; tried closest to ``prefer_aspect`` first.
        resolutions: nominal bucket resolutions; the largest one reachable is used.
        max_upscale: the most a crop may be enlarged to fill its bucket.
        prefer_aspect: the aspect ratio to aim for (the image's, for wide crops).
        face_center_y: where the face centre sits vertically in the crop (0 top, 1 bottom).
        jitter: extra offset of the crop centre, as fractions of the crop size.
        avoid: boxes (other people's faces) a crop may hold at most ``max_avoid_overlap`` of;
            a tighter crop (smaller bucket) is tried before giving up.

    Returns:
        CropPlan, or ``None`` when the crop would need more upscaling than allowed or cannot
        contain the face at any aspect ratio.
    """
    fx0, fy0, fx1, fy1 = clip_box(face, size)
    fw = max(1.0, fx1 - fx0)
    fcx, fcy = (fx0 + fx1) / 2.0, (fy0 + fy1) / 2.0
    order = sorted(aspect_ratios, key=lambda a: (abs(math.log(a / prefer_aspect)), a))
    for ar in order:
        for res in sorted(resolutions, reverse=True):
            bucket = make_buckets(res, (ar,))[0]
            aspect = bucket.aspect
            if context is None:
                want_w = float(size[0])
            else:
                # +1 px: the box is floored to whole pixels and must still stay within max_upscale
                want_w = max(fw * context[0], bucket.width / max_upscale + 1.0,
                             (bucket.height / max_upscale + 1.0) * aspect)
                if want_w > fw * context[1] + 1e-6:
                    continue  # would no longer be this kind of crop; try a smaller bucket
            # centre so the face sits at face_center_y of the box's height
            h_est = min(max(want_w, fw) / aspect, float(size[1]))
            center = (fcx, fcy + (0.5 - face_center_y) * h_est)
            box = fit_box(face, size, aspect, want_w, center, jitter)
            if box is None:
                continue
            upscale = max(bucket.width / (box[2] - box[0]), bucket.height / (box[3] - box[1]))
            if any(overlap_fraction(box, o) > max_avoid_overlap for o in avoid):
                continue
            if upscale <= max_upscale + 1e-9:
                return CropPlan(kind=kind, box=box, bucket=bucket, upscale=round(upscale, 4))
    return None


def framing_of(face: Sequence[float], box: Sequence[float], closeup_min: float = 0.28,
               half_body_min: float = 0.09) -> str:
    """``closeup`` / ``half_body`` / ``full_body`` from the face box's share of the frame height."""
    ratio = (float(face[3]) - float(face[1])) / max(1.0, float(box[3]) - float(box[1]))
    if ratio >= closeup_min:
        return "closeup"
    if ratio >= half_body_min:
        return "half_body"
    return "full_body"


def face_in_crop(face: Sequence[float], plan: CropPlan) -> tuple[float, float, float, float]:
    """The face box in the prepared image's pixel coordinates (clipped to it)."""
    x0, y0, x1, y1 = plan.box
    sx, sy = plan.bucket.width / (x1 - x0), plan.bucket.height / (y1 - y0)
    fx0, fy0, fx1, fy1 = (float(v) for v in face)
    out = ((fx0 - x0) * sx, (fy0 - y0) * sy, (fx1 - x0) * sx, (fy1 - y0) * sy)
    return clip_box(out, (plan.bucket.width, plan.bucket.height))
