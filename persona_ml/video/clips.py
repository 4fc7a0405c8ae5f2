"""Test clips made from still photos: a character, a stranger, no face, and a mouth that follows speech.

Used by the tests and ``benchmarks/bench_video.py`` to check the identity report and the sync
estimate on real faces with a known answer. Each still is held for some frames with a small
deterministic jitter (a pixel of drift, a little brightness change), so consecutive frames are
close but never identical, as in a real video.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fit_frame(pixels: np.ndarray, size: int) -> np.ndarray:
    """Letterbox an RGB image into a ``size`` x ``size`` frame (PIL bilinear)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGB")
    img.thumbnail((size, size), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return np.asarray(canvas, np.uint8)


def hold_clip(stills: Sequence[np.ndarray], counts: Sequence[int], *, size: int = 256, seed: int = 0) -> np.ndarray:
    """Frames showing ``stills[k]`` for ``counts[k]`` frames each, with a little jitter.

    Returns:
        ``(sum(counts), size, size, 3)`` uint8.
    """
    rng = np.random.default_rng(seed)
    out = []
    for still, count in zip(stills, counts):
        base = fit_frame(still, size).astype(np.int16)
        for _ in range(int(count)):
            dx, dy = rng.integers(-1, 2, size=2)
            frame = np.roll(base, (int(dy), int(dx)), axis=(0, 1)) + int(rng.integers(-3, 4))
            out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(out)


def speaking_clip(still: np.ndarray, landmarks: np.ndarray, openness: np.ndarray) -> np.ndarray:
    """Frames of one photo whose mouth opens by ``openness[t]`` (0..1): a dark ellipse between the corners.

    Args:
        still: ``(H, W, 3)`` frame (already at the clip's size).
        landmarks: the face's 5 points in ``still``.
        openness: per-frame mouth opening.
    """
    pts = np.asarray(landmarks, np.float32).reshape(5, 2)
    centre = (pts[3] + pts[4]) / 2
    half_w = max(2.0, float(np.linalg.norm(pts[4] - pts[3])) / 2)
    h, w = still.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = still.astype(np.float32)
    frames = []
    for o in np.clip(np.asarray(openness, np.float32), 0, 1):
        half_h = 0.5 + o * half_w * 0.6
        inside = ((xx - centre[0]) / half_w) ** 2 + ((yy - centre[1] - half_h * 0.3) / half_h) ** 2 <= 1.0
        f = base.copy()
        f[inside] *= 0.25
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(frames)


def envelope_per_frame(samples: np.ndarray, sample_rate: int, fps: float, n_frames: int) -> np.ndarray:
    """Speech RMS per video frame, scaled to 0..1 (the mouth opening a clip is driven by)."""
    hop = sample_rate / fps
    env = np.array([np.sqrt(np.mean(np.square(samples[int(i * hop):int((i + 1) * hop)], dtype=np.float64)) + 0.0)
                    if int(i * hop) < len(samples) else 0.0 for i in range(n_frames)])
    top = np.percentile(env, 95) or 1.0
    return np.clip(env / top, 0, 1)
