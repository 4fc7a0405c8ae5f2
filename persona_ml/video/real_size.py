"""The video pipelines at their real sizes with random weights, built on a device (no file, no network).

For speed and memory checks (``scripts/gpu_check.py``): weight values do not change either, so a
pipeline whose every component has the published configuration measures what the real one costs.
Each component is born on the device in the target dtype (no fp32 copy on the host), one at a
time, in eval mode. ``LTX2_DFR_PARAMS`` / ``WAN_ANIMATE_PARAMS`` are their parameter counts (the
builders on the ``meta`` device give them, which the tests check), so a caller can refuse a card that
cannot hold the weights before allocating anything.

Where the configurations come from (diffusers' own conversion scripts, the values they write):

- LTX-2.5 (``LTX2DFRPipeline``): ``scripts/convert_ltx2_to_diffusers.py`` ``version == "2.5"`` for
  the transformer, connectors, video VAE, audio VAE; ``LTX2VocoderWithBWE``'s defaults are 2.5's
  vocoder; the scheduler is the script's distilled one (the talking head runs the 8-step distilled
  schedule). The text encoder is a stand-in: LTX-2.5 pairs with a Gemma-4 encoder that "isn't a
  single fixed checkpoint" (the script's words), so Gemma-3-12B (LTX-2.0/2.3's encoder; hidden size
  3840 = the transformer's ``caption_channels``) is built in its place and the report says so.
- Wan2.2-Animate-14B (``WanAnimatePipeline``): ``scripts/convert_wan_to_diffusers.py`` for the
  transformer; the Wan2.1 VAE (``AutoencoderKLWan``'s defaults), UMT5-XXL, CLIP ViT-H/14, UniPC
  with flow shift 5, as that script assembles the pipeline.

Tokenizers are the tiny ones built in code (their ids are below the real vocabularies); the
prompt length that matters is ``max_sequence_length``, which the settings fix.
"""

from __future__ import annotations

import gc
from typing import Any

LTX25_TRANSFORMER = {
    "in_channels": 128, "out_channels": 128, "patch_size": 1, "patch_size_t": 1, "num_attention_heads": 32,
    "attention_head_dim": 128, "cross_attention_dim": 4096, "vae_scale_factors": (8, 32, 32), "pos_embed_max_pos": 20,
    "base_height": 2048, "base_width": 2048, "gated_attn": True, "cross_attn_mod": True, "audio_in_channels": 128,
    "audio_out_channels": 128, "audio_patch_size": 1, "audio_patch_size_t": 1, "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64, "audio_cross_attention_dim": 2048, "audio_scale_factor": 4,
    "audio_pos_embed_max_pos": 20, "audio_sampling_rate": 16000, "audio_hop_length": 160, "audio_gated_attn": True,
    "audio_cross_attn_mod": True, "num_layers": 48, "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads", "norm_elementwise_affine": False, "norm_eps": 1e-6, "caption_channels": 3840,
    "attention_bias": True, "attention_out_bias": True, "rope_theta": 10000.0, "rope_double_precision": True,
    "causal_offset": 1, "timestep_scale_multiplier": 1000, "cross_attn_timestep_scale_multiplier": 1000,
    "rope_type": "split", "use_prompt_embeddings": False, "perturbed_attn": True, "ff_bias": False,
    "use_keyframes_abs_pos_embedding": True,
}
GEMMA3_12B_TEXT = {
    "vocab_size": 262208, "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "sliding_window": 1024,
    "query_pre_attn_scalar": 256, "max_position_embeddings": 131072,
}
SIGLIP_SO400M_896 = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
                     "image_size": 896, "patch_size": 14}
