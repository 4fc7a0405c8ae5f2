"""A fault inside a face backend, diffusers or peft is a ``backend_error`` (HTTP 500, cause chained),
never ``image_unreadable``, ``no_face`` or ``lora_format_unknown`` (issue 8, item 5).

The faults are injected inside the real backends (dlib's analysis, diffusers' converter and
pipeline call, the slot copy), where a CUDA error or a library bug would raise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dlib", reason="the face-backend faults are injected into the dlib backend")

from persona_ml.errors import BackendError, LoraValidationError  # noqa: E402


class _Crash(RuntimeError):
    pass


@pytest.fixture
def crashing_dlib(monkeypatch):
    """dlib's per-image analysis raises (as a CUDA/dlib error would) on images whose source names 'boom'."""
    from persona_ml.faces import dlib_backend

    real = dlib_backend.DlibBackend._analyze

    def analyze(self, image):
        if "boom" in str(image.source) or getattr(self, "_crash_all", False):
            raise _Crash("dlib: CUDA error: an illegal memory access was encountered")
        return real(self, image)

    monkeypatch.setattr(dlib_backend.DlibBackend, "_analyze", analyze)
    return dlib_backend


@pytest.fixture
def photos(insightface_images, tmp_path):
    from PIL import Image

    good = insightface_images / "Tom_Hanks_54745.png"
    boom = tmp_path / "boom.png"
    im = Image.open(good).convert("RGB")
    im.putpixel((0, 0), (0, 0, 0))  # another photo (screening would drop an exact copy before analysis)
    im.save(boom)
    return good, boom


def test_embedder_reports_a_backend_crash_as_backend_error(crashing_dlib, photos):
    from persona_ml.errors import ImageError
    from persona_ml.faces import FaceEmbedder

    good, boom = photos
    emb = FaceEmbedder("dlib")
    ok, crashed, unreadable = emb.analyze([good, boom, b"not an image"])
    assert len(ok) == 1  # the batch failed once, was retried one by one, and the good photo kept its face
    assert isinstance(crashed, BackendError) and crashed.code == "backend_error" and crashed.http_status == 500
    assert isinstance(crashed.__cause__, _Crash) and crashed.details["backend"] == "dlib"
    assert isinstance(unreadable, ImageError) and unreadable.code == "image_not_an_image"  # still the image's fault
    for call in (emb.analyze_one, emb.embed_primary):
        with pytest.raises(BackendError) as exc:
            call(boom)
        assert exc.value.code == "backend_error" and isinstance(exc.value.__cause__, _Crash)


def test_identity_scoring_raises_instead_of_reporting_no_face(crashing_dlib, photos):
    from PIL import Image

    from persona_ml.faces import FaceEmbedder, FaceProfile
    from persona_ml.inference import score_images

    good, boom = photos
    emb = FaceEmbedder("dlib")
    profile = FaceProfile.build([emb.embed_primary(good)])
    assert score_images([Image.open(good).convert("RGB")], profile, emb)[0].flags == ()
    with pytest.raises(BackendError) as exc:
        score_images([good, boom], profile, emb)
    assert exc.value.code == "backend_error"


def test_training_sample_scoring_and_screening_do_not_blame_the_photo(crashing_dlib, photos):
    from persona_ml.dataset.screening import screen_dataset
    from persona_ml.faces import FaceEmbedder, FaceProfile
    from persona_ml.training.samples import IdentityScorer

    good, boom = photos
    emb = FaceEmbedder("dlib")
    profile = FaceProfile.build([emb.embed_primary(good)])
    scorer = IdentityScorer(emb, profile, [good])
    assert scorer.score(1, [good]).detection_rate == 1.0
    with pytest.raises(BackendError):
        scorer.score(2, [good, boom])  # used to count as a sample without a face
    with pytest.raises(BackendError):
        screen_dataset([good, boom], profile, emb)  # used to reject boom.png as image_unreadable


def test_a_second_pass_detector_crash_is_backend_error(photos, monkeypatch):
    from persona_ml.dataset.screening import ScreeningConfig, screen_dataset
    from persona_ml.faces import FaceEmbedder, FaceProfile, dlib_backend

    good, _ = photos
    emb = FaceEmbedder("dlib")
    profile = FaceProfile.build([emb.embed_primary(good)])

    def crash(self, *a, **k):
        raise _Crash("dlib CNN: CUDA error: out of resources")

    monkeypatch.setattr(dlib_backend.DlibBackend, "search_faces", crash)
    with pytest.raises(BackendError) as exc:
        screen_dataset([good], profile, emb, config=ScreeningConfig(second_pass="always"))
    assert exc.value.code == "backend_error" and exc.value.details["stage"] == "second_pass"
    assert isinstance(exc.value.__cause__, _Crash)


