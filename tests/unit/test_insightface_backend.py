"""insightface backend on small generated ONNX packs with the real packs' signatures.

The fake detector fires on a bright square whose side is one detector stride (8/16/32 px at
detection resolution) on a dark background; the fake recognizer embeds the aligned crop's
texture (see persona_ml/faces/onnx_testing.py).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("insightface")
pytest.importorskip("onnx")

import onnxruntime

from persona_ml.errors import ArtifactError, BackendUnavailableError, InputError, ModelNotFoundError
from persona_ml.faces import onnx_testing as ot
from persona_ml.faces.insightface_backend import (
    NO_LICENSE,
    InsightFaceBackend,
    create_session,
    onnx_providers,
    read_signature,
)
from persona_ml.images import load_image


def _backend(pack, **kw):
    kw.setdefault("num_threads", 1)
    return InsightFaceBackend(pack, **kw)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunCounter:
    """Wraps ``session.run`` on one session instance, recording the input shapes."""

    def __init__(self, session):
        self.shapes: list[tuple[int, ...]] = []
        self.inputs: list[np.ndarray] = []
        original = session.run

        def run(output_names, feed, *args, **kwargs):
            blob = next(iter(feed.values()))
            self.shapes.append(tuple(blob.shape))
            self.inputs.append(np.array(blob))
            return original(output_names, feed, *args, **kwargs)

        session.run = run

    @property
    def calls(self) -> int:
        return len(self.shapes)


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    return ot.write_fake_pack(tmp_path_factory.mktemp("packs") / "buffalo_fake")


@pytest.fixture(scope="module")
def backend(pack):
    return _backend(pack)


# loading ---------------------------------------------------------------------------------


def test_flat_pack_loads_detector_and_recognizer_and_ignores_other_models(backend, pack):
    assert backend.name == "insightface"
    assert backend.pack.detector.name == "det_10g.onnx"
    assert backend.pack.recognizer.name == "w600k_r50.onnx"
    assert "2d106det.onnx" in backend.pack.ignored
    prov = backend.provenance
    assert prov.backend == "insightface" and prov.model_name == "buffalo_fake" and prov.dim == 512
    assert dict(prov.files) == {"det_10g.onnx": _sha(pack / "det_10g.onnx"),
                                "w600k_r50.onnx": _sha(pack / "w600k_r50.onnx")}


def test_root_layout_models_subfolder_and_pack_name(tmp_path):
    root = ot.write_fake_pack(tmp_path / "root", layout="root", name="antelope_fake", extra_models=False)
    assert _backend(root).provenance.model_name == "antelope_fake"
    ot.write_fake_pack(tmp_path / "root", layout="root", name="second", extra_models=False)
    with pytest.raises(InputError) as err:
        _backend(root)
    assert err.value.code == "model_pack_ambiguous"
    assert err.value.details["packs"] == ["antelope_fake", "second"]
    assert _backend(root, pack_name="second").provenance.model_name == "second"


def test_models_are_chosen_by_signature_not_file_name(tmp_path):
    folder = tmp_path / "odd_names"
    ot._save(ot.build_detector(), folder / "z_recognition.onnx")
    ot._save(ot.build_recognizer(), folder / "a_detection.onnx")
    ot._save(ot.build_detector(with_keypoints=False), folder / "0_det_no_kps.onnx")
    ot._save(ot.build_landmark_like(), folder / "1k3d68.onnx")
    b = _backend(folder)
    assert b.pack.detector.name == "z_recognition.onnx"
    assert b.pack.recognizer.name == "a_detection.onnx"
    assert "keypoints" in b.pack.ignored["0_det_no_kps.onnx"]
    assert set(b.pack.ignored) == {"0_det_no_kps.onnx", "1k3d68.onnx"}


def test_signatures_of_fakes_match_the_real_packs(pack):
    det = read_signature(pack / "det_10g.onnx")
    assert det.inputs[0][0] == "input.1" and det.inputs[0][1] == (1, 3, None, None)
    assert [o[1] for o in det.outputs] == [(None, 1)] * 3 + [(None, 4)] * 3 + [(None, 10)] * 3
    rec = read_signature(pack / "w600k_r50.onnx")
    assert rec.inputs[0][1] == (None, 3, 112, 112) and rec.outputs[0][1] == (None, 512)
    # N depends on the input size: (H/s)*(W/s)*2 anchors per stride
    sess = onnxruntime.InferenceSession(str(pack / "det_10g.onnx"), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input.1": np.zeros((1, 3, 64, 96), np.float32)})
    assert [o.shape[0] for o in outs[:3]] == [8 * 12 * 2, 4 * 6 * 2, 2 * 3 * 2]


def test_manifest_v2_package(tmp_path):
    folder = ot.write_fake_pack(tmp_path / "raccoon_fake", layout="manifest")
    b = _backend(folder)
    assert b.pack.layout == "manifest" and b.provenance.model_name == "raccoon_fake"
    assert b.pack.ignored == {"2d106det.onnx": "not a detection/recognition task of the manifest"}
    faces = b.analyze_images([load_image(ot.faces_image(640, 640, [(64, 64, 32, 1)]))])[0]
    assert len(faces) == 1 and faces[0].embedding.shape == (512,)


def test_manifest_checksum_mismatch_and_missing_file(tmp_path):
    folder = ot.write_fake_pack(tmp_path / "raccoon_fake", layout="manifest")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tasks"]["recognition"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as err:
        _backend(folder)
    assert err.value.code == "model_checksum_mismatch"
    manifest["tasks"]["recognition"] = {"file": "w600k_r50.onnx", "embedding_dimension": 128}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as err:
        _backend(folder)
    assert err.value.code == "model_signature_mismatch"
    manifest["tasks"]["recognition"] = {"file": "missing.onnx"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelNotFoundError) as err:
        _backend(folder)
    assert str(folder / "missing.onnx") in err.value.details["searched"]


def test_missing_dir_and_missing_models_name_the_searched_paths(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError) as err:
        _backend(tmp_path / "nope")
    assert str(tmp_path / "nope") in err.value.details["searched"]
    assert "never downloaded" in str(err.value)

    only_det = tmp_path / "only_det"
    ot._save(ot.build_detector(), only_det / "det_10g.onnx")
    ot._save(ot.build_landmark_like(), only_det / "2d106det.onnx")
    with pytest.raises(ModelNotFoundError) as err:
        _backend(only_det)
    assert "has no recognizer" in str(err.value) and "has no detector" not in str(err.value)
    assert str(only_det / "2d106det.onnx") in err.value.details["searched"]

    monkeypatch.delenv("PERSONA_ML_INSIGHTFACE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ModelNotFoundError) as err:
        InsightFaceBackend(None)
    assert str(tmp_path / "home" / ".insightface" / "models" / "buffalo_l") in err.value.details["searched"]
    assert "PERSONA_ML_INSIGHTFACE_DIR" in str(err.value)


def test_corrupt_onnx_is_a_coded_error(tmp_path):
    folder = ot.write_fake_pack(tmp_path / "broken", extra_models=False)
    (folder / "w600k_r50.onnx").write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ArtifactError) as err:
        _backend(folder)
    assert err.value.code == "model_load_failed"


def test_bad_options_are_refused(pack):
    for kw, field in (({"det_size": 100}, "det_size"), ({"rec_batch_size": 0}, "rec_batch_size"),
                      ({"det_thresh": 1.5}, "det_thresh"), ({"retry_det_sizes": (320, 50)}, "retry_det_sizes"),
                      ({"device": "gpu"}, "device"), ({"device": "cuda:x"}, "device")):
        with pytest.raises(InputError) as err:
            _backend(pack, **kw)
        assert err.value.details["field"] == field


# providers -------------------------------------------------------------------------------


def test_provider_factory():
    assert onnx_providers("cpu") == (["CPUExecutionProvider"], [{}])
    assert onnx_providers("cuda") == (["CUDAExecutionProvider", "CPUExecutionProvider"], [{"device_id": 0}, {}])
    assert onnx_providers("cuda:1") == (["CUDAExecutionProvider", "CPUExecutionProvider"], [{"device_id": 1}, {}])
    for bad in ("cpu:0", "cuda:", "CUDA", "tpu", 1):
        with pytest.raises(InputError):
            onnx_providers(bad)


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(),
                    reason="this onnxruntime has CUDA; the refusal is tested on CPU-only builds")
def test_cuda_on_a_cpu_only_onnxruntime_raises(pack):
    with pytest.raises(BackendUnavailableError) as err:
        _backend(pack, device="cuda:1")
    assert err.value.code == "provider_unavailable"
    assert "CPUExecutionProvider" in err.value.details["available_providers"]
    assert "onnxruntime-gpu" in str(err.value) and "cuDNN" in str(err.value)


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_silent_cpu_fallback_after_session_creation_raises(pack, monkeypatch):
    # onnxruntime lists CUDA (e.g. onnxruntime-gpu) but the session falls back to CPU (a CUDA /
    # cuDNN mismatch): onnxruntime only warns; the backend must refuse.
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError) as err:
        create_session(pack / "det_10g.onnx", "cuda:0")
    assert err.value.code == "provider_unavailable"
    assert err.value.details["active_providers"] == ["CPUExecutionProvider"]


def test_cuda_device_id_reaches_onnxruntime(pack, monkeypatch):
    real_session = onnxruntime.InferenceSession
    calls = []

    class CudaLikeSession:
        """Records what the backend asks onnxruntime for; computes on CPU; reports CUDA active."""

        def __init__(self, path, sess_options=None, providers=None, provider_options=None):
            calls.append({"path": str(path), "providers": providers, "provider_options": provider_options})
            self._inner = real_session(path, sess_options, providers=["CPUExecutionProvider"])
            self._providers = list(providers)

        def get_providers(self):
            return self._providers

        def __getattr__(self, name):
            return getattr(self._inner, name)

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", CudaLikeSession)
    b = _backend(pack, device="cuda:1")
    assert [c["path"].rsplit("/", 1)[-1] for c in calls] == ["det_10g.onnx", "w600k_r50.onnx"]
    for c in calls:
        assert c["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert c["provider_options"] == [{"device_id": 1}, {}]
    assert len(b.analyze_images([load_image(ot.faces_image(640, 640, [(64, 64, 32, 1)]))])[0]) == 1


# detection, alignment, batching ----------------------------------------------------------


def test_faces_are_found_sorted_and_fully_described(backend):
    img = load_image(ot.faces_image(640, 480, [(64, 64, 16, 1), (320, 160, 32, 2), (400, 400, 8, 3)]))
    (faces,) = backend.analyze_images([img])
    assert [f.bbox for f in faces] == [(320.0, 160.0, 352.0, 192.0), (64.0, 64.0, 80.0, 80.0),
                                       (400.0, 400.0, 408.0, 408.0)]
    for f in faces:
        assert f.det_score > 0.9
        assert f.face_size == f.bbox[2] - f.bbox[0]
        assert f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32
        x0, y0, x1, y1 = f.bbox
        assert np.all((f.landmarks[:, 0] > x0) & (f.landmarks[:, 0] < x1))
        assert np.all((f.landmarks[:, 1] > y0) & (f.landmarks[:, 1] < y1))
        assert f.landmarks[0, 0] < f.landmarks[1, 0]  # left eye left of the right eye
        assert f.pose is not None and abs(f.pose[0]) < 5 and abs(f.pose[2]) < 5
        assert f.sharpness >= 0.0
        assert f.embedding.shape == (512,) and f.embedding.dtype == np.float32
        assert abs(float(np.linalg.norm(f.embedding)) - 1.0) < 1e-5
        assert f.image_sha256 == img.sha256 and f.image_size == (640, 480)
        assert f.provenance is backend.provenance
        assert f.extra["detect_pass"] == "first"


def test_alignment_crops_the_face_to_112_before_recognition(tmp_path):
    b = _backend(ot.write_fake_pack(tmp_path / "p", extra_models=False))
    counter = RunCounter(b._rec.session)
    imgs = [load_image(ot.faces_image(640, 640, [(64, 96, 32, 7)])),
            load_image(ot.faces_image(640, 640, [(480, 256, 32, 7)])),   # same face elsewhere
            load_image(ot.faces_image(640, 640, [(160, 320, 16, 7)])),   # same face, half the size
            load_image(ot.faces_image(640, 640, [(64, 96, 32, 8)]))]     # another face
    faces = [f[0] for f in b.analyze_images(imgs)]
    assert counter.shapes == [(4, 3, 112, 112)]
    # the crop is the face, not the dark background around it: (x - 127.5) / 127.5 of a bright face
    assert counter.inputs[0].mean(axis=(1, 2, 3)).min() > 0.6
    assert faces[0].similarity(faces[1]) > 0.999
    assert faces[0].similarity(faces[2]) > 0.85
    assert faces[0].similarity(faces[3]) < 0.7


def test_recognition_is_batched_across_faces_and_images(tmp_path):
    b = _backend(ot.write_fake_pack(tmp_path / "p", extra_models=False))
    imgs = [load_image(ot.faces_image(640, 640, [(64, 64, 32, 1), (320, 320, 32, 2)])),
            load_image(ot.faces_image(640, 640, [(128, 128, 32, 3)])),
            load_image(ot.blank_image(640, 640)),
            load_image(ot.faces_image(640, 640, [(32, 32, 32, 4), (256, 512, 32, 5)]))]
    rec = RunCounter(b._rec.session)
    det = RunCounter(b._det.session)
    result = b.analyze_images(imgs)
    assert [len(r) for r in result] == [2, 1, 0, 2]
    assert rec.shapes == [(5, 3, 112, 112)]
    # one pass per image with faces; the no-face image costs 640, 480, 320, 160 and the padded pass
    assert det.calls == 3 + 5

    small = _backend(tmp_path / "p", rec_batch_size=2)
    rec2 = RunCounter(small._rec.session)
    again = small.analyze_images(imgs)
    assert [s[0] for s in rec2.shapes] == [2, 2, 1]
    for r1, r2 in zip(result, again):
        for f1, f2 in zip(r1, r2):
            np.testing.assert_allclose(f1.embedding, f2.embedding, atol=1e-6)


def test_recognizer_with_fixed_batch_one(tmp_path):
    folder = tmp_path / "fixed"
    ot._save(ot.build_detector(), folder / "det.onnx")
    ot._save(ot.build_recognizer(batch=1), folder / "rec.onnx")
    b = _backend(folder)
    rec = RunCounter(b._rec.session)
    faces = b.analyze_images([load_image(ot.faces_image(640, 640, [(64, 64, 32, 1), (320, 320, 32, 2)]))])[0]
    assert len(faces) == 2 and rec.shapes == [(1, 3, 112, 112)] * 2


def test_detector_with_a_fixed_input_size(tmp_path):
    folder = tmp_path / "fixed_det"
    ot._save(ot.build_detector(input_size=(320, 320)), folder / "scrfd_fixed.onnx")
    ot._save(ot.build_recognizer(), folder / "rec.onnx")
    b = _backend(folder)
    assert b.det_input == (320, 320) and b.retry_det_sizes == ()
    det = RunCounter(b._det.session)
    (faces,) = b.analyze_images([load_image(ot.faces_image(640, 640, [(128, 192, 64, 1)]))])
    assert [s[2:] for s in det.shapes] == [(320, 320)]
    assert len(faces) == 1 and faces[0].bbox == (128.0, 192.0, 192.0, 256.0)


def test_detection_threshold_is_honoured(pack):
    img = load_image(ot.faces_image(640, 640, [(64, 64, 32, 1)]))
    strict = _backend(pack, det_thresh=0.99, retry_det_sizes=(), retry_pad=0.0)
    assert strict.analyze_images([img]) == [[]]
    assert len(_backend(pack, det_thresh=0.9).analyze_images([img])[0]) == 1


def test_no_face_gives_an_empty_list(backend):
    assert backend.analyze_images([load_image(ot.blank_image(300, 200, value=40))]) == [[]]
    assert backend.analyze_images([]) == []


def test_retry_at_smaller_detection_sizes(tmp_path):
    # a detector that misses everything above 320 px input, like SCRFD with a face filling the frame
    b = _backend(ot.write_fake_pack(tmp_path / "p", extra_models=False, detector_max_input_side=320))
    det = RunCounter(b._det.session)
    (faces,) = b.analyze_images([load_image(ot.faces_image(640, 640, [(128, 192, 64, 1)]))])
    assert [s[2:] for s in det.shapes] == [(640, 640), (480, 480), (320, 320)]
    assert len(faces) == 1
    assert faces[0].bbox == (128.0, 192.0, 192.0, 256.0)  # mapped back to the full image
    assert faces[0].extra["detect_pass"] == "retry_320" and faces[0].extra["det_size"] == 320

    no_retry = _backend(tmp_path / "p", retry_det_sizes=(), retry_pad=0.0)
    assert no_retry.analyze_images([load_image(ot.faces_image(640, 640, [(128, 192, 64, 1)]))]) == [[]]


def test_padding_finds_a_face_that_fills_the_frame(pack):
    # a 32x32 close-up that is all face: at 96 px it fills the input and the detector sees no
    # face; padded by its own size on each side, the face sits alone in the middle
    b = _backend(pack, det_size=96, retry_det_sizes=(), retry_pad=1.0)
    closeup = load_image(ot.face_pattern(3, 32))
    (faces,) = b.analyze_images([closeup])
    assert len(faces) == 1 and faces[0].extra["detect_pass"] == "padded"
    np.testing.assert_allclose(faces[0].bbox, (0.0, 0.0, 32.0, 32.0), atol=1e-3)
    assert _backend(pack, det_size=96, retry_det_sizes=(), retry_pad=0.0).analyze_images([closeup]) == [[]]


def test_same_faces_and_embeddings_as_insightface_face_analysis(tmp_path):
    """Our sessions, BGR flip, alignment and batching reproduce insightface's own pipeline."""
    from insightface.app import FaceAnalysis

    folder = ot.write_fake_pack(tmp_path / "p", extra_models=False)
    img = load_image(ot.faces_image(640, 480, [(64, 64, 16, 1), (320, 160, 32, 2), (512, 256, 32, 3)]))
    ours = _backend(folder).analyze_images([img])[0]
    app = FaceAnalysis(name=str(folder), allowed_modules=["detection", "recognition"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    reference = {tuple(float(v) for v in r.bbox): r for r in app.get(np.ascontiguousarray(img.pixels[..., ::-1]))}
    assert sorted(reference) == sorted(f.bbox for f in ours)
    for face in ours:
        ref = reference[face.bbox]
        np.testing.assert_allclose(face.landmarks, ref.kps, atol=1e-4)
        assert float(np.dot(face.embedding, ref.normed_embedding)) > 0.9999


# license ---------------------------------------------------------------------------------


def test_no_model_license_means_non_commercial(backend):
    assert backend.provenance.license == NO_LICENSE == "non-commercial (no MODEL.LICENSE)"
    assert backend.provenance.commercial_use is False
    assert backend.license.status == "default_non_commercial"


def test_an_unverifiable_license_never_counts_as_commercial(tmp_path):
    doc = {"license_version": 1, "license_id": "L-1", "issuer": "InsightFace", "model_id": "lic",
           "grant": "commercial", "valid_from": "2024-01-01T00:00:00Z", "signature": "A" * 86}
    b = _backend(ot.write_fake_pack(tmp_path / "lic", extra_models=False, license_text=json.dumps(doc)))
    assert b.license.status in ("invalid", "dependency_missing")
    assert b.provenance.commercial_use is not True
    assert b.provenance.license != NO_LICENSE and "MODEL.LICENSE" in b.provenance.license


# through the facade --------------------------------------------------------------------------


def test_face_embedder_facade_with_the_insightface_backend(pack, tmp_path):
    from persona_ml.faces import FaceEmbedder

    embedder = FaceEmbedder("insightface", model_dir=pack, num_threads=1)
    assert embedder.backend == "insightface" and embedder.provenance.dim == 512
    # a 320 px photo whose 64 px face is found only at detection size 160 (scaled to 32 px)
    photo = tmp_path / "reference.png"
    from PIL import Image

    Image.fromarray(ot.faces_image(320, 320, [(128, 128, 64, 5)])).save(photo)
    face = embedder.embed_primary(str(photo))
    assert face.bbox == (128.0, 128.0, 192.0, 192.0) and face.extra["detect_pass"] == "retry_160"
    results = embedder.analyze([str(photo), ot.faces_image(640, 640, [(64, 64, 32, 1), (320, 320, 32, 2)]),
                                b"not an image"])
    assert len(results[0]) == 1 and len(results[1]) == 2
    assert getattr(results[2], "code", None) == "image_not_an_image"
    assert results[0][0].similarity(face) > 0.999
