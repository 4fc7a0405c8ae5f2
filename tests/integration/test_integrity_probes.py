"""The probes other tests rely on can fail: a check that never sees a broken state proves nothing.

``CharacterGenerator.base_checksum()`` backs "the base weights are unchanged after 200 switches"
(test_generator.py) and ``merged_adapters()`` reports merged LoRA layers; here a LoRA is really
merged into the base weights (peft's ``LoraLayer.merge``, what ``fuse_lora`` does) and both must
notice it.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

TARGETS = ["transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_v"]


def test_base_checksum_and_merged_adapters_detect_a_merged_lora(tmp_path):
    from peft.tuners.lora import LoraLayer

    from persona_ml.inference import Character, CharacterGenerator
    from persona_ml.inference.testing import make_random_lora
    from persona_ml.models import load_base_model

    base = load_base_model("tiny-flux")
    lora = make_random_lora(base.pipeline, tmp_path / "A", seed=1, base_model=base.name,
                            base_fingerprint=base.fingerprint, targets=TARGETS)
    gen = CharacterGenerator(base, max_rank=8)
    gen.register(Character("A", lora_path=lora.diffusers_path))
    gen.activate("A", lora_scale=1.0)
    before = gen.base_checksum()
    assert gen.merged_adapters() == []
    layers = [m for m in gen.transformer.modules() if isinstance(m, LoraLayer)]
    assert layers, "the generator holds no LoRA layers: the probes would look at nothing"
    for layer in layers:
        layer.merge()
    assert gen.merged_adapters() != []
    assert gen.base_checksum() != before
