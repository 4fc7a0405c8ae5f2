"""Border trimming, eye-anchored copy signatures and crops that never hold bars (synthetic images)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from persona_ml.dataset.borders import content_box, flat_free_area
from persona_ml.dataset.copies import copy_score, region_signature
from persona_ml.dataset.prepare import PrepareConfig, plan_crops


def scene(seed: int, size=(640, 480)) -> np.ndarray:
    """A textured 'photo': smooth blobs plus fine noise, so crops and copies keep detail."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray((30 + 190 * rng.random((12, 16, 3))).astype(np.uint8)).resize(size, Image.BICUBIC)
    arr = np.asarray(low, np.float32) + rng.normal(0, 12, (size[1], size[0], 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def jpeg(arr: np.ndarray, quality: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def gray(arr):
    return np.asarray(Image.fromarray(arr).convert("L"))


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (40, 90, 160)])
def test_letterbox_and_padding_are_trimmed_through_jpeg(colour):
    photo = scene(1)
    boxed = np.zeros((480, 854, 3), np.uint8) + np.array(colour, np.uint8)
    boxed[:, 107:747] = photo
    b = content_box(jpeg(boxed, 75))
    assert 107 <= b.trimmed["left"] <= 115 and 107 <= b.trimmed["right"] <= 115
    assert b.trimmed["top"] == b.trimmed["bottom"] == 0
    padded = np.zeros((560, 720, 3), np.uint8) + np.array(colour, np.uint8)
    padded[40:520, 40:680] = photo
    b = content_box(jpeg(padded))
    assert all(40 <= v <= 48 for v in b.trimmed.values()), b.trimmed
    assert 0.2 < b.border_fraction < 0.3


def test_scene_edges_and_flat_images_are_not_trimmed():
    photo = scene(2)
    assert not content_box(jpeg(photo)).any
    # a studio backdrop: flat rows at the top that the subject enters gradually (a soft gradient)
    studio = np.full((480, 640, 3), 245, np.uint8)
    yy, xx = np.mgrid[0:480, 0:640]
    head = ((xx - 320) / 120.0) ** 2 + ((yy - 300) / 200.0) ** 2 < 1
    studio[head] = 120
    soft = np.asarray(Image.fromarray(studio).resize((64, 48), Image.BILINEAR).resize((640, 480), Image.BICUBIC))
    assert content_box(soft).trimmed["top"] == 0
    flat = np.full((100, 100, 3), 200, np.uint8)
    b = content_box(flat)
    assert b.uniform and not b.any and b.box == (0, 0, 100, 100)


def light_backdrop_photo() -> np.ndarray:
    """A studio shot on a light backdrop (luma ~243; angelina/img7.jpg has 239): flat rows at the top
    that the subject's head enters gradually, only ~12 levels off white (a hard edge is 16+)."""
    yy, xx = np.mgrid[0:480, 0:640]
    studio = np.full((480, 640, 3), 243, np.uint8)
    studio[((xx - 320) / 120.0) ** 2 + ((yy - 330) / 200.0) ** 2 < 1] = 90
    soft = np.asarray(Image.fromarray(studio).resize((64, 48), Image.BILINEAR).resize((640, 480), Image.BICUBIC))
    noise = np.random.default_rng(7).normal(0, 1.2, soft.shape)
    return np.clip(soft + noise, 0, 255).astype(np.uint8)


def test_white_padding_beside_a_light_backdrop_is_trimmed():
    # the photo's top rows are flat and only ~17 off the padding's white: no hard edge, but a step
    # along the whole line at once
    photo = light_backdrop_photo()
    padded = np.full((560, 720, 3), 255, np.uint8)
    padded[40:520, 40:680] = photo
    b = content_box(jpeg(padded))
    assert all(40 <= v <= 48 for v in b.trimmed.values()), b.trimmed
    # the photo alone: its flat top is scene, not a bar
    assert not content_box(jpeg(photo)).any
    # what is left of real content once flat runs are gone is the same for the photo and its
    # padded copy (the keep rule compares this)
    x0, y0, x1, y1 = b.box
    padded_g = gray(jpeg(padded))[y0:y1, x0:x1]
    assert abs(flat_free_area(padded_g) - flat_free_area(gray(jpeg(photo)))) < 0.03 * photo.shape[0] * photo.shape[1]


def test_a_gradient_or_a_head_entering_the_backdrop_is_not_a_step():
    yy = np.arange(480, dtype=np.float32)[:, None, None]
    grad = np.broadcast_to(255 - 0.2 * yy, (480, 640, 3)).copy()   # 1 luma level every 5 rows
    grad[240:] = scene(6)[240:]
    assert content_box(jpeg(grad.astype(np.uint8))).trimmed["top"] == 0


def test_crops_stay_inside_the_content_box():
    cfg = PrepareConfig(resolutions=(256,), crop_jitter=0.0)
    face = (420.0, 120.0, 520.0, 220.0)
    size, content = (940, 480), (150, 0, 790, 480)
    plans, issues = plan_crops(face, size, cfg, content=content)
    assert plans and not issues
    for p in plans:
        x0, y0, x1, y1 = p.box
        assert x0 >= 150 and x1 <= 790 and y0 >= 0 and y1 <= 480
        assert x0 <= face[0] and x1 >= face[2]
    wide_without = [p for p in plan_crops(face, size, cfg)[0] if p.kind == "wide"]
    assert wide_without and wide_without[0].box[2] - wide_without[0].box[0] > 640  # the bars would be in it


def _sig(arr, eyes, content=None):
    (lx, ly), (rx, ry) = eyes
    iod = rx - lx
    lm = np.array([[lx, ly], [rx, ry], [(lx + rx) / 2, ly + 0.6 * iod], [lx, ly + iod], [rx, ry + iod]], np.float32)
    bbox = (lx - 0.6 * iod, ly - 0.6 * iod, rx + 0.6 * iod, ly + 1.5 * iod)
    return region_signature(gray(arr), lm, bbox, content)


def test_copies_of_one_shot_match_and_other_shots_do_not():
    photo = scene(3, (800, 600))
    eyes = ((360.0, 260.0), (440.0, 260.0))
    base = _sig(photo, eyes)
    crop = photo[100:560, 200:650]
    half = np.asarray(Image.fromarray(photo).resize((400, 300), Image.LANCZOS))
    shifted = np.asarray(ImageEnhance.Color(ImageEnhance.Brightness(Image.fromarray(photo)).enhance(1.3)).enhance(0.3))
    mirror = np.asarray(ImageOps.mirror(Image.fromarray(photo)))
    copies = {
        "crop": _sig(jpeg(crop), ((160.0, 160.0), (240.0, 160.0))),
        "resize": _sig(jpeg(half), ((180.0, 130.0), (220.0, 130.0))),
        "recompress": _sig(jpeg(photo, 30), eyes),
        "colour": _sig(shifted, eyes),
        "mirror": _sig(mirror, ((360.0, 260.0), (440.0, 260.0))),
    }
    for name, sig in copies.items():
        score, mirrored, overlap = copy_score(base, sig)
        assert score > 0.95, (name, score)
        assert mirrored == (name == "mirror") and overlap > 0.3
    other = _sig(scene(4, (800, 600)), eyes)
    assert copy_score(base, other)[0] < 0.5
    assert copy_score(base, copies["mirror"], check_mirrored=False)[0] < 0.9


def test_a_tight_crop_shares_too_little_to_be_compared():
    photo = scene(5, (800, 600))
    eyes = ((380.0, 280.0), (420.0, 280.0))  # small face: the frame spans 240 px
    tight = photo[270:320, 370:430]           # only the eyes' strip
    sig = _sig(tight, ((10.0, 10.0), (50.0, 10.0)))
    assert copy_score(_sig(photo, eyes), sig) == (0.0, False, 0.0)
