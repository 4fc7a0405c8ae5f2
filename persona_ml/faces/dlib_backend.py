"""dlib face backend: HOG detection, 5-point alignment and dlib's ResNet embedding (128-d).

The weights ship in the ``face_recognition_models`` pip package (no download). Its folder is
found with ``importlib.util.find_spec`` without importing the package (its ``__init__`` needs
``pkg_resources``), or taken from ``model_dir``.

License: the 5-point shape predictor and ``dlib_face_recognition_resnet_model_v1`` were released
by Davis King into the public domain (dlib-models README); the ``face_recognition_models`` wheel
states "licensed in the public domain or under CC0 1.0 Universal" and ships the CC0 1.0 text as
its LICENSE. The package's own classifier says MIT (that covers the packaging code). The
68-point predictor in the same wheel is trained on iBUG 300-W (non-commercial); it is not used.

Fast path for large photos: detection runs on a copy downscaled to ``detect_max_side`` pixels;
boxes are mapped back and landmarks and descriptors are computed on the full-resolution image.
When nothing is found the detector retries with one upsampling step, then on the full image.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import sha256_file
from ..errors import BackendUnavailableError, InputError, ModelNotFoundError
from ..images import LoadedImage
from . import quality
from .types import FaceObservation, ModelProvenance, l2_normalize

logger = logging.getLogger(__name__)

MODEL_NAME = "dlib_face_recognition_resnet_model_v1"
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_FILE = "shape_predictor_5_face_landmarks.dat"
EMBEDDING_DIM = 128
LICENSE = "CC0-1.0 / public domain (dlib-models, Davis King)"

# Landmark geometry, in units of the inter-ocular distance (iod) in the eye-aligned frame
# (x along left->right eye, y down), measured by running dlib's 68-point predictor beside the
# 5-point one on the 97 detectable photos of ../shared/faces/people.
# The nose landmark is placed 0.785 of the way from the eye midpoint to the nose bottom, so that a
# level face reads pitch ~0 in quality.pose_from_landmarks (the 68-point nose tip measured 0.726).
_NOSE_TIP_FRACTION = 0.785
_MOUTH_DEPTH = 1.06          # mouth-corner midpoint below the eye midpoint
_MOUTH_HALF_WIDTH = 0.47     # half the mouth-corner distance

_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def default_model_dir() -> Path | None:
    """The ``models/`` folder of the installed ``face_recognition_models`` package, or ``None``."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "models"
        if candidate.is_dir():
            return candidate
    return None


