"""The real-size video pipelines that scripts/gpu_check.py builds on a GPU, assembled here on the ``meta``
device (no memory): the diffusers classes accept the published configurations, the pipelines accept the
components, and the sizes are the real ones (the GPU run itself needs a GPU; none is lent here)."""

from __future__ import annotations

import pytest

diffusers = pytest.importorskip("diffusers")
if getattr(diffusers, "LTX2DFRPipeline", None) is None or getattr(diffusers, "WanAnimatePipeline", None) is None:
    pytest.skip(f"the video extra's pipelines need diffusers >= 0.42 (installed: {diffusers.__version__}; "
                "make test-min runs the unit tests at the core floor 0.40 first)", allow_module_level=True)


def test_real_size_pipelines_assemble_with_the_published_sizes():
    import torch

    from persona_ml.video import real_size

    ltx = real_size.build_ltx2_dfr_pipeline_real_size("meta")
    assert type(ltx).__name__ == "LTX2DFRPipeline" and ltx.transformer.dtype == torch.bfloat16
    assert (ltx.vae_spatial_compression_ratio, ltx.vae_temporal_compression_ratio) == (32, 8)
    assert ltx.transformer.config.caption_channels == ltx.text_encoder.config.text_config.hidden_size == 3840
    params = {k: sum(p.numel() for p in v.parameters()) / 1e9 for k, v in ltx.components.items()
              if hasattr(v, "parameters")}
    assert 18.5 < params["transformer"] < 19.5        # LTX-2's 19B joint audio-video DiT
    assert 11.5 < params["text_encoder"] < 12.5       # the Gemma-3-12B stand-in
    assert {k: round(v * 1e9) for k, v in params.items()} == real_size.LTX2_DFR_PARAMS   # gpu_check sizes cards by it

    wan = real_size.build_wan_animate_pipeline_real_size("meta")
    assert type(wan).__name__ == "WanAnimatePipeline" and wan.transformer.config.motion_encoder_size == 512
    blocks = sum(p.numel() for p in wan.transformer.blocks.parameters()) / 1e9
    assert len(wan.transformer.blocks) == 40 and 16.0 < blocks < 16.5   # the 14B I2V DiT with image cross-attention
    assert 5.5 < sum(p.numel() for p in wan.text_encoder.parameters()) / 1e9 < 5.9   # UMT5-XXL encoder
    # what from_pretrained(torch_dtype=bf16) keeps in float32 stays float32 (the modulation tables)
    assert wan.transformer.scale_shift_table.dtype == torch.float32
    assert {k: sum(p.numel() for p in v.parameters()) for k, v in wan.components.items()
            if hasattr(v, "parameters")} == real_size.WAN_ANIMATE_PARAMS
    assert wan.transformer.blocks[0].ffn.net[0].proj.weight.dtype == torch.bfloat16
