"""Tiny random stand-ins of the video models, built in code (no file, no network), every component in eval mode.

Each keeps the real model's structural switches; only widths and depths are small, so shape,
dtype and plumbing bugs show on a CPU exactly as they would with the real weights.

``build_tiny_ltx2_dfr_pipeline`` (LTX-2.5 DFR, the talking-head backend):

- video VAE: 128 latent channels, 32x spatial and 8x temporal compression (patch 4 and the real
  spatial / temporal / spatiotemporal x2 down blocks), causal encoder, reflect-padded decoder;
- audio VAE: stereo 64-bin log-mel input at 16 kHz with hop 160, 4x time and 4x mel compression
  (three levels), causal along time, pixel norm, a mean/logvar (double_z) head; its latent
  statistics have ``latent_channels x mel_bins / 4`` entries as in the real checkpoint;
- transformer: split RoPE, gated attention and cross-attention modulation (LTX-2.3+), the
  keyframe-slot marker DFR requires (LTX-2.5), no caption projection (the connector projects per
  modality); audio stream with its own width and heads;
- text: a Gemma-3 encoder whose hidden states of every layer are stacked (the connector's
  ``text_proj_in_factor`` is layers + 1) with a Gemma BPE tokenizer built in code, left padding;
- vocoder: 240x upsampling of 100 mel frames/s to 24 kHz stereo, as LTX-2's.

``build_tiny_wan_animate_pipeline`` (Wan2.2-Animate, motion transfer):

- VAE: 16 latent channels, 8x spatial, 4x temporal (``temperal_downsample`` False, True, True);
- transformer: 36 input channels (16 noise + 16 reference/condition + 4 mask), patch (1, 2, 2),
  a face adapter every 5 blocks (``inject_face_latents_blocks=5``, 10 blocks: two adapters), a
  motion encoder on 512 x 512 face crops;
- UMT5 text encoder with a T5 tokenizer built in code; CLIP vision image encoder (its
  penultimate states condition every block); UniPC flow-matching scheduler with shift 5.

``write_tiny_pose_onnx`` writes a tiny top-down pose ONNX with the real ViTPose-wholebody
signature (``[N, 3, 256, 192]`` -> heatmaps ``[N, 133, 64, 48]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_GEMMA_WORDS = ("a person talking to the camera portrait close up face speaking smiling woman man studio "
                "light natural background head shoulders the of and with in")


def build_tiny_gemma_tokenizer():
    """A Gemma BPE tokenizer built in code: every printable ASCII character plus whole words of a small corpus."""
    from transformers import GemmaTokenizerFast

    vocab: dict[str, int] = {}
    for tok in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"):
        vocab[tok] = len(vocab)
    for ch in [chr(c) for c in range(33, 127)] + ["▁"]:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault("▁" + ch, len(vocab))
    merges: list[tuple[str, str]] = [("▁", chr(c)) for c in range(33, 127)]
    for word in sorted(set(_GEMMA_WORDS.split())):
        cur = "▁" + word[0]
        for ch in word[1:]:
            merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
    merges = list(dict.fromkeys(merges))
    tok = GemmaTokenizerFast(vocab=vocab, merges=merges)
    tok.padding_side = "left"
    return tok


def _eval(*modules):
    for m in modules:
        m.eval()
        m.requires_grad_(False)


def build_tiny_ltx2_dfr_pipeline(seed: int = 0):
    """The tiny LTX-2.5 ``LTX2DFRPipeline`` (see the module docstring). Same seed, same weights."""
    import torch
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2DFRPipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tok = build_tiny_gemma_tokenizer()
    text_layers, text_hidden = 2, 32
    torch.manual_seed(seed)
    text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(
        text_config={"vocab_size": len(tok), "hidden_size": text_hidden, "intermediate_size": 64,
                     "num_hidden_layers": text_layers, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "head_dim": 16, "max_position_embeddings": 1024, "sliding_window": 64},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14},
        mm_tokens_per_image=4))
    latent_channels, audio_latent_channels, mel_bins = 128, 2, 64
    audio_in = audio_latent_channels * mel_bins // 4
    video_dim, audio_dim = 32, 16
    torch.manual_seed(seed + 1)
    transformer = LTX2VideoTransformer3DModel(
        in_channels=latent_channels, out_channels=latent_channels, patch_size=1, patch_size_t=1,
        num_attention_heads=2, attention_head_dim=video_dim // 2, cross_attention_dim=video_dim,
        audio_in_channels=audio_in, audio_out_channels=audio_in, audio_num_attention_heads=2,
        audio_attention_head_dim=audio_dim // 2, audio_cross_attention_dim=audio_dim, num_layers=2,
        caption_channels=text_hidden, rope_type="split", gated_attn=True, cross_attn_mod=True, audio_gated_attn=True,
        audio_cross_attn_mod=True, use_prompt_embeddings=False, use_keyframes_abs_pos_embedding=True)
    torch.manual_seed(seed + 2)
    connectors = LTX2TextConnectors(
        caption_channels=text_hidden, text_proj_in_factor=text_layers + 1, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=video_dim // 2, video_connector_num_layers=1,
        video_connector_num_learnable_registers=8, audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=audio_dim // 2, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=8, connector_rope_base_seq_len=64, rope_type="split",
        per_modality_projections=True, video_hidden_dim=video_dim, audio_hidden_dim=audio_dim, video_gated_attn=True,
        audio_gated_attn=True)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKLLTX2Video(latent_channels=latent_channels, block_out_channels=(8, 16, 32, 64),
                                 decoder_block_out_channels=(16, 32, 64), layers_per_block=(1, 1, 1, 1, 1),
                                 decoder_layers_per_block=(1, 1, 1, 1), spatial_compression_ratio=32,
                                 temporal_compression_ratio=8)
    torch.manual_seed(seed + 4)
    audio_vae = AutoencoderKLLTX2Audio(base_channels=audio_in, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=1,
                                       in_channels=2, latent_channels=audio_latent_channels, norm_type="pixel",
                                       causality_axis="height", mel_bins=mel_bins, sample_rate=16000,
                                       mel_hop_length=160)
    torch.manual_seed(seed + 5)
    vocoder = LTX2Vocoder(in_channels=2 * mel_bins, hidden_channels=16, out_channels=2, upsample_kernel_sizes=[12, 10, 16],
                          upsample_factors=[6, 5, 8], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
                          output_sampling_rate=24000)
    _eval(text_encoder, transformer, connectors, vae, audio_vae, vocoder)
    return LTX2DFRPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae,
                           text_encoder=text_encoder, tokenizer=tok, connectors=connectors, transformer=transformer,
                           vocoder=vocoder)


def build_tiny_wan_animate_pipeline(seed: int = 0):
    """The tiny Wan2.2-Animate ``WanAnimatePipeline`` (see the module docstring). Same seed, same weights."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanAnimatePipeline, WanAnimateTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from ..models.tiny_flux import build_tiny_tokenizers

    tokenizer = build_tiny_tokenizers()[1]
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8,
                                               feed_forward_proj="gated-gelu"))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(seed + 2)
    transformer = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, latent_channels=16,
        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=48, num_layers=10, image_dim=16, rope_max_seq_len=64,
        motion_encoder_channel_sizes={str(2 ** k): 8 for k in range(2, 10)}, motion_encoder_size=512,
        motion_style_dim=16, motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2,
        inject_face_latents_blocks=5)
    torch.manual_seed(seed + 3)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, image_size=28, patch_size=14))
    _eval(text_encoder, vae, transformer, image_encoder)
    try:  # transformers 5: the PIL backend by name (the default one wants torchvision, which does not load here)
        from transformers import CLIPImageProcessorPil as processor_cls
    except ImportError:  # pragma: no cover - transformers 4
        processor_cls = CLIPImageProcessor
    image_processor = processor_cls(crop_size=28, size={"shortest_edge": 28})
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
                                        num_train_timesteps=1000)
    return WanAnimatePipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                              image_processor=image_processor, image_encoder=image_encoder, transformer=transformer)


