"""The one way an image enters the library.

``load_image`` accepts a path, bytes, a binary file object, a PIL image or a numpy array and
returns a ``LoadedImage``: an upright RGB uint8 array plus the sha256 of the original bytes.
Limits are checked from the header before any pixel is decoded (decompression bombs), EXIF
orientation is applied, and every failure is an ``ImageError`` with a stable code.

Example:
    >>> from persona_ml.images import load_image
    >>> img = load_image("photo.jpg")            # doctest: +SKIP
    >>> img.pixels.shape, img.sha256[:8]         # doctest: +SKIP
    ((1868, 1382, 3), '3f1c9a0b')
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Union

import numpy as np

from .errors import ImageError

if TYPE_CHECKING:
    import PIL.Image

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], "PIL.Image.Image", np.ndarray]

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 32
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
BASE_FORMATS = ("JPEG", "PNG", "WEBP")
OPTIONAL_FORMATS = ("HEIF", "AVIF")  # allowed only when a Pillow plugin can open them


@dataclass(frozen=True)
class ImageLimits:
    """Acceptance limits for incoming images.

    Args:
        max_pixels: width x height above which the image is refused before decoding.
        min_side: the shorter side, in pixels, below which the image is refused.
        max_bytes: encoded size above which the image is refused without parsing.
        allowed_formats: Pillow format names; ``None`` means JPEG, PNG, WebP plus HEIF/AVIF
            where a plugin is installed.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE
    max_bytes: int = DEFAULT_MAX_BYTES
    allowed_formats: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("max_pixels", "min_side", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ImageError(f"ImageLimits.{name} must be a positive integer, got {value!r}",
                                 code="invalid_input", field=name, value=value)
        formats = self.allowed_formats
        if formats is not None and (isinstance(formats, (str, bytes)) or not formats
                                    or not all(isinstance(f, str) and f for f in formats)):
            # a bare "PNG" would be read as the formats "P", "N", "G" and refuse every image
            raise ImageError(f"ImageLimits.allowed_formats must be a non-empty sequence of format names "
                             f"such as ('JPEG', 'PNG'), got {formats!r}", code="invalid_input",
                             field="allowed_formats", value=repr(formats))
        pillow_cap = _pillow_pixel_cap()
        if pillow_cap is not None and self.max_pixels > pillow_cap:
            # Pillow refuses anything above 2 x Image.MAX_IMAGE_PIXELS itself, before our check
            raise ImageError(f"ImageLimits.max_pixels {self.max_pixels} is above Pillow's own decompression-bomb "
                             f"limit of {pillow_cap} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS), which would refuse "
                             "those images anyway; raise PIL.Image.MAX_IMAGE_PIXELS first",
                             code="invalid_input", field="max_pixels", value=self.max_pixels, limit=pillow_cap)

    def formats(self) -> tuple[str, ...]:
        if self.allowed_formats is not None:
            return tuple(f.upper() for f in self.allowed_formats)
        return BASE_FORMATS + tuple(f for f in OPTIONAL_FORMATS if _plugin_available(f))


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded, upright RGB image.

    Attributes:
        pixels: ``(H, W, 3)`` uint8 array, EXIF orientation applied.
        sha256: hex digest of the original encoded bytes (for arrays and PIL images: of the
            raw pixel buffer plus its shape, so equal pixels give equal hashes).
        format: Pillow format name (``JPEG``...) or ``array`` / ``pil`` for in-memory inputs.
        source: file path or a short description of the input, for messages and reports.
        original_mode: Pillow mode before conversion (``CMYK``, ``I;16``, ``P``...).
        exif_transposed: whether an EXIF orientation other than 1 was applied.
        n_frames: frames in the file; only the first is used.
    """

    pixels: np.ndarray
    sha256: str
    format: str
    source: str
    original_mode: str = "RGB"
    exif_transposed: bool = False
    n_frames: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` like PIL."""
        return (self.width, self.height)

    def to_pil(self):
        from PIL import Image

        return Image.fromarray(self.pixels, "RGB")


def load_image(source: ImageSource, limits: ImageLimits | None = None, *, name: str | None = None) -> LoadedImage:
    """Decode ``source`` into a ``LoadedImage``.

    Args:
        source: path, bytes, binary file object, PIL image or ``(H, W[, C])`` numpy array.
            A ``LoadedImage`` is returned unchanged. A path must name a regular file (a folder,
            FIFO or device is refused as such, ``path_invalid``). A JPEG carrying an MPF second
            image (phone photos; Pillow calls it MPO) is a JPEG: its first frame is used.
            Arrays follow one rule: ``uint8`` as is; ``uint16`` (either byte order) scaled
            by 255/65535; ``bool`` as 0/255; other integer dtypes must hold 0-255; floats are
            intensities in ``[0, 1]`` (values within ``FLOAT_RANGE_TOLERANCE`` outside are
            clipped, anything further is refused: divide 0-255 floats by 255). Strings,
            dates, objects and complex numbers are refused (``image_array_invalid``).
        limits: acceptance limits; defaults to ``ImageLimits()`` (about 50 MP, 32 px minimum).
        name: label used in messages instead of the path.

    Returns:
        LoadedImage with RGB uint8 pixels.

    Raises:
        ImageError: codes ``image_empty``, ``image_not_an_image``, ``image_format_not_allowed``,
            ``image_too_large``, ``image_too_small``, ``image_truncated``, ``image_unreadable``,
            ``image_array_invalid``, ``path_invalid``, ``invalid_input`` (an unsupported source type,
            a text-mode file object, ``read()`` returning something other than bytes).
    """
    if isinstance(source, LoadedImage):
        return source
    limits = limits or ImageLimits()
    from PIL import Image

    if isinstance(source, np.ndarray):
        return _from_array(source, limits, name or "<array>")
    if isinstance(source, Image.Image):
        return _from_pil_object(source, limits, name or "<PIL image>")
    data, label = _read_bytes(source, limits, name)
    return _decode(data, limits, label)


def _read_bytes(source, limits: ImageLimits, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        from ._files import FileProblem, path_text, read_regular_file

        try:
            text = path_text(source)
        except (TypeError, UnicodeError) as exc:
            raise ImageError(f"not a usable image path: {exc}", code="invalid_input", field="image",
                             value=repr(source)) from None
        label = str(name) if name is not None else text
        try:
            data = read_regular_file(text, max_bytes=limits.max_bytes, label=label)
        except FileProblem as exc:
            if exc.reason == "too_large":
                raise ImageError(f"{label}: {exc.size} bytes exceeds the {limits.max_bytes}-byte limit"
                                 if exc.size is not None else exc.message, code="image_too_large", field="image",
                                 value=exc.size, limit=limits.max_bytes) from None
            if exc.reason in ("not_a_file", "name_too_long"):  # a folder, FIFO or device is named, not a photo
                raise ImageError(exc.message, code="path_invalid", field="image", value=text,
                                 **exc.details()) from None
            if exc.reason == "not_found":
                why = exc.message.removeprefix(f"{exc.path}: ")
                raise ImageError(f"image file not found: {exc.path}" + ("" if why == "no such file" else f" ({why})"),
                                 code="image_unreadable", field="image", value=text, **exc.details()) from None
            raise ImageError(f"cannot read image file {exc.message}", code="image_unreadable", field="image",
                             value=text, **exc.details()) from None
        return data, label
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = str(name) if name is not None else f"<{len(data)} bytes>"
    elif hasattr(source, "read"):
        label = str(name if name is not None else getattr(source, "name", None) or "<file object>")
        read = getattr(source, "read", None)
        if not callable(read):
            raise ImageError(f"{label}: the file object's read is not callable", code="invalid_input",
                             field="image", value=type(source).__name__)
        try:
            data = read(limits.max_bytes + 1)
        except Exception as exc:  # an upload stream may raise anything (closed file, dropped connection, a wrapper's bug)
            raise ImageError(f"{label}: cannot read: {type(exc).__name__}: {exc}", code="image_unreadable",
                             field="image", value=type(source).__name__, error=type(exc).__name__) from exc
        if isinstance(data, str):
            raise ImageError("file object must be opened in binary mode", code="invalid_input",
                             field="image", value=type(source).__name__)
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if data is None:  # a non-blocking stream with nothing ready
            raise ImageError(f"{label}: read() returned None (a non-blocking stream with no data); pass the bytes "
                             "or a blocking file object", code="image_unreadable", field="image",
                             value=type(source).__name__)
        if not isinstance(data, bytes):
            raise ImageError(f"{label}: read() returned {type(data).__name__}, not bytes", code="invalid_input",
                             field="image", value=type(data).__name__)
    else:
        raise ImageError(f"unsupported image source type {type(source).__name__}", code="invalid_input",
                         field="image", value=type(source).__name__)
    if len(data) > limits.max_bytes:
        raise ImageError(f"{label}: more than {limits.max_bytes} bytes", code="image_too_large",
                         field="image", value=len(data), limit=limits.max_bytes)
    return data, label


def _decode(data: bytes, limits: ImageLimits, label: str) -> LoadedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) == 0:
        raise ImageError(f"{label}: empty file (0 bytes)", code="image_empty", field="image", value=label)
    digest = hashlib.sha256(data).hexdigest()
    _check_png_header(data, limits, label)
    allowed = limits.formats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=None)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{label}: {exc}", code="image_too_large", field="image", value=label) from exc
        except UnidentifiedImageError as exc:
            raise ImageError(f"{label}: not a recognised image ({len(data)} bytes)", code="image_not_an_image",
                             field="image", value=label) from exc
        except _DECODE_ERRORS as exc:
            raise ImageError(f"{label}: corrupt or truncated header: {exc}", code="image_truncated",
                             field="image", value=label) from exc
        fmt = (img.format or "").upper()
        if fmt == "MPO" and "JPEG" in allowed:
            # a phone JPEG with an MPF second image (depth map, preview): a JPEG whose first frame is the photo
            fmt = "JPEG"
        if fmt not in allowed:
            raise ImageError(f"{label}: format {fmt or 'unknown'} is not allowed (allowed: {', '.join(allowed)})",
                             code="image_format_not_allowed", field="image", value=fmt, allowed=list(allowed))
        _check_dims(img.size, limits, label)
        n_frames = int(getattr(img, "n_frames", 1) or 1)
        try:
            if n_frames > 1:
                img.seek(0)
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{label}: {exc}", code="image_too_large", field="image", value=label) from exc
        except (*_DECODE_ERRORS, zlib.error) as exc:
            raise ImageError(f"{label}: truncated or corrupt image data: {exc}", code="image_truncated",
                             field="image", value=label) from exc
        mode = img.mode
        orientation = 1
        try:
            orientation = int(img.getexif().get(0x0112, 1) or 1)
        except Exception:  # noqa: BLE001 (malformed EXIF must not reject an otherwise good photo)
            orientation = 1
        if orientation != 1:
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 (as above: keep the photo as stored)
                orientation = 1
        try:
            pixels = _to_rgb(img)
        except (*_DECODE_ERRORS, zlib.error) as exc:  # frames decoded lazily by the conversion
            raise ImageError(f"{label}: truncated or corrupt image data: {exc}", code="image_truncated",
                             field="image", value=label) from exc
    _check_dims((pixels.shape[1], pixels.shape[0]), limits, label)
    return LoadedImage(pixels=pixels, sha256=digest, format=fmt, source=label, original_mode=mode,
                       exif_transposed=orientation != 1, n_frames=n_frames)


