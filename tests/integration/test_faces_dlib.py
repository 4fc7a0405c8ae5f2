"""The dlib face backend end to end: real photos, identities, profiles and the bad-input list.

Photos from the insightface wheel run everywhere; ../shared/faces tests skip where it is absent.
Embeddings of ../shared/faces are computed once per session (about 12 s on 2 cores).
"""

from __future__ import annotations

import io
import itertools
import struct
import zlib
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

import persona_ml
from persona_ml.errors import BackendUnavailableError, FaceError, ImageError, InputError, ModelNotFoundError
from persona_ml.faces.profile import FaceProfile

pytest.importorskip("dlib", reason="the dlib backend needs dlib-bin (pip install 'persona-ml[dlib]')")


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-sum ROC AUC with averaged ties (numpy only)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average tied ranks
        tied = scores == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_roc_auc_helper_is_right():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)


@pytest.fixture(scope="session")
def embedder():
    return persona_ml.FaceEmbedder("dlib")


@pytest.fixture(scope="session")
def shared_people(shared_faces, faces_manifest, embedder):
    """path -> (row, largest face or None) for every photo under people/."""
    rows = [r for r in faces_manifest if r["path"].startswith("people/")]
    results = embedder.analyze([shared_faces / r["path"] for r in rows])
    return {r["path"]: (r, None if isinstance(res, Exception) or not res else res[0])
            for r, res in zip(rows, results)}


def _labelled(shared_people):
    return {p: (r, f) for p, (r, f) in shared_people.items()
            if f is not None and r["identity"] != "unknown" and not r["near_duplicate"]}


def _pairs(shared_people):
    same, diff = [], []
    for (_pa, (ra, fa)), (_pb, (rb, fb)) in itertools.combinations(sorted(_labelled(shared_people).items()), 2):
        (same if ra["identity"] == rb["identity"] else diff).append(fa.similarity(fb))
    return np.asarray(same), np.asarray(diff)


