"""The tiny FLUX stand-in keeps the real model's structure, is deterministic and round-trips."""

from __future__ import annotations

import pytest
import torch

from persona_ml.errors import ConfigError
from persona_ml.models.tiny_flux import (
    FLUX_SCHEDULER_CONFIG,
    TinyFluxConfig,
    build_tiny_flux_pipeline,
    tiny_flux_fingerprint,
)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_flux_pipeline(seed=0)


def _generate(pipe, prompt="a photo of ohwx person", height=64, width=64, seed=0):
    return pipe(
        prompt,
        height=height,
        width=width,
        num_inference_steps=2,
        guidance_scale=3.5,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


def test_structure_matches_flux_dev_switches(pipe):
    t = pipe.transformer.config
    assert t.in_channels == 64 and t.patch_size == 1
    assert t.guidance_embeds is True
    assert sum(t.axes_dims_rope) == t.attention_head_dim
    assert t.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert t.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    v = pipe.vae.config
    assert v.latent_channels == 16 and len(v.block_out_channels) == 4
    assert (v.scaling_factor, v.shift_factor) == (0.3611, 0.1159)
    assert v.use_quant_conv is False and v.use_post_quant_conv is False
    assert pipe.vae_scale_factor == 8
    s = pipe.scheduler.config
    for key, value in FLUX_SCHEDULER_CONFIG.items():
        assert s[key] == value, key


def test_same_seed_same_weights_other_seed_differs(pipe):
    cfg = TinyFluxConfig()
    again = build_tiny_flux_pipeline(seed=0)
    other = build_tiny_flux_pipeline(seed=1)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert tiny_flux_fingerprint(pipe, 0, cfg) == tiny_flux_fingerprint(again, 0, cfg)
    assert tiny_flux_fingerprint(pipe, 0, cfg) != tiny_flux_fingerprint(other, 1, cfg)


def test_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_flux_pipeline(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizers_handle_trigger_and_unknown_words(pipe):
    prompt = "a photo of ohwx zqxjv person, Élan!"
    clip_ids = pipe.tokenizer(prompt).input_ids
    t5_ids = pipe.tokenizer_2(prompt).input_ids
    assert clip_ids[0] == pipe.tokenizer.bos_token_id and clip_ids[-1] == pipe.tokenizer.eos_token_id
    assert t5_ids[-1] == pipe.tokenizer_2.eos_token_id
    # the trigger is one learned token in both, the made-up word splits but is not <unk>
    assert "▁ohwx" in pipe.tokenizer_2.tokenize(prompt)
    assert "ohwx</w>" in pipe.tokenizer.tokenize(prompt)
    zq = pipe.tokenizer_2("zqxjv").input_ids[:-1]
    assert pipe.tokenizer_2.unk_token_id not in zq and len(zq) > 1
    assert max(clip_ids) < pipe.text_encoder.config.vocab_size
    assert max(t5_ids) < pipe.text_encoder_2.config.vocab_size


def test_generates_at_several_sizes_and_prompt_matters(pipe):
    a = _generate(pipe, height=64, width=64)
    b = _generate(pipe, height=128, width=96)
    assert a.shape == (1, 64, 64, 3) and b.shape == (1, 128, 96, 3)
    assert a.std() > 0.01
    assert not (a == _generate(pipe, prompt="a cat")).all()
    assert (a == _generate(pipe)).all()


def test_save_pretrained_round_trip(pipe, tmp_path):
    from diffusers import FluxPipeline

    # fresh builds: a tokenizer that has been called saves its last padding/truncation state
    build_tiny_flux_pipeline(seed=0).save_pretrained(tmp_path / "p")
    build_tiny_flux_pipeline(seed=0).save_pretrained(tmp_path / "q")
    for f in sorted((tmp_path / "p").rglob("*")):
        if f.is_file():
            twin = tmp_path / "q" / f.relative_to(tmp_path / "p")
            assert f.read_bytes() == twin.read_bytes(), f"{f.name} differs between same-seed builds"
    loaded = FluxPipeline.from_pretrained(tmp_path / "p", local_files_only=True)
    assert loaded.tokenizer.tokenize("ohwx person") == pipe.tokenizer.tokenize("ohwx person")
    assert loaded.tokenizer_2("ohwx person").input_ids == pipe.tokenizer_2("ohwx person").input_ids
    assert abs(_generate(loaded) - _generate(pipe)).max() < 1e-4


def test_dtype_and_config_validation():
    p = build_tiny_flux_pipeline(seed=0, dtype=torch.bfloat16)
    assert p.transformer.dtype == torch.bfloat16
    with pytest.raises(ConfigError) as err:
        TinyFluxConfig(attention_head_dim=16, axes_dims_rope=(4, 4, 4))
    assert err.value.details["field"] == "axes_dims_rope"
    with pytest.raises(ConfigError):
        TinyFluxConfig.from_dict({"num_layer": 2})
    assert TinyFluxConfig.from_dict(TinyFluxConfig.cpu_large().to_dict()) == TinyFluxConfig.cpu_large()
