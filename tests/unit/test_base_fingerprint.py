"""The base-model fingerprint depends on every weight, survives re-saves, and is cached (issue 8, item 4)."""

from __future__ import annotations

import json
import logging
import os

import pytest

torch = pytest.importorskip("torch")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import persona_ml.models.base_models as bm  # noqa: E402
from persona_ml.errors import ModelNotFoundError  # noqa: E402
from persona_ml.models import build_tiny_flux_pipeline, fingerprint_flux_dir  # noqa: E402

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp") / "FLUX.1-dev"
    build_tiny_flux_pipeline(seed=0).save_pretrained(root)
    return root


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_one_changed_weight_value_changes_the_fingerprint(saved, tmp_path):
    fp = fingerprint_flux_dir(saved, cache_dir=tmp_path / "c")
    other = _copy(saved, tmp_path / "tuned")
    w = other / WEIGHTS
    with safe_open(str(w), "pt") as fh:
        meta = fh.metadata()
    sd = load_file(str(w))
    name = sorted(sd)[len(sd) // 2]
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] += 1.0  # one value of one tensor: same shapes, same header, same file size
    head_before = (saved / WEIGHTS).read_bytes()[:4096]
    save_file(sd, str(w), metadata=meta)
    assert w.stat().st_size == (saved / WEIGHTS).stat().st_size and w.read_bytes()[:4096] == head_before
    assert fingerprint_flux_dir(other, cache_dir=tmp_path / "c") != fp  # v1 read headers only: it matched
    vae = _copy(saved, tmp_path / "vae")  # any component's weights count, not only the transformer's
    vw = vae / "vae/diffusion_pytorch_model.safetensors"
    vsd = load_file(str(vw))
    k = sorted(vsd)[0]
    vsd[k] = vsd[k].clone()
    vsd[k].view(-1)[-1] *= -1.5
    save_file(vsd, str(vw))
    assert fingerprint_flux_dir(vae, cache_dir=tmp_path / "c") != fp


def test_resave_with_other_sharding_metadata_and_library_version_keeps_it(saved, tmp_path):
    from diffusers import FluxPipeline

    fp = fingerprint_flux_dir(saved, cache_dir=tmp_path / "c")
    pipe = FluxPipeline.from_pretrained(str(saved), local_files_only=True)
    again = tmp_path / "resaved"
    pipe.save_pretrained(again, max_shard_size="50KB")  # the transformer is now split over several shards
    shards = sorted((again / "transformer").glob("*.safetensors"))
    assert len(shards) > 1
    for cfg_path in again.rglob("*config.json"):
        cfg = json.loads(cfg_path.read_text())
        if isinstance(cfg, dict) and "_diffusers_version" in cfg:
            cfg["_diffusers_version"] = "0.99.0"
            cfg["some_new_option"] = None  # a newer library writes new options with a null default
            cfg_path.write_text(json.dumps(cfg, indent=4))
    first = shards[0]
    save_file(load_file(str(first)), str(first), metadata={"format": "pt", "saved_by": "another tool"})
    assert fingerprint_flux_dir(again, cache_dir=tmp_path / "c") == fp


def test_warm_start_reads_no_weight_and_a_changed_file_is_hashed_again(saved, tmp_path, monkeypatch):
    work = _copy(saved, tmp_path / "m")
    cache = tmp_path / "cache"
    fp = fingerprint_flux_dir(work, cache_dir=cache)
    assert (cache / "weight_hashes.json").is_file()
    hashed: list = []
    real = bm._file_tensor_digests
    monkeypatch.setattr(bm, "_file_tensor_digests", lambda p: hashed.append(p.name) or real(p))
    assert fingerprint_flux_dir(work, cache_dir=cache) == fp and hashed == []  # warm: headers and configs only
    st = os.stat(work / WEIGHTS)
    os.utime(work / WEIGHTS, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fingerprint_flux_dir(work, cache_dir=cache) == fp
    assert hashed == ["diffusion_pytorch_model.safetensors"]  # only the touched file, found unchanged
    # a rewrite that restores size and mtime is still seen (ctime and inode are in the key)
    sd = load_file(str(work / WEIGHTS))
    name = sorted(sd)[0]
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] += 2.0
    st = os.stat(work / WEIGHTS)
    save_file(sd, str(work / WEIGHTS))
    os.utime(work / WEIGHTS, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint_flux_dir(work, cache_dir=cache) != fp


def test_unwritable_cache_and_damaged_cache_do_not_stop_a_worker(saved, tmp_path, caplog):
    fp = fingerprint_flux_dir(saved, cache_dir=tmp_path / "c")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING):
        assert fingerprint_flux_dir(saved, cache_dir=blocker / "sub") == fp  # cannot create the cache folder
    assert "weight-hash cache" in caplog.text
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "weight_hashes.json").write_text("{not json")
    assert fingerprint_flux_dir(saved, cache_dir=bad) == fp
    forged = tmp_path / "forged"  # an entry whose key does not match is ignored, whatever it claims
    forged.mkdir()
    (forged / "weight_hashes.json").write_text(json.dumps({"version": 1, "files": {
        str((saved / WEIGHTS).resolve()): {"key": [0, 0, 0, 0, 0], "tensors": {"x": ["F32", [1], "00"]}}}}))
    assert fingerprint_flux_dir(saved, cache_dir=forged) == fp


def test_truncated_weights_are_model_corrupt(saved, tmp_path):
    broken = _copy(saved, tmp_path / "broken")
    data = (broken / WEIGHTS).read_bytes()
    (broken / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotFoundError) as exc:
        fingerprint_flux_dir(broken, cache_dir=tmp_path / "c")
    assert exc.value.code == "model_corrupt"


def test_a_lora_of_the_original_is_refused_on_a_same_shape_fine_tune(saved, tmp_path):
    from persona_ml.errors import LoraValidationError
    from persona_ml.inference import Character, CharacterGenerator
    from persona_ml.inference.testing import make_random_lora
    from persona_ml.models import load_base_model

    original = load_base_model("flux-dev", path=saved)
    lora = make_random_lora(original.pipeline, tmp_path / "lora", seed=1, base_model="flux-dev",
                            base_fingerprint=original.fingerprint, targets=["transformer_blocks.*.attn.to_q"])
    tuned = _copy(saved, tmp_path / "tuned")
    sd = load_file(str(tuned / WEIGHTS))
    for k in sd:
        sd[k] = sd[k] * 1.001  # every transformer weight changed, every shape kept
    save_file(sd, str(tuned / WEIGHTS))
    gen = CharacterGenerator(load_base_model("flux-dev", path=tuned))
    gen.register(Character("a", lora_path=lora.diffusers_path))
    with pytest.raises(LoraValidationError) as exc:
        gen.activate("a")
    assert exc.value.code == "lora_base_mismatch"
    ok = CharacterGenerator(original)
    ok.register(Character("a", lora_path=lora.diffusers_path))
    assert ok.activate("a").base_fingerprint == original.fingerprint
