"""persona_ml.images: every bad input of issue 2 gets the right result or a coded ImageError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from persona_ml.errors import ImageError
from persona_ml.images import ImageLimits, LoadedImage, list_images, load_image


def _gradient(w: int = 64, h: int = 48) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.full((h, w, 1), 90, np.float32)], axis=2).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit RGB) followed by a tiny IDAT: a bomb header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _code(source, limits: ImageLimits | None = None) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, limits)
    return info.value.code


# ---- refused inputs -----------------------------------------------------------------------

def test_zero_byte_file_is_image_empty(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert _code(path) == "image_empty"
    assert _code(b"") == "image_empty"


def test_text_renamed_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n" * 20)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.code == "image_not_an_image"
    assert info.value.details["value"] == str(path)  # the message names the file


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_image_truncated(tmp_path, fmt):
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
    data = _encode(noisy, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert _code(path) == "image_truncated"


def test_png_header_claiming_30000_squared_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(30000, 30000))
    assert path.stat().st_size < 200  # nothing to decode: the header alone must be enough
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert info.value.code == "image_too_large"


def test_png_header_alone_is_enough_to_refuse_a_bomb():
    # signature + IHDR and nothing else: Pillow cannot open it, but it is a bomb, not "not an image"
    header = _png_claiming(30000, 30000)[:33]
    assert _code(header) == "image_too_large"
    assert _code(_png_claiming(300, 300)[:33]) in ("image_not_an_image", "image_truncated")


def test_pixel_limit_is_ours_and_configurable():
    # 10000 x 10000 = 100 MP: under Pillow's own bomb error, over our 50 MP default.
    data = _png_claiming(10000, 10000)
    assert _code(data) == "image_too_large"
    small = _encode(Image.fromarray(_gradient(64, 48)), "PNG")
    assert _code(small, ImageLimits(max_pixels=1000)) == "image_too_large"
    assert load_image(small, ImageLimits(max_pixels=64 * 48)).size == (64, 48)


@pytest.mark.parametrize("formats", ["PNG", (), ("PNG", 3)])
def test_malformed_allowed_formats_are_refused(formats):
    # allowed_formats="PNG" used to mean the formats "P", "N", "G": every image was then refused
    with pytest.raises(ImageError) as exc:
        ImageLimits(allowed_formats=formats)
    assert exc.value.code == "invalid_input" and exc.value.details["field"] == "allowed_formats"


def test_pixel_limit_above_pillows_own_cap_is_refused_at_configuration():
    # Pillow refuses > 2 x MAX_IMAGE_PIXELS in Image.open: a larger configured limit could never take effect
    from PIL import Image

    cap = 2 * Image.MAX_IMAGE_PIXELS
    assert ImageLimits(max_pixels=cap).max_pixels == cap
    with pytest.raises(ImageError) as exc:
        ImageLimits(max_pixels=cap + 1)
    assert exc.value.details["field"] == "max_pixels" and exc.value.details["limit"] == cap


def test_ten_by_ten_is_image_too_small():
    data = _encode(Image.new("RGB", (10, 10), (200, 10, 10)), "PNG")
    with pytest.raises(ImageError) as info:
        load_image(data)
    assert info.value.code == "image_too_small"
    assert info.value.details["value"] == [10, 10]
    assert load_image(data, ImageLimits(min_side=8)).size == (10, 10)


def test_animated_gif_is_not_in_the_default_allowlist_but_first_frame_when_allowed():
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert _code(data) == "image_format_not_allowed"
    img = load_image(data, ImageLimits(allowed_formats=("GIF",)))
    assert img.n_frames == 3
    r, g, b = img.pixels[20, 20]
    assert r > 200 and g < 50 and b < 50  # the first (red) frame


def test_animated_webp_takes_the_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ((0, 0, 255), (255, 0, 0))]
    data = _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True)
    img = load_image(data)
    assert img.format == "WEBP" and img.n_frames == 2
    r, g, b = img.pixels[20, 20]
    assert b > 200 and r < 50


def test_other_formats_and_bad_sources_are_refused():
    data = _encode(Image.fromarray(_gradient()), "BMP")
    assert _code(data) == "image_format_not_allowed"
    assert _code(12345) == "invalid_input"
    assert _code(io.StringIO("text")) == "invalid_input"
    assert _code(np.zeros((0, 5, 3), np.uint8)) == "image_empty"
    assert _code(np.zeros((40, 40, 7), np.uint8)) == "image_not_an_image"
    assert _code(np.full((40, 40), np.nan, np.float32)) == "image_not_an_image"


def test_missing_file_is_image_unreadable(tmp_path):
    assert _code(tmp_path / "nope.jpg") == "image_unreadable"


def test_unreadable_file_object_is_a_coded_error():
    # a closed or broken upload stream used to escape as a bare ValueError / OSError
    closed = io.BytesIO(b"\x89PNG")
    closed.close()

    class Broken(io.RawIOBase):
        def read(self, size=-1):
            raise OSError("connection reset")

    for source in (closed, Broken()):
        with pytest.raises(ImageError) as exc:
            load_image(source)
        assert exc.value.code == "image_unreadable"


def test_byte_limit(tmp_path):
    data = _encode(Image.fromarray(_gradient()), "PNG")
    assert _code(data, ImageLimits(max_bytes=len(data) - 1)) == "image_too_large"


# ---- converted inputs ---------------------------------------------------------------------

def test_16_bit_png_is_scaled_to_8_bit_grey():
    ramp = np.tile(np.array([0, 32768, 65535], dtype=np.uint16).repeat(20), (40, 1))
    data = _encode(Image.fromarray(ramp), "PNG")
    src = Image.open(io.BytesIO(data))
    assert src.mode.startswith("I")  # really a 16-bit PNG
    img = load_image(data)
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == (40, 60, 3)
    assert img.pixels[0, 0].tolist() == [0, 0, 0]
    assert img.pixels[0, 25].tolist() == [128, 128, 128]
    assert img.pixels[0, 59].tolist() == [255, 255, 255]


def test_cmyk_jpeg_becomes_rgb_with_the_right_colour():
    cmyk = Image.new("CMYK", (48, 48), (0, 255, 255, 0))  # pure red in CMYK
    data = _encode(cmyk, "JPEG", quality=95)
    img = load_image(data)
    assert img.original_mode == "CMYK" and img.pixels.shape == (48, 48, 3)
    r, g, b = (int(v) for v in img.pixels[24, 24])
    assert r > 200 and g < 60 and b < 60


def test_palette_png_with_transparency_is_composited_on_white():
    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    pal.paste(1, (0, 0, 20, 40))  # left half red, right half index 0 (transparent)
    data = _encode(pal, "PNG", transparency=0)
    img = load_image(data)
    assert img.original_mode == "P"
    assert img.pixels[10, 5].tolist() == [255, 0, 0]
    assert img.pixels[10, 30].tolist() == [255, 255, 255]  # transparent -> white, not black


def test_rgba_grey_and_arrays_are_converted():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[:, :20, 3] = 255
    img = load_image(rgba)
    assert img.pixels[0, 0].tolist() == [0, 255, 0] and img.pixels[0, 39].tolist() == [255, 255, 255]
    grey = load_image(_encode(Image.new("L", (40, 40), 77), "PNG"))
    assert grey.pixels[5, 5].tolist() == [77, 77, 77]
    floats = load_image(np.full((40, 40, 3), 0.5, np.float32))
    assert floats.pixels[0, 0].tolist() == [128, 128, 128]


def test_exif_orientation_is_applied():
    upright = _gradient(80, 40)  # wide: after the EXIF turn it must be wide again
    stored = Image.fromarray(upright).rotate(90, expand=True)  # stored turned 90 deg counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    img = load_image(data)
    assert img.exif_transposed
    assert img.size == (80, 40)
    assert np.abs(img.pixels.astype(int) - upright.astype(int)).mean() < 4


def test_exif_orientation_and_first_frame_also_apply_to_a_pil_image():
    # Image.open(path) keeps EXIF orientation unapplied: a PIL input used to be analysed sideways
    upright = _gradient(80, 40)
    stored = Image.fromarray(upright).rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    opened = Image.open(io.BytesIO(_encode(stored, "JPEG", quality=95, exif=exif.tobytes())))
    img = load_image(opened)
    assert img.exif_transposed and img.size == (80, 40)
    assert np.abs(img.pixels.astype(int) - upright.astype(int)).mean() < 4
    assert np.array_equal(img.pixels, load_image(_encode(stored, "JPEG", quality=95, exif=exif.tobytes())).pixels)

    frames = [Image.new("RGB", (64, 64), (200 * (i == 0), 0, 200 * (i == 2))) for i in range(3)]
    anim = Image.open(io.BytesIO(_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                                         lossless=True)))
    anim.seek(2)
    first = load_image(anim)
    assert first.n_frames == 3 and first.pixels[5, 5].tolist() == [200, 0, 0]
    assert anim.tell() == 2  # the caller's image is left where it was


def test_sha256_is_of_the_original_bytes_and_sources_agree(tmp_path):
    import hashlib

    data = _encode(Image.fromarray(_gradient()), "PNG")
    path = tmp_path / "g.png"
    path.write_bytes(data)
    a, b, c = load_image(path), load_image(data), load_image(io.BytesIO(data))
    assert a.sha256 == b.sha256 == c.sha256 == hashlib.sha256(data).hexdigest()
    assert np.array_equal(a.pixels, c.pixels)
    assert load_image(a) is a and isinstance(a, LoadedImage)


def test_webp_named_jpg_is_read_by_content(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_encode(Image.fromarray(_gradient()), "WEBP"))
    assert load_image(path).format == "WEBP"


def test_list_images_skips_hidden_and_non_images(tmp_path):
    for name in ("b.png", "a.JPG", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    with pytest.raises(ImageError):
        list_images(tmp_path / "b.png")