LTX25_CONNECTORS = {
    "caption_channels": GEMMA3_12B_TEXT["hidden_size"], "text_proj_in_factor": GEMMA3_12B_TEXT["num_hidden_layers"] + 1,
    "video_connector_num_attention_heads": 32, "video_connector_attention_head_dim": 128,
    "video_connector_num_layers": 8, "video_connector_num_learnable_registers": 128, "video_gated_attn": True,
    "audio_connector_num_attention_heads": 32, "audio_connector_attention_head_dim": 64,
    "audio_connector_num_layers": 8, "audio_connector_num_learnable_registers": 128, "audio_gated_attn": True,
    "connector_rope_base_seq_len": 4096, "rope_theta": 10000.0, "rope_double_precision": True,
    "causal_temporal_positioning": False, "rope_type": "split", "per_modality_projections": True,
    "video_hidden_dim": 4096, "audio_hidden_dim": 2048, "proj_bias": True,
}
LTX25_VIDEO_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 128, "block_out_channels": (256, 512, 1024, 1024),
    "down_block_types": ("LTX2VideoDownBlock3D",) * 4, "decoder_block_out_channels": (256, 512, 512, 1024),
    "layers_per_block": (4, 6, 4, 2, 2), "decoder_layers_per_block": (4, 6, 4, 2, 2),
    "spatio_temporal_scaling": (True,) * 4, "decoder_spatio_temporal_scaling": (True,) * 4,
    "decoder_inject_noise": (False,) * 5, "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "upsample_type": ("spatiotemporal", "spatiotemporal", "temporal", "spatial"), "upsample_residual": (False,) * 4,
    "upsample_factor": (2, 2, 1, 2), "timestep_conditioning": False, "patch_size": 4, "patch_size_t": 1,
    "resnet_norm_eps": 1e-6, "encoder_causal": True, "decoder_causal": False, "encoder_spatial_padding_mode": "zeros",
    "decoder_spatial_padding_mode": "zeros", "spatial_compression_ratio": 32, "temporal_compression_ratio": 8,
}
LTX25_AUDIO_VAE = {
    "base_channels": 128, "output_channels": 2, "ch_mult": (1, 2, 4), "num_res_blocks": 2, "attn_resolutions": None,
    "in_channels": 2, "resolution": 256, "latent_channels": 8, "norm_type": "pixel", "causality_axis": "height",
    "dropout": 0.0, "mid_block_add_attention": False, "sample_rate": 16000, "mel_hop_length": 160, "is_causal": True,
    "mel_bins": 64, "double_z": True,
}
LTX2_DISTILLED_SCHEDULER = {"use_dynamic_shifting": False, "base_shift": 0.95, "max_shift": 2.05,
                            "base_image_seq_len": 1024, "max_image_seq_len": 4096, "shift_terminal": None}

WAN_ANIMATE_14B_TRANSFORMER = {
    "image_dim": 1280, "added_kv_proj_dim": 5120, "attention_head_dim": 128, "cross_attn_norm": True, "eps": 1e-6,
    "ffn_dim": 13824, "freq_dim": 256, "in_channels": 36, "num_attention_heads": 40, "num_layers": 40,
    "out_channels": 16, "patch_size": (1, 2, 2), "qk_norm": "rms_norm_across_heads", "text_dim": 4096,
    "rope_max_seq_len": 1024, "pos_embed_seq_len": None, "motion_encoder_size": 512, "motion_style_dim": 512,
    "motion_dim": 20, "motion_encoder_dim": 512, "face_encoder_hidden_dim": 1024, "face_encoder_num_heads": 4,
    "inject_face_latents_blocks": 5,
}
UMT5_XXL = {"vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
CLIP_VIT_H_14 = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
                 "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu"}


# parameters per component of the pipelines below (tests/unit/test_video_real_size.py counts them on meta)
LTX2_DFR_PARAMS = {"transformer": 18_987_859_200, "text_encoder": 12_202_563_392, "connectors": 3_172_227_584,
                   "vae": 726_105_969, "audio_vae": 53_248_146, "vocoder": 128_537_448}
WAN_ANIMATE_PARAMS = {"transformer": 17_274_816_884, "text_encoder": 5_680_910_336, "image_encoder": 630_766_080,
                      "vae": 126_892_531}


