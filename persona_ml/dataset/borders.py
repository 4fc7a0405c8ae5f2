"""Solid borders (letterbox and pillarbox bars, padding) found and trimmed before any measure or crop.

A phone "fit to 16:9" export, a padded square for a social feed or a screenshot's flat frame adds
rows or columns of one flat colour. Counted as scene they make a padded copy look like the better
photo and put black columns into training crops. ``content_box`` finds, from each edge inwards,
the run of rows (columns) that are flat (luma standard deviation at most ``max_std``) and of the
edge's colour (mean within ``max_delta``). The run is a bar when it is at least ``min_bar`` long
AND ends at a hard, straight edge: in one of the next few lines at least ``min_edge_share`` of the
pixels differ clearly from the bar's colour, or most of the next line differs from it at
once (a step far larger than the content's own line-to-line change: white padding beside a light
backdrop). A studio backdrop or a dark stage also has flat rows
at the top, but the person's head or a gradient enters them gradually, so they are kept as scene.
A guard of a few pixels past a bar is trimmed too (JPEG ringing along the bar's edge).
Limits: a bar of the same colour as the photo's own edge (black padding next to a black night
sky) is not seen; blurred "fill" bars (a blurred copy of the photo behind it) are not flat and are
not trimmed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Borders", "content_box", "flat_free_area"]


@dataclass(frozen=True)
class Borders:
    """Where the real image content lies.

    Attributes:
        box: ``(x0, y0, x1, y1)`` of the content in image pixels (x1, y1 exclusive).
        size: the whole image's ``(width, height)``.
        trimmed: pixels removed at ``{"left", "top", "right", "bottom"}`` (0 where no bar).
        uniform: the whole image is one flat colour (no content: ``box`` is the whole image).
    """

    box: tuple[int, int, int, int]
    size: tuple[int, int]
    trimmed: dict[str, int]
    uniform: bool = False

    @property
    def any(self) -> bool:
        return any(self.trimmed.values())

    @property
    def content_size(self) -> tuple[int, int]:
        return (self.box[2] - self.box[0], self.box[3] - self.box[1])

    @property
    def content_area(self) -> int:
        w, h = self.content_size
        return w * h

    @property
    def border_fraction(self) -> float:
        """Share of the image's pixels that are border."""
        w, h = self.size
        return 1.0 - self.content_area / float(max(1, w * h))

    def to_dict(self) -> dict:
        return {"box": list(self.box), "trimmed": dict(self.trimmed), "uniform": self.uniform,
                "border_fraction": round(self.border_fraction, 4)}


def _luma(pixels: np.ndarray) -> np.ndarray:
    from PIL import Image

    arr = np.ascontiguousarray(pixels)
    if arr.ndim == 2:
        return arr if arr.dtype == np.uint8 else np.clip(arr, 0, 255).astype(np.uint8)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(arr[..., :3]).convert("L"))


def _bar_length(lines: np.ndarray, max_std: float, max_delta: float, min_edge_share: float) -> int:
    """How many leading lines of ``lines`` (``(n, length)`` uint8, edge first) form one flat bar
    that ends at a hard edge (0 when there is none)."""
    if lines.shape[0] == 0:
        return 0
    head = lines[:3].astype(np.float32)
    if float(head.std(axis=1).max()) > max_std:  # most photos: the edge line itself is not flat
        return 0
    edge = float(np.median(head.mean(axis=1)))
    # walk inwards a block of lines at a time: a bar ends within a few hundred lines, and
    # converting a whole strip of a 24 MP photo to float costs more than the rest of screening
    n, step = None, 64
    for start in range(0, lines.shape[0], step):
        block = lines[start:start + step].astype(np.float32)
        ok = (block.std(axis=1) <= max_std) & (np.abs(block.mean(axis=1) - edge) <= max_delta)
        bad = np.flatnonzero(~ok)
        if bad.size:
            n = start + int(bad[0])
            break
    if n is None:
        return 0  # flat as far as we look: scene (sky, wall), not a bar
    k = min(n, 2)
    f = lines[n - k:n + 4].astype(np.float32)  # the bar's last (up to) two lines and what follows
    last, after = f[:k], f[k:]
    share = float((np.abs(after - edge) > 2.0 * max_delta).mean(axis=1).max())
    if share >= min_edge_share:
        return n
    # a straight step: white padding against a light backdrop differs from it by less than a hard
    # edge, but all at once, along most of the line. The bar holds its colour to its last line and
    # the jump into the content is far larger than the content's own line-to-line change (a head
    # entering a backdrop, or a gradient, changes a few pixels or a little at a time).
    if k < 2 or len(after) < 3 or float(np.abs(last.mean(axis=1) - edge).max()) > max_delta / 2.0:
        return 0
    jump = float(np.abs(after[1] - last[0]).mean())
    inner = float(np.abs(after[2] - after[1]).mean())
    wide = float((np.abs(after[1] - edge) > max_delta).mean())
    return n if jump >= max_delta and jump >= 4.0 * inner and wide >= 0.75 else 0


