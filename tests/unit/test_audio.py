"""persona_ml.audio: every container the API takes, every refusal code, every measured warning.

All inputs are generated here (tones, noise, hand-built headers), so these run on a fresh clone.
"""

from __future__ import annotations

import fractions
import hashlib
import io
import struct
import wave

import numpy as np
import pytest

av = pytest.importorskip("av", reason="PyAV is in the voice extra (pip install 'persona-ml[voice]')")

from persona_ml.audio import AudioChecks, AudioLimits, LoadedAudio, encode_audio, load_audio, save_audio  # noqa: E402
from persona_ml.errors import AudioError  # noqa: E402

SR = 16000


def tone(seconds=2.0, sr=SR, freq=220.0, amp=0.3, noise=0.02, seed=0):
    """A tone plus broadband noise (so it has a speech-like bandwidth)."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (amp * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(len(t))).astype(np.float32)


def pcm_wav(samples: np.ndarray, sr: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def float_wav(samples: np.ndarray, sr: int) -> bytes:
    """WAVE_FORMAT_IEEE_FLOAT mono (Python's wave module writes PCM only)."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sr, sr * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def errcode(exc_info) -> str:
    return exc_info.value.code


# --- containers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, codec", [("wav", "pcm_s16le"), ("flac", "flac"), ("mp3", "mp3float"),
                                        ("ogg", "opus"), ("webm", "opus"), ("m4a", "aac")])
def test_every_allowed_container_decodes_to_mono_at_the_asked_rate(fmt, codec):
    data = encode_audio(tone(2.0), SR, fmt)
    clip = load_audio(data, sample_rate=SR)
    assert clip.format == fmt and clip.codec == codec
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.sample_rate == SR
    assert clip.duration_s == pytest.approx(2.0, abs=0.06)  # AAC/MP3 priming frames
    assert clip.sha256 == hashlib.sha256(data).hexdigest()
    assert float(np.abs(clip.samples).max()) <= 1.0
    # the waveform survives: the tone is still at 220 Hz after decode and resampling
    spectrum = np.abs(np.fft.rfft(clip.samples[: SR]))
    assert abs(np.argmax(spectrum) * SR / SR - 220) <= 2


def test_resamples_to_the_requested_rate_and_keeps_the_original_one():
    data = encode_audio(tone(1.5, sr=44100, freq=440.0), 44100, "flac")
    clip = load_audio(data, sample_rate=16000)
    assert clip.original_sample_rate == 44100 and clip.sample_rate == 16000
    assert len(clip.samples) == pytest.approx(1.5 * 16000, abs=40)
    spectrum = np.abs(np.fft.rfft(clip.samples[:16000]))
    assert abs(int(np.argmax(spectrum)) - 440) <= 2
    again = load_audio(clip, sample_rate=8000)  # a LoadedAudio is resampled, not re-decoded
    assert again.sample_rate == 8000 and again.sha256 == clip.sha256
    assert load_audio(clip, sample_rate=16000) is clip


def test_path_bytes_file_object_and_array_inputs(tmp_path):
    x = tone(1.0)
    data = pcm_wav(x, SR)
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    a = load_audio(path)
    b = load_audio(data)
    c = load_audio(io.BytesIO(data))
    assert a.sha256 == b.sha256 == c.sha256
    assert a.source == str(path) and b.source.startswith("<") and c.source == "<file object>"
    np.testing.assert_allclose(a.samples, b.samples)
    d = load_audio(x, source_sample_rate=SR)
    assert d.format == "array"
    np.testing.assert_allclose(d.samples, a.samples, atol=1e-4)
    e = load_audio((x * 32767).astype(np.int16), source_sample_rate=SR)
    np.testing.assert_allclose(e.samples, a.samples, atol=1e-4)


def test_stereo_arrays_in_either_layout_mix_down_to_the_same_mono():
    left, right = tone(1.0, freq=200), tone(1.0, freq=300, seed=1)
    planar = np.stack([left, right])
    a = load_audio(planar, source_sample_rate=SR)
    b = load_audio(planar.T.copy(), source_sample_rate=SR)
    np.testing.assert_allclose(a.samples, b.samples)
    np.testing.assert_allclose(a.samples, (left + right) / 2, atol=1e-6)
    assert a.original_channels == 2