def test_cli_exits_1_with_backend_error_not_2(crashing_dlib, photos, tmp_path, capsys):
    from persona_ml.cli import main

    good, boom = photos
    assert main(["embed", str(good), str(boom), "--json"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(records[0]["faces"]) == 1 and records[1]["error"]["code"] == "backend_error"
    refs = tmp_path / "refs"
    refs.mkdir()
    for p in photos:
        (refs / p.name).write_bytes(p.read_bytes())
    assert main(["profile", str(refs), "--out", str(tmp_path / "prof")]) == 1  # no profile built without boom.png
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]["code"] == "backend_error"
    assert not (tmp_path / "prof.safetensors").exists() and not (tmp_path / "prof.json").exists()


# ----------------------------------------------------------------------------- diffusers / peft


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from persona_ml.inference.testing import make_random_lora
    from persona_ml.models import load_base_model

    base = load_base_model("tiny-flux")
    lora = make_random_lora(base.pipeline, tmp_path_factory.mktemp("bf") / "A", seed=1, base_model=base.name,
                            base_fingerprint=base.fingerprint, rank=4,
                            targets=["transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_k"])
    return base, lora


def _validate(base, path):
    from persona_ml.lora.validation import linear_modules, validate_lora

    return validate_lora(path, linear_modules(base.pipeline.transformer), base_fingerprint=base.fingerprint,
                         max_rank=16)


def test_a_diffusers_converter_fault_is_not_lora_format_unknown(tiny, monkeypatch):
    from diffusers import FluxPipeline

    base, lora = tiny
    real = FluxPipeline.lora_state_dict

    def broken(*a, **k):
        raise AttributeError("'NoneType' object has no attribute 'startswith'")  # a library bug

    monkeypatch.setattr(FluxPipeline, "lora_state_dict", broken)
    for path in (lora.diffusers_path, lora.kohya_path):
        with pytest.raises(BackendError) as exc:
            _validate(base, path)
        assert exc.value.code == "backend_error" and isinstance(exc.value.__cause__, AttributeError)

    def refuses(*a, **k):  # diffusers' documented refusal of keys it cannot convert stays the file's fault
        raise ValueError("Incompatible keys detected")

    monkeypatch.setattr(FluxPipeline, "lora_state_dict", refuses)
    with pytest.raises(LoraValidationError) as exc:
        _validate(base, lora.kohya_path)
    assert exc.value.code == "lora_format_unknown"
    monkeypatch.setattr(FluxPipeline, "lora_state_dict", real)
    assert _validate(base, lora.kohya_path).format == "kohya"


def test_a_malformed_kohya_file_is_refused_before_diffusers_sees_it(tiny, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    base, lora = tiny
    with safe_open(str(lora.kohya_path), "pt") as fh:
        meta = fh.metadata()
    sd = load_file(str(lora.kohya_path))
    key = next(k for k in sd if k.endswith(".lora_up.weight"))
    bad = dict(sd, **{key: torch.zeros(sd[key].shape[0], sd[key].shape[1] + 1)})  # rank of up != down
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(LoraValidationError) as exc:
        _validate(base, tmp_path / "bad.safetensors")
    assert exc.value.code == "lora_shape_mismatch"
    alpha = next(k for k in sd if k.endswith(".alpha"))
    save_file(dict(sd, **{alpha: torch.ones(3)}), str(tmp_path / "alpha.safetensors"), metadata=meta)
    with pytest.raises(LoraValidationError) as exc:
        _validate(base, tmp_path / "alpha.safetensors")
    assert exc.value.code == "lora_shape_mismatch"


def test_pipeline_and_slot_faults_are_backend_errors_and_nothing_is_half_loaded(tiny, monkeypatch):
    from persona_ml.inference import Character, CharacterGenerator, GenerationRequest
    from persona_ml.inference import slot as slot_mod
    from persona_ml.models import load_base_model

    _, lora = tiny
    base = load_base_model("tiny-flux")
    gen = CharacterGenerator(base, max_rank=8)
    gen.register(Character("A", lora_path=lora.diffusers_path))
    req = GenerationRequest("A", "a photo", seeds=(1,), height=32, width=32, steps=2, max_sequence_length=32)
    ref = np.asarray(gen.generate(req).images[0].image)

    transformer = base.pipeline.transformer
    real_forward = type(transformer).forward

    def boom(self, *a, **k):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(type(transformer), "forward", boom)
    with pytest.raises(BackendError) as exc:
        gen.generate(req)
    assert exc.value.code == "backend_error" and exc.value.details["stage"] == "generate"
    assert isinstance(exc.value.__cause__, RuntimeError)

    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(type(transformer), "forward", oom)
    with pytest.raises(BackendError) as exc:
        gen.generate(req)
    assert exc.value.code == "out_of_memory" and exc.value.http_status == 500
    monkeypatch.setattr(type(transformer), "forward", real_forward)

    gen.register(Character("B", lora_path=lora.kohya_path))  # same weights, another file: a real swap

    def half_copy(self, lora_):
        next(iter(self._params.values()))[0].fill_(7.0)  # the copy dies after writing part of the slot
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(slot_mod.PipelineSlot, "_swap_direct", half_copy)
    with pytest.raises(BackendError) as exc:
        gen.generate(GenerationRequest("B", "a photo", seeds=(1,), height=32, width=32, steps=2,
                                       max_sequence_length=32))
    assert exc.value.details["stage"] == "slot_swap" and gen.slot.content is None
    monkeypatch.undo()
    # the slot was marked empty: A is copied in again, in full, and renders as before
    assert np.array_equal(np.asarray(gen.generate(req).images[0].image), ref)


def test_video_identity_and_face_track_report_a_backend_crash_not_a_lost_face(crashing_dlib, photos):
    """A crash on every frame must not read as ``face_lost`` (identity report) or ``no_face`` (driving video)."""
    from PIL import Image

    from persona_ml.faces import FaceEmbedder
    from persona_ml.faces.api import build_profile
    from persona_ml.video.identity import score_video
    from persona_ml.video.motion import face_boxes

    good, _ = photos
    emb = FaceEmbedder("dlib")
    profile = build_profile([emb.embed_primary(good)])
    frame = np.asarray(Image.open(good).convert("RGB").resize((192, 192)))
    frames = np.stack([frame] * 6)
    assert score_video(frames, 24.0, profile, emb).passed  # the same frames score fine before the fault

    emb.impl._crash_all = True
    with pytest.raises(BackendError) as exc:
        score_video(frames, 24.0, profile, emb)
    assert isinstance(exc.value.__cause__, _Crash)
    with pytest.raises(BackendError):
        face_boxes(frames, emb)
