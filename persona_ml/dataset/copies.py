"""Copies of one shot: crops, re-framings, padded, resized, recompressed, colour-shifted and
mirrored copies of one photo, found by comparing the face and its surroundings.

A global perceptual hash changes as soon as a copy is re-framed (a tighter crop moves every
low frequency), and a global face embedding cannot tell a second shot of the same person from a
copy of the first. What survives every one of those edits is the *pixels around the face*: the
same hair strands, collar and background in the same place relative to the eyes. So each photo
gets a ``RegionSignature``: its luma resampled in a frame anchored on the eyes (rotation, scale
and position undone), ``extent`` inter-ocular distances wide, with a mask of the samples that
fall inside the photo's real content (borders trimmed first, see ``borders.content_box``).
Two signatures are compared by normalised cross-correlation over the samples both photos show,
allowing a one-sample shift (landmark jitter) and a mirror flip; an affine change of brightness
or contrast leaves the score unchanged.

Measured on ../shared/faces (``benchmarks/bench_screening.py``): copies of one photo score above
0.9, distinct photos of one person below 0.8.

Upscaled copies. Of two copies of one shot, the one with the bigger face usually has more real
detail, unless it was made by enlarging the other: then it has no content above the smaller
copy's resolution. ``detail_profile`` measures, on the face crop, the share of the luma variance
that a down-and-up resampling by each factor of ``DETAIL_FACTORS`` removes (the energy above
1/s of the crop's Nyquist frequency). Natural photos are close to scale-invariant, so a genuine
larger copy loses about the same share at factor r (the face-size ratio) as the smaller copy
does; an r-times enlargement loses almost nothing. ``upscaled_by`` compares the two. Measured on
the 40 photos at least 500 px wide of ../shared/faces (each against its own bicubic enlargement, and
against its own Lanczos reduction as the genuine larger copy): the detail ratio of enlargements
has a median of 0.36 / 0.21 / 0.10 at r = 1.25 / 1.5 / 2, genuine larger copies 0.80 / 0.65 / 0.57;
the cut ``UPSCALE_CUT / r**2`` (0.45 / 0.31 / 0.18) misjudged about one photo in twenty each
way (a very soft original reads as an enlargement). The MANIFEST's ``img11_reflection.jpg``, a
mirrored ~1.95x enlargement of ``img11.jpg``, scores 0.09.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["RegionSignature", "region_signature", "copy_score", "detail_profile", "upscaled_by"]

SIZE = 48            # samples per side
EXTENT = 6.0         # frame side in inter-ocular distances (face ~2.2 iod wide: face, hair, shoulders)
CENTER_DOWN = 0.6    # frame centre below the eye midpoint, in iod (the face's middle)
MIN_OVERLAP = 0.3    # least share of the frame both photos must show
SHIFTS = (-1, 0, 1)
DETAIL_FACTORS = (1.2, 1.5, 2.0, 2.5, 3.0)   # resampling factors of the detail profile
DETAIL_MIN_PX = 48   # a smaller face crop has too few samples for the measure
UPSCALE_MIN_RATIO = 1.15  # face-size ratio below which two copies count as the same size
UPSCALE_CUT = 0.7    # an enlargement by r keeps less than UPSCALE_CUT / r**2 of the smaller copy's detail


@dataclass(frozen=True)
class RegionSignature:
    """The face and its surroundings in an eye-anchored frame.

    Attributes:
        patch: ``(SIZE, SIZE)`` float32 luma samples.
        valid: ``(SIZE, SIZE)`` bool, samples inside the photo's real content.
        anchored: ``"eyes"`` (from landmarks) or ``"box"`` (from the face box, when landmarks
            are missing or degenerate).
    """

    patch: np.ndarray
    valid: np.ndarray
    anchored: str

    @property
    def coverage(self) -> float:
        return float(self.valid.mean())


def _frame(landmarks, bbox, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Frame centre, x axis and y axis (each one sample long, in image pixels)."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    bw = max(1.0, x1 - x0) * scale
    lm = None if landmarks is None else np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if lm is not None and lm.shape[0] >= 2 and np.isfinite(lm[:2]).all():
        le, re = lm[0], lm[1]
        u = re - le
        iod = float(math.hypot(*u))
        if 0.2 * bw <= iod <= 1.2 * bw:
            u = u / iod
            v = np.array([-u[1], u[0]])
            center = (le + re) / 2.0 + CENTER_DOWN * iod * v
            step = EXTENT * iod * scale / SIZE
            return center, u * step, v * step, "eyes"
    # a face box is about 2.2 iod wide; its centre is near the face's middle
    center = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    step = EXTENT * (bw / 2.2) / SIZE
    return center, np.array([step, 0.0]), np.array([0.0, step]), "box"


def region_signature(gray: np.ndarray, landmarks, bbox, content: tuple[int, int, int, int] | None = None,
                     scale: float = 1.0) -> RegionSignature:
    """The eye-anchored signature of one face's surroundings.

    Args:
        gray: ``(H, W)`` uint8 luma of the whole photo.
        landmarks: ``(5, 2)`` points (left eye, right eye first) or ``None``.
        bbox: the face box ``(x0, y0, x1, y1)``.
        content: the real content box (borders excluded); default the whole image.
        scale: frame size relative to the nominal one (box-anchored frames are tried at a few).

    Returns:
        RegionSignature.
    """
    from PIL import Image

    h, w = gray.shape[:2]
    cx0, cy0, cx1, cy1 = content if content is not None else (0, 0, w, h)
    center, ax, ay, anchored = _frame(landmarks, bbox, scale)
    idx = np.arange(SIZE, dtype=np.float64) - (SIZE - 1) / 2.0
    gx, gy = np.meshgrid(idx, idx)
    xs = center[0] + gx * ax[0] + gy * ay[0]
    ys = center[1] + gx * ax[1] + gy * ay[1]
    valid = (xs >= cx0) & (xs < cx1 - 1) & (ys >= cy0) & (ys < cy1 - 1)
    # sample from a copy reduced to about 2 source pixels per sample (anti-aliasing), cut to the
    # frame's bounding box first so a 50 MP photo is never reduced whole
    step = float(math.hypot(*ax))
    pad = 2.0 * step
    bx0 = int(max(cx0, math.floor(xs.min() - pad)))
    by0 = int(max(cy0, math.floor(ys.min() - pad)))
    bx1 = int(min(cx1, math.ceil(xs.max() + pad)))
    by1 = int(min(cy1, math.ceil(ys.max() + pad)))
    patch = np.zeros((SIZE, SIZE), np.float32)
    if bx1 - bx0 < 2 or by1 - by0 < 2 or not valid.any():
        return RegionSignature(patch, np.zeros((SIZE, SIZE), bool), anchored)
    region = Image.fromarray(np.ascontiguousarray(gray[by0:by1, bx0:bx1]))
    k = max(1, int(step / 2.0))
    if k > 1:
        region = region.reduce(k)
    sx = (xs - bx0) / k
    sy = (ys - by0) / k
    arr = np.asarray(region, dtype=np.float32)
    rh, rw = arr.shape
    sx = np.clip(sx, 0, rw - 1.001)
    sy = np.clip(sy, 0, rh - 1.001)
    ix, iy = sx.astype(np.int64), sy.astype(np.int64)
    fx, fy = (sx - ix).astype(np.float32), (sy - iy).astype(np.float32)
    ix1, iy1 = np.minimum(ix + 1, rw - 1), np.minimum(iy + 1, rh - 1)
    patch = ((arr[iy, ix] * (1 - fx) + arr[iy, ix1] * fx) * (1 - fy)
             + (arr[iy1, ix] * (1 - fx) + arr[iy1, ix1] * fx) * fy).astype(np.float32)
    return RegionSignature(patch, valid, anchored)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 1e-6 else 0.0


def copy_score(a: RegionSignature, b: RegionSignature, *, check_mirrored: bool = True,
               min_overlap: float = MIN_OVERLAP, shifts: tuple[int, ...] = SHIFTS) -> tuple[float, bool, float]:
    """How alike the surroundings of two faces are.

    Returns:
        ``(score, mirrored, overlap)``: the best normalised cross-correlation (-1..1) over
        one-sample shifts (and the mirror flip of ``b``), whether the best was mirrored, and the
        share of the frame both photos show there. ``score`` is 0 when they share less than
        ``min_overlap`` of the frame.
    """
    best = (0.0, False, 0.0)
    candidates = [(b.patch, b.valid, False)]
    if check_mirrored:
        candidates.append((b.patch[:, ::-1], b.valid[:, ::-1], True))
    need = min_overlap * SIZE * SIZE
    for pb, vb, mirrored in candidates:
        for dy in shifts:
            for dx in shifts:
                ya, yb = max(0, dy), max(0, -dy)
                xa, xb = max(0, dx), max(0, -dx)
                hh, ww = SIZE - abs(dy), SIZE - abs(dx)
                m = a.valid[ya:ya + hh, xa:xa + ww] & vb[yb:yb + hh, xb:xb + ww]
                n = int(m.sum())
                if n < need:
                    continue
                s = _ncc(a.patch[ya:ya + hh, xa:xa + ww][m], pb[yb:yb + hh, xb:xb + ww][m])
                if s > best[0]:
                    best = (s, mirrored, n / float(SIZE * SIZE))
    return best


def detail_profile(gray_face: np.ndarray) -> tuple[float, ...] | None:
    """Share of the face crop's luma variance removed by a bicubic down-and-up resampling by each
    factor of ``DETAIL_FACTORS`` (``None`` for a crop under ``DETAIL_MIN_PX`` or a flat one)."""
    from PIL import Image

    g = np.ascontiguousarray(gray_face, dtype=np.uint8)
    h, w = g.shape[:2]
    if min(h, w) < DETAIL_MIN_PX:
        return None
    var = float(np.var(g, dtype=np.float64))
    if var < 1.0:
        return None
    im = Image.fromarray(g)
    ref = g.astype(np.float32)
    out = []
    for f in DETAIL_FACTORS:
        small = im.resize((max(2, round(w / f)), max(2, round(h / f))), Image.BICUBIC)
        back = np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32)
        out.append(float(np.mean((ref - back) ** 2)) / var)
    return tuple(out)


def _at(profile: tuple[float, ...], factor: float) -> float:
    """The profile at ``factor``, interpolated in log(factor) (clamped to the measured range)."""
    xs = np.log(np.asarray(DETAIL_FACTORS))
    return float(np.interp(math.log(factor), xs, np.asarray(profile)))


def upscaled_by(larger: tuple[float, ...] | None, smaller: tuple[float, ...] | None,
                ratio: float) -> float | None:
    """The detail ratio when the copy with ``ratio`` times the face size is an enlargement of the
    other (``None`` when it is not, or when either profile is missing)."""
    if larger is None or smaller is None or ratio < UPSCALE_MIN_RATIO:
        return None
    base = _at(smaller, ratio)
    if base <= 1e-6:
        return None
    rho = _at(larger, ratio) / base
    return rho if rho < UPSCALE_CUT / ratio ** 2 else None
