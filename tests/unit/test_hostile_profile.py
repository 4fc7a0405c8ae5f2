"""Issue 12, profiles: one atomic unit under concurrent writers, hostile files are coded errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hostile_cases import assert_coded, hostile_json_texts, mutations

from persona_ml import build_profile, load_profile
from persona_ml.errors import ArtifactError, PersonaMLError
from persona_ml.faces.thresholds import FaceThresholds
from persona_ml.faces.types import FaceObservation, ModelProvenance, l2_normalize

DIM = 8
PROV = ModelProvenance(backend="dlib", model_name="m", files={"w.dat": "a" * 64}, dim=DIM, license="CC0-1.0")
THR = FaceThresholds(same_person_min_cosine=0.6, outlier_max_cosine=0.7, near_duplicate_min_cosine=0.98,
                     min_face_size_px=40, min_sharpness=20.0)


def _profile(seed: int, n: int = 4):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(DIM)
    obs = [FaceObservation(bbox=(0.0, 0.0, 50.0, 50.0), landmarks=np.zeros((5, 2), np.float32), det_score=1.0,
                           face_size=50.0, sharpness=100.0, pose=None,
                           embedding=l2_normalize((base + 0.2 * rng.standard_normal(DIM)).astype(np.float32)),
                           image_sha256=f"{seed:04d}{i:060d}", image_size=(100, 100), provenance=PROV) for i in range(n)]
    return build_profile(obs, THR)


def _rewrite_meta(path, meta_text: str):
    """The profile file with its header metadata replaced (arrays kept)."""
    from safetensors.numpy import load, save

    tensors = load(path.read_bytes())
    path.write_bytes(save(tensors, metadata={"kind": "persona_ml.face_profile", "format_version": "2",
                                             "persona_ml.face_profile": meta_text}))


def _meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        return json.loads(fh.metadata()["persona_ml.face_profile"])


@pytest.mark.parametrize("edit", [
    {"format_version": 10**30}, {"format_version": 2.0}, {"format_version": True},
    {"provenance": {"dim": 10**18}}, {"provenance": {"dim": -8}}, {"provenance": {"dim": "8"}},
    {"provenance": {"files": ["w.dat"]}}, {"provenance": {"backend": ["dlib"]}},
    {"thresholds": {"same_person_min_cosine": 5.0}}, {"thresholds": {"min_face_size_px": 2**63}},
    {"thresholds": {"min_sharpness": -1.0}}, {"outliers": [10**6]}, {"outliers": [-1]}, {"outliers": "0"},
    {"image_sha256s": [1, 2, 3, 4]}, {"image_sha256s": "abc"}, {"fingerprint": None}, {"created_by": 5},
])
def test_out_of_range_and_wrong_type_numbers_in_profile_metadata_are_corrupt(tmp_path, edit):
    base = _profile(1).save(tmp_path / "p")
    path = tmp_path / "p.safetensors"
    meta = _meta(path)
    for key, value in edit.items():
        if isinstance(value, dict) and isinstance(meta.get(key), dict):
            meta[key].update(value)
        else:
            meta[key] = value
    _rewrite_meta(path, json.dumps(meta))
    with pytest.raises(ArtifactError) as info:
        load_profile(base)
    assert info.value.code in ("profile_corrupt", "profile_format_unknown")


def test_profile_paths_say_what_they_are(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    os.mkfifo(tmp_path / "pipe.safetensors")
    for base in (tmp_path / "dir", tmp_path / "pipe", tmp_path / ("p" * 300)):
        with pytest.raises(ArtifactError) as info:
            load_profile(base)
        assert info.value.code == "path_invalid", base


def test_fuzz_profile_files(tmp_path):
    rng = random.Random(3)
    base = _profile(2).save(tmp_path / "p")
    path = tmp_path / "p.safetensors"
    good = path.read_bytes()
    meta = _meta(path)
    n_ok = 0
    for variant in mutations(meta, rng, 150):
        try:
            text = json.dumps(variant)
        except (ValueError, RecursionError):
            continue
        _rewrite_meta(path, text)
        out = assert_coded(load_profile, base)
        n_ok += not isinstance(out, PersonaMLError)
    for text in hostile_json_texts(json.dumps(meta)):
        _rewrite_meta(path, text.decode("utf-8", "replace"))
        assert isinstance(assert_coded(load_profile, base), PersonaMLError)
    for i in range(150):  # byte-level damage to the whole file
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.7:
                data[pos] ^= 1 << rng.randrange(8)
            else:
                del data[pos:]
        path.write_bytes(bytes(data) if i % 7 else good[:8] + b"{" * 5000)
        out = assert_coded(load_profile, base)
        if not isinstance(out, PersonaMLError):  # a flip in padding or a key the loader does not use
            assert out.fingerprint == _profile(2).fingerprint
    assert n_ok < 150


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_hostile_profile import _profile
    profile = _profile(int(sys.argv[1]))
    for _ in range(int(sys.argv[2])):
        profile.save(sys.argv[3])
""")


def test_two_processes_saving_one_profile_never_leave_an_unloadable_one(tmp_path):
    """Two writers save different profiles to one path 200 times each while this process reads
    it in a loop: every read is one of the two profiles, never a torn or mismatched pair."""
    target = tmp_path / "char" / "face"
    first = _profile(10)
    first.save(target)
    expected = {first.fingerprint: 0, _profile(11).fingerprint: 0, _profile(12).fingerprint: 0}
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [subprocess.Popen([sys.executable, str(script), str(seed), "200", str(target)], env=env,
                                stderr=subprocess.PIPE) for seed in (11, 12)]
    reads = 0
    while any(w.poll() is None for w in writers) or reads < 50:
        profile = load_profile(target)  # raises on a torn profile
        expected[profile.fingerprint] += 1
        reads += 1
    for w in writers:
        assert w.wait() == 0, w.stderr.read().decode()[-2000:]
    final = load_profile(target)
    assert final.fingerprint in (_profile(11).fingerprint, _profile(12).fingerprint)
    assert reads >= 50 and sum(expected.values()) == reads
    assert sorted(p.name for p in target.parent.iterdir()) == ["face.safetensors"]  # no temp files left
