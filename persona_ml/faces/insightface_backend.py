"""insightface face backend: SCRFD detection, 5-point alignment and ArcFace embedding (512-d).

Loads a LOCAL model pack and never downloads: finding the pack, picking its detector and
recognizer by ONNX signature and reading its license live in
:mod:`persona_ml.faces.insightface_pack` (its public names are re-exported here).
Only the detector and the recognizer are loaded.

onnxruntime sessions are created here with explicit providers (``device="cuda:1"`` means
``("CUDAExecutionProvider", {"device_id": 1})`` followed by the CPU provider); when CUDA was asked
for and the session did not activate it, loading raises instead of silently running on CPU.

insightface's own wrappers do the model-specific work: ``model_zoo.SCRFD`` (decoding, NMS,
letterboxing), ``utils.face_align.norm_crop`` (similarity transform to the ArcFace template) and
``model_zoo.ArcFaceONNX`` (input normalisation). They take BGR images, so pixels are flipped once.

The pack's license status is recorded in the provenance of every embedding
(``ModelProvenance.license`` / ``commercial_use``).

Example:
    >>> from persona_ml.faces.insightface_backend import InsightFaceBackend
    >>> backend = InsightFaceBackend("~/.insightface/models/buffalo_l", device="cuda:0")  # doctest: +SKIP
    >>> backend.provenance.dim, backend.provenance.license                                 # doctest: +SKIP
    (512, 'non-commercial (no MODEL.LICENSE)')
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import sha256_file
from ..errors import ArtifactError, BackendUnavailableError, InputError
from ..images import LoadedImage
from . import quality
from .insightface_pack import (  # noqa: F401 - re-exported: the pack API was split out of this module
    BACKEND_NAME,
    DEFAULT_PACK,
    ENV_MODEL_DIR,
    NO_LICENSE,
    LicenseStatus,
    OnnxSignature,
    PackFiles,
    default_model_dirs,
    inspect_license,
    locate_pack,
    read_signature,
    resolve_pack,
)
from .types import FaceObservation, ModelProvenance, l2_normalize

logger = logging.getLogger(__name__)

DEFAULT_DET_SIZE = 640
DEFAULT_RETRY_DET_SIZES = (480, 320, 160)
_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


# ---------------------------------------------------------------------------------------------
# devices and onnxruntime sessions


def parse_device(device: str) -> tuple[str, int | None]:
    """``"cpu"`` -> ``("cpu", None)``; ``"cuda"`` -> ``("cuda", 0)``; ``"cuda:1"`` -> ``("cuda", 1)``.

    Raises:
        InputError: anything else.
    """
    match = _DEVICE_RE.match(device) if isinstance(device, str) else None
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}", field="device", value=device)
    if match.group(1) == "cpu":
        return "cpu", None
    return "cuda", int(match.group(2) or 0)


def onnx_providers(device: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The onnxruntime ``providers`` and ``provider_options`` for ``device``.

    ``"cpu"`` -> CPU only. ``"cuda:N"`` -> CUDA with ``device_id`` N, then CPU: onnxruntime
    places the few operators CUDA lacks on the CPU provider listed after it (insightface's
    ``ctx_id`` does not pick a GPU; ``device_id`` does).

    Raises:
        InputError: ``device`` is not ``cpu``/``cuda``/``cuda:N``.
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        return [_CPU], [{}]
    return [_CUDA, _CPU], [{"device_id": int(index or 0)}, {}]


def _provider_error(device: str, active: Sequence[str], available: Sequence[str], path: Path | None) -> None:
    where = f" for {path.name}" if path is not None else ""
    raise BackendUnavailableError(
        f"device {device!r} needs onnxruntime's CUDAExecutionProvider, but the session{where} runs on "
        f"{list(active) or 'nothing'} (onnxruntime {_ort_version()} offers {list(available)}). Common causes: "
        "the CPU package 'onnxruntime' is installed beside 'onnxruntime-gpu' (uninstall both, reinstall "
        "onnxruntime-gpu only), or the CUDA / cuDNN libraries do not match that onnxruntime-gpu build. "
        "Use device='cpu' to run on the CPU on purpose.",
        code="provider_unavailable", field="device", value=device, active_providers=list(active),
        available_providers=list(available))


def _ort_version() -> str:
    import onnxruntime

    return getattr(onnxruntime, "__version__", "?")


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "the insightface face backend needs onnxruntime: pip install onnxruntime (CPU) or "
            "onnxruntime-gpu (CUDA), not both", field="backend", value=BACKEND_NAME) from exc
    return onnxruntime


def create_session(path: str | os.PathLike, device: str = "cpu", *, num_threads: int | None = None):
    """An onnxruntime ``InferenceSession`` on ``device``, refusing a silent CPU fallback.

    Args:
        path: the ``.onnx`` file.
        device: ``"cpu"`` or ``"cuda[:N]"``.
        num_threads: intra-op threads (``None``: onnxruntime's default, all cores).

    Returns:
        The session; ``session.get_providers()[0]`` is the provider asked for.

    Raises:
        BackendUnavailableError: code ``provider_unavailable`` when CUDA was asked for and the
            session did not get it; ``backend_unavailable`` when onnxruntime is missing.
        ArtifactError: code ``model_load_failed`` when onnxruntime cannot load the file.
    """
    ort = _import_onnxruntime()
    providers, options = onnx_providers(device)
    path = Path(path)
    available = list(ort.get_available_providers())
    if providers[0] not in available:
        _provider_error(device, [], available, path)
    if providers[0] == _CUDA:
        try:  # onnxruntime-gpu >= 1.21 can find CUDA/cuDNN installed from pip (nvidia-* wheels)
            from insightface.model_zoo.onnxruntime_utils import preload_cuda_libraries

            preload_cuda_libraries(providers)
        except Exception:
            logger.debug("onnxruntime CUDA preload failed", exc_info=True)
    sess_options = ort.SessionOptions()
    sess_options.log_severity_level = 3  # the fallback warning is replaced by our own error
    if num_threads is not None:
        sess_options.intra_op_num_threads = int(num_threads)
    try:
        session = ort.InferenceSession(str(path), sess_options=sess_options, providers=providers,
                                       provider_options=options)
    except Exception as exc:
        raise ArtifactError(f"onnxruntime could not load {path}: {exc}", code="model_load_failed",
                            field="model", value=str(path)) from exc
    active = list(session.get_providers())
    if not active or active[0] != providers[0]:
        _provider_error(device, active, available, path)
    return session



@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _file_sha256(path: Path) -> str:
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------------------------
# the backend


class InsightFaceBackend:
    """SCRFD + ArcFace from a local insightface pack, on onnxruntime with explicit providers.

    Args:
        model_dir: pack folder, insightface root (``models/<name>/``) or manifest package;
            default: ``$PERSONA_ML_INSIGHTFACE_DIR`` then ``~/.insightface/models/buffalo_l``.
        device: ``"cpu"`` or ``"cuda[:N]"`` (CUDA provider with ``device_id`` N; never a silent
            CPU fallback).
        pack_name: which pack when ``model_dir`` holds several.
        det_size: detection input side in pixels (insightface's ``det_size``; 640).
        det_thresh: detection score threshold (insightface's default 0.5).
        retry_det_sizes: smaller detection sizes tried, in order, when nothing was found (SCRFD
            misses faces that fill the frame); only sizes below ``det_size`` are used.
        retry_pad: when the retries found nothing either, pad the image by this fraction of its
            long side on every side and detect once more at ``det_size`` (0 disables).
        rec_batch_size: aligned faces per recognizer run (faces of all images share runs).
        num_threads: onnxruntime intra-op threads per session (``None``: all cores).
        nms_thresh: detection NMS IoU threshold (insightface's 0.4).

    Raises:
        InputError: a bad option or device string.
        ModelNotFoundError: no pack, or no detector / recognizer in it (``details['searched']``).
        BackendUnavailableError: onnxruntime/insightface missing, or CUDA asked for but not
            active (code ``provider_unavailable``).
        ArtifactError: a corrupt model, an invalid manifest or a checksum mismatch.
    """

    name = BACKEND_NAME

    def __init__(self, model_dir: str | os.PathLike | None = None, *, device: str = "cpu",
                 pack_name: str | None = None, det_size: int = DEFAULT_DET_SIZE, det_thresh: float = 0.5,
                 retry_det_sizes: Sequence[int] = DEFAULT_RETRY_DET_SIZES, retry_pad: float = 0.5,
                 rec_batch_size: int = 32, num_threads: int | None = None, nms_thresh: float = 0.4) -> None:
        parse_device(device)
        _check_int("det_size", det_size, 32)
        if det_size % 32:
            raise InputError(f"det_size must be a multiple of 32 (SCRFD's largest stride), got {det_size}",
                             field="det_size", value=det_size)
        if isinstance(retry_det_sizes, (str, bytes)) or not isinstance(retry_det_sizes, Sequence):
            raise InputError(f"retry_det_sizes must be a sequence of ints, got {retry_det_sizes!r}",
                             field="retry_det_sizes", value=repr(retry_det_sizes))
        for size in retry_det_sizes:
            _check_int("retry_det_sizes", size, 32)
            if size % 32:
                raise InputError(f"retry_det_sizes must be multiples of 32, got {size}",
                                 field="retry_det_sizes", value=size)
        _check_int("rec_batch_size", rec_batch_size, 1)
        if num_threads is not None:
            _check_int("num_threads", num_threads, 1)
        for fname, value, low, high in (("det_thresh", det_thresh, 0.0, 1.0), ("nms_thresh", nms_thresh, 0.0, 1.0),
                                        ("retry_pad", retry_pad, 0.0, 4.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
                raise InputError(f"{fname} must be a number in [{low}, {high}], got {value!r}",
                                 field=fname, value=value)
        try:
            from insightface.model_zoo.arcface_onnx import ArcFaceONNX
            from insightface.model_zoo.scrfd import SCRFD
        except ImportError as exc:
            raise BackendUnavailableError(
                "the insightface face backend needs insightface and onnxruntime: pip install insightface "
                f"onnxruntime (or onnxruntime-gpu) ({exc})", field="backend", value=BACKEND_NAME) from exc

        folder = locate_pack(model_dir, pack_name)
        files = resolve_pack(folder)
        self.device = device
        self.pack = files
        self.det_size = int(det_size)
        self.det_thresh = float(det_thresh)
        self.retry_det_sizes = tuple(int(s) for s in retry_det_sizes if int(s) < det_size)
        self.retry_pad = float(retry_pad)
        self.rec_batch_size = int(rec_batch_size)
        self.num_threads = num_threads

        det_session = create_session(files.detector, device, num_threads=num_threads)
        rec_session = create_session(files.recognizer, device, num_threads=num_threads)
        # one dynamic session for every detection size (insightface 2.x would build one static
        # session per size; the retry sizes would multiply session memory)
        try:
            self._det = SCRFD(model_file=str(files.detector), session=det_session, static_shape_sessions=False)
        except TypeError:  # insightface < 2 has a single dynamic session anyway
            self._det = SCRFD(model_file=str(files.detector), session=det_session)
        self._det.det_thresh = self.det_thresh
        det_shape = det_session.get_inputs()[0].shape
        if all(isinstance(d, int) and d > 0 for d in det_shape[2:4]):
            # an export with a fixed input: SCRFD can only run at that size, so there is nothing
            # to retry at smaller sizes (padding still helps)
            self.det_input: tuple[int, int] | None = (int(det_shape[3]), int(det_shape[2]))
            logger.info("detector %s has a fixed %dx%d input; det_size and retry_det_sizes are not used",
                        files.detector.name, *self.det_input)
            self.retry_det_sizes = ()
        else:
            self.det_input = None
        self._det.nms_thresh = float(nms_thresh)
        self._rec = ArcFaceONNX(model_file=str(files.recognizer), session=rec_session)
        for model, pre, session in ((self._det, files.det_preprocessing, det_session),
                                    (self._rec, files.rec_preprocessing, rec_session)):
            if pre is not None:
                _apply_preprocessing(model, pre, session)
        rec_shape = rec_session.get_inputs()[0].shape
        self.rec_size = int(rec_shape[2])
        fixed_batch = rec_shape[0] if isinstance(rec_shape[0], int) and rec_shape[0] > 0 else None
        self._rec_max_batch = min(self.rec_batch_size, fixed_batch) if fixed_batch else self.rec_batch_size
        self._rec_fixed_batch = fixed_batch
        dim = self._embedding_dim(rec_session, files)
        self.license = inspect_license(folder)
        self.provenance = ModelProvenance(
            backend=BACKEND_NAME, model_name=files.model_name,
            files={_rel(files.detector, folder): _file_sha256(files.detector),
                   _rel(files.recognizer, folder): _file_sha256(files.recognizer)},
            dim=dim, license=self.license.license, commercial_use=self.license.commercial_use)
        logger.info("insightface pack %s (%s): detector %s, recognizer %s (%d-d), device %s, license %s",
                    files.model_name, folder, files.detector.name, files.recognizer.name, dim, device,
                    self.license.license)

    def __repr__(self) -> str:
        return (f"InsightFaceBackend(model={self.provenance.model_name!r}, device={self.device!r}, "
                f"det_size={self.det_size})")

    def _embedding_dim(self, session, files: PackFiles) -> int:
        out_shape = session.get_outputs()[0].shape
        dim = out_shape[-1] if isinstance(out_shape[-1], int) and out_shape[-1] > 0 else None
        if dim is not None and files.embedding_dim and int(files.embedding_dim) != dim:
            raise ArtifactError(f"the manifest declares {files.embedding_dim}-d embeddings but "
                                f"{files.recognizer.name} outputs {dim}", code="model_signature_mismatch",
                                field="tasks.recognition.embedding_dimension", value=files.embedding_dim)
        if dim is None and files.embedding_dim:
            dim = int(files.embedding_dim)
        if dim is None:  # symbolic output width: ask the model once
            probe = np.zeros((self.rec_size, self.rec_size, 3), np.uint8)
            dim = int(np.asarray(self._rec.get_feat([probe])).shape[-1])
        return int(dim)

    def options(self) -> dict[str, Any]:
        """The settings that shape detection and embeddings (for reports and benchmarks)."""
        return {"device": self.device, "det_size": list(self.det_input) if self.det_input else self.det_size,
                "det_thresh": self.det_thresh,
                "nms_thresh": self._det.nms_thresh, "retry_det_sizes": list(self.retry_det_sizes),
                "retry_pad": self.retry_pad, "rec_batch_size": self.rec_batch_size,
                "num_threads": self.num_threads, "layout": self.pack.layout,
                "detector": self.pack.detector.name, "recognizer": self.pack.recognizer.name}

    # detection ---------------------------------------------------------------------------

    def detect(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Faces of one BGR image: ``(det [K, 5] = x0, y0, x1, y1, score; kps [K, 5, 2]; info)``.

        Tries ``det_size``, then each of ``retry_det_sizes``, then a padded copy, stopping at the
        first pass that finds a face; ``info`` names the pass (``detect_pass``, ``det_size``).
        """
        h, w = bgr.shape[:2]
        first = self.det_input or (self.det_size, self.det_size)
        for i, size in enumerate((first, *((s, s) for s in self.retry_det_sizes))):
            if min(h, w) * min(size) / max(h, w) < 1:  # SCRFD's letterbox would resize a side to 0 px
                continue
            det, kps = self._det.detect(bgr, input_size=size)
            if len(det):
                return det, kps, {"detect_pass": "first" if i == 0 else f"retry_{size[0]}", "det_size": size[0]}
        if self.retry_pad > 0:
            import cv2

            pad = max(1, int(round(self.retry_pad * max(h, w))))
            padded = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            det, kps = self._det.detect(padded, input_size=first)
            if len(det):
                det = det.copy()
                det[:, :4] -= pad
                kps = kps - pad
                return det, kps, {"detect_pass": "padded", "det_size": first[0], "pad": pad}
        return np.empty((0, 5), np.float32), np.empty((0, 5, 2), np.float32), {"detect_pass": "none"}

    # embedding ---------------------------------------------------------------------------

    def align(self, bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """The ``rec_size`` x ``rec_size`` ArcFace crop of one face (``face_align.norm_crop``)."""
        from insightface.utils import face_align

        with warnings.catch_warnings():  # scikit-image 0.26 deprecates the estimate() norm_crop calls
            warnings.simplefilter("ignore", FutureWarning)
            return face_align.norm_crop(bgr, landmark=np.asarray(kps, np.float32).reshape(5, 2),
                                        image_size=self.rec_size)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Raw (not normalised) embeddings ``[n, dim]`` of aligned BGR crops, ``rec_batch_size`` per run."""
        if not crops:
            return np.empty((0, 0), np.float32)
        out = []
        step = self._rec_max_batch
        for start in range(0, len(crops), step):
            chunk = list(crops[start:start + step])
            real = len(chunk)
            if self._rec_fixed_batch and real < self._rec_fixed_batch:  # a fixed-batch export: pad the chunk
                chunk += [chunk[-1]] * (self._rec_fixed_batch - real)
            feats = np.asarray(self._rec.get_feat(chunk), dtype=np.float32).reshape(len(chunk), -1)
            out.append(feats[:real])
        return np.concatenate(out, axis=0)

    def analyze_images(self, images: Sequence[LoadedImage]) -> list[list[FaceObservation]]:
        """Detect, align and embed every face of every image; recognition is batched across images.

        Args:
            images: decoded images (``persona_ml.images.load_image``).

        Returns:
            One list per image of ``FaceObservation``, sorted by box area (largest first);
            empty when no pass found a face.
        """
        found: list[tuple[int, np.ndarray, np.ndarray, dict[str, Any]]] = []
        crops: list[np.ndarray] = []
        bgrs = []
        for idx, image in enumerate(images):
            bgr = np.ascontiguousarray(image.pixels[..., ::-1])
            bgrs.append(bgr)
            det, kps, info = self.detect(bgr)
            for row, points in zip(det, kps):
                found.append((idx, row, np.asarray(points, np.float32).reshape(5, 2), info))
                crops.append(self.align(bgr, points))
        feats = self.embed_crops(crops)
        results: list[list[FaceObservation]] = [[] for _ in images]
        for (idx, row, points, info), feat in zip(found, feats):
            results[idx].append(self._observation(images[idx], row, points, feat, info))
        for faces in results:
            faces.sort(key=lambda f: -f.area)
        return results

    def _observation(self, image: LoadedImage, row: np.ndarray, points: np.ndarray, feat: np.ndarray,
                     info: dict[str, Any]) -> FaceObservation:
        pixels = image.pixels
        h, w = pixels.shape[:2]
        x0, y0, x1, y1, score = (float(v) for v in row[:5])
        bbox = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
        gray = quality.to_gray(quality.crop_box(pixels, bbox))
        try:
            pose = quality.pose_from_landmarks(points)
            if not all(math.isfinite(v) for v in pose):
                pose = None
        except (ValueError, ZeroDivisionError):
            pose = None
        return FaceObservation(
            bbox=bbox,
            landmarks=points.astype(np.float32),
            det_score=score,
            face_size=float(max(0.0, min(bbox[2] - bbox[0], bbox[3] - bbox[1]))),
            sharpness=quality.laplacian_variance(gray),
            pose=pose,
            embedding=l2_normalize(feat),
            image_sha256=image.sha256,
            image_size=(w, h),
            provenance=self.provenance,
            extra={**info, "raw_bbox": [x0, y0, x1, y1], "embedding_norm": float(np.linalg.norm(feat))},
        )


def _apply_preprocessing(model, preprocessing: Any, session) -> None:
    """A manifest's preprocessing: ``"embedded"`` (the graph normalises) or ``{"mean", "std"}``."""
    input_type = str(session.get_inputs()[0].type)
    if preprocessing == "embedded":
        model.input_mean, model.input_std = 0.0, 1.0
    else:
        model.input_mean, model.input_std = float(preprocessing["mean"]), float(preprocessing["std"])
    model.input_dtype = np.uint8 if input_type == "tensor(uint8)" else np.float32


def _rel(path: Path, folder: Path) -> str:
    try:
        return path.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return path.name


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}", field=name, value=value)
