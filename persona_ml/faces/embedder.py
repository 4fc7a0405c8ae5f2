"""``FaceEmbedder``: one interface over the face backends (``dlib``, ``insightface``).

Example:
    >>> from persona_ml.faces import FaceEmbedder
    >>> embedder = FaceEmbedder("dlib")                         # doctest: +SKIP
    >>> face = embedder.embed_primary("reference.jpg")          # doctest: +SKIP
    >>> face.embedding.shape, embedder.provenance.model_name    # doctest: +SKIP
    ((128,), 'dlib_face_recognition_resnet_model_v1')
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..errors import BackendError, FaceError, ImageError, InputError, PersonaMLError
from ..images import ImageLimits, ImageSource, LoadedImage, load_image
from .primary import select_primary_face
from .thresholds import FaceThresholds, thresholds_for
from .types import FaceObservation, ModelProvenance

logger = logging.getLogger(__name__)

BACKENDS = ("dlib", "insightface")


@runtime_checkable
class FaceBackend(Protocol):
    """What a face backend provides: detection + alignment + embedding for decoded images."""

    name: str  # "dlib" | "insightface"
    provenance: ModelProvenance

    def analyze_images(self, images: Sequence[LoadedImage]) -> list[list[FaceObservation]]:
        ...


def _make_backend(backend: str, model_dir, device: str, options: dict[str, Any]) -> FaceBackend:
    if backend == "dlib":
        from .dlib_backend import DlibBackend as cls
    elif backend == "insightface":
        from .insightface_backend import InsightFaceBackend as cls
    else:
        raise InputError(f"unknown face backend {backend!r} (choose one of: {', '.join(BACKENDS)})",
                         field="backend", value=backend)
    import inspect

    known = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "model_dir", "device")]
    unknown = sorted(set(options) - set(known))
    if unknown:  # a misspelt option must not be dropped or surface as a bare TypeError
        raise InputError(f"unknown {backend} backend option(s) {', '.join(unknown)} (allowed: {', '.join(known)})",
                         field=unknown[0], value=options[unknown[0]])
    return cls(model_dir=model_dir, device=device, **options)


class FaceEmbedder:
    """Detects faces and embeds them with one backend.

    Args:
        backend: ``"dlib"`` (pip-installable weights, CPU) or ``"insightface"`` (a local model
            pack in ``model_dir``); a ready ``FaceBackend`` object is also accepted.
        model_dir: weights folder (dlib: defaults to the face_recognition_models package;
            insightface: the pack folder).
        device: ``"cpu"`` or ``"cuda[:N]"``; a backend that cannot honour CUDA raises.
        limits: image acceptance limits (``ImageLimits()`` by default).
        batch_size: images decoded and analysed together (bounds memory on large uploads).
        **backend_options: passed to the backend (dlib: ``detect_max_side``,
            ``upsample_if_none``, ``num_jitters``, ``padding``).

    Raises:
        InputError: unknown backend name or bad option.
        BackendUnavailableError / ModelNotFoundError: from the backend.
    """

    def __init__(self, backend: str | FaceBackend = "dlib", *, model_dir: str | os.PathLike | None = None,
                 device: str = "cpu", limits: ImageLimits | None = None, batch_size: int = 8,
                 **backend_options: Any) -> None:
        if isinstance(backend, str):
            impl = _make_backend(backend, model_dir, device, backend_options)
        elif isinstance(backend, FaceBackend):
            if backend_options or model_dir is not None:
                raise InputError("model_dir/backend options cannot be combined with a backend object",
                                 field="backend", value=type(backend).__name__)
            impl = backend
        else:
            raise InputError(f"backend must be a name ({', '.join(BACKENDS)}) or a FaceBackend, got {backend!r}",
                             field="backend", value=repr(backend))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}",
                             field="batch_size", value=batch_size)
        if limits is not None and not isinstance(limits, ImageLimits):
            raise InputError(f"limits must be an ImageLimits, got {type(limits).__name__}", field="limits",
                             value=repr(limits))
        self.impl: FaceBackend = impl
        self.backend: str = impl.name
        self.provenance: ModelProvenance = impl.provenance
        self.thresholds: FaceThresholds = thresholds_for(impl.provenance)
        self.limits = limits or ImageLimits()
        self.batch_size = batch_size
        self.device = device

    def __repr__(self) -> str:
        return f"FaceEmbedder(backend={self.backend!r}, model={self.provenance.model_name!r})"

    def load(self, image: ImageSource, *, name: str | None = None) -> LoadedImage:
        """Decode ``image`` with this embedder's limits (``persona_ml.images.load_image``)."""
        return load_image(image, self.limits, name=name)

    def analyze(self, images: Sequence[ImageSource]) -> list[list[FaceObservation] | ImageError | BackendError]:
        """Detect and embed every face of every image.

        Args:
            images: paths, bytes, file objects, PIL images, arrays or ``LoadedImage`` objects.

        Returns:
            Per input, in order: its faces sorted by area (largest first), the ``ImageError``
            that image raised (the image's fault), or a ``BackendError`` (code ``backend_error``,
            the backend's exception chained as ``__cause__``) when the face backend crashed on a
            valid image: a fault of the backend, never to be reported as the image's or the
            user's. One bad image never stops the others.
        """
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
            raise InputError("analyze() takes a sequence of images; use analyze_one() for one image",
                             field="images", value=type(images).__name__)
        results: list[list[FaceObservation] | ImageError] = [[] for _ in images]
        for start in range(0, len(images), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(images)))
            loaded: list[tuple[int, LoadedImage]] = []
            for i in chunk:
                try:
                    loaded.append((i, self.load(images[i])))
                except ImageError as exc:
                    results[i] = exc
            if not loaded:
                continue
            for (i, _img), faces in zip(loaded, self._analyze_loaded([img for _, img in loaded])):
                results[i] = faces
        return results

    def _analyze_loaded(self, images: list[LoadedImage]) -> list[list[FaceObservation] | ImageError | BackendError]:
        try:
            per_image = self.impl.analyze_images(images)
            return [sorted(faces, key=lambda f: -f.area) for faces in per_image]
        except ImageError as exc:  # the backend refused one image of the batch
            if len(images) == 1:
                return [exc]
        except PersonaMLError:  # backend-wide problems (CUDA missing, model mismatch) are not per image
            raise
        except Exception as exc:  # a backend crash on one image must not lose the whole batch
            if len(images) == 1:
                logger.exception("face backend %s failed on %s", self.backend, images[0].source)
                err = BackendError(f"the {self.backend} face backend failed on {images[0].source}: "
                                   f"{type(exc).__name__}: {str(exc)[:300]}", stage="face_analyze",
                                   backend=self.backend, model=self.provenance.model_name, image=images[0].source)
                err.__cause__ = exc
                return [err]
        logger.warning("face backend %s failed on a batch of %d; retrying one by one", self.backend, len(images))
        out: list[list[FaceObservation] | ImageError | BackendError] = []
        for img in images:
            out.extend(self._analyze_loaded([img]))
        return out

    def analyze_one(self, image: ImageSource) -> list[FaceObservation]:
        """Faces of one image, largest first.

        Raises:
            ImageError: the image was refused (see ``persona_ml.images.load_image``).
            BackendError: the face backend failed on it (cause chained).
        """
        (result,) = self._analyze_loaded([self.load(image)])
        if isinstance(result, PersonaMLError):
            raise result
        return result

    def embed_primary(self, image: ImageSource, *, similar_size_ratio: float = 0.7) -> FaceObservation:
        """The reference face of a photo (``select_primary_face``), checked for size.

        Args:
            image: any ``ImageSource``.
            similar_size_ratio: see ``select_primary_face``.

        Returns:
            The primary ``FaceObservation``.

        Raises:
            ImageError: the image was refused.
            BackendError: the face backend failed on it (cause chained).
            FaceError: ``no_face``, ``multiple_faces``, or ``face_too_small`` (face side below
                ``thresholds.min_face_size_px``).
        """
        loaded = self.load(image)
        (faces,) = self._analyze_loaded([loaded])
        if isinstance(faces, PersonaMLError):
            raise faces
        face = select_primary_face(faces, loaded.size, similar_size_ratio=similar_size_ratio)
        if face.face_size < self.thresholds.min_face_size_px:
            raise FaceError(f"{loaded.source}: the face is {face.face_size:.0f} px, below the "
                            f"{self.thresholds.min_face_size_px} px minimum for a reference photo",
                            code="face_too_small", field="image", value=round(face.face_size, 1),
                            limit=self.thresholds.min_face_size_px)
        return face
