"""Demo photos that need no download: augmented views of one public-domain portrait.

scikit-image ships NASA's portrait of astronaut Eileen Collins (public domain, ``skimage.data.astronaut``).
No pip package ships ten distinct photos of one person, so the demo and the notebook make
``n`` augmented views of that one photo (crop, scale, small rotation, mirror, light and colour
changes). They are NOT distinct photos: screening flags them as near-duplicates, and the demo
goes on only with an explicit, printed ``allow_near_duplicates`` override. A second person for
the "intruder" check comes from the insightface wheel (``Tom_Hanks_54745.png``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .errors import BackendUnavailableError

BASE_CROP = (23, 0, 423, 320)  # (x0, y0, x1, y1) of the 512x512 portrait used as the base view
DEMO_SOURCE = "skimage.data.astronaut (NASA portrait of Eileen Collins, public domain)"


@dataclass(frozen=True)
class DemoPhotos:
    """Paths written by ``make_demo_photos``."""

    views: tuple[Path, ...]        # augmented views of the astronaut portrait (one person)
    intruder: Path | None          # a photo of another person (insightface wheel), if available
    source: str = DEMO_SOURCE


def astronaut() -> np.ndarray:
    """The 512x512 RGB astronaut portrait from scikit-image's bundled data (no download)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise BackendUnavailableError("the demo photos need scikit-image: pip install scikit-image",
                                      field="package", value="scikit-image") from exc
    return np.asarray(data.astronaut(), dtype=np.uint8)


def intruder_photo() -> Path | None:
    """Path of Tom_Hanks_54745.png inside the installed insightface wheel, or None."""
    import importlib.util

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / "Tom_Hanks_54745.png"
    return path if path.is_file() else None


def augmented_views(n: int = 12, seed: int = 0) -> list[np.ndarray]:
    """``n`` deterministic augmented views of the astronaut portrait (face kept in frame).

    View 0 is the portrait's head-and-shoulders crop. The others vary crop (60-100% of it), output
    size (384-640 px), rotation (+-8 degrees), mirroring (every third view), brightness, contrast
    and colour balance.
    """
    from PIL import Image, ImageEnhance

    # Head and shoulders only: the mission patch lower on her suit fools dlib's HOG detector
    # into a second, low-scoring "face" (a known detector weakness, see README limits).
    base = Image.fromarray(astronaut()).crop(BASE_CROP)
    bw, bh = base.size
    rng = np.random.default_rng(seed)
    face_cx, face_cy = 223.0 - BASE_CROP[0], 127.0 - BASE_CROP[1]  # face centre (measured with dlib)
    views = [np.asarray(base)]
    for i in range(1, n):
        img = base.rotate(float(rng.uniform(-8, 8)), resample=Image.BICUBIC, center=(face_cx, face_cy),
                          fillcolor=(128, 128, 128))
        side = float(rng.uniform(0.6, 1.0)) * min(bw, bh)
        x0 = float(np.clip(face_cx - side * rng.uniform(0.35, 0.65), 0, bw - side))
        y0 = float(np.clip(face_cy - side * rng.uniform(0.25, 0.45), 0, bh - side))
        img = img.crop((round(x0), round(y0), round(x0 + side), round(y0 + side)))
        out = int(rng.integers(384, 641))
        img = img.resize((out, out), Image.LANCZOS)
        if i % 3 == 0:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
        img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.8, 1.2)))
        img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.7, 1.3)))
        views.append(np.asarray(img.convert("RGB")))
    return views


def make_demo_photos(out_dir: str | os.PathLike, n: int = 12, seed: int = 0) -> DemoPhotos:
    """Write ``n`` augmented astronaut views as JPEGs (quality 95) into ``out_dir``.

    Same ``n`` and ``seed`` give the same files. Returns their paths and the intruder photo.
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, view in enumerate(augmented_views(n, seed)):
        path = out / f"astronaut_view{i:02d}.jpg"
        with atomic_path(path, suffix=".jpg") as tmp:
            Image.fromarray(view).save(tmp, format="JPEG", quality=95)
        paths.append(path)
    return DemoPhotos(views=tuple(paths), intruder=intruder_photo())
