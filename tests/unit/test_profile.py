"""FaceProfile, the primary-face policy and thresholds on synthetic observations (no model needed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from persona_ml import build_profile, load_profile
from persona_ml.errors import ArtifactError, ConfigError, FaceError, InputError, ModelMismatchError
from persona_ml.faces.primary import select_primary_face
from persona_ml.faces.profile import PROFILE_FORMAT_VERSION, FaceProfile
from persona_ml.faces.thresholds import FaceThresholds, load_thresholds_table, thresholds_for
from persona_ml.faces.types import FaceObservation, ModelProvenance, l2_normalize

DIM = 16
PROV = ModelProvenance(backend="dlib", model_name="dlib_face_recognition_resnet_model_v1",
                       files={"w.dat": "a" * 64}, dim=DIM, license="CC0-1.0")
OTHER = ModelProvenance(backend="insightface", model_name="buffalo_l", files={"w600k_r50.onnx": "b" * 64},
                        dim=DIM, license="non-commercial")
THR = FaceThresholds(same_person_min_cosine=0.6, outlier_max_cosine=0.7, near_duplicate_min_cosine=0.98,
                     min_face_size_px=40, min_sharpness=20.0)


def _obs(vec, sha: str, prov: ModelProvenance = PROV, bbox=(10.0, 10.0, 110.0, 110.0), size=(400, 300)):
    x0, y0, x1, y1 = bbox
    return FaceObservation(bbox=bbox, landmarks=np.zeros((5, 2), np.float32), det_score=1.0,
                           face_size=min(x1 - x0, y1 - y0), sharpness=100.0, pose=(0.0, 0.0, 0.0),
                           embedding=l2_normalize(np.asarray(vec, np.float32)), image_sha256=sha,
                           image_size=size, provenance=prov)


def _person(rng, base, n, noise=0.25, tag="a"):
    return [_obs(base + noise * rng.standard_normal(DIM), f"{tag}{i:03d}") for i in range(n)]


@pytest.fixture
def people():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal(DIM), rng.standard_normal(DIM)
    return _person(rng, a, 6, tag="a"), _person(rng, b, 1, tag="b")


def test_intruder_is_flagged_and_left_out_of_the_centroid(people):
    alice, (bob,) = people
    refs = alice[:3] + [bob] + alice[3:]
    profile = build_profile(refs, THR)
    assert profile.outliers == (3,)
    assert profile.outlier_sha256s == (bob.image_sha256,)
    assert profile.reference_scores[3] < THR.outlier_max_cosine < profile.reference_scores[[0, 1, 2, 4, 5, 6]].min()
    clean = build_profile(alice, THR)
    assert np.allclose(profile.centroid, clean.centroid, atol=1e-6)
    assert math.isclose(float(np.linalg.norm(profile.centroid)), 1.0, rel_tol=1e-5)
    assert profile.similarity(alice[0]) > profile.similarity(bob)


def test_reference_score_is_cosine_to_the_centroid_of_the_others(people):
    alice, _ = people
    profile = build_profile(alice, THR)
    e = profile.embeddings.astype(np.float64)
    others = e[1:].mean(axis=0)
    expected = e[0] @ others / np.linalg.norm(others)
    assert profile.reference_scores[0] == pytest.approx(expected, abs=1e-6)


def test_adding_one_reference_equals_rebuilding(people):
    alice, (bob,) = people
    grown = build_profile(alice[:4], THR).add(alice[4]).add(bob).add(alice[5])
    rebuilt = build_profile(alice[:5] + [bob, alice[5]], THR)
    assert np.array_equal(grown.embeddings, rebuilt.embeddings)
    assert np.array_equal(grown.centroid, rebuilt.centroid)
    assert np.array_equal(grown.reference_scores, rebuilt.reference_scores)
    assert grown.outliers == rebuilt.outliers == (5,)
    assert grown.fingerprint == rebuilt.fingerprint


def _write_v1_pair(profile: FaceProfile, base):
    """A profile as persona_ml wrote it before format 2: NAME.safetensors + NAME.json (tensors' sha256)."""
    import hashlib

    from safetensors.numpy import save as st_save

    blob = st_save({"centroid": profile.centroid, "embeddings": profile.embeddings,
                    "reference_scores": profile.reference_scores}, metadata={"kind": "persona_ml.face_profile",
                                                                             "format_version": "1"})
    meta = {"kind": "persona_ml.face_profile", "format_version": 1, "created_by": profile.created_by,
            "fingerprint": profile.fingerprint, "image_sha256s": list(profile.image_sha256s),
            "outliers": list(profile.outliers), "provenance": profile.provenance.to_dict(),
            "thresholds": profile.thresholds.to_dict(), "tensors_file": base.name + ".safetensors",
            "tensors_sha256": hashlib.sha256(blob).hexdigest()}
    base.with_name(base.name + ".safetensors").write_bytes(blob)
    base.with_name(base.name + ".json").write_text(json.dumps(meta))


def _meta_of(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        return json.loads(fh.metadata()["persona_ml.face_profile"])


def test_save_load_round_trip(tmp_path, people):
    alice, (bob,) = people
    profile = build_profile(alice + [bob], THR)
    base = profile.save(tmp_path / "chars" / "ada" / "face.json")
    assert base == tmp_path / "chars" / "ada" / "face"
    assert sorted(p.name for p in base.parent.iterdir()) == ["face.safetensors"]  # one file, no temp files
    for form in (base, str(base) + ".json", str(base) + ".safetensors"):
        loaded = load_profile(form)
        assert loaded.fingerprint == profile.fingerprint
        assert np.array_equal(loaded.embeddings, profile.embeddings)
        assert np.array_equal(loaded.centroid, profile.centroid)
        assert loaded.outliers == profile.outliers and loaded.image_sha256s == profile.image_sha256s
        assert loaded.provenance == profile.provenance and loaded.thresholds == THR
        assert loaded.format_version == PROFILE_FORMAT_VERSION and loaded.created_by.startswith("persona_ml ")
    meta = _meta_of(base.with_name("face.safetensors"))
    assert meta["provenance"]["fingerprint"] == PROV.fingerprint and meta["format_version"] == 2


def test_format_1_pairs_still_load_and_saving_over_one_removes_the_stale_json(tmp_path, people):
    alice, (bob,) = people
    profile = build_profile(alice + [bob], THR)
    _write_v1_pair(profile, tmp_path / "old")
    loaded = load_profile(tmp_path / "old")
    assert loaded.fingerprint == profile.fingerprint and loaded.outliers == profile.outliers
    loaded.save(tmp_path / "old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.safetensors"]
    assert load_profile(tmp_path / "old").fingerprint == profile.fingerprint


def test_load_detects_damage(tmp_path, people):
    alice, _ = people
    base = build_profile(alice, THR).save(tmp_path / "p")
    with pytest.raises(ArtifactError) as info:
        load_profile(tmp_path / "missing")
    assert info.value.code == "profile_not_found"

    # format 1: a mismatched pair, a newer version, broken JSON, a missing half
    _write_v1_pair(build_profile(alice[:3], THR), tmp_path / "q")
    _write_v1_pair(build_profile(alice[:4], THR), tmp_path / "r")
    (tmp_path / "q.safetensors").write_bytes((tmp_path / "r.safetensors").read_bytes())
    with pytest.raises(ArtifactError) as info:
        load_profile(tmp_path / "q")
    assert info.value.code == "profile_corrupt"

    meta = json.loads((tmp_path / "r.json").read_text())
    meta["format_version"] = 2
    (tmp_path / "r.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError) as info:
        load_profile(tmp_path / "r")
    assert info.value.code == "profile_format_unknown"

    (tmp_path / "r.json").write_text("{not json")
    with pytest.raises(ArtifactError) as info:
        load_profile(tmp_path / "r")
    assert info.value.code == "profile_corrupt"

    (tmp_path / "r.safetensors").unlink()
    _write_v1_pair(build_profile(alice[:4], THR), tmp_path / "s")
    (tmp_path / "s.safetensors").unlink()
    with pytest.raises(ArtifactError) as info:
        load_profile(tmp_path / "s")
    assert info.value.code == "profile_corrupt"  # half a pair is damage, not "no profile"

    # format 2: a flipped bit anywhere in the arrays (the last bytes are reference_scores) is caught
    good = (tmp_path / "p.safetensors").read_bytes()
    for offset in (-5, -len(good) // 3):
        raw = bytearray(good)
        raw[offset] ^= 0x40
        (tmp_path / "p.safetensors").write_bytes(bytes(raw))
        with pytest.raises(ArtifactError) as info:
            load_profile(base)
        assert info.value.code == "profile_corrupt"


def test_load_refuses_an_unreadable_tensors_file_even_when_its_hash_is_recorded(tmp_path, people):
    # the JSON vouches for the bytes (hash matches) but they are not safetensors: was a bare SafetensorError
    import hashlib

    alice, _ = people
    _write_v1_pair(build_profile(alice, THR), tmp_path / "p")
    junk = b"not a safetensors file"
    (tmp_path / "p.safetensors").write_bytes(junk)
    meta = json.loads((tmp_path / "p.json").read_text())
    meta["tensors_sha256"] = hashlib.sha256(junk).hexdigest()
    (tmp_path / "p.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError) as info:
        load_profile(tmp_path / "p")
    assert info.value.code == "profile_corrupt"


def test_refuses_another_models_observation(people):
    alice, _ = people
    profile = build_profile(alice, THR)
    foreign = _obs(alice[0].embedding, "z001", prov=OTHER)
    with pytest.raises(ModelMismatchError):
        profile.similarity(foreign)
    with pytest.raises(ModelMismatchError):
        profile.add(foreign)
    with pytest.raises(ModelMismatchError):
        build_profile(alice + [foreign], THR)


def test_build_refuses_empty_and_duplicate_images(people):
    alice, _ = people
    with pytest.raises(InputError) as info:
        build_profile([], THR)
    assert info.value.code == "profile_empty"
    with pytest.raises(InputError) as info:
        build_profile(alice[:2], THR).add(_obs(alice[2].embedding, alice[0].image_sha256))
    assert info.value.code == "duplicate_reference"


def test_single_and_two_reference_profiles(people):
    alice, (bob,) = people
    one = build_profile(alice[:1], THR)
    assert one.outliers == () and np.isnan(one.reference_scores[0])
    assert one.to_summary()["references"][0]["score"] is None
    json.dumps(one.to_summary())  # JSON-ready despite the NaN score
    assert np.allclose(one.centroid, alice[0].embedding)
    # with two references the pairwise cut applies; disagreeing ones cannot be decided (which one
    # is the intruder?): neither is flagged, both are reported undecided
    assert build_profile(alice[:2], THR).outliers == ()
    two = build_profile([alice[0], bob], THR)
    assert two.outliers == () and two.undecided == (0, 1) and two.outlier_rule == "pairwise"
    assert two.to_summary()["undecided"] == [0, 1]


def test_near_duplicates_are_reported(people):
    alice, _ = people
    copy = _obs(alice[0].embedding + 1e-3, "copy")
    summary = build_profile(alice + [copy], THR).to_summary()
    assert [d[:2] for d in summary["near_duplicates"]] == [[0, 6]]


def test_default_thresholds_come_from_the_config_for_the_model(people):
    alice, _ = people
    profile = FaceProfile.build(alice)
    assert profile.thresholds == thresholds_for(PROV)
    assert thresholds_for(PROV) != thresholds_for(OTHER)


# ---- thresholds ---------------------------------------------------------------------------

def test_thresholds_table_has_dlib_and_insightface_sections():
    table = load_thresholds_table()
    assert {"dlib_face_recognition_resnet_model_v1", "generic"} <= set(table["dlib"])
    assert {"buffalo_l", "antelopev2", "generic"} <= set(table["insightface"])
    assert table["insightface"]["buffalo_l"].same_person_min_cosine == pytest.approx(0.40, abs=0.05)
    unknown_pack = ModelProvenance("insightface", "my_pack", {}, 512, "?")
    assert thresholds_for(unknown_pack) == table["insightface"]["generic"]
    suffixed = ModelProvenance("insightface", "buffalo_l_v2", {}, 512, "?")
    assert thresholds_for(suffixed) == table["insightface"]["buffalo_l"]


def test_falling_back_to_generic_thresholds_is_logged(caplog):
    # an unmeasured model silently got another model's operating points
    import logging

    with caplog.at_level(logging.WARNING, logger="persona_ml.faces.thresholds"):
        thresholds_for(ModelProvenance("insightface", "unmeasured_pack_x", {}, 512, "?"))
        thresholds_for(ModelProvenance("insightface", "buffalo_l", {}, 512, "?"))
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "unmeasured_pack_x" in warned[0] and "generic" in warned[0]


def test_thresholds_errors_are_coded(tmp_path):
    with pytest.raises(ConfigError) as info:
        thresholds_for(ModelProvenance("facenet", "x", {}, 128, "?"))
    assert info.value.code == "thresholds_missing"
    bad = tmp_path / "t.yaml"
    bad.write_text("dlib:\n  generic:\n    same_person_min_cosine: 0.9\n    outlier_max_cosine: 0.9\n"
                   "    near_duplicate_min_cosine: 0.99\n    min_face_size_px: 40\n    min_sharpnes: 3\n")
    with pytest.raises(ConfigError) as info:
        load_thresholds_table(bad)
    assert info.value.details["field"] == "dlib.generic.min_sharpnes"
    with pytest.raises(ConfigError):
        FaceThresholds(same_person_min_cosine=0.995, outlier_max_cosine=0.5, near_duplicate_min_cosine=0.99,
                       min_face_size_px=40, min_sharpness=0.0)


# ---- primary face -------------------------------------------------------------------------

def _face(x0, y0, side, size=(1000, 800)):
    return _obs(np.ones(DIM), "img", bbox=(x0, y0, x0 + side, y0 + side), size=size)


def test_primary_face_is_the_largest_and_background_faces_are_ignored():
    big, small = _face(400, 300, 200), _face(50, 50, 100)
    assert select_primary_face([small, big], (1000, 800)) is big


def test_similar_faces_are_ambiguous_and_off_centre_faces_count_as_smaller():
    central, corner = _face(420, 320, 150), _face(0, 0, 160)
    # similar sizes are ambiguous by default...
    with pytest.raises(FaceError) as info:
        select_primary_face([corner, central], (1000, 800))
    assert info.value.code == "multiple_faces"
    assert info.value.details["count"] == 2 and sorted(info.value.details["sizes"]) == [150.0, 160.0]
    # a corner face three quarters the central one's side no longer competes (centrality discount),
    # while the same face beside it in the centre does
    central_big = _face(400, 300, 200)
    assert select_primary_face([_face(0, 0, 150), central_big], (1000, 800)) is central_big
    with pytest.raises(FaceError):
        select_primary_face([_face(600, 300, 160), central_big], (1000, 800))


def test_no_face_is_coded():
    with pytest.raises(FaceError) as info:
        select_primary_face([], (640, 480))
    assert info.value.code == "no_face"
    with pytest.raises(InputError):
        select_primary_face([_face(0, 0, 50)], (640, 480), similar_size_ratio=0)


# ---- FaceEmbedder over a fake backend ------------------------------------------------------

class _FakeBackend:
    """Two faces per image (small first); crashes on all-black images, refuses all-white ones."""

    name = "dlib"
    provenance = PROV

    def __init__(self):
        self.calls = []

    def analyze_images(self, images):
        from persona_ml.errors import ImageError

        self.calls.append(len(images))
        out = []
        for img in images:
            if img.pixels.max() == 0:
                raise RuntimeError("backend crashed")
            if img.pixels.min() == 255:
                raise ImageError("refused", code="image_unreadable")
            out.append([_obs(np.ones(DIM), img.sha256, bbox=(0, 0, 40, 40)),
                        _obs(np.ones(DIM), img.sha256, bbox=(50, 50, 150, 150))])
        return out


def test_embedder_isolates_a_failing_image_and_sorts_faces_by_area():
    from persona_ml.errors import BackendError, BackendUnavailableError, ImageError
    from persona_ml.faces.embedder import FaceEmbedder

    backend = _FakeBackend()
    embedder = FaceEmbedder(backend, batch_size=4)
    grey, black, white = (np.full((64, 64, 3), v, np.uint8) for v in (120, 0, 255))
    results = embedder.analyze([grey, black, b"", white, grey])
    # a backend crash is the backend's fault (issue 8): backend_error with the cause chained, not image_unreadable
    assert [type(r).__name__ for r in results] == ["list", "BackendError", "ImageError", "ImageError", "list"]
    assert results[1].code == "backend_error" and isinstance(results[1].__cause__, RuntimeError)
    assert results[2].code == "image_empty" and results[3].code == "image_unreadable"
    assert [f.face_size for f in results[0]] == [100.0, 40.0]  # largest first
    assert embedder.embed_primary(grey).face_size == 100.0
    with pytest.raises(BackendError):
        embedder.analyze_one(black)
    with pytest.raises(ImageError):
        embedder.analyze_one(white)

    class Broken(_FakeBackend):
        def analyze_images(self, images):
            raise BackendUnavailableError("CUDA provider missing")

    with pytest.raises(BackendUnavailableError):
        FaceEmbedder(Broken()).analyze([grey])
    with pytest.raises(InputError):
        embedder.analyze(grey)  # one image is not a sequence of images


def test_three_references_decide_pairwise(people):
    # two genuine references and an intruder: the intruder matches neither, the genuine pair
    # matches; with a centroid of two (one of them the intruder) genuine ones used to be flagged
    alice, (bob,) = people
    three = build_profile([alice[0], bob, alice[1]], THR)
    assert three.outliers == (1,) and three.undecided == () and three.outlier_rule == "pairwise"
    assert build_profile(alice[:3], THR).outliers == ()
    # nobody matches anybody: cannot decide, nothing flagged
    rng = np.random.default_rng(3)
    strangers = [_obs(rng.standard_normal(DIM), f"s{i}") for i in range(3)]
    lost = build_profile(strangers, THR)
    assert lost.outliers == () and lost.undecided == (0, 1, 2)
    assert build_profile(alice[:4], THR).outlier_rule == "leave_one_out"
