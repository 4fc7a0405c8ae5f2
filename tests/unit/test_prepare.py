"""Dataset preparation on synthetic photos and synthetic face observations (no face model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from persona_ml.dataset.captions import build_caption, strip_face_traits
from persona_ml.dataset.crops import contains, make_buckets
from persona_ml.dataset.manifest import load_prepared
from persona_ml.dataset.masks import face_mask
from persona_ml.dataset.prepare import PrepareConfig, PrepareInput, plan_crops, prepare_dataset
from persona_ml.errors import ConfigError, InputError
from persona_ml.faces.types import FaceObservation, ModelProvenance
from persona_ml.images import load_image

PROV = ModelProvenance(backend="dlib", model_name="synthetic", files={"w.dat": "0" * 64}, dim=4, license="test")


def photo(path, size, seed=0):
    """A noisy synthetic photo (so resizing and PNG bytes are non-trivial) saved as JPEG."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    arr = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)
    return path


def observe(path, bbox, yaw=0.0):
    img = load_image(path)
    x0, y0, x1, y1 = bbox
    return FaceObservation(bbox=tuple(float(v) for v in bbox), landmarks=np.zeros((5, 2), np.float32),
                           det_score=1.0, face_size=float(min(x1 - x0, y1 - y0)), sharpness=200.0,
                           pose=(yaw, 0.0, 0.0), embedding=np.array([1, 0, 0, 0], np.float32),
                           image_sha256=img.sha256, image_size=img.size, provenance=PROV)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    specs = {  # name: (size, face box)
        "halfbody.jpg": ((1600, 2000), (700, 350, 950, 650)),      # room for a close-up and a wide crop
        "headshot.jpg": ((900, 1000), (200, 180, 700, 760)),        # face fills the frame: one crop
        "small.jpg": ((420, 420), (130, 100, 290, 300)),            # below 512 / 1.25 = 410? no: 420 fits 512
        "tiny.jpg": ((300, 300), (80, 70, 220, 230)),               # too small for any bucket
        "edge.jpg": ((1200, 900), (-20, 200, 180, 460)),            # face box past the left edge
    }
    out = []
    for i, (name, (size, box)) in enumerate(specs.items()):
        p = photo(d / name, size, seed=i)
        out.append(PrepareInput(image=p, face=observe(p, box, yaw=35.0 if name == "edge.jpg" else 0.0)))
    (d / "halfbody.txt").write_text("a woman with green eyes, standing in a park, autumn light\n")
    return out