def _ltx_builders() -> dict[str, Any]:
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2VocoderWithBWE
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    return {
        "transformer": lambda: LTX2VideoTransformer3DModel(**LTX25_TRANSFORMER),
        "text_encoder": lambda: Gemma3ForConditionalGeneration(Gemma3Config(
            text_config=dict(GEMMA3_12B_TEXT), vision_config=dict(SIGLIP_SO400M_896), mm_tokens_per_image=256)),
        "connectors": lambda: LTX2TextConnectors(**LTX25_CONNECTORS),
        "vae": lambda: AutoencoderKLLTX2Video(**LTX25_VIDEO_VAE),
        "audio_vae": lambda: AutoencoderKLLTX2Audio(**LTX25_AUDIO_VAE),
        "vocoder": lambda: LTX2VocoderWithBWE(),
    }


def _wan_builders() -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, WanAnimateTransformer3DModel
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    return {
        "transformer": lambda: WanAnimateTransformer3DModel(**WAN_ANIMATE_14B_TRANSFORMER),
        "text_encoder": lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL)),
        "image_encoder": lambda: CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_H_14)),
        "vae": lambda: AutoencoderKLWan(),
    }


def _build(builders: dict[str, Any], device: str, dtype: Any, seed: int) -> dict[str, Any]:
    import torch

    previous = torch.get_default_dtype()
    out = {}
    for i, (name, build) in enumerate(builders.items()):
        torch.manual_seed(seed + i)
        try:
            torch.set_default_dtype(dtype)   # born in the target dtype: no fp32 copy of a 19B model
            with torch.device(device):
                module = build()
        finally:
            torch.set_default_dtype(previous)
        keep = getattr(module, "_keep_in_fp32_modules", None) or ()
        for pname, param in module.named_parameters():   # what from_pretrained(torch_dtype=...) keeps in float32
            if any(k in pname.split(".") for k in keep):
                param.data = param.data.float()
        module.eval()
        module.requires_grad_(False)
        out[name] = module
        gc.collect()
    return out


def build_ltx2_dfr_pipeline_real_size(device: str = "cuda", dtype: Any = None, seed: int = 0):
    """``LTX2DFRPipeline`` with LTX-2.5's component sizes and random weights, on ``device`` (see the module docstring).

    Args:
        device: where every component is created (``cuda``; ``meta`` is not runnable).
        dtype: parameter dtype (default bfloat16).
        seed: weight seed.

    Returns:
        The pipeline, every component in eval mode.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, LTX2DFRPipeline

    from .testing import build_tiny_gemma_tokenizer

    parts = _build(_ltx_builders(), device, dtype or torch.bfloat16, seed)
    return LTX2DFRPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**LTX2_DISTILLED_SCHEDULER),
                           tokenizer=build_tiny_gemma_tokenizer(), **parts)


def build_wan_animate_pipeline_real_size(device: str = "cuda", dtype: Any = None, seed: int = 0):
    """``WanAnimatePipeline`` with Wan2.2-Animate-14B's component sizes and random weights, on ``device``.

    Args:
        device, dtype, seed: as for ``build_ltx2_dfr_pipeline_real_size``.

    Returns:
        The pipeline, every component in eval mode.
    """
    import torch
    from diffusers import UniPCMultistepScheduler, WanAnimatePipeline

    from ..models.tiny_flux import build_tiny_tokenizers

    parts = _build(_wan_builders(), device, dtype or torch.bfloat16, seed)
    try:  # transformers 5: the PIL backend by name (the default one wants torchvision)
        from transformers import CLIPImageProcessorPil as processor_cls
    except ImportError:  # pragma: no cover - transformers 4
        from transformers import CLIPImageProcessor as processor_cls
    size = CLIP_VIT_H_14["image_size"]
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                                        num_train_timesteps=1000)
    return WanAnimatePipeline(tokenizer=build_tiny_tokenizers()[1], scheduler=scheduler,
                              image_processor=processor_cls(crop_size=size, size={"shortest_edge": size}), **parts)