def write_tiny_pose_onnx(path: str | os.PathLike, *, keypoints: int = 133, seed: int = 0) -> Path:
    """A tiny pose ONNX with ViTPose-wholebody's signature: ``input [N,3,256,192]`` -> ``heatmaps [N,K,64,48]``.

    One 4x4 stride-4 convolution with seeded weights plus a bias that puts each keypoint's peak
    at a fixed place, so the runner's decoding (argmax, sub-pixel refinement, scaling back to the
    frame) is checked against a known answer. ``TINY_POSE_PEAKS(keypoints)`` gives those places.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((keypoints, 3, 4, 4)) * 1e-3).astype(np.float32)
    bias = np.zeros((1, keypoints, 64, 48), np.float32)
    for k, (y, x) in enumerate(tiny_pose_peaks(keypoints)):
        bias[0, k, y, x] = 10.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["conv"], strides=[4, 4], kernel_shape=[4, 4]),
         helper.make_node("Add", ["conv", "bias"], ["heatmaps"])],
        "tiny_vitpose",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 256, 192])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, ["N", keypoints, 64, 48])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from .._atomic import atomic_write_bytes

    atomic_write_bytes(path, model.SerializeToString())
    return path


def tiny_pose_peaks(keypoints: int) -> list[tuple[int, int]]:
    """Heatmap ``(y, x)`` peak of each keypoint in ``write_tiny_pose_onnx``'s model (a standing figure's layout)."""
    out = []
    for k in range(keypoints):
        out.append((8 + (k * 7) % 48, 6 + (k * 11) % 36))
    return out


def tiny_components_summary(pipe: Any) -> dict[str, int]:
    """Parameter count per component (for reports and benchmarks)."""
    out = {}
    for name, comp in pipe.components.items():
        if hasattr(comp, "parameters"):
            out[name] = int(sum(p.numel() for p in comp.parameters()))
    return out