def test_stereo_file_mixes_down():
    stereo = np.stack([tone(1.0, freq=200), tone(1.0, freq=300, seed=1)])
    clip = load_audio(encode_audio(stereo, SR, "flac"))
    assert clip.original_channels == 2 and clip.samples.ndim == 1
    np.testing.assert_allclose(clip.samples, stereo.mean(axis=0), atol=2e-4)


def test_save_audio_is_atomic_and_round_trips(tmp_path):
    x = tone(1.0)
    out = save_audio(tmp_path / "x.flac", x, SR)
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    np.testing.assert_allclose(load_audio(out).samples, x, atol=1e-4)


# --- refusals ------------------------------------------------------------------------------------


def test_empty_inputs(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    for src in (b"", tmp_path / "e.wav", io.BytesIO(b"")):
        with pytest.raises(AudioError) as ei:
            load_audio(src)
        assert errcode(ei) == "audio_empty"
    with pytest.raises(AudioError) as ei:
        load_audio(np.zeros(0, np.float32), source_sample_rate=SR)
    assert errcode(ei) == "audio_empty"


def test_a_png_renamed_wav_is_not_audio(tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "PNG")
    path = tmp_path / "voice.wav"
    path.write_bytes(buf.getvalue())
    with pytest.raises(AudioError) as ei:
        load_audio(path)
    assert errcode(ei) == "audio_not_audio" and ei.value.http_status == 422
    for junk in (b"hello world " * 50, np.random.default_rng(0).bytes(4096)):
        with pytest.raises(AudioError) as ei:
            load_audio(junk)
        assert errcode(ei) == "audio_not_audio"


def test_a_video_without_sound_has_no_audio_stream():
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        st = c.add_stream("mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = 64, 64, "yuv420p"
        for _ in range(5):
            for pk in st.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
                c.mux(pk)
        for pk in st.encode(None):
            c.mux(pk)
    with pytest.raises(AudioError) as ei:
        load_audio(buf.getvalue())
    assert errcode(ei) == "audio_no_stream"


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "webm", "m4a"])
def test_truncated_files_say_what_the_header_promised(fmt):
    data = encode_audio(tone(4.9), SR, fmt)
    with pytest.raises(AudioError) as ei:
        load_audio(data[: int(len(data) * 0.4)])
    assert errcode(ei) == "audio_truncated"
    if fmt != "m4a":  # an MP4 cut before its index cannot even be opened: no figures to give
        assert ei.value.details["header_s"] == pytest.approx(4.9, abs=0.15)  # MP3: encoder padding
        assert ei.value.details["decoded_s"] < 2.5
        assert f"header says {ei.value.details['header_s']:.2f} s" in str(ei.value)


def test_format_allowlist():
    data = encode_audio(tone(1.0), SR, "flac")
    with pytest.raises(AudioError) as ei:
        load_audio(data, limits=AudioLimits(allowed_formats=("wav", "mp3")))
    assert errcode(ei) == "audio_format_not_allowed"
    assert ei.value.details["value"] == "flac"
    assert load_audio(data, limits=AudioLimits(allowed_formats=("flac",))).format == "flac"


def _flac_claiming(data: bytes, total_samples: int) -> bytes:
    """Rewrite STREAMINFO's 36-bit total-samples field (bytes 18..26 of a FLAC file)."""
    assert data[:4] == b"fLaC"
    (word,) = struct.unpack(">Q", data[18:26])
    word = (word & ~((1 << 36) - 1)) | total_samples
    return data[:18] + struct.pack(">Q", word) + data[26:]


def test_a_flac_whose_header_says_3_hours_is_refused_before_decoding(monkeypatch):
    data = _flac_claiming(encode_audio(np.zeros(SR, np.float32), SR, "flac"), 3 * 3600 * SR)
    decoded = []
    real = LoadedAudio.__init__
    monkeypatch.setattr(LoadedAudio, "__init__", lambda self, *a, **k: decoded.append(1) or real(self, *a, **k))
    with pytest.raises(AudioError) as ei:
        load_audio(data)
    assert errcode(ei) == "audio_too_long"
    assert ei.value.details["value"] == pytest.approx(10800, abs=1)
    assert "before decoding" in str(ei.value) and not decoded


