"""Identity report and A/V sync on clips built from real photos (../shared/faces) and real speech (../shared/voices)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from persona_ml.images import load_image
from persona_ml.video.clips import envelope_per_frame, fit_frame, hold_clip, speaking_clip
from persona_ml.video.identity import score_video
from persona_ml.video.report import write_report
from persona_ml.video.sync import estimate_av_sync, mouth_box

pytestmark = pytest.mark.shared_faces
REPO = Path(__file__).resolve().parents[2]
SHARED_VOICES = Path(os.environ.get("PERSONA_ML_SHARED_VOICES", REPO.parent / "shared" / "voices"))


@pytest.fixture(scope="module")
def embedder():
    from persona_ml.faces import FaceEmbedder

    return FaceEmbedder("dlib")


@pytest.fixture(scope="module")
def character(shared_faces, embedder):
    from persona_ml.faces import FaceProfile

    refs = [shared_faces / "people" / "angelina" / f"img{i}.jpg" for i in (1, 2, 4, 5)]
    return FaceProfile.build([embedder.embed_primary(p) for p in refs])


@pytest.fixture(scope="module")
def clip(shared_faces):
    people = shared_faces / "people"
    stills = [load_image(people / "angelina" / "img6.jpg").pixels,      # the character (not a reference photo)
              load_image(people / "deepface_p08" / "img8.jpg").pixels,  # someone else, spliced in for 6 frames
              load_image(shared_faces / "nonfaces" / "white.png").pixels,  # no face
              load_image(people / "angelina" / "img7.jpg").pixels]
    return hold_clip(stills, [30, 6, 8, 30], size=256)


@pytest.fixture(scope="module")
def report(clip, character, embedder):
    return score_video(clip, 24.0, character, embedder)


def test_flags_find_the_stranger_and_the_missing_face(report):
    spans = [(s.flag, s.start_frame, s.end_frame) for s in report.spans]
    assert spans == [("identity_low", 30, 35), ("face_lost", 36, 43)]
    assert report.flags == ("face_lost", "identity_low") and not report.passed
    assert report.detection_rate == pytest.approx(66 / 74)
    assert report.similarity_min < report.threshold <= report.similarity_p10


def test_sampling_matches_every_frame_at_a_fraction_of_the_cost(clip, character, embedder, report):
    naive = score_video(clip, 24.0, character, embedder, every_frame=True)
    assert naive.frames_scored == len(clip) and report.frames_scored < len(clip) / 2
    assert [s.to_dict() for s in report.spans] == [s.to_dict() for s in naive.spans]
    assert report.similarity_min == pytest.approx(naive.similarity_min, abs=0.002)  # jitter between held frames
    assert report.similarity_mean == pytest.approx(naive.similarity_mean, abs=0.003)


def test_clean_clip_passes(clip, character, embedder):
    ok = score_video(clip[:30], 24.0, character, embedder)
    assert ok.passed and ok.detection_rate == 1.0 and ok.similarity_min >= ok.threshold


def test_report_files(report, clip, tmp_path):
    from PIL import Image

    path = write_report(report, clip, tmp_path)
    import json

    data = json.loads(path.read_text())
    assert data["flags"] == ["face_lost", "identity_low"] and len(data["frames"]) == len(clip)
    strip = Image.open(data["strip_path"])
    assert strip.width >= 8 * 128 and strip.height > 128
    # the stranger's frame is in the strip with a red frame
    assert Image.open(data["plot_path"]).size == (700, 320)


@pytest.fixture(scope="module")
def speech():
    manifest = SHARED_VOICES / "MANIFEST.tsv"
    if not manifest.is_file():
        pytest.skip(f"../shared/voices not found at {SHARED_VOICES}")
    from persona_ml.video.speech import load_speech

    return load_speech(SHARED_VOICES / "speakers" / "libri_1688" / "1688-142285-0003.flac")


@pytest.mark.parametrize("shift", [-4, 0, 3, 7])
def test_sync_estimate_recovers_a_known_shift(shared_faces, embedder, speech, shift):
    fps, n = 25.0, 100
    still = fit_frame(load_image(shared_faces / "people" / "angelina" / "img6.jpg").pixels, 256)
    face = embedder.analyze_one(still)[0]
    opening = envelope_per_frame(speech.samples, speech.sample_rate, fps, n + 20)
    # the mouth follows the speech `shift` frames late (negative: early)
    frames = speaking_clip(still, face.landmarks, opening[10 - shift:10 - shift + n])
    audio = speech.samples[int(10 / fps * speech.sample_rate):]
    boxes = [mouth_box(face.landmarks)] * n
    est = estimate_av_sync(frames, fps, audio, speech.sample_rate, boxes)
    assert abs(est.offset_frames - shift) <= 1, est
    assert est.in_sync == (abs(shift) <= 1)
    assert est.confidence > 0.1
