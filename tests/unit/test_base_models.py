"""Base models are found only where the spec says, loaded offline, checked and fingerprinted."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from persona_ml.errors import ConfigError, ModelMismatchError, ModelNotFoundError
from persona_ml.models.base_models import (
    BaseModelSpec,
    fingerprint_flux_dir,
    list_base_models,
    load_base_model,
    resolve_base_model,
)
from persona_ml.models.tiny_flux import build_tiny_flux_pipeline

ENV = "PERSONA_ML_FLUX_DEV_DIR"


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    """A tiny pipeline saved in the diffusers layout: the real flux-dev loading code reads it."""
    root = tmp_path_factory.mktemp("flux") / "FLUX.1-dev"
    build_tiny_flux_pipeline(seed=0).save_pretrained(root)
    return root


@pytest.fixture
def no_search_paths(monkeypatch, tmp_path):
    """Point the registry at a copy of configs/base_models.yaml with search paths under tmp."""
    import yaml

    from persona_ml.config import packaged_config_dir

    data = yaml.safe_load((packaged_config_dir() / "base_models.yaml").read_text())
    data["models"]["flux-dev"]["search_paths"] = [str(tmp_path / "nowhere"), str(tmp_path / "also-nowhere")]
    cfg = tmp_path / "configs"
    cfg.mkdir()
    for f in packaged_config_dir().glob("*.yaml"):
        shutil.copy(f, cfg / f.name)
    (cfg / "base_models.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("PERSONA_ML_CONFIG_DIR", str(cfg))
    monkeypatch.delenv(ENV, raising=False)
    return data["models"]["flux-dev"]["search_paths"]


def test_alias_and_names():
    names = list_base_models()
    assert names["fal-ai/flux-lora"] == "flux-dev"
    assert names["tiny-flux"] == "tiny-flux"
    spec = resolve_base_model("tiny-flux")
    assert spec.kind == "tiny_flux" and spec.path is None
    with pytest.raises(ConfigError) as err:
        resolve_base_model("flux-pro")
    assert err.value.code == "base_model_unknown" and err.value.details["value"] == "flux-pro"


def test_missing_dir_lists_every_place(no_search_paths, tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_base_model("fal-ai/flux-lora")
    searched = err.value.details["searched"]
    assert searched[0] == f"${ENV}: (not set)"
    assert [s.split(": ", 1)[1] for s in searched[1:]] == no_search_paths
    assert ENV in str(err.value) and err.value.code == "model_not_found"
    # an explicit path is the only place looked at
    with pytest.raises(ModelNotFoundError) as err:
        load_base_model("flux-dev", path=tmp_path / "given", dtype="fp32")
    assert err.value.details["searched"] == [f"path: {tmp_path / 'given'}"]


def test_incomplete_dir_names_missing_files(no_search_paths, tmp_path, monkeypatch):
    bad = tmp_path / "half"
    (bad / "transformer").mkdir(parents=True)
    (bad / "model_index.json").write_text("{}")
    monkeypatch.setenv(ENV, str(bad))
    with pytest.raises(ModelNotFoundError) as err:
        resolve_base_model("flux-dev")
    assert "vae/config.json" in err.value.details["missing"][str(bad)]
    assert "lacks" in str(err.value)


def test_loads_flux_dev_from_env_var_offline(no_search_paths, saved_dir, monkeypatch):
    monkeypatch.setenv(ENV, str(saved_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = load_base_model("fal-ai/flux-lora", dtype="fp32", device="cpu")
    assert base.name == "flux-dev" and base.spec.path == saved_dir
    assert base.spec.license.startswith("FLUX.1 [dev] Non-Commercial")
    assert base.fingerprint.startswith("sha256:") and base.fingerprint == fingerprint_flux_dir(saved_dir)
    ref = build_tiny_flux_pipeline(seed=0).transformer.state_dict()
    got = base.pipeline.transformer.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    out = base.pipeline("ohwx", height=64, width=64, num_inference_steps=1,
                        generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, 64, 64, 3)
    # the same folder through an explicit path, in bf16
    bf = load_base_model("flux-dev", path=saved_dir, dtype="bf16")
    assert bf.pipeline.transformer.dtype == torch.bfloat16 and bf.fingerprint == base.fingerprint


def test_fingerprint_stable_across_resave_and_sensitive_to_weights(saved_dir, tmp_path):
    fp = fingerprint_flux_dir(saved_dir)
    copy = tmp_path / "copy"
    shutil.copytree(saved_dir, copy)
    cfg = json.loads((copy / "transformer/config.json").read_text())
    cfg["_diffusers_version"] = "0.99.0"  # a re-save by another library version
    (copy / "transformer/config.json").write_text(json.dumps(cfg, indent=4))
    assert fingerprint_flux_dir(copy) == fp
    other = tmp_path / "other"
    build_tiny_flux_pipeline(seed=0).save_pretrained(other)
    from safetensors.torch import load_file, save_file

    w = other / "transformer" / "diffusion_pytorch_model.safetensors"
    sd = load_file(w)
    sd.pop(sorted(sd)[0])  # a different set of weights changes the header
    save_file(sd, w)
    assert fingerprint_flux_dir(other) != fp


def test_schnell_shaped_folder_is_refused(saved_dir, tmp_path):
    schnell = tmp_path / "schnell"
    shutil.copytree(saved_dir, schnell)
    cfg = json.loads((schnell / "transformer/config.json").read_text())
    cfg["guidance_embeds"] = False
    (schnell / "transformer/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelMismatchError) as err:
        load_base_model("flux-dev", path=schnell)
    assert err.value.details["field"] == "transformer.guidance_embeds" and "schnell" in str(err.value)


def test_tiny_flux_fingerprint_depends_on_seed_not_dtype():
    a = load_base_model("tiny-flux", dtype="fp32")
    b = load_base_model("tiny-flux", dtype=torch.bfloat16)
    assert a.fingerprint == b.fingerprint
    assert b.pipeline.transformer.dtype == torch.bfloat16
    spec = resolve_base_model("tiny-flux")
    import dataclasses

    c = load_base_model(dataclasses.replace(spec, seed=1))
    assert c.fingerprint != a.fingerprint
    assert isinstance(c.spec, BaseModelSpec)
    with pytest.raises(ConfigError):
        resolve_base_model("tiny-flux", path="/somewhere")


_MODULES = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")


def test_every_part_reports_the_full_loads_fingerprint_and_none_loads_no_weight(saved_dir, monkeypatch):
    """``parts="none"`` is how the trainer keys its cache without loading a model: it must give the
    fingerprint a full load gives (folder, tiny-flux built in code, and the trainers' TinyLoader)."""
    import diffusers
    import transformers

    from persona_ml.training.testing import TinyLoader

    held = {"vae": ("vae",), "none": (), "encoders": _MODULES[:5], "transformer": ("transformer",), "all": _MODULES}
    full = load_base_model("flux-dev", path=saved_dir)
    for parts, modules in held.items():
        got = load_base_model("flux-dev", path=saved_dir, parts=parts, quantization="none")
        assert got.fingerprint == full.fingerprint and got.architecture == full.architecture, parts
        assert {m for m in _MODULES if getattr(got.pipeline, m) is not None} == set(modules), parts
        assert got.pipeline.scheduler is not None
    tiny_full = load_base_model("tiny-flux")
    tiny_loader = TinyLoader()
    for parts, modules in held.items():
        got = load_base_model("tiny-flux", parts=parts)
        assert got.fingerprint == tiny_full.fingerprint, parts
        assert {m for m in _MODULES if getattr(got.pipeline, m) is not None} == set(modules), parts
        stand_in = tiny_loader("tiny-flux", dtype=torch.float32, device="cpu", parts=parts)
        assert stand_in.fingerprint == tiny_full.fingerprint, parts
        assert {m for m in _MODULES if getattr(stand_in.pipeline, m) is not None} == set(modules), parts

    def no_weights(*a, **k):
        raise AssertionError("parts='none' read a model's weights")

    for cls in (diffusers.FluxPipeline, diffusers.AutoencoderKL, diffusers.FluxTransformer2DModel,
                transformers.CLIPTextModel, transformers.T5EncoderModel):
        monkeypatch.setattr(cls, "from_pretrained", no_weights)
    assert load_base_model("flux-dev", path=saved_dir, parts="none").fingerprint == full.fingerprint
    with pytest.raises(ConfigError):
        load_base_model("flux-dev", path=saved_dir, parts="decoder")