def test_a_stream_without_duration_stops_decoding_at_the_limit():
    class Pipe:  # a live recorder's WebM: not seekable, so the muxer writes no duration
        def __init__(self):
            self.buf = bytearray()

        def write(self, data):
            self.buf += data
            return len(data)

    sr, x = 48000, tone(6.0, sr=48000)
    pipe = Pipe()
    with av.open(pipe, "w", format="webm") as c:
        st = c.add_stream("libopus", rate=sr, layout="mono")
        for i in range(0, len(x), 4800):
            f = av.AudioFrame.from_ndarray(x[None, i:i + 4800], format="fltp", layout="mono")
            f.sample_rate, f.pts, f.time_base = sr, i, fractions.Fraction(1, sr)
            for pk in st.encode(f):
                c.mux(pk)
        for pk in st.encode(None):
            c.mux(pk)
    data = bytes(pipe.buf)
    assert load_audio(data).header_duration_s is None
    with pytest.raises(AudioError) as ei:
        load_audio(data, limits=AudioLimits(max_duration_s=2.0))
    assert errcode(ei) == "audio_too_long"
    assert 2.0 < ei.value.details["value"] < 3.0  # stopped soon after the limit, not at the end


def test_too_long_and_too_short():
    with pytest.raises(AudioError) as ei:
        load_audio(encode_audio(tone(3.0), SR, "wav"), limits=AudioLimits(max_duration_s=2.0))
    assert errcode(ei) == "audio_too_long" and ei.value.details["limit"] == 2.0
    with pytest.raises(AudioError) as ei:
        load_audio(encode_audio(tone(0.2), SR, "wav"))
    assert errcode(ei) == "audio_too_short" and ei.value.details["value"] == pytest.approx(0.2, abs=0.01)
    with pytest.raises(AudioError) as ei:
        load_audio(tone(3.0), source_sample_rate=SR, limits=AudioLimits(max_duration_s=2.0))
    assert errcode(ei) == "audio_too_long"


def test_too_many_channels_file_and_array():
    ten = np.tile(tone(1.0), 10)  # interleaved: every channel the same
    with pytest.raises(AudioError) as ei:
        load_audio(pcm_wav(ten, SR, channels=10))
    assert errcode(ei) == "audio_too_many_channels" and ei.value.details["value"] == 10
    with pytest.raises(AudioError) as ei:
        load_audio(np.zeros((10, 10), np.float32), source_sample_rate=SR)
    assert errcode(ei) == "audio_too_many_channels"


def test_too_large_is_refused_before_reading(tmp_path):
    data = encode_audio(tone(1.0), SR, "wav")
    path = tmp_path / "big.wav"
    path.write_bytes(data)
    small = AudioLimits(max_bytes=1000)
    for src in (path, data, io.BytesIO(data)):
        with pytest.raises(AudioError) as ei:
            load_audio(src, limits=small)
        assert errcode(ei) == "audio_too_large"


def test_nan_and_inf_samples():
    x = tone(1.0)
    x[5000] = np.nan
    with pytest.raises(AudioError) as ei:
        load_audio(float_wav(x, SR))
    assert errcode(ei) == "audio_bad_samples"
    x[5000] = np.inf
    with pytest.raises(AudioError) as ei:
        load_audio(x, source_sample_rate=SR)
    assert errcode(ei) == "audio_bad_samples"


def test_unreadable_and_bad_arguments(tmp_path):
    with pytest.raises(AudioError) as ei:
        load_audio(tmp_path / "missing.wav")
    assert errcode(ei) == "audio_unreadable"
    with pytest.raises(AudioError) as ei:
        load_audio(io.StringIO("text"))
    assert errcode(ei) == "invalid_input"
    with pytest.raises(AudioError) as ei:
        load_audio(tone(1.0))  # an array without its rate
    assert errcode(ei) == "invalid_input" and ei.value.details["field"] == "source_sample_rate"
    with pytest.raises(AudioError) as ei:
        load_audio(b"x", sample_rate=0)
    assert errcode(ei) == "invalid_input"
    with pytest.raises(AudioError) as ei:
        AudioLimits(allowed_formats="wav")
    assert errcode(ei) == "invalid_input"
    with pytest.raises(AudioError):
        AudioLimits(min_duration_s=5, max_duration_s=1)