# Pillow's decoders report hostile headers with these (struct.error and IndexError come from
# plugins parsing a field that is shorter than it claims)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
                  ZeroDivisionError, OverflowError)


def _check_png_header(data: bytes, limits: ImageLimits, label: str) -> None:
    """Refuse a PNG whose IHDR claims too many pixels even when the rest of the file is missing
    (Pillow would then call it "not an image" and hide that it is a decompression bomb)."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        if w * h > limits.max_pixels:
            raise ImageError(f"{label}: {w}x{h} = {w * h} pixels exceeds the {limits.max_pixels}-pixel limit",
                             code="image_too_large", field="image", value=[w, h], limit=limits.max_pixels)


def _check_dims(size: tuple[int, int], limits: ImageLimits, label: str) -> None:
    w, h = int(size[0]), int(size[1])
    if w * h > limits.max_pixels:
        raise ImageError(f"{label}: {w}x{h} = {w * h} pixels exceeds the {limits.max_pixels}-pixel limit",
                         code="image_too_large", field="image", value=[w, h], limit=limits.max_pixels)
    if min(w, h) < limits.min_side:
        raise ImageError(f"{label}: {w}x{h} is smaller than the {limits.min_side}-pixel minimum side",
                         code="image_too_small", field="image", value=[w, h], limit=limits.min_side)


def _to_rgb(img) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8; transparency is composited on white."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.dtype != np.uint8:
            arr = arr.astype(np.float64)
            top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            arr = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    if mode == "F":
        arr = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    if mode == "P" and ("transparency" in img.info):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(arr)


#: float arrays are intensities in [0, 1]; values this far outside (resampling overshoot) are clipped,
#: anything further is refused: 0-255 floats must be divided by 255, [-1, 1] data mapped by (x + 1) / 2
FLOAT_RANGE_TOLERANCE = 0.05


def _array_to_uint8(arr: np.ndarray, label: str) -> np.ndarray:
    """The documented array rule (see ``load_image``): uint8 as is; uint16 of either byte order
    scaled by 255/65535; bool as 0/255; other integers must already be 0-255; floats are [0, 1]."""
    kind = arr.dtype.kind
    if kind == "u" and arr.dtype.itemsize == 1:
        return arr.astype(np.uint8, copy=False)
    if kind == "u" and arr.dtype.itemsize == 2:  # '<u2' and '>u2' alike: the values, not the bytes
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    if kind == "b":
        return arr.astype(np.uint8) * np.uint8(255)
    if kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageError(f"{label}: {arr.dtype} array values must be 0-255 (got {lo}..{hi}); pass 16-bit data "
                             "as uint16, or scale it to uint8", code="image_array_invalid", field="image",
                             value=[lo, hi], dtype=str(arr.dtype))
        return arr.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError(f"{label}: array contains NaN or inf", code="image_not_an_image", field="image",
                             value=label)
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -FLOAT_RANGE_TOLERANCE or hi > 1.0 + FLOAT_RANGE_TOLERANCE:
            raise ImageError(f"{label}: float image arrays hold intensities in [0, 1], got values {lo:.4g}..{hi:.4g}; "
                             "divide 0-255 floats by 255 (or pass uint8), map [-1, 1] data with (x + 1) / 2",
                             code="image_array_invalid", field="image", value=[lo, hi], dtype=str(arr.dtype))
        return np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    raise ImageError(f"{label}: an image array must hold numbers (uint8, uint16, bool, 0-255 integers or [0, 1] "
                     f"floats), got dtype {arr.dtype}", code="image_array_invalid", field="image",
                     value=str(arr.dtype))


def _from_array(arr: np.ndarray, limits: ImageLimits, label: str) -> LoadedImage:
    if arr.dtype.kind not in "biuf":  # strings, dates, timedeltas, objects, complex, structured
        raise ImageError(f"{label}: an image array must hold numbers, got dtype {arr.dtype}",
                         code="image_array_invalid", field="image", value=str(arr.dtype))
    if arr.size == 0:
        raise ImageError(f"{label}: empty array {arr.shape}", code="image_empty", field="image", value=list(arr.shape))
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageError(f"{label}: array must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}",
                         code="image_not_an_image", field="image", value=list(arr.shape))
    _check_dims((arr.shape[1], arr.shape[0]), limits, label)
    arr = _array_to_uint8(arr, label)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = np.round(arr[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    arr = np.ascontiguousarray(arr)
    digest = hashlib.sha256(repr(arr.shape).encode() + arr.tobytes()).hexdigest()
    return LoadedImage(pixels=arr, sha256=digest, format="array", source=label)


def _from_pil_object(img, limits: ImageLimits, label: str) -> LoadedImage:
    from PIL import ImageOps

    _check_dims(img.size, limits, label)
    n_frames = int(getattr(img, "n_frames", 1) or 1)
    try:
        if n_frames > 1 and img.tell() != 0:  # the first frame, as for files; the caller's image
            position = img.tell()             # is left on the frame it was on
            img.seek(0)
            first = img.copy()
            img.seek(position)
            img = first
        img.load()
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{label}: truncated or corrupt image data: {exc}", code="image_truncated",
                         field="image", value=label) from exc
    mode = img.mode
    # Image.open() keeps the EXIF orientation unapplied: a phone photo would be analysed sideways
    orientation = 1
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 (malformed EXIF must not reject an otherwise good photo)
        orientation = 1
    try:
        pixels = _to_rgb(img)
    except (ValueError, TypeError, OSError) as exc:  # a mode Pillow cannot convert to RGB (HSV, a closed image)
        raise ImageError(f"{label}: a PIL image in mode {mode} cannot be converted to RGB: {exc}",
                         code="image_not_an_image", field="image", value=mode) from exc
    _check_dims((pixels.shape[1], pixels.shape[0]), limits, label)
    digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
    return LoadedImage(pixels=pixels, sha256=digest, format="pil", source=label, original_mode=mode,
                       exif_transposed=orientation != 1, n_frames=n_frames)


def _pillow_pixel_cap() -> int | None:
    """Pixels above which ``Image.open`` raises ``DecompressionBombError`` (``None``: no cap)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def _plugin_available(fmt: str) -> bool:
    from PIL import Image, features

    if fmt == "AVIF":
        try:
            if features.check("avif"):
                return True
        except Exception:  # noqa: BLE001 (a broken optional codec probe means "not available")
            pass
    try:  # pillow-heif / pillow-avif-plugin register themselves on import
        if fmt == "HEIF":
            import pillow_heif  # type: ignore[import-not-found]

            pillow_heif.register_heif_opener()
        elif fmt == "AVIF":
            import pillow_avif  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    Image.init()
    return fmt in Image.OPEN


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif", ".gif")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image-like files directly in ``folder``, sorted by name (hidden files skipped).

    Raises:
        ImageError: ``invalid_input`` when ``folder`` is not a folder (a file, FIFO or device is
            named as what it is), ``path_invalid`` for a name over the filesystem's limit,
            ``image_unreadable`` when it cannot be listed.
    """
    import errno
    import stat

    from ._files import describe_kind

    folder = Path(folder)
    try:
        mode = folder.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise ImageError(f"{folder}: the path or one of its names is longer than the filesystem allows",
                             code="path_invalid", field="images", value=str(folder)) from None
        raise ImageError(f"not a folder: {folder} ({exc.strerror or exc})", code="invalid_input", field="images",
                         value=str(folder)) from None
    except ValueError as exc:  # a NUL in the path
        raise ImageError(f"not a folder: {folder!r} ({exc})", code="invalid_input", field="images",
                         value=repr(folder)) from None
    if not stat.S_ISDIR(mode):
        raise ImageError(f"not a folder: {folder} is {describe_kind(mode)}", code="invalid_input", field="images",
                         value=str(folder))
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise ImageError(f"cannot list {folder}: {exc.strerror or exc}", code="image_unreadable", field="images",
                         value=str(folder)) from None
    out = []
    for p in entries:
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            if p.is_file():
                out.append(p)
        except OSError:  # vanished or unreadable while listing: not an image of this folder
            continue
    return sorted(out)
