"""Dataset screening: with the dlib backend on real photos from ../shared/faces, and with a
scripted face backend on synthetic photos (runs on a fresh clone without ../shared).

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


@pytest.mark.shared_faces
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


@pytest.mark.shared_faces
def test_every_bad_photo_rejected_with_its_code(angelina_case, embedder, analyzed):
    paths, profile = angelina_case
    report = screen(paths, profile, embedder, analyzed)
    codes = {Path(s.source).name: s.code for s in report.images}
    assert codes == {
        "img1.jpg": None, "img2.jpg": None, "img4.jpg": None, "img6.jpg": None, "img7.jpg": None,
        "img10.jpg": None, "img11.jpg": None,
        "img11_reflection.jpg": "near_duplicate",  # a mirrored ~1.95x enlargement of img11: more pixels, no more detail
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
    near = report.by_source("img11_reflection.jpg")
    assert near.duplicate_of.endswith("img11.jpg")
    assert near.metrics["near_duplicate"]["mirrored"] and "mirrored copy" in near.reason
    assert near.metrics["enlarged_copy"]["of"].endswith("img11.jpg") and "enlarged" in near.reason
    assert report.by_source("img2_copy.jpg").duplicate_of.endswith("img2.jpg")
    assert "same pixels" in report.by_source("img4_resaved.png").reason
    for s in report.rejected:
        assert s.code and s.reason
    # the rules count accepted photos (7), not uploaded ones (18)
    assert [v.code for v in report.rule_violations] == ["too_few_images"]
    assert report.rule_violations[0].actual == 7


@pytest.mark.shared_faces
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


@pytest.mark.shared_faces
def test_near_duplicate_override_keeps_but_flags(angelina_case, embedder, analyzed):
    paths, profile = angelina_case
    report = screen(paths, profile, embedder, analyzed, allow_near_duplicates=True)
    kept = report.by_source("img11_reflection.jpg")
    assert kept.accepted and [w["code"] for w in kept.warnings] == ["near_duplicate"]
    assert report.overrides == ("allow_near_duplicates",)
    assert "overrides in force: allow_near_duplicates" in report.summary()
    assert json.loads(report.to_json())["overrides"] == ["allow_near_duplicates"]
    assert report.by_source("img2_copy.jpg").code == "duplicate"  # exact copies are never kept


@pytest.mark.shared_faces
def test_full_path_from_a_folder(shared_faces, embedder, tmp_path, angelina_case, analyzed):
    """screen_dataset decoding and embedding itself gives the same verdicts as the cached path."""
    _, profile = angelina_case
    people = shared_faces / "people" / "angelina"
    for name in ("img1.jpg", "img11.jpg", "img11_reflection.jpg"):
        shutil.copy(people / name, tmp_path / name)
    shutil.copy(shared_faces / "groups" / "couple.jpg", tmp_path / "couple.jpg")
    report = screen_dataset(tmp_path, profile, embedder, batch_size=2)
    assert {Path(s.source).name: s.code for s in report.images} == {
        "couple.jpg": "multiple_faces", "img1.jpg": None, "img11.jpg": None,
        "img11_reflection.jpg": "near_duplicate"}
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


# --- scripted backend on synthetic photos (no ../shared, no dlib) ----------------------------------

DIM = 8


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def axis(k, scale=1.0):
    v = np.zeros(DIM, np.float32)
    v[k] = scale
    return v


CHARACTER = [unit(axis(0) + axis(k, 0.3)) for k in range(1, 8)]  # pairwise ~0.92, centroid ~0.97


class ScriptedBackend:
    """A FaceBackend returning scripted faces per image content (sha256)."""

    name = "dlib"

    def __init__(self):
        from persona_ml.faces.types import ModelProvenance

        self.provenance = ModelProvenance(backend="dlib", model_name="scripted", files={"w": "0" * 64}, dim=DIM,
                                          license="test")
        self.script: dict[str, list[dict]] = {}

    def analyze_images(self, images):
        from persona_ml.faces.types import FaceObservation

        out = []
        for img in images:
            faces = []
            for f in self.script.get(img.sha256, []):
                x0, y0, x1, y1 = f["bbox"]
                faces.append(FaceObservation(
                    bbox=f["bbox"], landmarks=np.zeros((5, 2), np.float32), det_score=1.0,
                    face_size=float(min(x1 - x0, y1 - y0)), sharpness=f.get("sharpness", 150.0),
                    pose=(f.get("yaw", 0.0), 0.0, 0.0), embedding=f["emb"], image_sha256=img.sha256,
                    image_size=img.size, provenance=self.provenance))
            out.append(faces)
        return out


def pattern(seed, size=(800, 1000), scale=1.0):
    rng = np.random.default_rng(seed)
    low = Image.fromarray((40 + 175 * rng.random((6, 5))).astype(np.uint8)).resize(size, Image.BICUBIC)
    arr = np.asarray(low, np.float32)[..., None].repeat(3, axis=2) + rng.normal(0, 6, (size[1], size[0], 3))
    return np.clip(arr * scale, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    from persona_ml.faces.embedder import FaceEmbedder
    from persona_ml.images import load_image

    d = tmp_path_factory.mktemp("scripted")
    backend = ScriptedBackend()
    face = (250.0, 200.0, 550.0, 560.0)
    files = {}

    def add(name, arr, faces):
        path = d / name
        Image.fromarray(arr).save(path, **({"quality": 95} if name.endswith(".jpg") else {}))
        backend.script[load_image(path).sha256] = faces
        files[name] = path

    for i in range(4):
        add(f"own{i}.jpg", pattern(i), [{"bbox": face, "emb": CHARACTER[i], "yaw": 30.0 * (i == 3)}])
    shutil.copy(files["own0.jpg"], d / "own0_copy.jpg")
    files["own0_copy.jpg"] = d / "own0_copy.jpg"
    Image.open(files["own1.jpg"]).save(d / "own1_resaved.png")
    files["own1_resaved.png"] = d / "own1_resaved.png"
    mirrored = np.ascontiguousarray(np.asarray(Image.open(files["own2.jpg"]))[:, ::-1])
    add("own2_mirror.png", mirrored, [{"bbox": (250.0, 200.0, 550.0, 560.0), "emb": unit(CHARACTER[2] + axis(7, 0.02))}])
    add("stranger.jpg", pattern(10), [{"bbox": face, "emb": unit(axis(5) + axis(6))}])
    add("group.jpg", pattern(11), [{"bbox": face, "emb": CHARACTER[4]},
                                   {"bbox": (560.0, 220.0, 840.0, 560.0), "emb": unit(axis(6))}])
    add("background.jpg", pattern(12), [{"bbox": face, "emb": CHARACTER[5]},
                                        {"bbox": (650.0, 100.0, 700.0, 150.0), "emb": unit(axis(6))}])
    add("empty.jpg", pattern(13), [])
    add("small_face.jpg", pattern(14), [{"bbox": (300.0, 300.0, 330.0, 332.0), "emb": CHARACTER[6]}])
    add("soft.jpg", pattern(15), [{"bbox": face, "emb": CHARACTER[6], "sharpness": 5.0}])
    add("dark.jpg", pattern(16, scale=0.08), [{"bbox": face, "emb": CHARACTER[6]}])
    profile_faces = FaceEmbedder(backend).analyze([files[f"own{i}.jpg"] for i in range(3)])
    from persona_ml.faces.profile import FaceProfile

    profile = FaceProfile.build([f[0] for f in profile_faces])
    return FaceEmbedder(backend), profile, files


def test_scripted_screening_codes(scripted):
    embedder, profile, files = scripted
    report = screen_dataset(list(files.values()), profile, embedder, request={"plan": "free"})
    codes = {Path(s.source).name: s.code for s in report.images}
    assert codes == {
        "own0.jpg": None, "own1.jpg": None, "own2.jpg": None, "own3.jpg": None, "background.jpg": None,
        "own0_copy.jpg": "duplicate", "own1_resaved.png": "duplicate", "own2_mirror.png": "near_duplicate",
        "stranger.jpg": "identity_mismatch", "group.jpg": "multiple_faces", "empty.jpg": "no_face",
        "small_face.jpg": "face_too_small", "soft.jpg": "blurry", "dark.jpg": "underexposed",
    }
    mirror = report.by_source("own2_mirror.png")
    assert mirror.metrics["near_duplicate"]["mirrored"] and mirror.duplicate_of.endswith("own2.jpg")
    bg = report.by_source("background.jpg")
    assert [w["code"] for w in bg.warnings] == ["background_faces"] and len(bg.other_faces) == 1
    assert report.coverage.pose == {"frontal": 4, "three_quarter": 1, "profile": 0}
    assert [v.code for v in report.rule_violations] == ["plan_not_allowed", "too_few_images"]
    assert report.rules.request.num_images == 5


def test_scripted_report_feeds_preparation(scripted, tmp_path):
    from persona_ml.dataset.manifest import load_prepared
    from persona_ml.dataset.prepare import prepare_dataset

    embedder, profile, files = scripted
    report = screen_dataset(list(files.values()), profile, embedder)
    result = prepare_dataset(report, tmp_path / "prep", trigger="ohwx")
    ds = load_prepared(tmp_path / "prep")
    assert sorted({it.source for it in ds.items}) == ["background.jpg", "own0.jpg", "own1.jpg", "own2.jpg",
                                                      "own3.jpg"]
    assert ds.info.profile_fingerprint == profile.fingerprint
    bg = next(it for it in ds.items if it.source == "background.jpg")
    other = report.by_source("background.jpg").other_faces[0]
    ix = max(0.0, min(bg.crop[2], other[2]) - max(bg.crop[0], other[0]))
    iy = max(0.0, min(bg.crop[3], other[3]) - max(bg.crop[1], other[1]))
    assert ix * iy <= 0.2 * (other[2] - other[0]) * (other[3] - other[1])  # the other face stays out
    assert result.info.num_source_images == 5


def test_scripted_file_objects_and_mismatched_faces(scripted):
    embedder, profile, files = scripted
    with open(files["own0.jpg"], "rb") as fh:
        report = screen_dataset([fh], profile, embedder)
    assert report.images[0].accepted and isinstance(report.images[0].input, bytes)
    from persona_ml.errors import InputError

    wrong = embedder.analyze([files["own1.jpg"]])
    with pytest.raises(InputError):
        screen_dataset([files["own0.jpg"]], profile, embedder, faces=wrong)


def test_scripted_unreadable_and_oversized_file_objects_are_rejected_alone(scripted):
    # a closed stream used to abort the whole screening with a bare ValueError, and a stream was
    # read whole into memory whatever its size
    import io

    from persona_ml.images import ImageLimits

    embedder, profile, files = scripted
    closed = io.BytesIO(b"\xff\xd8")
    closed.close()
    limits = ImageLimits(max_bytes=Path(files["own0.jpg"]).stat().st_size + 100)
    huge = io.BytesIO(b"\0" * (limits.max_bytes + 10))
    with open(files["own0.jpg"], "rb") as fh:
        report = screen_dataset([closed, fh, huge], profile, embedder, limits=limits)
    assert [s.code for s in report.images] == ["image_unreadable", None, "image_too_large"]


def test_near_copy_linked_only_through_another_names_the_photo_it_resembles():
    # A~B and B~C but A is far from C: C's reason used to quote the B-C distance as if it were to A
    from persona_ml.dataset.screening import _Candidate, _near_duplicates
    from persona_ml.faces.types import FaceObservation, ModelProvenance

    prov = ModelProvenance("dlib", "synthetic", {}, 4, "test")

    def cand(i, name, phash, emb, side):
        face = FaceObservation(bbox=(0, 0, side, side), landmarks=np.zeros((5, 2), np.float32), det_score=1.0,
                               face_size=float(side), sharpness=100.0, pose=None,
                               embedding=np.asarray(emb, np.float32) / np.linalg.norm(emb), image_sha256=name,
                               image_size=(1000, 1000), provenance=prov)
        return _Candidate(index=i, source=f"/x/{name}", input=None, face=face, hashes=(phash, phash ^ (2**64 - 1)),
                          size=(1000, 1000))

    a = cand(0, "a.jpg", 0, [1, 0, 0, 0], 300)                   # the largest face: kept
    b = cand(1, "b.jpg", 0b111111, [0, 1, 0, 0], 290)             # 6 bits from a
    c = cand(2, "c.jpg", 0b111111 | (0b111111 << 20), [0, 0, 1, 0], 290)  # 6 from b, 12 from a
    thr = {"phash_max_distance": 8, "near_duplicate_min_cosine": 0.99, "same_person_min_cosine": 0.9,
           "copy_min_score": 0.9}
    _near_duplicates([a, b, c], thr, ScreeningConfig(check_mirrored=False))
    assert (a.code, b.code, c.code) == (None, "near_duplicate", "near_duplicate")
    assert b.reason.startswith("a copy of a.jpg, one shot (surroundings match 0.00, hash distance 6/64")
    assert c.reason.startswith("a copy of b.jpg, one shot (surroundings match 0.00, hash distance 6/64")
    assert "a.jpg, the best" in c.reason
    assert c.duplicate_of == "/x/a.jpg"


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_scripted_bad_batch_size_is_refused(scripted, batch_size):
    # batch_size=0 used to take empty chunks: no photo was decoded or checked and EVERY one was
    # reported accepted (a stranger, a group photo, an empty file ...)
    from persona_ml.errors import InputError

    embedder, profile, files = scripted
    with pytest.raises(InputError) as exc:
        screen_dataset([files["stranger.jpg"], files["empty.jpg"]], profile, embedder, batch_size=batch_size)
    assert exc.value.details["field"] == "batch_size"


def test_scripted_config_of_the_wrong_type_is_refused(scripted):
    from persona_ml.errors import InputError

    embedder, profile, files = scripted
    with pytest.raises(InputError) as exc:
        screen_dataset([files["own0.jpg"]], profile, embedder, config={"allow_near_duplicates": True})
    assert exc.value.details["field"] == "config"


# --- copies of one shot, other people, no profile (real photos) ------------------------------------

def _jpeg_file(im, path, quality=92):
    im.convert("RGB").save(path, "JPEG", quality=quality)
    return path


@pytest.fixture(scope="session")
def copies_case(shared_faces, analyzed, tmp_path_factory):
    """Angelina's img2 and copies of it a user might upload beside it."""
    from PIL import ImageOps

    people = shared_faces / "people" / "angelina"
    src = Image.open(people / "img2.jpg").convert("RGB")
    (face,) = analyzed([people / "img2.jpg"])[0]
    x0, y0, x1, y1 = face.bbox
    fw, cx, cy = x1 - x0, (x0 + x1) / 2, (y0 + y1) / 2
    tmp = tmp_path_factory.mktemp("copies")
    w, h = src.size
    boxed = Image.new("RGB", (round(h * 16 / 9), h))
    boxed.paste(src, ((boxed.width - w) // 2, 0))
    padded = Image.new("RGB", (w + 200, h + 200), (255, 255, 255))
    padded.paste(src, (100, 100))
    copies = {
        "tight.jpg": src.crop((int(cx - 0.9 * fw), int(cy - fw), int(cx + 0.9 * fw), int(cy + fw))),
        "crop.jpg": src.crop((int(max(0, cx - 1.3 * fw)), int(max(0, cy - 1.2 * fw)), int(min(w, cx + 1.3 * fw)),
                              int(min(h, cy + 1.6 * fw)))),
        "partial.jpg": src.crop((int(cx - 0.15 * fw), int(max(0, cy - 1.5 * fw)), int(min(w, cx + 2 * fw)),
                                 int(min(h, cy + 1.6 * fw)))),
        "letterbox.jpg": boxed,
        "padded.jpg": padded,
        "half.jpg": src.resize((w // 2, h // 2), Image.LANCZOS),
        "colour.jpg": ImageEnhance.Color(ImageEnhance.Brightness(src).enhance(1.25)).enhance(0.4),
        "mirror.jpg": ImageOps.mirror(src),
    }
    paths = {name: _jpeg_file(im, tmp / name) for name, im in copies.items()}
    return people / "img2.jpg", paths, face


@pytest.mark.shared_faces
def test_copies_of_one_shot_are_rejected_and_the_original_kept(shared_faces, copies_case, embedder, analyzed,
                                                                profile_of):
    original, copies, _ = copies_case
    people = shared_faces / "people" / "angelina"
    profile = profile_of([people / n for n in ("img1.jpg", "img4.jpg", "img5.jpg")])
    others = [people / n for n in ("img1.jpg", "img6.jpg", "img7.jpg")]
    report = screen([original, *copies.values(), *others], profile, embedder, analyzed)
    codes = {Path(s.source).name: s.code for s in report.images}
    assert codes.pop("img2.jpg") is None
    assert all(codes.pop(p.name) is None for p in others), codes
    partial = codes.pop("partial.jpg")
    assert partial in ("near_duplicate", "face_cut_off", "no_face")
    assert codes == {name: "near_duplicate" for name in copies if name != "partial.jpg"}
    for name in ("tight.jpg", "letterbox.jpg", "mirror.jpg"):
        s = report.by_source(name)
        assert s.duplicate_of == str(original) and "one shot" in s.reason
        assert s.metrics["near_duplicate"]["region_score"] >= 0.9
    assert report.by_source("mirror.jpg").metrics["near_duplicate"]["mirrored"]
    # a global hash could not see the re-framed copies: they are far apart on it
    assert report.by_source("tight.jpg").metrics["near_duplicate"]["phash_distance"] > 8


@pytest.mark.shared_faces
def test_letterboxed_photo_is_measured_and_cropped_without_its_bars(copies_case, embedder, analyzed, tmp_path):
    from persona_ml.dataset.manifest import load_prepared
    from persona_ml.dataset.prepare import prepare_dataset

    original, copies, _ = copies_case
    report = screen([copies["letterbox.jpg"]], None, embedder, analyzed)
    (s,) = report.images
    assert s.accepted and "borders_trimmed" in [w["code"] for w in s.warnings]
    bar = (Image.open(copies["letterbox.jpg"]).width - Image.open(original).width) // 2
    assert s.content_box[0] >= bar and s.content_box[2] <= Image.open(copies["letterbox.jpg"]).width - bar
    prepare_dataset(report, tmp_path / "prep", trigger="ohwx")
    ds = load_prepared(tmp_path / "prep")
    assert ds.items
    for it in ds.items:
        assert it.crop[0] >= bar and it.crop[2] <= s.content_box[2]
        arr = np.asarray(Image.open(ds.path(it.image)).convert("L"), np.float32)
        assert arr[:, :4].std() > 3 and arr[:, -4:].std() > 3  # no flat black columns at either side


@pytest.mark.shared_faces
def test_a_smaller_second_person_is_another_person_in_the_shot(shared_faces, embedder, tmp_path, profile_of):
    people = shared_faces / "people" / "angelina"
    src = Image.open(people / "img2.jpg").convert("RGB")
    (face,) = embedder.analyze_one(people / "img2.jpg")
    donor_path = shared_faces / "people" / "deepface_p13" / "img13.jpg"
    donor = Image.open(donor_path).convert("RGB")
    (dface,) = embedder.analyze_one(donor_path)
    dx0, dy0, dx1, dy1 = dface.bbox
    dw = dx1 - dx0
    patch = donor.crop((int(dx0 - 0.4 * dw), int(dy0 - 0.5 * dw), int(dx1 + 0.4 * dw), int(dy1 + 0.4 * dw)))
    x0, y0, x1, y1 = face.bbox
    scale = 0.5 * (x1 - x0) / dw
    patch = patch.resize((round(patch.width * scale), round(patch.height * scale)), Image.LANCZOS)
    out = src.copy()
    out.paste(patch, (int(x1 + 0.3 * (x1 - x0)), int(y0)))
    path = _jpeg_file(out, tmp_path / "two_people.jpg")
    profile = profile_of([people / n for n in ("img1.jpg", "img4.jpg", "img5.jpg")])
    report = screen_dataset([path], profile, embedder)
    (s,) = report.images
    assert s.code == "other_people", (s.code, s.reason, s.metrics.get("other_faces"))
    seen = [o for o in s.metrics["other_faces"] if o["fraction"] >= 0.35]
    assert seen and 0.4 <= seen[0]["fraction"] <= 0.65
    ox0, oy0, ox1, oy1 = seen[0]["bbox"]
    assert ox0 > x1 and "another person is in the shot" in s.reason and f"{ox0:.0f}" in s.reason
    # the old rule (similar size only, 0.7) let it through with a warning
    old = screen_dataset([path], profile, embedder, config=ScreeningConfig(other_face_min_fraction=0.7,
                                                                           second_pass="off"))
    assert old.images[0].code != "other_people"


@pytest.mark.shared_faces
def test_without_a_profile_the_set_keeps_its_majority_person(shared_faces, embedder, analyzed):
    ang = shared_faces / "people" / "angelina"
    own = [ang / n for n in ("img1.jpg", "img2.jpg", "img4.jpg", "img6.jpg")]
    stranger = shared_faces / "people" / "deepface_p08" / "img8.jpg"
    report = screen([*own, stranger], None, embedder, analyzed)
    assert [s.code for s in report.images] == [None, None, None, None, "identity_minority"]
    assert "not the person 4 of the set's photos show" in report.images[-1].reason
    assert [w["code"] for w in report.warnings] == ["identity_from_set"]
    p08 = sorted((shared_faces / "people" / "deepface_p08").glob("img*.jpg"))[:2]
    tie = screen([*own[:2], *p08], None, embedder, analyzed)
    assert {s.code for s in tie.images} == {"identity_unclear"} and not tie.accepted
    off = screen([*own, stranger], None, embedder, analyzed, cluster_without_profile=False)
    assert off.images[-1].accepted and [w["code"] for w in off.warnings] == ["identity_not_checked"]


def test_scripted_set_without_profile_keeps_its_majority_person(scripted):
    # photos of other people used to be prepared with "0 issues" when no profile was given
    embedder, _, files = scripted
    names = ["own0.jpg", "own1.jpg", "own2.jpg", "own3.jpg", "stranger.jpg"]
    report = screen_dataset([files[n] for n in names], None, embedder)
    assert [s.code for s in report.images] == [None, None, None, None, "identity_minority"]
    assert report.images[0].metrics["set_cluster"] == {"cluster": 0, "size": 4, "clusters": 2}
    tie = screen_dataset([files[n] for n in ("own0.jpg", "stranger.jpg")], None, embedder)
    assert [s.code for s in tie.images] == ["identity_unclear", "identity_unclear"]


@pytest.mark.shared_faces
def test_second_pass_finds_a_person_the_first_pass_was_too_coarse_to_see(shared_faces, embedder, tmp_path):
    # a big photo with a modest main face: the first HOG pass runs downscaled and cannot see a
    # second face of 0.4x the main one; the finer second pass does
    rng = np.random.default_rng(0)
    canvas = Image.fromarray((110 + 25 * rng.standard_normal((1800, 2400, 3))).clip(0, 255).astype(np.uint8))
    canvas = canvas.filter(ImageFilter.GaussianBlur(2))
    main = Image.open(shared_faces / "people" / "angelina" / "img10.jpg").convert("RGB")
    canvas.paste(main, (700, 600))
    donor_path = shared_faces / "people" / "deepface_p13" / "img13.jpg"
    (dface,) = embedder.analyze_one(donor_path)
    dx0, dy0, dx1, dy1 = dface.bbox
    dw = dx1 - dx0
    donor = Image.open(donor_path).convert("RGB").crop((int(dx0 - 0.5 * dw), int(dy0 - 0.6 * dw), int(dx1 + 0.5 * dw),
                                                       int(dy1 + 0.5 * dw)))
    main_face = max(embedder.analyze_one(main), key=lambda f: f.face_size).face_size
    scale = 0.42 * main_face / dw
    donor = donor.resize((round(donor.width * scale), round(donor.height * scale)), Image.LANCZOS)
    canvas.paste(donor, (1300, 700))
    path = _jpeg_file(canvas, tmp_path / "party.jpg")
    first = embedder.analyze_one(path)
    assert len(first) == 1  # the first pass sees only the main face
    report = screen_dataset([path], None, embedder)
    (s,) = report.images
    assert s.code == "other_people", (s.code, s.reason)
    assert s.metrics["second_pass"]["hog_fine"]["min_face_px"] < first[0].extra["detect_scale"] ** -1 * 80
    assert any(o["detector"] == "second pass (hog)" for o in s.metrics["other_faces"])
    off = screen_dataset([path], None, embedder, config=ScreeningConfig(second_pass="off"))
    assert off.images[0].accepted


def test_an_enlarged_copy_is_not_kept_over_its_original_but_a_real_larger_shot_is(shared_faces, embedder, analyzed,
                                                                                   tmp_path):
    """img11_reflection.jpg (MANIFEST: a mirrored copy of img11.jpg) is also a ~1.95x enlargement: it has more
    pixels, not more detail. A half-size copy of a photo loses to the full-size original."""
    people = shared_faces / "people"
    full = people / "deepface_p08" / "img47.jpg"
    im = Image.open(full).convert("RGB")
    half = tmp_path / "img47_half.jpg"
    im.resize((im.width // 2, im.height // 2), Image.LANCZOS).save(half, quality=95)
    enlarged = tmp_path / "img1_enlarged.jpg"
    src = Image.open(people / "angelina" / "img1.jpg").convert("RGB")
    small = tmp_path / "img1_small.jpg"
    src.resize((src.width // 2, src.height // 2), Image.LANCZOS).save(small, quality=95)
    Image.open(small).resize((src.width * 3 // 4, src.height * 3 // 4), Image.BICUBIC).save(enlarged, quality=95)

    for kept, dropped, factor in [(people / "angelina" / "img11.jpg", people / "angelina" / "img11_reflection.jpg",
                                   1.9), (full, half, None), (small, enlarged, 1.4)]:
        paths = [str(dropped), str(kept)]  # the larger copy first: order does not decide
        report = screen_dataset(paths, None, embedder, faces=analyzed(paths))
        assert [Path(i.source).name for i in report.accepted] == [kept.name]
        (rej,) = report.rejected
        assert rej.code == "near_duplicate" and Path(rej.source).name == dropped.name
        if factor is None:
            assert "enlarged_copy" not in rej.metrics and "enlarged" not in rej.reason
        else:
            assert rej.metrics["enlarged_copy"]["factor"] > factor and "enlarged" in rej.reason
