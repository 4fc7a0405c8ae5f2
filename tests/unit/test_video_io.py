"""Video and speech intake: limits before decoding, coded errors, VFR, H.264/AAC round trip; log-mel."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from persona_ml.errors import InputError, VideoError  # noqa: E402
from persona_ml.video.io import VideoLimits, load_video, probe_video, write_video  # noqa: E402
from persona_ml.video.mel import MelSettings, log_mel, mel_filterbank  # noqa: E402
from persona_ml.video.speech import Speech, load_speech  # noqa: E402


def _frames(n=24, h=64, w=96):
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):  # smooth colour gradients panning right: what video codecs are made for
        out.append(np.stack([(xx * 2 + i * 3) % 256, (yy * 3) % 256, (xx + yy + i) % 256], axis=-1))
    return np.asarray(out, np.uint8)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)
    write_video(path, _frames(), 24.0, audio=tone, sample_rate=16000)
    return path


def test_round_trip_keeps_frames_rate_and_speech(mp4):
    clip = load_video(mp4)
    assert clip.frames.shape == (24, 64, 96, 3)
    assert clip.fps == pytest.approx(24.0)
    assert clip.codec == "h264" and clip.has_audio and not clip.variable_frame_rate
    # H.264 at crf 18 on a smooth pan keeps the picture: mean error of a few grey levels
    assert np.abs(clip.frames.astype(int) - _frames().astype(int)).mean() < 6
    speech = load_speech(mp4)
    assert speech.duration_s == pytest.approx(1.0, abs=0.05)
    spectrum = np.abs(np.fft.rfft(speech.samples[2000:14000]))
    assert np.argmax(spectrum) * 16000 / 12000 == pytest.approx(440, abs=5)


def test_odd_sizes_are_padded_not_refused(tmp_path):
    path = write_video(tmp_path / "odd.mp4", _frames(5, 33, 45), 10.0)
    assert load_video(path).size == (46, 34)


def test_no_half_file_is_left_when_writing_fails(tmp_path):
    with pytest.raises(InputError):
        write_video(tmp_path / "x.mp4", np.zeros((0, 8, 8, 3), np.uint8), 24.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("data, code", [
    (b"", "video_empty"),
    (b"just some text, not a video" * 20, "video_not_a_video"),
])
def test_garbage_gets_its_code(data, code):
    with pytest.raises(VideoError) as err:
        load_video(data)
    assert err.value.code == code


def test_truncated_mp4_is_called_truncated(mp4):
    data = mp4.read_bytes()
    with pytest.raises(VideoError) as err:
        load_video(data[: len(data) // 2])
    assert err.value.code == "video_truncated"


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32) + 0.1, format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for p in [*stream.encode(frame), *stream.encode()]:
            out.mux(p)
    with pytest.raises(VideoError) as err:
        load_video(path)
    assert err.value.code == "video_no_video_stream"
    assert load_speech(path).duration_s == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("limits, code", [
    (VideoLimits(max_duration_s=0.5), "video_too_long"),
    (VideoLimits(max_pixels=1000), "video_too_large"),
    (VideoLimits(max_frames=10), "video_too_large"),
    (VideoLimits(max_bytes=100), "video_too_large"),
])
def test_limits_refuse_before_decoding(mp4, limits, code):
    with pytest.raises(VideoError) as err:
        probe_video(mp4, limits)
    assert err.value.code == code


def test_variable_frame_rate_is_resampled_onto_a_constant_grid(tmp_path):
    path = tmp_path / "vfr.mp4"
    times = [0.0, 0.04, 0.08, 0.2, 0.24, 0.4, 0.44, 0.48, 0.6, 0.8, 0.84, 1.0]
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        vs.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            img = np.full((64, 64, 3), 20 * i, np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = int(t * 1000), Fraction(1, 1000)
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    clip = load_video(path)
    assert clip.variable_frame_rate and clip.warnings
    assert clip.source_frames == len(times)
    # a constant grid over the same second: frame k shows the latest source frame at k / fps
    assert clip.num_frames == pytest.approx(clip.fps * 1.0 + 1, abs=1.5)
    grey = clip.frames[:, 32, 32, 0].astype(int)
    assert np.all(np.diff(grey) >= -3)  # never goes back in time


def test_speech_codes(tmp_path, mp4):
    silent = Speech.from_array(np.zeros(16000, np.float32), 16000)
    with pytest.raises(VideoError) as err:
        load_speech(silent)
    assert err.value.code == "speech_silent"
    # file intake is persona_ml.audio's, with its codes; the speech checks are ours
    from persona_ml.errors import AudioError

    with pytest.raises(AudioError) as err:
        load_speech(b"")
    assert err.value.code == "audio_empty"
    video_only = write_video(tmp_path / "mute.mp4", _frames(5), 10.0)
    with pytest.raises(AudioError) as err:
        load_speech(video_only)
    assert err.value.code == "audio_no_stream"
    with pytest.raises(AudioError) as err:
        load_speech(mp4, max_seconds=0.5)
    assert err.value.code == "audio_too_long"
    with pytest.raises(VideoError) as err:
        load_speech(Speech.from_array(np.full(16000, 0.1, np.float32), 16000), max_seconds=0.5)
    assert err.value.code == "speech_too_long"
    with pytest.raises(VideoError) as err:
        Speech.from_array(np.zeros(0, np.float32), 16000)
    assert err.value.code == "speech_empty"


def test_slaney_filters_have_unit_area_and_a_tone_lands_in_its_band():
    s = MelSettings()
    fb = mel_filterbank(s)
    assert fb.shape == (513, 64)
    df = s.sample_rate / s.n_fft
    area = fb.sum(axis=0) * df  # Slaney normalisation: every triangle integrates to ~1 (Hz domain)
    assert np.allclose(area[4:], 1.0, atol=0.06)
    tone = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(8000) / 16000)).astype(np.float32)
    mel = log_mel(tone, s)
    assert tuple(mel.shape) == (1, 2, 1 + 8000 // 160, 64)
    peak = int(mel[0, 0, 10:-10].mean(0).argmax())
    centres = (fb * np.arange(513)[:, None]).sum(0) / fb.sum(0) * df
    assert abs(centres[peak] - 1000) < 120


def test_paths_that_are_not_regular_files_are_named_as_such(tmp_path):
    import os

    import pytest

    from persona_ml.errors import VideoError
    from persona_ml.video.io import load_video

    with pytest.raises(VideoError) as err:
        load_video(tmp_path)
    assert err.value.code == "path_invalid" and "folder" in err.value.message
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(VideoError) as err:  # must not block on a FIFO with no writer
        load_video(fifo)
    assert err.value.code == "path_invalid" and "FIFO" in err.value.message
    with pytest.raises(VideoError) as err:
        load_video(tmp_path / ("x" * 300 + ".mp4"))
    assert err.value.code == "path_invalid"
    with pytest.raises(VideoError) as err:
        load_video(tmp_path / "missing.mp4")
    assert err.value.code == "video_unreadable" and "not found" in err.value.message
