"""Backend-independent face measurements: sharpness, exposure and pose from 5 landmarks."""

from __future__ import annotations

import math

import numpy as np


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 luma (H, W) on the 0..255 scale (BT.601)."""
    if pixels.ndim == 2:
        return pixels.astype(np.float32)
    rgb = pixels[..., :3].astype(np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def crop_box(pixels: np.ndarray, bbox, margin: float = 0.0) -> np.ndarray:
    """Crop ``bbox`` (x0, y0, x1, y1), grown by ``margin`` x its size on each side, clipped."""
    h, w = pixels.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in bbox)
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    xa, ya = max(0, int(math.floor(x0 - mx))), max(0, int(math.floor(y0 - my)))
    xb, yb = min(w, int(math.ceil(x1 + mx))), min(h, int(math.ceil(y1 + my)))
    if xb <= xa or yb <= ya:
        return pixels[0:0, 0:0]
    return pixels[ya:yb, xa:xb]


def laplacian_variance(gray: np.ndarray, target: int = 128) -> float:
    """Variance of the 4-neighbour Laplacian, after resizing the crop's long side to ``target``.

    Resizing first makes the figure comparable between a 60 px and a 600 px face; blur shows as
    a low value (a sharp face crop is typically > 100, a blurred one < 30).
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim == 3:
        g = to_gray(g)
    if g.size == 0 or min(g.shape) < 3:
        return 0.0
    long_side = max(g.shape)
    if long_side != target:
        from PIL import Image

        scale = target / long_side
        size = (max(3, round(g.shape[1] * scale)), max(3, round(g.shape[0] * scale)))
        g = np.asarray(Image.fromarray(np.clip(g, 0, 255).astype(np.uint8)).resize(size, Image.BILINEAR),
                       dtype=np.float32)
    lap = (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1]) - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def exposure_stats(gray: np.ndarray) -> dict[str, float]:
    """Mean luma and the fractions of clipped shadows (< 8) and highlights (> 247)."""
    g = np.asarray(gray, dtype=np.float32)
    if g.size == 0:
        return {"mean": 0.0, "dark_fraction": 1.0, "bright_fraction": 0.0}
    return {"mean": float(g.mean()), "dark_fraction": float((g < 8).mean()),
            "bright_fraction": float((g > 247).mean())}


def pose_from_landmarks(landmarks: np.ndarray) -> tuple[float, float, float]:
    """Approximate (yaw, pitch, roll) in degrees from 5 landmarks (eyes, nose, mouth corners).

    Roll is the eye-line angle. Yaw comes from where the nose sits between the eyes (0 frontal,
    about +-90 in profile; positive = nose towards image right). Pitch compares the nose's height
    between the eye line and the mouth line (0 for a level face). Good enough to bucket frontal /
    three-quarter / profile; not a head-pose estimator.
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    le, re, nose, lm_, rm = lm
    dx, dy = re - le
    roll = math.degrees(math.atan2(dy, dx))
    eye_mid = (le + re) / 2.0
    mouth_mid = (lm_ + rm) / 2.0
    # rotate into the roll-free frame
    c, s = math.cos(-math.radians(roll)), math.sin(-math.radians(roll))
    rot = np.array([[c, -s], [s, c]])
    le_r, re_r, nose_r, em_r, mm_r = (rot @ p for p in (le, re, nose, eye_mid, mouth_mid))
    half = max((re_r[0] - le_r[0]) / 2.0, 1e-6)
    offset = (nose_r[0] - em_r[0]) / half  # -1..1 spans eye to eye
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, offset))))
    span = mm_r[1] - em_r[1]
    if abs(span) < 1e-6:
        pitch = 0.0
    else:
        ratio = (nose_r[1] - em_r[1]) / span  # about 0.55-0.6 for a level face
        pitch = float(np.clip((ratio - 0.58) * 150.0, -90.0, 90.0))
    return (float(yaw), float(pitch), float(roll))


def pose_bucket(yaw: float | None, *, view: str | None = None, detector: str | None = None) -> str | None:
    """``frontal`` (|yaw| < 20), ``three_quarter`` (< 50) or ``profile``, from the landmark yaw
    and, where given, what the detector saw.

    Limits of the estimate: yaw comes from where the nose sits between the eyes
    (``pose_from_landmarks``); past about 50 degrees the far eye is hidden and landmark models
    (dlib's 5 points among them) place it on the visible side, so yaw reads too low. The detector
    corrects that floor: a face dlib's HOG found only with its left- or right-looking filter
    (``view``), or that only the CNN found (``detector="cnn"``: HOG, which covers about +-45
    degrees, saw nothing there) is at least ``three_quarter``. A CNN-only face can also be a
    frontal face HOG missed for another reason (blur, occlusion, a sideways roll): it is then
    counted as turned. Pitch is not bucketed. ``None`` when nothing is known.
    """
    if yaw is None and view is None and detector is None:
        return None
    a = abs(float(yaw)) if yaw is not None else 0.0
    bucket = "frontal" if a < 20 else "three_quarter" if a < 50 else "profile"
    turned = view in ("left", "right") or detector == "cnn"
    if turned and bucket == "frontal":
        bucket = "three_quarter"
    return bucket


def pose_of(face) -> str | None:
    """``pose_bucket`` of a ``FaceObservation``: its landmark yaw and what its detector saw."""
    extra = getattr(face, "extra", None) or {}
    yaw = None if face.pose is None else float(face.pose[0])
    return pose_bucket(yaw, view=extra.get("hog_view"), detector=extra.get("detector"))
