"""Dataset screening with the dlib backend on real photos from ../shared/faces.

dlib analyses are cached per file content for the whole session (``analyzed``), so each photo is
detected and embedded once; one test runs the full path (screen_dataset calling the embedder).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from persona_ml.dataset.screening import ScreeningConfig, screen_dataset
from persona_ml.errors import ModelMismatchError

pytestmark = pytest.mark.shared_faces


@pytest.fixture(scope="session")
def embedder():
    from persona_ml.errors import BackendUnavailableError, ModelNotFoundError
    from persona_ml.faces.embedder import FaceEmbedder

    try:
        return FaceEmbedder("dlib")
    except (BackendUnavailableError, ModelNotFoundError) as exc:
        pytest.skip(f"dlib backend unavailable: {exc}")


@pytest.fixture(scope="session")
def analyzed(embedder):
    """``analyze(paths)`` -> per-path results, computed once per file content for the session."""
    cache: dict[str, object] = {}

    def run(paths):
        keys = [hashlib.sha256(Path(p).read_bytes()).hexdigest() if Path(p).is_file() else str(p) for p in paths]
        todo = [(k, p) for k, p in zip(keys, paths) if k not in cache]
        if todo:
            for (k, _), res in zip(todo, embedder.analyze([p for _, p in todo])):
                cache[k] = res
        return [cache[k] for k in keys]

    return run


@pytest.fixture(scope="session")
def profile_of(embedder, analyzed):
    from persona_ml.faces.api import build_profile
    from persona_ml.faces.primary import select_primary_face

    def build(paths):
        faces = [select_primary_face(r, r[0].image_size) for r in analyzed(paths)]
        return build_profile(faces)

    return build


def screen(paths, profile, embedder, analyzed, **cfg):
    paths = [str(p) for p in paths]
    return screen_dataset(paths, profile, embedder, config=ScreeningConfig(**cfg), faces=analyzed(paths))


@pytest.fixture(scope="session")
def angelina_case(shared_faces, embedder, analyzed, profile_of, tmp_path_factory):
    """Angelina's photos plus an exact copy, a pixel-identical re-encode, a group photo, a blank
    image, a tiny image and degraded copies (blurred, dark, blown out, shrunk)."""
    people = shared_faces / "people" / "angelina"
    tmp = tmp_path_factory.mktemp("angelina_case")
    shutil.copy(people / "img2.jpg", tmp / "img2_copy.jpg")
    Image.open(people / "img4.jpg").save(tmp / "img4_resaved.png")  # same pixels, other bytes
    Image.new("RGB", (20, 20), (120, 110, 100)).save(tmp / "tiny.png")
    src = Image.open(people / "img6.jpg").convert("RGB")
    src.filter(ImageFilter.GaussianBlur(8)).save(tmp / "blurred.png")
    ImageEnhance.Brightness(src).enhance(0.22).save(tmp / "dark.png")
    ImageEnhance.Brightness(src).enhance(2.5).save(tmp / "blown.png")
    src.resize((src.width // 10, src.height // 10), Image.LANCZOS).save(tmp / "shrunk.png")
    names = ["img1.jpg", "img2.jpg", "img4.jpg", "img6.jpg", "img7.jpg", "img10.jpg", "img11.jpg",
             "img11_reflection.jpg"]
    paths = [people / n for n in names] + [
        tmp / "img2_copy.jpg", tmp / "img4_resaved.png", shared_faces / "groups" / "couple.jpg",
        shared_faces / "nonfaces" / "white.png", tmp / "tiny.png", tmp / "blurred.png", tmp / "dark.png",
        tmp / "blown.png", tmp / "shrunk.png", shared_faces / "people" / "deepface_p08" / "img8.jpg"]
    profile = profile_of([people / n for n in ("img1.jpg", "img2.jpg", "img4.jpg", "img5.jpg")])
    return paths, profile


def test_intruder_rejected_with_identity_code(shared_faces, embedder, analyzed, profile_of):
    p08 = shared_faces / "people" / "deepface_p08"
    own = sorted(p08.glob("img*.jpg"))
    intruder = shared_faces / "people" / "angelina" / "img1.jpg"
    profile = profile_of(own[:3])
    report = screen(own + [intruder], profile, embedder, analyzed)
    verdict = report.by_source(str(intruder))
    assert not verdict.accepted and verdict.code == "identity_mismatch"
    assert "another person" in verdict.reason
    assert verdict.metrics["identity_cosine"] < report.thresholds["identity_min_cosine"]
    own_verdicts = [report.by_source(str(p)) for p in own]
    assert all(v.accepted for v in own_verdicts), [(v.source, v.code) for v in own_verdicts if not v.accepted]
    assert min(v.metrics["identity_cosine"] for v in own_verdicts) > verdict.metrics["identity_cosine"] + 0.03


def test_every_bad_photo_rejected_with_its_code(angelina_case, embedder, analyzed):
    paths, profile = angelina_case
    report = screen(paths, profile, embedder, analyzed)
    codes = {Path(s.source).name: s.code for s in report.images}
    assert codes == {
        "img1.jpg": None, "img2.jpg": None, "img4.jpg": None, "img6.jpg": None, "img7.jpg": None,
        "img10.jpg": None, "img11_reflection.jpg": None,
        "img11.jpg": "near_duplicate",            # mirrored copy of img11_reflection (the larger one is kept)
        "img2_copy.jpg": "duplicate",             # same bytes
        "img4_resaved.png": "duplicate",          # same decoded pixels
        "couple.jpg": "multiple_faces",           # group photo: never trained on
        "white.png": "no_face",
        "tiny.png": "image_too_small",
        "blurred.png": "blurry",
        "dark.png": "underexposed",
        "blown.png": "overexposed",
        "shrunk.png": "face_too_small",
        "img8.jpg": "identity_mismatch",
    }
    near = report.by_source("img11.jpg")
    assert near.duplicate_of.endswith("img11_reflection.jpg")
    assert near.metrics["near_duplicate"]["mirrored"] and "mirrored copy" in near.reason
    assert report.by_source("img2_copy.jpg").duplicate_of.endswith("img2.jpg")
    assert "same pixels" in report.by_source("img4_resaved.png").reason
    for s in report.rejected:
        assert s.code and s.reason
    # the rules count accepted photos (7), not uploaded ones (18)
    assert [v.code for v in report.rule_violations] == ["too_few_images"]
    assert report.rule_violations[0].actual == 7


def test_report_json_summary_and_coverage(angelina_case, embedder, analyzed):
    paths, profile = angelina_case
    report = screen(paths, profile, embedder, analyzed)
    data = json.loads(report.to_json())
    assert data["num_images"] == len(paths) and data["num_accepted"] == 7
    assert data["rejected_by_code"]["duplicate"] == 2
    assert all(r["code"] and r["reason"] for r in data["rejected"])
    assert data["coverage"]["framing"]["closeup"] == 7
    assert any("half-body" in a for a in data["coverage"]["advice"])  # one-sided: all close-ups
    assert data["profile_fingerprint"] == profile.fingerprint
    text = report.summary()
    assert "7 of 18 photos accepted" in text and "[identity_mismatch]" in text and "too_few_images" in text


def test_near_duplicate_override_keeps_but_flags(angelina_case, embedder, analyzed):
    paths, profile = angelina_case
    report = screen(paths, profile, embedder, analyzed, allow_near_duplicates=True)
    kept = report.by_source("img11.jpg")
    assert kept.accepted and [w["code"] for w in kept.warnings] == ["near_duplicate"]
    assert report.overrides == ("allow_near_duplicates",)
    assert "overrides in force: allow_near_duplicates" in report.summary()
    assert json.loads(report.to_json())["overrides"] == ["allow_near_duplicates"]
    assert report.by_source("img2_copy.jpg").code == "duplicate"  # exact copies are never kept


def test_full_path_from_a_folder(shared_faces, embedder, tmp_path, angelina_case, analyzed):
    """screen_dataset decoding and embedding itself gives the same verdicts as the cached path."""
    _, profile = angelina_case
    people = shared_faces / "people" / "angelina"
    for name in ("img1.jpg", "img11.jpg", "img11_reflection.jpg"):
        shutil.copy(people / name, tmp_path / name)
    shutil.copy(shared_faces / "groups" / "couple.jpg", tmp_path / "couple.jpg")
    report = screen_dataset(tmp_path, profile, embedder, batch_size=2)
    assert {Path(s.source).name: s.code for s in report.images} == {
        "couple.jpg": "multiple_faces", "img1.jpg": None, "img11.jpg": "near_duplicate",
        "img11_reflection.jpg": None}
    assert report.timings["detect_embed"] > 0


def test_profile_from_another_model_is_refused(embedder):
    from persona_ml.faces.profile import FaceProfile
    from persona_ml.faces.types import FaceObservation, ModelProvenance

    other = ModelProvenance(backend="insightface", model_name="buffalo_l", files={"x.onnx": "1" * 64}, dim=3,
                            license="non-commercial")
    obs = FaceObservation(bbox=(0, 0, 10, 10), landmarks=np.zeros((5, 2), np.float32), det_score=1.0,
                          face_size=10.0, sharpness=100.0, pose=None, embedding=np.array([1, 0, 0], np.float32),
                          image_sha256="a" * 64, image_size=(10, 10), provenance=other)
    with pytest.raises(ModelMismatchError):
        screen_dataset([], FaceProfile.build([obs]), embedder)
