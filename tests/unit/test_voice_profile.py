"""VoiceProfile logic on synthetic embeddings (no audio, no model: runs on a fresh clone)."""

from __future__ import annotations

import numpy as np
import pytest

from persona_ml.errors import ArtifactError, ModelMismatchError
from persona_ml.faces.types import ModelProvenance
from persona_ml.voice.profile import VoiceProfile
from persona_ml.voice.thresholds import voice_thresholds_for
from persona_ml.voice.types import VoiceEmbedding

GE2E = ModelProvenance(backend="resemblyzer", model_name="ge2e",
                       files={"pretrained.pt": "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"},
                       dim=256, license="Apache-2.0", commercial_use=True)


def emb(vec, i, warnings=(), speech=10.0, provenance=GE2E):
    v = np.asarray(vec, np.float32)
    v = v / np.linalg.norm(v)
    return VoiceEmbedding(vector=v, provenance=provenance, source=f"s{i}.wav", sha256=f"{i:064x}", duration_s=speech + 1,
                          speech_s=speech, partials=v[None, :], partial_times=((0.0, 1.6),),
                          warnings=tuple({"code": w, "message": w} for w in warnings))


def voice(seed, n, spread=0.35):
    rng = np.random.default_rng(seed)
    center = np.abs(rng.standard_normal(256))
    return [center / np.linalg.norm(center) + spread * np.abs(rng.standard_normal(256)) / 16 for _ in range(n)]


def test_outliers_multi_speaker_samples_and_the_centroid():
    a, b = voice(0, 5), voice(1, 1)
    samples = [emb(v, i) for i, v in enumerate(a)] + [emb(b[0], 9)] + [emb(a[0] + 0.01, 10, warnings=("multiple_speakers",))]
    profile = VoiceProfile.build(samples)
    assert profile.outliers == (5,)
    assert profile.multi_speaker_samples == (6,)
    clean = VoiceProfile.build(samples[:5])
    np.testing.assert_allclose(profile.centroid, clean.centroid, atol=1e-6)  # both kept out of the centroid
    assert profile.total_speech_s == pytest.approx(70.0)
    s = profile.to_summary()
    assert s["samples"][5]["outlier"] and s["samples"][6]["multiple_speakers"] and s["n_samples"] == 7
    assert profile.thresholds == voice_thresholds_for(GE2E)


def test_add_equals_rebuild_and_save_load(tmp_path):
    samples = [emb(v, i) for i, v in enumerate(voice(2, 4))]
    grown = VoiceProfile.build(samples[:3]).add(samples[3])
    assert grown.fingerprint == VoiceProfile.build(samples).fingerprint
    base = grown.save(tmp_path / "v.safetensors")
    loaded = VoiceProfile.load(base)
    assert loaded.fingerprint == grown.fingerprint
    (tmp_path / "v.json").write_text((tmp_path / "v.json").read_text().replace('"format_version": 1', '"format_version": 9'))
    with pytest.raises(ArtifactError) as ei:
        VoiceProfile.load(base)
    assert ei.value.code == "profile_format_unknown"


def test_another_models_embeddings_are_refused():
    other = ModelProvenance(backend="resemblyzer", model_name="ge2e", files={"pretrained.pt": "1" * 64}, dim=256,
                            license="Apache-2.0")
    a = voice(3, 2)
    with pytest.raises(ModelMismatchError):
        VoiceProfile.build([emb(a[0], 0), emb(a[1], 1, provenance=other)])
    assert emb(a[0], 0).similarity(emb(a[1], 1)) > 0.5
    with pytest.raises(ModelMismatchError):
        emb(a[0], 0).similarity(emb(a[1], 1, provenance=other))
