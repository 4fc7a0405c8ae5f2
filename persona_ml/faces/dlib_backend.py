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

Two detectors. HOG (``dlib.get_frontal_face_detector``) is fast (about 0.3 us a pixel here) and
made of five filters: looking ahead, looking left, looking right, and ahead but rolled either way;
which filter fired is kept as ``extra["hog_view"]``. It misses faces turned further than about
45 degrees. The CNN (MMOD, ``mmod_human_face_detector.dat`` from the same ``face_recognition_models``
wheel) also finds three-quarter and profile faces and faces partly hidden, but costs about 7.5 us
a pixel on one CPU core (25x HOG) and finds no face smaller than about 80 px at the scale it
runs: it is a second pass, never the first. It runs (1) where HOG finds no face
(``cnn_fallback``), then the face is embedded like any other and ``extra["detector"]`` is
``"cnn"``; (2) through ``search_faces``, which screening calls where HOG found one face, to look
for other people at the size that matters.
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
CNN_FILE = "mmod_human_face_detector.dat"
# the smallest face side (pixels at the scale it runs) that each detector finds
HOG_MIN_FACE_PX = 80.0
CNN_MIN_FACE_PX = 80.0
HOG_HALF_STEP = math.sqrt(6 / 5)  # half a step of dlib's image pyramid (pyramid_down<6>)
HOG_VIEWS = ("front", "left", "right", "front_rolled_left", "front_rolled_right")
# HOG candidates scoring between this and the detection threshold are kept as hints of faces it
# could not confirm (turned, half hidden); screening may ask the CNN about them
HINT_THRESHOLD = -0.6
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
        cnn_fallback: run the CNN detector where HOG finds no face (turned faces).
        cnn_max_pixels: the most pixels one CNN pass may look at (bounds its cost: about 7.5 us a
            pixel on one core, so 400 000 is about 3 s); a larger photo is downscaled further,
            and the smallest face it can then find is reported.

    Raises:
        BackendUnavailableError: dlib is not installed, or CUDA was asked for and dlib has none.
        ModelNotFoundError: a weight file is missing (``details['searched']`` lists the paths).
    """

    name = "dlib"

    def __init__(self, model_dir: str | os.PathLike | None = None, *, device: str = "cpu",
                 detect_max_side: int = 800, upsample_if_none: int = 1, num_jitters: int = 0,
                 padding: float = 0.25, adjust_threshold: float = 0.0, cnn_fallback: bool = True,
                 cnn_max_pixels: int = 400_000) -> None:
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

        if not isinstance(cnn_fallback, bool):
            raise InputError(f"cnn_fallback must be true or false, got {cnn_fallback!r}", field="cnn_fallback",
                             value=cnn_fallback)
        if isinstance(cnn_max_pixels, bool) or not isinstance(cnn_max_pixels, int) or cnn_max_pixels < 10_000:
            raise InputError(f"cnn_max_pixels must be an integer >= 10000, got {cnn_max_pixels!r}",
                             field="cnn_max_pixels", value=cnn_max_pixels)
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
        self.cnn_fallback = cnn_fallback
        self.cnn_max_pixels = int(cnn_max_pixels)
        self._cnn = None
        self._cnn_lock = threading.Lock()
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
                "adjust_threshold": self.adjust_threshold, "cnn_fallback": self.cnn_fallback,
                "cnn_max_pixels": self.cnn_max_pixels}

    # detection ---------------------------------------------------------------------------

    def _run_detector(self, pixels: np.ndarray, upsample: int,
                      hints: list | None = None) -> list[tuple[tuple[float, ...], float, int]]:
        """HOG boxes ``((x0, y0, x1, y1), score, filter index)``; weaker candidates go to ``hints``."""
        low = min(self.adjust_threshold, HINT_THRESHOLD) if hints is not None else self.adjust_threshold
        rects, scores, idx = self._detector.run(pixels, upsample, low)
        out = []
        for r, s, i in zip(rects, scores, idx):
            box = (float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1))
            if s >= self.adjust_threshold:
                out.append((box, float(s), int(i)))
            elif hints is not None:
                hints.append((box, float(s), int(i)))
        return out

    def detect(self, pixels: np.ndarray, hints: list | None = None
               ) -> tuple[list[tuple[tuple[float, ...], float, int]], str, float]:
        """HOG face boxes ``(x0, y0, x1, y1)`` in full-resolution pixels with scores and filter
        index, the pass that found them (``"downscaled"``, ``"downscaled_upsampled"``, ``"full"``,
        ``"full_upsampled"``), and that pass's scale (detector pixels per image pixel; upsampling
        doubles it). Candidates below the threshold are appended to ``hints`` when given.
        """
        h, w = pixels.shape[:2]
        long_side = max(h, w)

        def scaled(found, scale):
            return [((b[0] / scale, b[1] / scale, b[2] / scale, b[3] / scale), s, i) for b, s, i in found]

        # dlib maps boxes of an upsampled run back to its input image; the returned scale says
        # how finely that pass looked (it sees faces down to HOG_MIN_FACE_PX / scale)
        if self.detect_max_side and long_side > self.detect_max_side:
            small, scale = _resized(pixels, self.detect_max_side / long_side)
            for upsample, label in ((0, "downscaled"), (self.upsample_if_none, "downscaled_upsampled")):
                if label.endswith("upsampled") and upsample == 0:
                    continue
                found_hints: list = []
                found = self._run_detector(small, upsample, found_hints)
                if found:
                    if hints is not None:
                        hints.extend(scaled(found_hints, scale))
                    return scaled(found, scale), label, scale * 2 ** upsample
            found = self._run_detector(pixels, 0, hints)
            return found, "full", 1.0
        found = self._run_detector(pixels, 0, hints)
        if found or not self.upsample_if_none:
            return found, "full", 1.0
        if hints is not None:
            hints.clear()
        found = self._run_detector(pixels, self.upsample_if_none, hints)
        return found, "full_upsampled", float(2 ** self.upsample_if_none)

    def _cnn_detector(self):
        import dlib

        with self._cnn_lock:
            if self._cnn is None:
                path = self.model_dir / CNN_FILE
                if not path.is_file():
                    raise ModelNotFoundError(f"dlib CNN face detector {CNN_FILE} not found in {self.model_dir}",
                                             field="model_dir", value=str(self.model_dir), searched=[str(path)])
                self._cnn = dlib.cnn_face_detection_model_v1(str(path))
            return self._cnn

    def detect_cnn(self, pixels: np.ndarray, min_face_px: float,
                   region: tuple[int, int, int, int] | None = None) -> tuple[list[tuple[tuple[float, ...], float]], float]:
        """CNN (MMOD) face boxes in image pixels with their confidences, searched for faces of at
        least ``min_face_px`` (within ``cnn_max_pixels``), optionally inside ``region``.

        Returns:
            ``(boxes, smallest)``: the boxes, and the smallest face side (image pixels) this pass
            could find (above ``min_face_px`` when the pixel budget forced a coarser scale).
        """
        x0, y0 = 0, 0
        if region is not None:
            x0, y0, x1, y1 = (int(v) for v in region)
            pixels = pixels[y0:y1, x0:x1]
        h, w = pixels.shape[:2]
        if h < 8 or w < 8:
            return [], float("inf")
        scale = CNN_MIN_FACE_PX / max(1.0, float(min_face_px))
        scale = min(scale, 2.0, math.sqrt(self.cnn_max_pixels / float(h * w)))
        arr, scale = _resized(pixels, scale)
        dets = self._cnn_detector()(arr, 0)
        out = []
        for d in dets:
            r = d.rect
            out.append(((x0 + r.left() / scale, y0 + r.top() / scale, x0 + (r.right() + 1) / scale,
                         y0 + (r.bottom() + 1) / scale), float(d.confidence)))
        return out, CNN_MIN_FACE_PX / scale

    def search_faces(self, image: LoadedImage, known: Sequence[Sequence[float]], min_face_px: float, *,
                     cnn: str = "auto", hints: Sequence[Sequence[float]] = (),
                     first_pass_scale: float | None = None, max_hog_pixels: int = 2_000_000) -> dict[str, Any]:
        """Look for faces of at least ``min_face_px`` that the first pass did not report.

        A HOG pass at a finer scale runs when the first pass could not see faces that small (by more
        than half a step of HOG's pyramid; ``first_pass_scale``: its detector pixels per image
        pixel). The CNN runs on the whole
        photo when ``cnn`` is ``"always"``; with ``"auto"`` only around HOG hints (candidates HOG
        could not confirm, at most 2, each in a region two hint boxes wide at the scale that shows it
        at about 90 px; one candidate seen by both HOG passes is one hint) of that
        size outside the known faces; ``"off"``: never.
        Boxes overlapping a known face are dropped.

        Returns:
            ``{"faces": [{"bbox", "detector", "score", "view"}], "passes": {name: {"seconds",
            "min_face_px"}}, "hints": n}``.
        """
        import time

        px = image.pixels
        h, w = px.shape[:2]
        found: list[dict[str, Any]] = []
        passes: dict[str, dict[str, float]] = {}
        known = [tuple(float(v) for v in b) for b in known]
        scale0 = first_pass_scale if first_pass_scale is not None else 1.0
        hint_boxes: list[tuple[float, ...]] = []
        for b in hints:
            b = tuple(float(v) for v in b)
            if (min(b[2] - b[0], b[3] - b[1]) >= min_face_px and not any(_overlaps(b, k) for k in known)
                    and not any(_overlaps(b, k) for k in hint_boxes)):
                hint_boxes.append(b)
        # HOG's pyramid steps by 6/5, so its boxes come in sizes 1.2x apart and a face within half
        # a step of the smallest size a pass sees is seen at that size: a finer pass is run only
        # when the first pass's smallest face is more than half a step above the size asked for
        if HOG_MIN_FACE_PX / scale0 > min_face_px * HOG_HALF_STEP:
            t0 = time.perf_counter()
            scale = min(2.0, HOG_MIN_FACE_PX / min_face_px, math.sqrt(max_hog_pixels / float(h * w)))
            arr, scale = _resized(px, scale)
            fine_hints: list = []
            for box, score, i in self._run_detector(arr, 0, fine_hints):
                b = tuple(v / scale for v in box)
                if min(b[2] - b[0], b[3] - b[1]) >= min_face_px and not any(_overlaps(b, k) for k in known):
                    found.append({"bbox": b, "detector": "hog", "score": round(score, 3), "view": HOG_VIEWS[i]})
            for box, _s, _i in fine_hints:
                b = tuple(v / scale for v in box)
                # the same candidate seen again at the finer scale is one hint, not two
                if (min(b[2] - b[0], b[3] - b[1]) >= min_face_px and not any(_overlaps(b, k) for k in known)
                        and not any(_overlaps(b, k) for k in hint_boxes)):
                    hint_boxes.append(b)
            passes["hog_fine"] = {"seconds": time.perf_counter() - t0, "min_face_px": HOG_MIN_FACE_PX / scale}
        if cnn == "always" or (cnn == "auto" and hint_boxes):
            t0 = time.perf_counter()
            if cnn == "always":
                boxes, smallest = self.detect_cnn(px, min_face_px)
            else:  # only around each hint: a region two boxes wide costs a fraction of the photo
                boxes, smallest = [], float("inf")
                for hb in hint_boxes[:2]:
                    side = max(hb[2] - hb[0], hb[3] - hb[1])
                    m = 0.5 * side  # HOG's box can sit off the face by half its side, not more
                    region = (max(0, int(hb[0] - m)), max(0, int(hb[1] - m)),
                              min(w, int(hb[2] + m)), min(h, int(hb[3] + m)))
                    # at the scale that shows the hinted face at ~90 px (the CNN finds >= 80 px)
                    found_here, small = self.detect_cnn(px, max(min_face_px, 0.9 * side), region=region)
                    boxes += found_here
                    smallest = min(smallest, small)
            already = known + [f["bbox"] for f in found]
            for b, conf in boxes:
                if min(b[2] - b[0], b[3] - b[1]) >= min_face_px * 0.9 and not any(_overlaps(b, k) for k in already):
                    found.append({"bbox": b, "detector": "cnn", "score": round(conf, 3), "view": None})
            passes["cnn"] = {"seconds": time.perf_counter() - t0, "min_face_px": smallest}
        return {"faces": found, "passes": passes, "hints": len(hint_boxes)}

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
        hints: list = []
        hog, detect_pass, scale = self.detect(pixels, hints)
        boxes = [(b, s, "hog", HOG_VIEWS[i] if 0 <= i < len(HOG_VIEWS) else None) for b, s, i in hog]
        if not boxes and self.cnn_fallback:
            found, _ = self.detect_cnn(pixels, 40.0)
            boxes = [(b, s, "cnn", None) for b, s in found]
            detect_pass = "cnn"
        if not boxes:
            return []
        shapes = dlib.full_object_detections()
        for (x0, y0, x1, y1), *_ in boxes:
            rect = dlib.rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)
            shapes.append(self._shape(pixels, rect))
        descriptors = self._recognizer.compute_face_descriptor(pixels, shapes, self.num_jitters, self.padding)
        hint_list = [[round(float(v), 1) for v in b] for b, _s, _i in hints]
        out = []
        for ((x0, y0, x1, y1), score, detector, view), shape, desc in zip(boxes, shapes, descriptors):
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
                # raw_bbox: the detector's box before clipping; a face cut by the frame reaches outside
                extra={"detect_pass": detect_pass, "dlib_points": parts.astype(np.float32).tolist(),
                       "raw_bbox": [round(float(v), 1) for v in (x0, y0, x1, y1)], "detector": detector,
                       "hog_view": view, "detect_scale": scale, "hog_hints": hint_list},
            ))
        return out


def _resized(pixels: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """``pixels`` resized by ``scale`` (bilinear; none when ~1) and the exact scale used."""
    h, w = pixels.shape[:2]
    if abs(scale - 1.0) < 1e-3:
        return pixels, 1.0
    from PIL import Image

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR, reducing_gap=2.0 if scale < 1 else None))
    return out, size[0] / w


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two boxes are one face: IoU above 0.3, or one's centre inside the other."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if union > 0 and inter / union > 0.3:
        return True
    for p, q in ((a, b), (b, a)):
        cx, cy = (p[0] + p[2]) / 2.0, (p[1] + p[3]) / 2.0
        if q[0] <= cx <= q[2] and q[1] <= cy <= q[3]:
            return True
    return False
