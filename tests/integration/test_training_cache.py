"""A rerun whose latents and texts are all cached loads no encoder (the base fingerprint comes
without weights) and trains the same LoRA bit for bit; a missing, truncated or altered entry
loads the encoders and recomputes that entry only; the transformer must still be the base the
cache keys were made with."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from persona_ml.errors import ModelMismatchError
from persona_ml.training import job as jobmod
from persona_ml.training.config import load_train_config
from persona_ml.training.testing import TinyLoader, make_synthetic_dataset
from persona_ml.training.types import JobStatus


class ForwardCounter:
    """Counts forward passes of the VAE encoder and both text encoders of each loaded pipeline."""

    def __init__(self) -> None:
        self.counts = {"vae_encoder": 0, "text_encoder": 0, "text_encoder_2": 0}

    def __call__(self, pipe) -> None:
        for name, module in (("vae_encoder", pipe.vae.encoder if pipe.vae is not None else None),
                             ("text_encoder", pipe.text_encoder), ("text_encoder_2", pipe.text_encoder_2)):
            if module is not None:
                module.register_forward_hook(lambda *_a, _n=name: self.counts.__setitem__(_n, self.counts[_n] + 1))


@pytest.fixture(scope="module")
def tiny():
    return TinyLoader()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("prepared"), n=3, size=64)


def _cfg(cache_dir, *over):
    return load_train_config("tiny-cpu", [f"cache.dir={cache_dir}", "steps=3", "checkpoint.every=3",
                                          "samples.every=-1", "samples.steps=2", "optimizer.lr=1e-2", *over])


def _train(tiny, cfg, dataset, out, monkeypatch, hook=None):
    counter = ForwardCounter()

    def on_load(pipe):
        counter(pipe)
        if hook is not None:
            hook(pipe)

    loader = tiny.with_hook(on_load)
    monkeypatch.setattr(jobmod, "_load_base_model", loader)
    events = []
    result = jobmod.train_lora(cfg, dataset.root, out, on_event=events.append)
    assert result.status is JobStatus.COMPLETED
    return result, loader, counter, events


def _same_lora(a, b) -> bool:
    ta, tb = load_file(str(a.lora_path)), load_file(str(b.lora_path))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _same_tensors(path, data: bytes) -> bool:
    from safetensors.torch import load

    a, b = load_file(str(path)), load(data)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _entries(cache_dir, kind):
    return sorted((cache_dir / kind).glob("*/*.safetensors"))


@pytest.fixture(scope="module")
def cold(dataset, tiny, tmp_path_factory):
    """A first run (samples off) on an empty cache: the reference LoRA and the filled cache."""
    cache_dir = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        result, loader, counter, events = _train(tiny, _cfg(cache_dir), dataset, tmp_path_factory.mktemp("cold"), mp)
    return cache_dir, result, loader, counter, events


def test_a_cold_run_loads_the_encoders_and_fills_the_cache(cold):
    cache_dir, result, loader, counter, events = cold
    assert loader.parts_loaded == ["none", "encoders", "transformer"] and result.encoders == "loaded"
    assert result.cache == {"latent_hits": 0, "latent_misses": 6, "text_hits": 0, "text_misses": 4}
    assert counter.counts["vae_encoder"] == 6 and counter.counts["text_encoder_2"] == 4
    assert len(_entries(cache_dir, "latents")) == 6 and len(_entries(cache_dir, "text")) == 4
    assert "encode" in result.memory and result.timings["load_encoders"] > 0
    phases = [e.phase for e in events if e.kind == "progress"]
    assert phases[:3] == ["check_cache", "check_cache", "load_encoders"] and "skip_encoders" not in phases


def test_a_fully_cached_rerun_loads_no_encoder_and_trains_the_same_lora(cold, dataset, tiny, tmp_path, monkeypatch):
    cache_dir, first, _, _, _ = cold
    result, loader, counter, events = _train(tiny, _cfg(cache_dir), dataset, tmp_path, monkeypatch)
    assert loader.parts_loaded == ["none", "transformer"]          # no "encoders", no "vae" (samples off)
    assert counter.counts == {"vae_encoder": 0, "text_encoder": 0, "text_encoder_2": 0}
    assert result.encoders == "skipped" and "encode" not in result.memory and "load_encoders" not in result.timings
    assert result.cache == {"latent_hits": 6, "latent_misses": 0, "text_hits": 4, "text_misses": 0}
    skipped = [e for e in events if e.phase == "skip_encoders"]
    assert len(skipped) == 1 and "not loaded" in skipped[0].message
    assert not any(e.phase in ("load_encoders", "encode_latents", "encode_text") for e in events)
    assert json.loads((tmp_path / "result.json").read_text())["encoders"] == "skipped"
    assert "encoders: skipped" in result.summary()
    assert _same_lora(result, first)
    from persona_ml.lora.export import read_lora_metadata

    assert read_lora_metadata(result.lora_path).base_model_fingerprint == \
        read_lora_metadata(first.lora_path).base_model_fingerprint


def test_with_samples_on_a_cached_rerun_loads_the_vae_decoder_only(dataset, tiny, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    over = ("samples.every=3",)
    first, loader1, _, _ = _train(tiny, _cfg(cache_dir, *over), dataset, tmp_path / "a", monkeypatch)
    assert loader1.parts_loaded == ["none", "encoders", "transformer"]
    seen = {}
    again, loader2, counter, _ = _train(tiny, _cfg(cache_dir, *over), dataset, tmp_path / "b", monkeypatch,
                                        hook=lambda p: p.vae is not None and seen.setdefault("vae", p.vae))
    assert loader2.parts_loaded == ["none", "vae", "transformer"] and again.encoders == "skipped"
    assert counter.counts == {"vae_encoder": 0, "text_encoder": 0, "text_encoder_2": 0}
    assert again.timings["load_decoder"] > 0
    assert seen["vae"].encoder is None and seen["vae"].decoder is not None   # the encoder half dropped
    assert _same_lora(again, first)
    pngs = sorted((tmp_path / "a" / "samples").glob("step-*/*.png"))
    assert pngs and all(p.read_bytes() == (tmp_path / "b" / p.relative_to(tmp_path / "a")).read_bytes() for p in pngs)


@pytest.mark.parametrize("damage", ["deleted", "truncated", "one_byte_changed"])
def test_a_damaged_latent_entry_loads_the_encoders_and_recomputes_that_entry_only(cold, dataset, tiny, tmp_path,
                                                                                   monkeypatch, damage):
    cache_dir, first, _, _, _ = cold
    entry = _entries(cache_dir, "latents")[2]
    others = {p: p.stat().st_mtime_ns for p in _entries(cache_dir, "latents") + _entries(cache_dir, "text")
              if p != entry}
    good = entry.read_bytes()
    if damage == "deleted":
        entry.unlink()
    elif damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    else:  # a readable file whose tensor bytes changed: only the recorded sha256 can tell
        entry.write_bytes(good[:-1] + bytes([good[-1] ^ 0x01]))
    result, loader, counter, _ = _train(tiny, _cfg(cache_dir), dataset, tmp_path, monkeypatch)
    assert loader.parts_loaded == ["none", "encoders", "transformer"] and result.encoders == "loaded"
    assert result.cache == {"latent_hits": 5, "latent_misses": 1, "text_hits": 4, "text_misses": 0}
    assert counter.counts == {"vae_encoder": 1, "text_encoder": 0, "text_encoder_2": 0}
    assert _same_tensors(entry, good)                                  # rewritten as it was
    assert {p: p.stat().st_mtime_ns for p in others} == others         # nothing else rewritten
    assert _same_lora(result, first)


def test_a_corrupt_text_entry_is_recomputed_alone(cold, dataset, tiny, tmp_path, monkeypatch):
    cache_dir, first, _, _, _ = cold
    entry = _entries(cache_dir, "text")[0]
    good = entry.read_bytes()
    entry.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    result, loader, counter, _ = _train(tiny, _cfg(cache_dir), dataset, tmp_path, monkeypatch)
    assert loader.parts_loaded == ["none", "encoders", "transformer"]
    assert result.cache == {"latent_hits": 6, "latent_misses": 0, "text_hits": 3, "text_misses": 1}
    assert counter.counts == {"vae_encoder": 0, "text_encoder": 1, "text_encoder_2": 1}
    assert _same_tensors(entry, good) and _same_lora(result, first)


def test_an_entry_under_another_key_or_without_the_needed_tensors_is_a_miss(tmp_path):
    from persona_ml.training.cache import TensorCache

    cache = TensorCache(tmp_path)
    a = cache.put("text", "aa" * 32, {"prompt_embeds": torch.ones(1, 2, 3), "pooled": torch.ones(1, 3)})
    b = cache.path("text", "bb" * 32)
    b.parent.mkdir(parents=True)
    b.write_bytes(a.read_bytes())                       # copied under another name
    assert cache.get("text", "bb" * 32) is None and not b.exists()
    assert cache.get("text", "aa" * 32, names=("prompt_embeds", "pooled"))["pooled"].shape == (1, 3)
    assert cache.get("text", "aa" * 32, names=("latents",)) is None   # lacks what the caller needs
    from safetensors.torch import save_file

    legacy = cache.path("latents", "cc" * 32)      # written before entries carried a sha256: still read
    legacy.parent.mkdir(parents=True)
    save_file({"latents": torch.ones(1, 16, 2, 2)}, str(legacy), metadata={"kind": "latents", "key": "cc" * 32})
    assert torch.equal(cache.get("latents", "cc" * 32, names=("latents",))["latents"], torch.ones(1, 16, 2, 2))


@pytest.mark.parametrize("changed", ["encoders", "transformer"])
def test_a_base_that_changes_after_its_fingerprint_is_refused(cold, dataset, tiny, tmp_path, monkeypatch, changed):
    cache_dir = tmp_path / "cache" if changed == "encoders" else cold[0]   # cold cache: the encoders load

    def loader(name, *, parts="all", **kw):
        loaded = tiny(name, parts=parts, **kw)
        if parts == changed:
            loaded.fingerprint = "sha256:" + "0" * 64     # another model's files by now
        return loaded

    monkeypatch.setattr(jobmod, "_load_base_model", loader)
    with pytest.raises(ModelMismatchError) as err:
        jobmod.train_lora(_cfg(cache_dir), dataset.root, tmp_path / "out")
    assert err.value.code == "base_model_mismatch" and err.value.details["value"] == "sha256:" + "0" * 64