@pytest.fixture(scope="module")
def prepared(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "set"
    return prepare_dataset(photos, out, trigger="ohwx", seed=0)


def test_buckets_are_multiples_of_16_near_the_resolution():
    for res in (512, 768, 1024):
        for b in make_buckets(res, PrepareConfig().aspect_ratios):
            assert b.width % 16 == 0 and b.height % 16 == 0
            assert abs(b.width * b.height / res**2 - 1) < 0.06
            assert 0.6 < b.aspect < 1.6


def test_crops_contain_the_face_box(prepared, photos):
    by_sha = {inp.face.image_sha256: inp.face for inp in photos}
    assert prepared.items
    for it in prepared.items:
        face = by_sha[it.source_sha256]
        w, h = face.image_size
        clipped = (max(0, face.bbox[0]), max(0, face.bbox[1]), min(w, face.bbox[2]), min(h, face.bbox[3]))
        assert contains(it.crop, clipped), (it.id, it.crop, clipped)
        x0, y0, x1, y1 = it.face_bbox
        assert 0 <= x0 < x1 <= it.width and 0 <= y0 < y1 <= it.height
        img = Image.open(prepared.root / it.image)
        assert img.size == (it.width, it.height) and img.mode == "RGB"
        assert it.width % 16 == 0 and it.height % 16 == 0


def test_closeup_and_wide_from_a_large_photo_one_crop_from_a_headshot(prepared):
    kinds = {}
    for it in prepared.items:
        kinds.setdefault(it.source, []).append(it.kind)
    assert sorted(kinds["halfbody.jpg"]) == ["closeup", "wide"]
    assert len(kinds["headshot.jpg"]) == 1
    wide = next(it for it in prepared.items if it.source == "halfbody.jpg" and it.kind == "wide")
    close = next(it for it in prepared.items if it.source == "halfbody.jpg" and it.kind == "closeup")
    area = lambda c: (c[2] - c[0]) * (c[3] - c[1])  # noqa: E731
    assert area(wide.crop) >= PrepareConfig().wide_min_area_ratio * area(close.crop)
    assert max(wide.width, wide.height) >= 1024  # large enough for the top bucket


def test_buckets_respect_the_no_upscale_limit(prepared):
    for it in prepared.items:
        cw, ch = it.crop[2] - it.crop[0], it.crop[3] - it.crop[1]
        assert it.width / cw <= 1.25 + 1e-6 and it.height / ch <= 1.25 + 1e-6, (it.id, it.crop)
    small = [it for it in prepared.items if it.source == "small.jpg"]
    assert small and all(max(it.width, it.height) <= 528 for it in small)  # a 512 bucket, not 768
    assert not [it for it in prepared.items if it.source == "tiny.jpg"]
    issue = next(i for i in prepared.issues if i.source.endswith("tiny.jpg"))
    assert issue.code == "too_small_for_bucket" and "1.25" in issue.message


def test_stricter_upscale_limit_drops_more():
    cfg = PrepareConfig(max_upscale=1.0)
    plans, issues = plan_crops((130, 100, 290, 300), (420, 420), cfg)
    assert plans == [] and issues[0].code == "too_small_for_bucket"
    plans, _ = plan_crops((130, 100, 290, 300), (420, 420), PrepareConfig(max_upscale=1.25))
    assert plans and plans[0].upscale <= 1.25


def test_masks_cover_the_face_and_fall_off_smoothly(prepared):
    for it in prepared.items:
        m = np.asarray(Image.open(prepared.root / it.mask))
        assert m.shape == (it.height, it.width) and m.dtype == np.uint8
        x0, y0, x1, y1 = it.face_bbox
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        assert m[cy, cx] == 255
        # the face's inscribed ellipse (eyes to mouth) is fully on
        for fx, fy in [(0.25, 0.5), (0.75, 0.5), (0.5, 0.2), (0.5, 0.85)]:
            px = min(it.width - 1, int(x0 + fx * (x1 - x0)))
            py = min(it.height - 1, int(y0 + fy * (y1 - y0)))
            assert m[py, px] >= 230, (it.id, fx, fy, m[py, px])


def test_mask_falloff_is_monotonic_and_has_no_hard_edge():
    m = face_mask((400, 400), (150, 150, 250, 270)).astype(int)
    row = m[200, 200:]
    assert row[0] == 255 and row[-1] == 0
    assert np.all(np.diff(row) <= 0)
    assert np.abs(np.diff(m, axis=1)).max() <= 40 and np.abs(np.diff(m, axis=0)).max() <= 40
    mid = row[(row > 0) & (row < 255)]
    assert len(mid) >= 15  # a soft band, not a step


def test_captions_trigger_scene_and_sidecar(prepared):
    for it in prepared.items:
        assert it.caption.startswith("ohwx, ")
        assert (prepared.root / it.image).with_suffix(".txt").read_text().strip() == it.caption
    side = [it for it in prepared.items if it.source == "halfbody.jpg"]
    assert all("standing in a park" in it.caption for it in side)
    assert all("eyes" not in it.caption for it in prepared.items)
    edge = next(it for it in prepared.items if it.source == "edge.jpg")
    assert "three-quarter view" in edge.caption


def test_caption_helpers():
    assert strip_face_traits("smiling, blue eyes, freckled skin, on a boat") == ("smiling, on a boat",
                                                                                ["blue eyes", "freckled skin"])
    assert build_caption("ohwx", "ohwx man on a bike")[0] == "ohwx man on a bike"
    assert build_caption("ohwx", "")[0] == "ohwx"


def test_manifest_reads_back_and_records_settings(prepared):
    ds = load_prepared(prepared.root)
    assert ds.info.dataset_hash == prepared.info.dataset_hash
    assert ds.info.trigger == "ohwx" and ds.info.caption_dropout == 0.05
    assert ds.info.resolutions == (512, 768, 1024)
    assert ds.info.num_source_images == 4 and ds.info.num_items == len(ds.items) == len(prepared.items)
    info = json.loads((prepared.root / "dataset.json").read_text())
    assert info["extra"]["seed"] == 0 and info["extra"]["max_upscale"] == 1.25
    assert [i["code"] for i in info["extra"]["issues"]] == ["too_small_for_bucket"]
    assert [v.code for v in prepared.rule_violations] == ["too_few_images"]  # 4 photos < 10
    assert not prepared.ok


def test_rerun_gives_identical_bytes(photos, prepared, tmp_path):
    again = prepare_dataset(photos, tmp_path / "again", trigger="ohwx", seed=0)
    first = sorted(p.relative_to(prepared.root) for p in prepared.root.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    assert first == second and len(first) > 10
    for rel in first:
        assert (prepared.root / rel).read_bytes() == (again.root / rel).read_bytes(), rel
    other = prepare_dataset(photos, tmp_path / "seed1", trigger="ohwx", seed=1)
    assert [it.crop for it in other.items] != [it.crop for it in prepared.items]


def test_crop_never_shows_another_persons_face(tmp_path):
    p = photo(tmp_path / "two.jpg", (1600, 1200))
    inp = PrepareInput(image=p, face=observe(p, (500, 300, 700, 550)), other_faces=((900, 320, 1080, 540),))
    res = prepare_dataset([inp], tmp_path / "out", trigger="ohwx")
    assert [it.kind for it in res.items] == ["closeup"]
    assert [i.code for i in res.issues] == ["crop_contains_other_face"]


def test_refuses_bad_trigger_and_unrelated_out_dir(photos, tmp_path):
    with pytest.raises(InputError) as exc:
        prepare_dataset(photos[:1], tmp_path / "o", trigger="a, b")
    assert exc.value.code == "invalid_trigger"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(InputError) as exc:
        prepare_dataset(photos[:1], busy, trigger="ohwx")
    assert exc.value.code == "out_dir_not_empty" and (busy / "notes.txt").exists()
    # were a bare ValueError from int("x") / an AttributeError on a dict config
    for kwargs, field in (({"seed": "x"}, "seed"), ({"config": {"max_upscale": 2}}, "config")):
        with pytest.raises(InputError) as exc:
            prepare_dataset(photos[:1], tmp_path / "o", trigger="ohwx", **kwargs)
        assert exc.value.details["field"] == field
    assert not (tmp_path / "o").exists()


def test_dataset_settings_yaml_is_strict(tmp_path):
    from persona_ml.dataset.settings import load_dataset_config

    path = tmp_path / "dataset.yaml"
    path.write_text("screening:\n  allow_near_duplicates: true\nprepare:\n  max_upscale: 1.5\n"
                    "  resolutions: [512, 1024]\n  mask: {feather: 0.3}\n")
    cfg = load_dataset_config(path, ["prepare.caption_dropout=0.1"])
    assert cfg.screening.allow_near_duplicates and cfg.prepare.max_upscale == 1.5
    assert cfg.prepare.resolutions == (512, 1024) and cfg.prepare.mask.feather == 0.3
    assert cfg.prepare.caption_dropout == 0.1
    path.write_text("prepare:\n  max_upscle: 1.5\n")
    with pytest.raises(ConfigError) as exc:
        load_dataset_config(path)
    assert "prepare.max_upscle" in str(exc.value)
    with pytest.raises(ConfigError):
        load_dataset_config({"prepare": {"resolutions": [500]}})  # not a multiple of 16


@pytest.mark.parametrize("override, field", [
    ("prepare.caption_template=photo {", "caption_template"),   # crashed mid-write with a bare ValueError
    ("prepare.caption_template='{scene}'", "caption_template"),  # KeyError mid-write
    ("prepare.closeup_face_y=5", "closeup_face_y"),
    ("prepare.max_other_face_overlap=-1", "max_other_face_overlap"),
    ("screening.identity_min_cosine=3", "identity_min_cosine"),  # would reject every photo as another person
    ("screening.min_face_size_px=-3", "min_face_size_px"),
    ("screening.max_dark_fraction=2", "max_dark_fraction"),
])
def test_out_of_range_settings_are_refused_when_loaded(override, field):
    from persona_ml.dataset.settings import load_dataset_config

    with pytest.raises(ConfigError) as exc:
        load_dataset_config(None, [override])
    assert field in str(exc.value)
