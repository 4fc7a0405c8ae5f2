"""Voice on real speech (../shared/voices) with the shipped models: GE2E from Resemblyzer's wheel and
silero-vad from its wheel; speech generation with a tiny random Dia of the real classes.

The embeddings of every file are computed once per module (about 13 minutes of speech).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is in the voice extra (pip install 'persona-ml[voice]')")

from persona_ml.audio import load_audio
from persona_ml.errors import ArtifactError, ModelMismatchError, ModelNotFoundError, VoiceError

REPO = Path(__file__).resolve().parents[2]
VOICES = Path(os.environ.get("PERSONA_ML_SHARED_VOICES", REPO.parent / "shared" / "voices"))


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models and a 256-wide LSTM are overhead-bound: one intra-op thread is faster, and on a
    shared 2-core machine two spinning OpenMP threads per process slow everything down tenfold."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def voices() -> Path:
    if not (VOICES / "MANIFEST.tsv").is_file():
        pytest.skip(f"../shared/voices not found at {VOICES} (real-voice fixtures live beside the repo; set "
                    "PERSONA_ML_SHARED_VOICES to point at a copy)")
    return VOICES


@pytest.fixture(scope="module")
def rows(voices) -> list[dict]:
    with open(voices / "MANIFEST.tsv", newline="") as fh:
        return [r for r in csv.DictReader(fh, delimiter="\t") if r["path"].startswith("speakers/")]


@pytest.fixture(scope="module")
def embedder():
    from persona_ml.voice import load_voice_embedder

    return load_voice_embedder("ge2e")


@pytest.fixture(scope="module")
def embeddings(embedder, voices, rows) -> dict:
    embs = embedder.embed_many([str(voices / r["path"]) for r in rows])
    return {r["path"]: e for r, e in zip(rows, embs)}


def _speaker_files(rows, speaker, n=None):
    files = [r["path"] for r in rows if r["speaker"] == speaker and not r["same_utterance_as"]]
    return files[:n] if n else files


# --- the shipped model -------------------------------------------------------------------------------


def test_speaker_verification_on_real_speech(embeddings, rows):
    """AUC >= 0.99 over every pair of files but a recording with its own re-encode."""
    from persona_ml.voice.metrics import verification_metrics

    origin = {r["path"]: r["same_utterance_as"] or r["path"] for r in rows}
    same, diff = [], []
    for a, b in itertools.combinations(rows, 2):
        if origin[a["path"]] == origin[b["path"]]:
            continue
        score = embeddings[a["path"]].similarity(embeddings[b["path"]])
        (same if a["speaker"] == b["speaker"] else diff).append(score)
    m = verification_metrics(np.array(same), np.array(diff))
    print(f"\nGE2E on ../shared/voices: {m.n_same} same / {m.n_different} different pairs, AUC {m.auc:.4f}, "
          f"EER {100 * m.eer:.2f} % at {m.eer_threshold:.3f}")
    assert m.auc >= 0.99
    assert m.eer <= 0.02
    # the configured same-speaker threshold sits at the measured equal-error point
    from persona_ml.voice.thresholds import voice_thresholds_for

    t = voice_thresholds_for(next(iter(embeddings.values())).provenance)
    assert abs(t.same_speaker_min_cosine - m.eer_threshold) < 0.02


def test_embeddings_record_their_model_and_speech(embeddings, rows):
    e = embeddings["speakers/ljspeech/LJ001-0001.wav"]
    assert e.dim == 256 and abs(np.linalg.norm(e.vector) - 1) < 1e-5
    p = e.provenance
    assert (p.backend, p.model_name, p.dim, p.license) == ("resemblyzer", "ge2e", 256, "Apache-2.0")
    assert p.files == {"pretrained.pt": "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"}
    assert 7.0 < e.speech_s < e.duration_s <= 9.7  # 9.66 s read sentence with pauses
    assert e.audio["format"] == "wav" and e.audio["original_sample_rate"] == 22050
    short = embeddings["speakers/libri_19/19-198-0000.flac"]  # a 2 s file
    assert "little_speech" in short.warning_codes


def test_codec_copies_score_as_the_same_recording(embeddings, rows):
    for r in rows:
        if r["same_utterance_as"]:
            score = embeddings[r["path"]].similarity(embeddings[r["same_utterance_as"]])
            assert score >= 0.99, (r["path"], score)


def test_front_end_matches_resemblyzer_and_librosa(embedder, voices):
    """Our torch mel equals librosa's melspectrogram, and our network equals Resemblyzer's on the same input."""
    librosa = pytest.importorskip("librosa")
    pytest.importorskip("webrtcvad")
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import VoiceEncoder
    wav = load_audio(voices / "speakers/libri_2033/2033-164914-0004.flac").samples
    ref = librosa.feature.melspectrogram(y=wav, sr=16000, n_fft=400, hop_length=160, n_mels=40).astype(np.float32).T
    ours = embedder.mel(wav)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-6 * float(ref.max()))
    windows, _ = embedder.windows(wav)
    encoder = VoiceEncoder("cpu", verbose=False)
    with torch.inference_mode():
        theirs = encoder(torch.from_numpy(windows)).numpy()
    np.testing.assert_allclose(embedder.forward(windows), theirs, atol=1e-5)


def test_silence_and_noise_are_not_speech(embedder):
    rng = np.random.default_rng(0)
    silent = embedder.embed(np.zeros(3 * 16000, np.float32), source_sample_rate=16000)
    assert silent.speech_s == 0.0 and "no_speech" in silent.warning_codes
    hiss = embedder.embed((0.05 * rng.standard_normal(3 * 16000)).astype(np.float32), source_sample_rate=16000)
    assert hiss.speech_s < 0.3 and "no_speech" in hiss.warning_codes


# --- the within-clip speaker check --------------------------------------------------------------------


def test_two_speakers_concatenated_in_one_file_are_flagged(embedder, voices, rows):
    def first_8s(path):
        return load_audio(voices / path).samples[: 8 * 16000]

    a = _speaker_files(rows, "libri_2033")
    b = _speaker_files(rows, "libri_3080")
    c = _speaker_files(rows, "ljspeech")
    two = [np.concatenate([first_8s(x), first_8s(y)]) for x, y in ((a[0], b[0]), (c[2], a[1]), (b[6], c[4]))]
    one = [np.concatenate([first_8s(x), first_8s(y)]) for x, y in ((a[0], a[2]), (b[0], b[6]), (c[2], c[4]))]
    two_e = embedder.embed_many(two, source_sample_rate=16000)
    flagged = [e.speaker_check["multiple_speakers"] for e in two_e]
    clean = [e.speaker_check["multiple_speakers"] for e in embedder.embed_many(one, source_sample_rate=16000)]
    assert flagged == [True, True, True]
    assert clean == [False, False, False]
    e = two_e[0]
    w = e.warnings[e.warning_codes.index("multiple_speakers")]
    assert w["centroid_cosine"] < w["limit"]
    # the two groups are the two halves of the file
    starts = [sorted(seg[0] for seg in g) for g in w["groups"]]
    assert {min(s) < 8.0 for s in starts} == {True, False}


def test_single_speaker_files_are_not_flagged(embeddings):
    assert not [p for p, e in embeddings.items() if "multiple_speakers" in e.warning_codes]


# --- profiles -----------------------------------------------------------------------------------------


def test_profile_flags_another_speakers_sample_mixed_in(embeddings, rows):
    from persona_ml.voice.profile import VoiceProfile

    own = [embeddings[p] for p in _speaker_files(rows, "libri_3331", 6)]
    intruder = embeddings[_speaker_files(rows, "libri_1998")[0]]  # another female reader
    profile = VoiceProfile.build(own[:3] + [intruder] + own[3:])
    assert profile.outliers == (3,)
    assert profile.sample_scores[3] < profile.thresholds.outlier_max_cosine < min(np.delete(profile.sample_scores, 3))
    clean = VoiceProfile.build(own)
    assert clean.outliers == ()
    # the intruder is kept out of the centroid
    np.testing.assert_allclose(profile.centroid, clean.centroid, atol=1e-6)
    assert profile.is_same_speaker(embeddings[_speaker_files(rows, "libri_3331")[8]])
    assert not profile.is_same_speaker(intruder)
    assert profile.total_speech_s == pytest.approx(sum(e.speech_s for e in own) + intruder.speech_s)


def test_two_samples_that_disagree_are_both_flagged(embeddings, rows):
    from persona_ml.voice.profile import VoiceProfile

    a, b = embeddings[_speaker_files(rows, "libri_2609")[0]], embeddings[_speaker_files(rows, "ljspeech")[0]]
    assert VoiceProfile.build([a, b]).outliers == (0, 1)


def test_adding_a_sample_equals_rebuilding(embeddings, rows):
    from persona_ml.voice.profile import VoiceProfile

    es = [embeddings[p] for p in _speaker_files(rows, "libri_1688", 5)]
    grown = VoiceProfile.build(es[:4]).add(es[4])
    rebuilt = VoiceProfile.build(es)
    assert grown.fingerprint == rebuilt.fingerprint
    np.testing.assert_array_equal(grown.centroid, rebuilt.centroid)
    np.testing.assert_array_equal(grown.sample_scores, rebuilt.sample_scores)


def test_profile_save_load_and_refusals(embeddings, rows, tmp_path):
    import dataclasses

    from persona_ml.faces.types import ModelProvenance
    from persona_ml.voice.profile import VoiceProfile

    es = [embeddings[p] for p in _speaker_files(rows, "libri_2033", 4)]
    profile = VoiceProfile.build(es)
    base = profile.save(tmp_path / "ava")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ava.json", "ava.safetensors"]
    loaded = VoiceProfile.load(tmp_path / "ava.json")
    assert loaded.fingerprint == profile.fingerprint and loaded.samples == profile.samples
    np.testing.assert_array_equal(loaded.centroid, profile.centroid)
    meta = json.loads((tmp_path / "ava.json").read_text())
    assert meta["provenance"]["model_name"] == "ge2e" and meta["samples"][0]["sha256"] == es[0].sha256
    # a damaged pair is detected
    blob = bytearray((tmp_path / "ava.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (tmp_path / "ava.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError) as ei:
        VoiceProfile.load(base)
    assert ei.value.code == "profile_corrupt"
    with pytest.raises(ArtifactError) as ei:
        VoiceProfile.load(tmp_path / "missing")
    assert ei.value.code == "profile_not_found"
    # another model's embedding is refused, to build and to compare
    other = ModelProvenance(backend="speechbrain", model_name="ecapa", files={"x.ckpt": "0" * 64}, dim=256,
                            license="Apache-2.0")
    alien = dataclasses.replace(es[0], provenance=other, sha256="f" * 64)
    with pytest.raises(ModelMismatchError):
        profile.add(alien)
    with pytest.raises(ModelMismatchError):
        profile.similarity(alien)
    with pytest.raises(ModelMismatchError):
        VoiceProfile.build([es[1], alien])
    with pytest.raises(VoiceError) as ei:
        VoiceProfile.build([es[0], es[0]])
    assert ei.value.code == "duplicate_reference"
    with pytest.raises(VoiceError) as ei:
        VoiceProfile.build([])
    assert ei.value.code == "profile_empty"


def test_profile_lists_re_encodes_as_duplicates(embeddings):
    from persona_ml.voice.profile import VoiceProfile

    profile = VoiceProfile.build([embeddings["speakers/ljspeech/LJ001-0001.wav"], embeddings["speakers/ljspeech/LJ001-0001.mp3"],
                                  embeddings["speakers/ljspeech/LJ001-0003.wav"]])
    assert [(a, b) for a, b, _ in profile.duplicates()] == [(0, 1)]


def test_missing_weights_name_every_path_searched(monkeypatch):
    from persona_ml.voice.models import locate_package_file

    with pytest.raises(ModelNotFoundError) as ei:
        locate_package_file("resemblyzer", "no_such_model.pt", "0" * 64, what="test")
    assert ei.value.details["searched"] and ei.value.details["searched"][0].endswith("no_such_model.pt")
    with pytest.raises(ModelNotFoundError):
        locate_package_file("no_such_package_here", "w.pt", "0" * 64, what="test")
    from persona_ml.errors import PersonaMLError

    with pytest.raises(PersonaMLError) as ei:
        locate_package_file("resemblyzer", "pretrained.pt", "0" * 64, what="test")
    assert ei.value.code == "model_checksum_mismatch"


# --- clone rules on measured samples ------------------------------------------------------------------


def test_clone_check_on_real_samples(embedder, voices, rows, tmp_path):
    from persona_ml.voice.api import check_clone_samples

    own = [str(voices / p) for p in _speaker_files(rows, "libri_3080", 7)]
    result, profile, _ = check_clone_samples(own, name="Ava", embedder=embedder)
    assert result.ok, result.to_dict()
    assert result.total_speech_s >= 30
    png = tmp_path / "photo.wav"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(png, "PNG")
    mixed = own[:2] + [str(voices / _speaker_files(rows, "libri_2033")[0]), str(png)]
    result, profile, results = check_clone_samples(mixed, name="Ava", embedder=embedder, settings={"stability": 3})
    codes = {v.code: v for v in result.violations}
    assert codes["sample_refused"].field == "samples[3]" and codes["sample_refused"].actual == "audio_not_audio"
    assert {"total_speech_too_short", "setting_out_of_range"} <= set(codes)
    # two of one voice against one of another: every sample disagrees with the rest, the intruder most
    assert profile.outliers and 2 in profile.outliers


# --- speech generation (tiny random Dia) --------------------------------------------------------------


@pytest.fixture(scope="module")
def profile(embeddings, rows):
    from persona_ml.voice.profile import VoiceProfile

    return VoiceProfile.build([embeddings[p] for p in _speaker_files(rows, "libri_3080", 3)])


@pytest.fixture(scope="module")
def prompt(voices, rows):
    from persona_ml.voice.generator import VoicePrompt

    return VoicePrompt.from_audio(voices / _speaker_files(rows, "libri_3080")[3], "a transcript of the reference clip",
                                  max_s=20.0)


def test_tiny_random_tts_runs_end_to_end_and_is_scored(embedder, profile, prompt, tmp_path):
    from persona_ml.voice.testing import tiny_voice_generator

    gen = tiny_voice_generator(embedder)
    out = gen.generate("Hello there, how are you?", profile=profile, prompt=prompt, max_new_tokens=100, seed=3,
                       settings={"stability": 0.2, "style": 0.6})
    assert out.random_weights is True
    assert out.sample_rate == 44100 and out.samples.dtype == np.float32 and out.duration_s > 0.2
    assert set(out.ignored_settings) == {"similarity_boost", "style"}
    assert out.model_settings["temperature"] == pytest.approx(1.8) and out.model_settings["candidates"] == 3
    assert len(out.candidates) == 3  # use_speaker_boost defaults to true: best of 3 by similarity
    sims = [c["similarity"] for c in out.candidates]
    assert all(s is not None for s in sims) and out.similarity == max(sims) and out.chosen == int(np.argmax(sims))
    # random weights make noise, not this voice: the output is flagged
    assert "voice_low" in out.flags and out.similarity < profile.thresholds.generated_min_cosine
    path = out.save(tmp_path / "out.wav")
    side = json.loads(Path(str(path) + ".json").read_text())
    assert side["random_weights"] is True and side["flags"] == list(out.flags)
    assert load_audio(path, sample_rate=44100).duration_s == pytest.approx(out.duration_s, abs=0.01)
    again = gen.generate("Hello there, how are you?", profile=profile, prompt=prompt, max_new_tokens=100, seed=3,
                         settings={"stability": 0.2, "style": 0.6})
    np.testing.assert_array_equal(again.samples, out.samples)  # same seed, same audio
    other = gen.generate("Hello there, how are you?", profile=profile, prompt=prompt, max_new_tokens=100, seed=4,
                         settings={"stability": 0.2, "style": 0.6, "use_speaker_boost": False})
    assert len(other.candidates) == 1 and not np.array_equal(other.samples[: len(out.samples)], out.samples)


def test_generator_loads_from_a_local_folder_only(embedder, profile, prompt, tmp_path):
    from persona_ml.voice.generator import VoiceGenerator
    from persona_ml.voice.testing import save_tiny_dia

    with pytest.raises(ModelNotFoundError) as ei:
        VoiceGenerator.from_pretrained(tmp_path / "nothing", embedder=embedder)
    assert any(s.endswith("config.json") for s in ei.value.details["searched"])
    folder = save_tiny_dia(tmp_path / "dia")
    gen = VoiceGenerator.from_pretrained(folder, embedder=embedder)
    assert gen.info.random_weights is True and "model.safetensors" in gen.info.files
    out = gen.generate("Hi.", profile=profile, prompt=prompt, settings={"use_speaker_boost": False}, max_new_tokens=40)
    assert len(out.candidates) == 1 and out.random_weights is True


def test_generation_refuses_bad_requests(embedder, profile, prompt):
    import dataclasses

    from persona_ml.errors import InputError, VoiceRuleError
    from persona_ml.faces.types import ModelProvenance
    from persona_ml.voice.testing import tiny_voice_generator

    gen = tiny_voice_generator(embedder)
    with pytest.raises(InputError):
        gen.generate("  ", profile=profile, prompt=prompt)
    with pytest.raises(InputError):
        gen.generate("x" * 1001, profile=profile, prompt=prompt)
    with pytest.raises(VoiceRuleError) as ei:
        gen.generate("hi", profile=profile, prompt=prompt, settings={"stability": 2, "style": -1})
    assert [v["field"] for v in ei.value.details["violations"]] == ["stability", "style"]
    other = dataclasses.replace(profile, provenance=ModelProvenance(backend="x", model_name="y", files={}, dim=256,
                                                                      license="?"))
    with pytest.raises(ModelMismatchError):
        gen.generate("hi", profile=other, prompt=prompt)


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_embed_profile_check_generate(voices, rows, tmp_path, capsys):
    from persona_ml.cli import main

    files = [str(voices / p) for p in _speaker_files(rows, "libri_1998", 4)]
    bad = tmp_path / "empty.wav"
    bad.write_bytes(b"")
    assert main(["voice", "embed", files[0], str(bad)]) == 2
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["model"]["model_name"] == "ge2e" and lines[0]["speech_s"] > 1
    assert lines[1]["error"]["code"] == "audio_empty"

    folder = tmp_path / "samples"
    folder.mkdir()
    for f in files:
        (folder / Path(f).name).write_bytes(Path(f).read_bytes())
    assert main(["voice", "profile", str(folder), "--out", str(tmp_path / "p")]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5 and lines[-1]["n_samples"] == 4 and lines[-1]["outliers"] == []

    assert main(["voice", "check", *files[:2], "--name", "Ava", "--stability", "0.4"]) == 3  # 2 short clips: < 30 s
    out = json.loads(capsys.readouterr().out)
    assert [v["code"] for v in out["violations"]] == ["total_speech_too_short"]
    assert out["ok"] is False and out["settings"]["stability"] == 0.4

    assert main(["voice", "generate", "--profile", str(tmp_path / "p"), "--text", "Hi there.", "--prompt", files[0],
                 "--prompt-text", "the reference", "--tiny-random", "--out", str(tmp_path / "g.wav"),
                 "--no-speaker-boost", "--max-new-tokens", "40"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["random_weights"] is True and Path(record["out"]).is_file() and len(record["candidates"]) == 1
