"""Issue 12, images: every hostile source is a coded ImageError or a correct image."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
from hostile_cases import assert_coded, hostile_scalars
from PIL import Image

from persona_ml.errors import ImageError, PersonaMLError
from persona_ml.images import FLOAT_RANGE_TOLERANCE, load_image


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _code(source) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source)
    return info.value.code


def test_paths_say_what_they_are(tmp_path):
    fifo = tmp_path / "upload.jpg"
    os.mkfifo(fifo)
    folder = tmp_path / "photos.jpg"
    folder.mkdir()
    for path, words in ((fifo, "FIFO"), (folder, "folder"), (tmp_path / ("p" * 300 + ".jpg"), "longer than"),
                        ("/dev/zero", "character device")):
        with pytest.raises(ImageError) as info:
            load_image(path)  # a FIFO must not block, /dev/zero must not be read forever
        assert info.value.code == "path_invalid" and words in info.value.message, info.value.message
    assert _code(tmp_path / "missing.jpg") == "image_unreadable"


class _Raising:
    def __init__(self, exc):
        self.exc = exc

    def read(self, n=-1):
        raise self.exc


class _Returning:
    def __init__(self, value):
        self.value = value

    def read(self, n=-1):
        return self.value


@pytest.mark.parametrize("exc", [OSError("reset"), ValueError("closed"), KeyError("k"), RuntimeError("boom"),
                                 TimeoutError(), UnicodeDecodeError("utf-8", b"", 0, 1, "x"), MemoryError()])
def test_file_objects_whose_read_raises_are_unreadable(exc):
    assert _code(_Raising(exc)) == "image_unreadable"


@pytest.mark.parametrize("value, code", [(None, "image_unreadable"), (5, "invalid_input"), ([1, 2], "invalid_input"),
                                         ("text", "invalid_input"), (object(), "invalid_input")])
def test_file_objects_returning_the_wrong_type_are_coded(value, code):
    assert _code(_Returning(value)) == code


def test_bytes_like_reads_are_accepted():
    data = _png(np.full((40, 40, 3), 7, np.uint8))
    assert load_image(_Returning(bytearray(data))).pixels[0, 0].tolist() == [7, 7, 7]
    assert load_image(_Returning(memoryview(data))).pixels[0, 0].tolist() == [7, 7, 7]


@pytest.mark.parametrize("arr", [np.full((40, 40), "a"), np.full((40, 40), b"a"),
                                 np.full((40, 40), np.datetime64("2024-01-01")),
                                 np.full((40, 40), np.timedelta64(1, "s")), np.full((40, 40), None, dtype=object),
                                 np.full((40, 40, 3), 1 + 2j), np.zeros((40, 40), dtype=[("r", "u1"), ("g", "u1")])])
def test_arrays_of_non_numbers_are_refused(arr):
    assert _code(arr) == "image_array_invalid"


def test_float_arrays_follow_the_documented_zero_to_one_rule():
    assert load_image(np.full((40, 40, 3), 0.5, np.float32)).pixels[0, 0].tolist() == [128, 128, 128]
    # resampling overshoot within the tolerance is clipped, not a reason to reinterpret the whole image
    overshoot = np.full((40, 40, 3), 0.5, np.float32)
    overshoot[0, 0] = 1.0 + FLOAT_RANGE_TOLERANCE / 2
    overshoot[0, 1] = -FLOAT_RANGE_TOLERANCE / 2
    img = load_image(overshoot)
    assert img.pixels[0, 0].tolist() == [255] * 3 and img.pixels[0, 1].tolist() == [0] * 3
    assert img.pixels[5, 5].tolist() == [128] * 3  # the old "max > 1 means 0-255" read this as almost black
    assert _code(np.full((40, 40, 3), 200.0)) == "image_array_invalid"          # 0-255 floats: divide by 255
    assert _code(np.linspace(-1, 1, 1600).reshape(40, 40)) == "image_array_invalid"  # [-1, 1] data
    assert _code(np.full((40, 40), np.nan, np.float32)) == "image_not_an_image"


def test_big_endian_16_bit_arrays_scale_like_little_endian():
    ramp = np.tile(np.array([0, 257 * 100, 65535], dtype=np.uint16).repeat(20), (60, 1))
    little = load_image(ramp.astype("<u2")).pixels
    big = load_image(ramp.astype(">u2")).pixels
    assert np.array_equal(little, big) and big[0, 0, 0] == 0 and big[0, 20, 0] == 100 and big[0, 59, 0] == 255


def test_integer_arrays_must_hold_0_to_255():
    assert load_image(np.full((40, 40), 200, np.int64)).pixels[0, 0].tolist() == [200] * 3
    assert _code(np.full((40, 40), 300, np.int32)) == "image_array_invalid"
    assert _code(np.full((40, 40), -1, np.int16)) == "image_array_invalid"
    assert load_image(np.eye(40, dtype=bool)).pixels[0, 0].tolist() == [255] * 3


def test_mpo_phone_jpeg_is_accepted_as_jpeg_first_frame():
    photo = Image.fromarray(np.full((64, 80, 3), (200, 30, 10), np.uint8))
    depth = Image.fromarray(np.zeros((64, 80, 3), np.uint8))
    buf = io.BytesIO()
    photo.save(buf, format="MPO", save_all=True, append_images=[depth], quality=95)
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"  # what Pillow calls it
    img = load_image(buf.getvalue())
    assert img.format == "JPEG" and img.n_frames == 2 and img.size == (80, 64)
    assert np.abs(img.pixels.astype(int) - [200, 30, 10]).max() < 6  # the photo, not the second image


def test_fuzz_every_source_kind_gives_an_image_or_a_coded_error(tmp_path):
    rng = random.Random(12)
    pixels = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    encoded = [_png(pixels), buf.getvalue()]
    sources: list = list(encoded)
    for i in range(150):  # byte mutations: flips, truncations, insertions of header-like bytes
        good = encoded[i % 2]
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.5:
                data[pos] ^= 1 << rng.randrange(8)
            elif op < 0.8:
                del data[pos:pos + rng.randint(1, 64)]
            else:
                data[pos:pos] = rng.choice([b"\xff\xd8\xff", b"IHDR", b"\x00" * 16, b"RIFF", b"GIF89a"])
        sources.append(bytes(data if i % 10 else data[: rng.randrange(1, 64)]))
    sources += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))) for _ in range(30)]
    sources += hostile_scalars()
    sources += [np.asarray(v, dtype=object) for v in (1, "a", None)]
    sources += [np.zeros(s) for s in ((0, 0), (40,), (40, 40, 2), (40, 40, 5), (1, 1, 3), (4, 100000, 3))]
    sources += [_Returning(v) for v in hostile_scalars()[:12]]
    sources += [str(tmp_path / "nope.png"), str(tmp_path), "x" * 5000, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100]
    n_ok = 0
    for src in sources:
        out = assert_coded(load_image, src)
        if not isinstance(out, PersonaMLError):
            assert out.pixels.dtype == np.uint8 and out.pixels.ndim == 3 and out.pixels.shape[2] == 3
            n_ok += 1
    assert n_ok >= 3  # the intact files, and JPEGs whose flips landed in entropy-coded data
