"""Soft face masks for masked-loss training: a feathered ellipse over the face.

The mask is an L-mode image the size of the prepared training image: 255 over the face (the
box grown a little so forehead and chin are in), falling smoothly to 0 (a smoothstep over
``feather`` of the ellipse's radius) so the loss weight has no hard edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MaskConfig:
    """Shape of the soft face mask.

    Attributes:
        scale_x: ellipse half-width as a multiple of the face box's half-width.
        scale_y: ellipse half-height as a multiple of the face box's half-height.
        lift: shift of the ellipse centre upwards, as a fraction of the face box height
            (detector boxes usually cut the forehead).
        feather: width of the soft edge as a fraction of the ellipse radius (0 = hard edge).
    """

    scale_x: float = 1.25
    scale_y: float = 1.45
    lift: float = 0.08
    feather: float = 0.5

    def __post_init__(self) -> None:
        if self.scale_x <= 0 or self.scale_y <= 0 or self.feather < 0 or not -1 <= self.lift <= 1:
            raise ValueError(f"invalid mask shape: {self}")


def face_mask(size: tuple[int, int], face_bbox: Sequence[float], config: MaskConfig | None = None) -> np.ndarray:
    """A soft elliptical face mask.

    Args:
        size: ``(width, height)`` of the image the mask belongs to.
        face_bbox: ``(x0, y0, x1, y1)`` of the face in that image's pixels.
        config: mask shape; ``MaskConfig()`` by default.

    Returns:
        ``(height, width)`` uint8 array: 255 on the face, 0 far from it.

    Example:
        >>> m = face_mask((64, 64), (16, 16, 48, 48))
        >>> int(m[32, 32]), int(m[0, 0])
        (255, 0)
    """
    cfg = config or MaskConfig()
    w, h = int(size[0]), int(size[1])
    x0, y0, x1, y1 = (float(v) for v in face_bbox)
    fw, fh = max(1.0, x1 - x0), max(1.0, y1 - y0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0 - cfg.lift * fh
    ax, ay = fw / 2.0 * cfg.scale_x, fh / 2.0 * cfg.scale_y
    xs = (np.arange(w, dtype=np.float64) + 0.5 - cx) / ax
    ys = (np.arange(h, dtype=np.float64) + 0.5 - cy) / ay
    d = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    if cfg.feather <= 0:
        weight = (d <= 1.0).astype(np.float64)
    else:
        t = np.clip((d - 1.0) / cfg.feather, 0.0, 1.0)
        weight = 1.0 - t * t * (3.0 - 2.0 * t)  # smoothstep: flat at both ends, no hard edge
    return np.round(weight * 255.0).astype(np.uint8)