def content_box(pixels: np.ndarray, *, max_std: float = 3.0, max_delta: float = 8.0,
                min_bar: float = 0.01, guard: float = 0.004, max_trim: float = 0.45,
                min_edge_share: float = 0.6) -> Borders:
    """The box of real content inside solid bars and padding.

    Args:
        pixels: ``(H, W, 3)`` or ``(H, W)`` image.
        max_std: most luma standard deviation along a line for it to count as flat.
        max_delta: most luma difference between a bar line and the edge's colour.
        min_bar: least bar thickness, as a share of that dimension (at least 3 px): thinner flat
            lines are a photo's own edge, not padding.
        guard: extra share of the dimension (plus 2 px) trimmed past a bar, for compression ringing.
        max_trim: the most of a dimension one side may lose (a taller bar is scene, e.g. a sky).
        min_edge_share: least share of a line past the bar that must differ from the bar's colour.

    Returns:
        Borders.

    Example:
        >>> img = np.zeros((90, 160, 3), np.uint8); img[:, 20:140] = 128 + np.arange(120)[None, :, None] % 9
        >>> content_box(img).trimmed["left"] >= 20
        True
    """
    gray = _luma(pixels)
    h, w = gray.shape[:2]
    trimmed = {"left": 0, "top": 0, "right": 0, "bottom": 0}
    if h < 8 or w < 8:
        return Borders((0, 0, w, h), (w, h), trimmed)
    # one flat colour: nothing to trim to (a sample of the pixels tells, at a 16th of the cost)
    if float(gray[::4, ::4].std()) <= max_std and float(gray.std()) <= max_std:
        return Borders((0, 0, w, h), (w, h), trimmed, uniform=True)
    strips = {"top": gray[: int(h * max_trim)], "bottom": gray[::-1][: int(h * max_trim)],
              "left": gray[:, : int(w * max_trim)].T, "right": gray[:, ::-1][:, : int(w * max_trim)].T}
    for side, lines in strips.items():
        dim = h if side in ("top", "bottom") else w
        n = _bar_length(lines, max_std, max_delta, min_edge_share)
        if n >= max(3, int(round(min_bar * dim))):
            trimmed[side] = min(int(max_trim * dim), n + 2 + int(np.ceil(guard * dim)))
    box = (trimmed["left"], trimmed["top"], w - trimmed["right"], h - trimmed["bottom"])
    return Borders(box, (w, h), trimmed)


def flat_free_area(gray: np.ndarray, *, rounds: int = 3) -> int:
    """Pixels left once every flat edge run is removed, bar or not, run after run (padding that
    was not seen as a bar, then the flat backdrop next to it): what a copy has of real content.
    The measure the keep rule compares between copies of one shot; never used to crop.

    Args:
        gray: ``(H, W)`` luma of the content (borders already trimmed).
        rounds: how many runs in a row one edge may lose.

    Returns:
        The remaining area in pixels.
    """
    g = _luma(gray)
    for _ in range(max(1, rounds)):
        b = content_box(g, min_edge_share=0.0)
        if not b.any or b.uniform:
            break
        x0, y0, x1, y1 = b.box
        g = g[y0:y1, x0:x1]
    return int(g.shape[0] * g.shape[1])
