"""Both video jobs end to end on the tiny random pipelines (CPU): mp4 + identity report, determinism,
speech changes the talking head, cancel mid-run, bad inputs; the pose runner on a tiny ONNX stand-in."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")

from persona_ml.errors import FaceError, ModelMismatchError, PersonaMLError
from persona_ml.video.jobs import MotionTransferJob, TalkingHeadJob, VideoJobStatus
from persona_ml.video.speech import Speech
from persona_ml.video.talking_head import LTX2DFRTalkingHead, TalkingHeadSettings

SETTINGS = TalkingHeadSettings(height=64, width=64, fps=24.0, sigmas=(1.0, 0.7, 0.4))


def _speech(freq: float, seconds: float = 0.7) -> Speech:
    t = np.arange(int(seconds * 16000)) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)  # syllable-rate loudness changes
    return Speech.from_array((0.4 * envelope * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000,
                             source=f"tone-{freq}")


@pytest.fixture(scope="module")
def backend():
    from persona_ml.video.testing import build_tiny_ltx2_dfr_pipeline

    return LTX2DFRTalkingHead(build_tiny_ltx2_dfr_pipeline(seed=0), "tiny-ltx2")


@pytest.fixture(scope="module")
def portrait():
    yy, xx = np.mgrid[0:96, 0:80]
    return np.stack([xx * 3 % 256, yy * 2 % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def first_run(backend, portrait, tmp_path_factory):
    out = tmp_path_factory.mktemp("th")
    events = []
    result = TalkingHeadJob(backend, portrait, _speech(220), out, settings=SETTINGS, on_event=events.append).run()
    return out, result, events


def test_talking_head_writes_an_mp4_with_the_speech(first_run):
    import av

    from persona_ml.video.io import load_video

    out, result, events = first_run
    assert result.status is VideoJobStatus.COMPLETED
    clip = load_video(out / "video.mp4")
    assert clip.frames.shape == (17, 64, 64, 3) and clip.has_audio
    with av.open(str(out / "video.mp4")) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
    data = json.loads((out / "result.json").read_text())
    assert data["status"] == "completed" and data["steps_done"] == 3 and data["num_frames"] == 17
    # the speech covers the padded canvas: 100 mel frames/s, 4x time and 4x mel compression in the audio VAE
    canvas = data["meta"]["canvas_frames"]
    assert canvas >= 17 and data["meta"]["audio_latent_shape"][2:] == [round(canvas / 24 * 25), 64 // 4]
    kinds = [(e.kind, e.status.value, e.step) for e in events]
    assert kinds == [("status", "running", 0), ("step", "running", 1), ("step", "running", 2),
                     ("step", "running", 3), ("status", "completed", 0)]


def test_same_seed_same_frames_and_other_speech_other_frames(backend, portrait, first_run):
    again = backend.generate(portrait, _speech(220), SETTINGS)
    same = backend.generate(portrait, _speech(220), SETTINGS)
    assert np.array_equal(again.frames, same.frames)
    other = backend.generate(portrait, _speech(880, seconds=0.7), SETTINGS)
    assert other.frames.shape == again.frames.shape
    assert np.abs(other.frames.astype(int) - again.frames.astype(int)).mean() > 0.5


def test_cancel_mid_run_ends_cancelled_without_a_video(backend, portrait, tmp_path):
    job = None

    def on_event(e):
        if e.kind == "step" and e.step == 1:
            job.cancel()

    job = TalkingHeadJob(backend, portrait, _speech(330), tmp_path, settings=SETTINGS, on_event=on_event)
    result = job.run()
    assert result.status is VideoJobStatus.CANCELLED and result.steps_done == 1
    assert not (tmp_path / "video.mp4").exists()
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "cancelled"


@pytest.mark.parametrize("speech, code", [(b"", "audio_empty"), (b"no audio here" * 40, "audio_not_audio")])
def test_bad_speech_fails_before_any_model_runs(portrait, tmp_path, speech, code):
    class Exploding:
        name = "never"

        def generate(self, *a, **k):
            raise AssertionError("the model must not run on bad input")

    with pytest.raises(PersonaMLError) as err:
        TalkingHeadJob(Exploding(), portrait, speech, tmp_path).run()
    assert err.value.code == code
    assert json.loads((tmp_path / "result.json").read_text())["error"]["code"] == code


def test_a_library_fault_is_a_failed_job_not_bad_input(portrait, tmp_path):
    class Broken:
        name = "broken"

        def generate(self, *a, **k):
            raise RuntimeError("CUDA error: device-side assert")

    result = TalkingHeadJob(Broken(), portrait, _speech(220), tmp_path).run(raise_on_error=False)
    assert result.status is VideoJobStatus.FAILED and result.error["code"] == "video_job_failed"


def test_pose_runner_decodes_the_stand_in_and_refuses_other_models(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from persona_ml.video.motion import PoseRunner
    from persona_ml.video.testing import tiny_pose_peaks, write_tiny_pose_onnx

    runner = PoseRunner(write_tiny_pose_onnx(tmp_path / "pose.onnx"))
    frames = np.zeros((2, 256, 192, 3), np.uint8)  # the model's own input size: no letterbox
    kps = runner.keypoints_of(frames)
    assert kps.shape == (2, 133, 3)
    y, x = tiny_pose_peaks(133)[5]
    assert kps[0, 5, 0] == pytest.approx(x * 4 + 2, abs=1.5) and kps[0, 5, 1] == pytest.approx(y * 4 + 2, abs=1.5)
    poses = runner.render(frames, size=(64, 96))
    assert poses[0].size == (64, 96) and np.asarray(poses[0]).max() > 0

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["out"])], "wrong",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 112, 112])])
    wrong = tmp_path / "arcface_like.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, wrong)
    with pytest.raises(ModelMismatchError) as err:
        PoseRunner(wrong)
    assert err.value.code == "model_signature_mismatch"


@pytest.mark.shared_faces
def test_motion_transfer_end_to_end_with_identity_report(shared_faces, tmp_path):
    from persona_ml.faces import FaceEmbedder, FaceProfile
    from persona_ml.images import load_image
    from persona_ml.video.clips import hold_clip
    from persona_ml.video.io import load_video, write_video
    from persona_ml.video.motion import MotionSettings, PoseRunner, WanAnimateMotionTransfer
    from persona_ml.video.testing import build_tiny_wan_animate_pipeline, write_tiny_pose_onnx

    people = shared_faces / "people"
    embedder = FaceEmbedder("dlib")
    profile = FaceProfile.build([embedder.embed_primary(people / "angelina" / f"img{i}.jpg") for i in (1, 2)])
    driving = write_video(tmp_path / "driving.mp4", hold_clip([load_image(people / "deepface_p08" / "img8.jpg").pixels],
                                                              [9], size=128), 24.0)
    backend = WanAnimateMotionTransfer(build_tiny_wan_animate_pipeline(), PoseRunner(write_tiny_pose_onnx(
        tmp_path / "pose.onnx")), embedder, "tiny-wan-animate")
    settings = MotionSettings(height=64, width=64, num_steps=2, segment_frame_length=9, max_sequence_length=16)
    out = tmp_path / "job"
    result = MotionTransferJob(backend, people / "angelina" / "img1.jpg", driving, out, settings=settings,
                               profile=profile, face_embedder=embedder).run()
    assert result.status is VideoJobStatus.COMPLETED and result.steps_done == 2
    assert load_video(out / "video.mp4").frames.shape == (9, 64, 64, 3)
    report = json.loads((out / "identity.json").read_text())
    assert len(report["frames"]) == 9 and (out / "identity_strip.png").is_file()
    # random weights draw no face: the report must say so rather than pass
    assert "face_lost" in report["flags"] and not report["passed"]

    blank = write_video(tmp_path / "noface.mp4", np.full((9, 128, 128, 3), 200, np.uint8), 24.0)
    with pytest.raises(FaceError) as err:
        MotionTransferJob(backend, people / "angelina" / "img1.jpg", blank, tmp_path / "j2", settings=settings).run()
    assert err.value.code == "no_face"
