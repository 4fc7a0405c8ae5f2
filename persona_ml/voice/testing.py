"""A tiny random Dia (same classes and structural switches as Dia-1.6B) for tests, benchmarks and
notebooks; nothing here is used by the generator itself.

Kept from the real model: the byte-level ``DiaTokenizer`` with ``[S1]``/``[S2]``, 9 codec channels
with the delay pattern ``[0, 8, ..., 15]``, a 1028-token audio vocabulary (1024 codes + EOS, PAD,
BOS), grouped-query attention in the decoder, classifier-free guidance, and a 44.1 kHz DAC with
hop 512 (downsampling 2 x 4 x 8 x 8) and 9 x 1024 codebooks. Only widths and depths are shrunk.
Built in eval mode; its outputs are flagged ``random_weights``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._atomic import atomic_write_json

__all__ = ["build_tiny_dia", "save_tiny_dia", "tiny_voice_generator"]


def build_tiny_dia(seed: int = 0):
    """``(model, processor)``: a random ``DiaForConditionalGeneration`` and its ``DiaProcessor``."""
    import torch
    from transformers import (
        DacConfig,
        DacModel,
        DiaConfig,
        DiaFeatureExtractor,
        DiaForConditionalGeneration,
        DiaProcessor,
        DiaTokenizer,
    )
    from transformers.models.dia.configuration_dia import DiaDecoderConfig, DiaEncoderConfig

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = DiaEncoderConfig(max_position_embeddings=512, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                   num_key_value_heads=2, head_dim=16, intermediate_size=64, vocab_size=256)
        decoder = DiaDecoderConfig(max_position_embeddings=1024, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, cross_num_attention_heads=2,
                                   cross_head_dim=16, cross_num_key_value_heads=2, cross_hidden_size=32, vocab_size=1028,
                                   num_channels=9)
        model = DiaForConditionalGeneration(DiaConfig(encoder_config=encoder, decoder_config=decoder,
                                                      delay_pattern=[0, 8, 9, 10, 11, 12, 13, 14, 15])).eval()
        dac = DacModel(DacConfig(encoder_hidden_size=4, downsampling_ratios=[2, 4, 8, 8], decoder_hidden_size=16,
                                 n_codebooks=9, codebook_size=1024, codebook_dim=8, sampling_rate=44100)).eval()
        # transformers' default init of this narrow codec decodes every code sequence to the same faint
        # bias noise (two random sequences differ by ~1e-6), so candidates could not differ: fan-in-scaled
        # normal weights (gain 0.85, zero biases) make the audio depend on the codes (peak ~0.5).
        with torch.no_grad():
            for name, param in dac.named_parameters():
                if name.endswith("weight") and param.dim() > 1 and "codebook" not in name:
                    param.copy_(0.85 * torch.randn(param.shape) / param[0].numel() ** 0.5)
                elif name.endswith("bias"):
                    param.zero_()
    processor = DiaProcessor(feature_extractor=DiaFeatureExtractor(sampling_rate=44100, hop_length=512),
                             tokenizer=DiaTokenizer(), audio_tokenizer=dac)
    return model, processor


def save_tiny_dia(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random Dia in the layout ``VoiceGenerator.from_pretrained`` reads (DAC in ``dac/``),
    with ``persona_ml.json`` marking its weights as random."""
    model, processor = build_tiny_dia(seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.feature_extractor.save_pretrained(folder)
    processor.audio_tokenizer.save_pretrained(folder / "dac")
    atomic_write_json(folder / "persona_ml.json", {"random_weights": True, "built_by": "persona_ml.voice.testing.build_tiny_dia",
                                                   "seed": seed})
    return folder


def tiny_voice_generator(embedder, seed: int = 0):
    """A ``VoiceGenerator`` over ``build_tiny_dia(seed)`` (flagged ``random_weights``)."""
    from .generator import TtsModelInfo, VoiceGenerator

    model, processor = build_tiny_dia(seed)
    info = TtsModelInfo(name="dia-tiny-random", model_class=type(model).__name__, license="Apache-2.0 (random weights)",
                        path=None, files={}, random_weights=True, parameters=int(sum(p.numel() for p in model.parameters())))
    return VoiceGenerator(model, processor, embedder=embedder, info=info)