def _tom(insightface_images, side=336) -> Image.Image:
    """The wheel's one-face photo (a 112 px aligned crop), padded and enlarged like a portrait."""
    face = Image.open(insightface_images / "Tom_Hanks_54745.png").convert("RGB")
    canvas = Image.new("RGB", (160, 200), tuple(int(v) for v in np.asarray(face)[0, 0]))
    canvas.paste(face, (24, 44))
    return canvas.resize((side * 160 // 200, side), Image.BICUBIC)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


# ---- real identities (../shared/faces) -----------------------------------------------------

def test_every_labelled_photo_yields_a_face(shared_people):
    missed = [p for p, (_, f) in shared_people.items() if f is None]
    assert len(missed) <= 0.05 * len(shared_people), missed


def test_same_person_pairs_score_above_different_person_pairs(shared_people):
    same, diff = _pairs(shared_people)
    assert len(same) > 100 and len(diff) > 1000
    assert np.percentile(same, 10) > np.percentile(diff, 90)
    assert same.mean() - diff.mean() > 0.08


def test_verification_roc_auc_is_at_least_0_99(shared_people):
    same, diff = _pairs(shared_people)
    auc = roc_auc(np.concatenate([same, diff]), np.r_[np.ones(len(same)), np.zeros(len(diff))])
    assert auc >= 0.99, auc


def test_configured_same_person_threshold_fits_the_data(shared_people, embedder):
    same, diff = _pairs(shared_people)
    cut = embedder.thresholds.same_person_min_cosine
    assert (same < cut).mean() < 0.05 and (diff >= cut).mean() < 0.05


def test_profile_flags_another_persons_photo(shared_people):
    labelled = _labelled(shared_people)
    by_identity = defaultdict(list)
    for _p, (r, f) in sorted(labelled.items()):
        by_identity[r["identity"]].append(f)
    refs = by_identity["angelina"]
    assert len(refs) >= 5
    for intruder_id in ("deepface_p03", "sheldon", "deepface_p13"):
        intruder = by_identity[intruder_id][0]
        profile = persona_ml.build_profile(refs[:3] + [intruder] + refs[3:])
        assert profile.outliers == (3,), (intruder_id, profile.reference_scores)
        assert profile.similarity(intruder) < min(profile.similarity(f) for f in refs)


def test_near_duplicates_score_above_the_duplicate_threshold(shared_people, embedder):
    for path, (row, face) in shared_people.items():
        if row["near_duplicate"] and face is not None and row["identity"] != "unknown":
            original = shared_people[path.replace("_reflection", "")][1]
            assert face.similarity(original) >= embedder.thresholds.near_duplicate_min_cosine


def test_group_photos_are_refused_as_references(shared_faces, embedder):
    for name in ("bbt1.jpg", "bbt3.jpg", "couple.jpg"):
        with pytest.raises(FaceError) as info:
            persona_ml.embed_reference(shared_faces / "groups" / name, embedder)
        assert info.value.code == "multiple_faces" and info.value.details["count"] >= 2


def test_downscaled_detection_matches_full_resolution(shared_faces, embedder):
    path = shared_faces / "people" / "angelina" / "img4.jpg"  # 2500 x 1728
    fast = embedder.analyze_one(path)[0]
    full = persona_ml.FaceEmbedder("dlib", detect_max_side=0).analyze_one(path)[0]
    assert fast.extra["detect_pass"] == "downscaled" and full.extra["detect_pass"] == "full"
    ax0, ay0, ax1, ay1 = fast.bbox
    bx0, by0, bx1, by1 = full.bbox
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    assert inter / (fast.area + full.area - inter) > 0.7
    assert fast.similarity(full) > 0.97


def test_exif_rotated_shared_photo(shared_faces, embedder, tmp_path):
    upright = Image.open(shared_faces / "people" / "angelina" / "img5.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90 CCW to display": the pixels are stored turned clockwise
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg(upright.rotate(-90, expand=True), exif=exif.tobytes()))
    face = embedder.embed_primary(path)
    assert face.image_size == upright.size
    assert face.similarity(embedder.embed_primary(np.asarray(upright))) > 0.97


# ---- fresh-clone photos (insightface wheel) ------------------------------------------------

def test_observation_fields(embedder, insightface_images):
    face = embedder.embed_primary(_tom(insightface_images))
    assert face.embedding.shape == (128,) and face.embedding.dtype == np.float32
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
    le, re, nose, lm, rm = face.landmarks
    assert le[0] < nose[0] < re[0] and lm[0] < rm[0]  # image-left to image-right
    assert max(le[1], re[1]) < nose[1] < min(lm[1], rm[1])  # eyes above nose above mouth
    x0, y0, x1, y1 = face.bbox
    assert all(x0 <= p[0] <= x1 and y0 <= p[1] <= y1 for p in (le, re, nose))
    assert abs(face.pose[0]) < 20 and abs(face.pose[2]) < 10  # a frontal, level face
    assert face.sharpness > embedder.thresholds.min_sharpness and face.det_score > 0
    prov = face.provenance
    assert prov.backend == "dlib" and prov.dim == 128 and "CC0" in prov.license and prov.commercial_use
    assert set(prov.files) == {"dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"}
    assert all(len(h) == 64 for h in prov.files.values())


def test_group_photo_is_multiple_faces(embedder, insightface_images):
    faces = embedder.analyze_one(insightface_images / "t1.jpg")
    assert len(faces) >= 4
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    with pytest.raises(FaceError) as info:
        persona_ml.embed_reference(insightface_images / "t1.jpg", embedder)
    assert info.value.code == "multiple_faces"
    assert info.value.details["count"] == len(info.value.details["sizes"]) >= 4


def test_no_face_is_coded(embedder, shared_faces_or_none, tmp_path):
    blank = np.full((240, 320, 3), 235, np.uint8)
    blank[100:140, 50:270] = 40  # a dark bar: structure, but no face
    sources = [blank]
    if shared_faces_or_none is not None:
        sources.append(shared_faces_or_none / "nonfaces" / "white.png")
    for src in sources:
        assert embedder.analyze_one(src) == []
        with pytest.raises(FaceError) as info:
            embedder.embed_primary(src)
        assert info.value.code == "no_face"


@pytest.fixture
def shared_faces_or_none(request):
    try:
        return request.getfixturevalue("shared_faces")
    except pytest.skip.Exception:
        return None


def test_exif_rotated_photo_is_found_upright(embedder, insightface_images, tmp_path):
    upright = _tom(insightface_images)
    stored = upright.rotate(90, expand=True)  # pixels turned counter-clockwise...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...and tagged "rotate 90 CW to display"
    tagged = tmp_path / "rotated.jpg"
    tagged.write_bytes(_jpeg(stored, exif=exif.tobytes()))
    untagged = _jpeg(stored)
    # HOG is an upright frontal detector: a sideways face is missed by it ...
    hog_only = persona_ml.FaceEmbedder("dlib", cnn_fallback=False)
    assert hog_only.analyze_one(untagged) == []
    # ... and found by the CNN second pass, which says so
    (sideways,) = embedder.analyze_one(untagged)
    assert sideways.extra["detector"] == "cnn" and sideways.extra["detect_pass"] == "cnn"
    face = embedder.embed_primary(tagged)
    assert face.image_size == upright.size
    assert face.similarity(embedder.embed_primary(np.asarray(upright))) > 0.97


def test_converted_modes_still_find_the_face(embedder, insightface_images):
    tom = _tom(insightface_images)
    reference = embedder.embed_primary(tom)
    buf = io.BytesIO()
    tom.convert("CMYK").save(buf, "JPEG", quality=95)
    cmyk = embedder.embed_primary(buf.getvalue())
    grey16 = (np.asarray(tom.convert("L"), dtype=np.uint16) * 257)
    buf16 = io.BytesIO()
    Image.fromarray(grey16).save(buf16, "PNG")
    grey = embedder.embed_primary(buf16.getvalue())
    pal = io.BytesIO()
    tom.convert("P", palette=Image.ADAPTIVE, colors=255).save(pal, "PNG", transparency=255)
    palette = embedder.embed_primary(pal.getvalue())
    assert reference.similarity(cmyk) > 0.97
    assert reference.similarity(grey) > 0.9
    assert reference.similarity(palette) > 0.95


def test_one_bad_image_never_stops_the_others(embedder, insightface_images, tmp_path):
    good = insightface_images / "Tom_Hanks_54745.png"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    jpeg = _jpeg(_tom(insightface_images))
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF))
    tiny = np.zeros((10, 10, 3), np.uint8)
    frames = [_tom(insightface_images).resize((120, 150)), Image.new("RGB", (120, 150))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    results = embedder.analyze([empty, text, jpeg[: len(jpeg) // 2], bomb, tiny, gif.getvalue(), good])
    codes = [r.code if isinstance(r, ImageError) else None for r in results]
    assert codes == ["image_empty", "image_not_an_image", "image_truncated", "image_too_large",
                     "image_too_small", "image_format_not_allowed", None]
    assert len(results[-1]) == 1
    with pytest.raises(ImageError):
        embedder.analyze_one(empty)
    gif_ok = persona_ml.FaceEmbedder(embedder.impl, limits=persona_ml.ImageLimits(allowed_formats=("GIF", "PNG")))
    assert len(gif_ok.analyze_one(gif.getvalue())) == 1  # first frame: the face


def test_profile_with_the_embedder_round_trips(embedder, insightface_images, tmp_path):
    tom = _tom(insightface_images)
    variants = [tom, tom.transpose(Image.FLIP_LEFT_RIGHT), tom.resize((200, 250)),
                Image.eval(tom, lambda v: min(255, int(v * 1.15)))]
    refs = [embedder.embed_primary(np.asarray(v)) for v in variants]
    profile = persona_ml.build_profile(refs)
    assert profile.outliers == ()
    base = profile.save(tmp_path / "tom")
    loaded = persona_ml.load_profile(base)
    assert loaded.fingerprint == profile.fingerprint
    assert loaded.similarity(refs[0]) == pytest.approx(profile.similarity(refs[0]), abs=1e-6)
    assert isinstance(loaded, FaceProfile)


def test_backend_errors_are_actionable(tmp_path):
    with pytest.raises(BackendUnavailableError) as info:
        persona_ml.FaceEmbedder("dlib", device="cuda:0")
    assert info.value.details["value"] == "cuda:0"
    with pytest.raises(ModelNotFoundError) as info:
        persona_ml.FaceEmbedder("dlib", model_dir=tmp_path)
    assert str(tmp_path / "shape_predictor_5_face_landmarks.dat") in info.value.details["searched"]
    with pytest.raises(InputError):
        persona_ml.FaceEmbedder("facenet")
    with pytest.raises(InputError):
        persona_ml.FaceEmbedder("dlib", detect_max_side=10)


@pytest.mark.parametrize("backend, options, field", [
    ("dlib", {"detect_max_sid": 400}, "detect_max_sid"),        # misspelt: was a bare TypeError
    ("insightface", {"det_sise": 320}, "det_sise"),             # refused before any pack is looked for
    ("dlib", {"padding": "wide"}, "padding"),                   # was a bare ValueError from float()
    ("dlib", {"adjust_threshold": "low"}, "adjust_threshold"),
    ("dlib", {"limits": {"max_pixels": 5}}, "limits"),          # was kept and failed at the first image
])
def test_bad_embedder_options_are_coded(backend, options, field):
    with pytest.raises(InputError) as info:
        persona_ml.FaceEmbedder(backend, **options)
    assert info.value.details["field"] == field


def test_face_too_small_for_a_reference(embedder, insightface_images):
    import dataclasses

    small = _tom(insightface_images, side=150)
    (face,) = embedder.analyze_one(small)
    strict = persona_ml.FaceEmbedder(embedder.impl)  # same loaded backend, stricter thresholds
    strict.thresholds = dataclasses.replace(embedder.thresholds, min_face_size_px=int(face.face_size) + 1)
    with pytest.raises(FaceError) as info:
        strict.embed_primary(small)
    assert info.value.code == "face_too_small" and info.value.details["limit"] == int(face.face_size) + 1
    assert embedder.embed_primary(small).face_size == face.face_size


def test_second_pass_search_skips_a_finer_pass_within_half_a_pyramid_step_and_merges_hints(embedder):
    # what search_faces decides before any detector output matters: which passes run and how many
    # CNN regions a set of HOG hints costs
    from persona_ml.images import load_image

    rng = np.random.default_rng(0)
    img = load_image((100 + 20 * rng.standard_normal((480, 640, 3))).clip(0, 255).astype(np.uint8))
    backend = embedder.impl
    # the first pass saw faces down to 80 / 0.5 = 160 px; 150 px asked: within half a step (1.095x)
    near = backend.search_faces(img, [], 150.0, cnn="off", first_pass_scale=0.5)
    assert "hog_fine" not in near["passes"]
    # 120 px asked: 1.33x finer than the first pass saw, so a finer pass runs
    far = backend.search_faces(img, [], 120.0, cnn="off", first_pass_scale=0.5)
    assert far["passes"]["hog_fine"]["min_face_px"] <= 120.0 * 1.01
    # two hints of one candidate (seen by both HOG passes) are one CNN region, a separate one another
    hints = [(100, 100, 260, 260), (105, 98, 262, 255), (400, 200, 560, 360)]
    res = backend.search_faces(img, [], 150.0, cnn="auto", hints=hints, first_pass_scale=0.5)
    assert res["hints"] == 2 and "cnn" in res["passes"]