def cached_sha256(path: str | os.PathLike) -> str:
    """sha256 of a weight file, cached per (path, size, mtime) so a new process hashes it once."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        cached = _HASH_CACHE.get(key)
    if cached is None:
        cached = sha256_file(p)
        with _HASH_LOCK:
            _HASH_CACHE[key] = cached
    return cached


def map_five_points(parts: np.ndarray) -> np.ndarray:
    """dlib 5-point shape -> insightface order (left eye, right eye, nose, left mouth, right mouth).

    dlib's points are eye corners (0, 1: image-right eye outer/inner; 2, 3: image-left eye
    outer/inner) and the bottom of the nose (4). Eye centres are the corner midpoints. The
    nose tip and both mouth corners are NOT observed: they are estimated from the eye line and
    the nose bottom with average face proportions (measured against dlib's 68-point model on
    ../shared/faces): nose = 0.785 of the way from the eye midpoint to the nose bottom (near the
    tip, which sits at 0.726; chosen so a level face has pitch ~0);
    mouth corners 1.06 inter-ocular distances below the eye midpoint, 0.47 iod either side.
    Pose derived from them is therefore good for yaw and roll, coarse for pitch.

    Args:
        parts: ``(5, 2)`` dlib points.

    Returns:
        ``(5, 2)`` float32 landmarks.
    """
    p = np.asarray(parts, dtype=np.float64).reshape(5, 2)
    left_eye = (p[2] + p[3]) / 2.0
    right_eye = (p[0] + p[1]) / 2.0
    nose_bottom = p[4]
    mid = (left_eye + right_eye) / 2.0
    u = right_eye - left_eye
    iod = float(np.hypot(*u))
    if iod < 1e-6:
        u, iod = np.array([1.0, 0.0]), 1.0
    else:
        u = u / iod
    v = np.array([-u[1], u[0]])  # perpendicular, pointing down the face for an upright face
    nose_tip = mid + _NOSE_TIP_FRACTION * (nose_bottom - mid)
    mouth_mid = mid + _MOUTH_DEPTH * iod * v
    left_mouth = mouth_mid - _MOUTH_HALF_WIDTH * iod * u
    right_mouth = mouth_mid + _MOUTH_HALF_WIDTH * iod * u
    return np.stack([left_eye, right_eye, nose_tip, left_mouth, right_mouth]).astype(np.float32)


class DlibBackend:
    """dlib's HOG detector + 5-point shape predictor + ResNet descriptor.

    Args:
        model_dir: folder holding ``shape_predictor_5_face_landmarks.dat`` and
            ``dlib_face_recognition_resnet_model_v1.dat``; default: the ``face_recognition_models``
            package's ``models/`` folder.
        device: only ``"cpu"`` (the dlib-bin wheel has no CUDA); ``"cuda..."`` raises unless dlib
            was built with CUDA.
        detect_max_side: long side of the downscaled copy used for detection (0 = never downscale).
        upsample_if_none: HOG upsampling steps tried when the first pass finds nothing.
        num_jitters: dlib's descriptor jitter count (0 or 1 = none; >1 averages random jitters,
            about that many times slower).
        padding: chip padding for the descriptor (dlib's default 0.25).
        adjust_threshold: HOG detection threshold offset (negative finds more, weaker faces).

    Raises:
        BackendUnavailableError: dlib is not installed, or CUDA was asked for and dlib has none.
        ModelNotFoundError: a weight file is missing (``details['searched']`` lists the paths).
    """

    name = "dlib"

    def __init__(self, model_dir: str | os.PathLike | None = None, *, device: str = "cpu",
                 detect_max_side: int = 800, upsample_if_none: int = 1, num_jitters: int = 0,
                 padding: float = 0.25, adjust_threshold: float = 0.0) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise BackendUnavailableError(
                "the dlib face backend needs dlib and its models: pip install 'persona-ml[dlib]' "
                "(dlib-bin and face-recognition-models)", field="backend", value="dlib") from exc
        import dlib

        if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
            raise InputError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}", field="device", value=device)
        if device.startswith("cuda") and not getattr(dlib, "DLIB_USE_CUDA", False):
            raise BackendUnavailableError(
                f"device {device!r} was asked for but this dlib build has no CUDA (dlib-bin is CPU-only); "
                "use device='cpu' or the insightface backend", field="device", value=device)
        for name, value, low in (("detect_max_side", detect_max_side, 0), ("upsample_if_none", upsample_if_none, 0),
                                 ("num_jitters", num_jitters, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}", field=name, value=value)
        if detect_max_side and detect_max_side < 80:
            raise InputError(f"detect_max_side must be 0 or >= 80 (HOG finds faces of ~80 px), got {detect_max_side}",
                             field="detect_max_side", value=detect_max_side)
        if isinstance(padding, bool) or not isinstance(padding, (int, float)) or not 0.0 <= float(padding) <= 1.0:
            raise InputError(f"padding must be a number in [0, 1], got {padding!r}", field="padding", value=padding)
        if (isinstance(adjust_threshold, bool) or not isinstance(adjust_threshold, (int, float))
                or not math.isfinite(adjust_threshold)):
            raise InputError(f"adjust_threshold must be a finite number, got {adjust_threshold!r}",
                             field="adjust_threshold", value=adjust_threshold)

        searched: list[str] = []
        folder = Path(model_dir) if model_dir is not None else default_model_dir()
        if folder is None:
            raise ModelNotFoundError(
                "dlib face models not found: install face-recognition-models (pip install "
                "'persona-ml[dlib]') or pass model_dir", field="model_dir", value=None,
                searched=["face_recognition_models package (not installed)"])
        paths = {}
        for fname in (SHAPE_FILE, RECOGNITION_FILE):
            path = folder / fname
            searched.append(str(path))
            if path.is_file():
                paths[fname] = path
        missing = [f for f in (SHAPE_FILE, RECOGNITION_FILE) if f not in paths]
        if missing:
            raise ModelNotFoundError(f"dlib model file(s) {', '.join(missing)} not found in {folder}",
                                     field="model_dir", value=str(folder), searched=searched)

        self.device = device
        self.model_dir = folder
        self.detect_max_side = int(detect_max_side)
        self.upsample_if_none = int(upsample_if_none)
        self.num_jitters = int(num_jitters)
        self.padding = float(padding)
        self.adjust_threshold = float(adjust_threshold)
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(paths[SHAPE_FILE]))
        self._recognizer = dlib.face_recognition_model_v1(str(paths[RECOGNITION_FILE]))
        self.provenance = ModelProvenance(
            backend="dlib", model_name=MODEL_NAME,
            files={fname: cached_sha256(p) for fname, p in paths.items()},
            dim=EMBEDDING_DIM, license=LICENSE, commercial_use=True)

    def options(self) -> dict[str, Any]:
        """The settings that shape detection and embeddings (for reports and benchmarks)."""
        return {"detect_max_side": self.detect_max_side, "upsample_if_none": self.upsample_if_none,
                "num_jitters": self.num_jitters, "padding": self.padding,
                "adjust_threshold": self.adjust_threshold}

    # detection ---------------------------------------------------------------------------

    def _run_detector(self, pixels: np.ndarray, upsample: int) -> list[tuple[tuple[float, ...], float]]:
        rects, scores, _ = self._detector.run(pixels, upsample, self.adjust_threshold)
        return [((float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1)), float(s))
                for r, s in zip(rects, scores)]

    def detect(self, pixels: np.ndarray) -> tuple[list[tuple[tuple[float, ...], float]], str]:
        """Face boxes ``(x0, y0, x1, y1)`` in full-resolution pixels with HOG scores, and the pass
        that found them (``"downscaled"``, ``"downscaled_upsampled"``, ``"full"``, ``"full_upsampled"``).
        """
        h, w = pixels.shape[:2]
        long_side = max(h, w)
        if self.detect_max_side and long_side > self.detect_max_side:
            from PIL import Image

            scale = self.detect_max_side / long_side
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR, reducing_gap=2.0))
            sx, sy = w / size[0], h / size[1]
            for upsample, label in ((0, "downscaled"), (self.upsample_if_none, "downscaled_upsampled")):
                if label.endswith("upsampled") and upsample == 0:
                    continue
                found = self._run_detector(small, upsample)
                if found:
                    return [((b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy), s) for b, s in found], label
            found = self._run_detector(pixels, 0)
            return found, "full"
        found = self._run_detector(pixels, 0)
        if found or not self.upsample_if_none:
            return found, "full"
        return self._run_detector(pixels, self.upsample_if_none), "full_upsampled"

    # embedding ---------------------------------------------------------------------------

    def analyze_images(self, images: Sequence[LoadedImage]) -> list[list[FaceObservation]]:
        """Detect, align and embed every face in each image.

        Args:
            images: decoded images (``persona_ml.images.load_image``).

        Returns:
            One list of ``FaceObservation`` per image, in detector order.
        """
        return [self._analyze(img) for img in images]

    def _analyze(self, image: LoadedImage) -> list[FaceObservation]:
        import dlib

        pixels = image.pixels
        h, w = pixels.shape[:2]
        boxes, detect_pass = self.detect(pixels)
        if not boxes:
            return []
        shapes = dlib.full_object_detections()
        for (x0, y0, x1, y1), _ in boxes:
            rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)
            shapes.append(self._shape(pixels, rect))
        descriptors = self._recognizer.compute_face_descriptor(pixels, shapes, self.num_jitters, self.padding)
        out = []
        for ((x0, y0, x1, y1), score), shape, desc in zip(boxes, shapes, descriptors):
            bbox = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
            parts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            landmarks = map_five_points(parts)
            crop = quality.crop_box(pixels, bbox)
            gray = quality.to_gray(crop)
            try:
                pose = quality.pose_from_landmarks(landmarks)
            except (ValueError, ZeroDivisionError):
                pose = None
            embedding = l2_normalize(np.asarray(desc, dtype=np.float32))
            out.append(FaceObservation(
                bbox=tuple(float(v) for v in bbox),  # type: ignore[arg-type]
                landmarks=landmarks,
                det_score=float(score),
                face_size=float(min(bbox[2] - bbox[0], bbox[3] - bbox[1])),
                sharpness=quality.laplacian_variance(gray),
                pose=pose if pose is None or all(math.isfinite(v) for v in pose) else None,
                embedding=embedding,
                image_sha256=image.sha256,
                image_size=(w, h),
                provenance=self.provenance,
                extra={"detect_pass": detect_pass, "dlib_points": parts.astype(np.float32).tolist()},
            ))
        return out