# --- measured warnings ---------------------------------------------------------------------------


def test_a_clean_tone_with_noise_has_no_warnings():
    clip = load_audio(encode_audio(tone(2.0, noise=0.05), SR, "wav"))
    assert clip.warnings == ()
    assert clip.stats.bandwidth_hz >= 7000


def test_clipping_is_measured():
    loud = np.clip(tone(2.0, amp=1.6), -1, 1)
    clip = load_audio(pcm_wav(loud, SR))
    assert "clipping" in clip.warning_codes
    w = clip.warnings[clip.warning_codes.index("clipping")]
    assert w["clipped_fraction"] > 0.1 and "message" in w
    assert "clipping" not in load_audio(pcm_wav(tone(2.0, amp=0.9), SR)).warning_codes


def test_silence_is_measured():
    clip = load_audio(pcm_wav(np.zeros(2 * SR, np.float32), SR))
    assert "silence" in clip.warning_codes
    quiet_hiss = load_audio(pcm_wav(tone(2.0, amp=0.0, noise=0.0005), SR))
    assert "silence" in quiet_hiss.warning_codes


def test_telephone_band_audio_is_flagged_at_its_own_rate_and_after_upsampling():
    x = tone(2.0, noise=0.05)
    tel = load_audio(x, source_sample_rate=SR, sample_rate=8000)  # what a phone line carries
    narrow = load_audio(pcm_wav(tel.samples, 8000))
    assert narrow.original_sample_rate == 8000 and "low_bandwidth" in narrow.warning_codes
    upsampled = load_audio(pcm_wav(load_audio(tel, sample_rate=SR).samples, SR))  # 8 kHz audio in a 16 kHz file
    assert upsampled.original_sample_rate == SR and "low_bandwidth" in upsampled.warning_codes
    assert upsampled.stats.bandwidth_hz < 5000
    assert "low_bandwidth" not in load_audio(pcm_wav(x, SR)).warning_codes


def test_channels_that_cancel_on_mix_down():
    x = tone(2.0)
    clip = load_audio(encode_audio(np.stack([x, -x]), SR, "wav"))
    assert "channels_cancel" in clip.warning_codes
    assert clip.stats.mixdown_db < -40
    ok = load_audio(encode_audio(np.stack([x, x * 0.8]), SR, "wav"))
    assert "channels_cancel" not in ok.warning_codes and ok.stats.mixdown_db > -1


def test_thresholds_are_the_callers():
    loud = np.clip(tone(2.0, amp=1.05), -1, 1)
    assert "clipping" in load_audio(pcm_wav(loud, SR)).warning_codes
    assert "clipping" not in load_audio(pcm_wav(loud, SR), checks=AudioChecks(clip_fraction=0.9)).warning_codes


def test_to_dict_is_json_ready():
    import json

    clip = load_audio(encode_audio(np.stack([tone(1.0), -tone(1.0)]), SR, "flac"))
    d = json.loads(json.dumps(clip.to_dict()))
    # the cancelled mix is also silent: both are reported, each with its own figures
    assert d["format"] == "flac" and {w["code"] for w in d["warnings"]} == {"channels_cancel", "silence"}
    assert "samples" not in d and d["stats"]["peak"] > 0


def test_a_folder_or_fifo_is_not_an_audio_file(tmp_path):
    import os

    with pytest.raises(AudioError) as ei:
        load_audio(tmp_path)
    assert errcode(ei) == "path_invalid" and ei.value.details["reason"] == "not_a_file"
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioError) as ei:  # refused without blocking on the pipe
        load_audio(fifo)
    assert errcode(ei) == "path_invalid" and "FIFO" in str(ei.value)
    with pytest.raises(AudioError) as ei:
        load_audio(tmp_path / ("x" * 300 + ".wav"))
    assert errcode(ei) == "path_invalid"
