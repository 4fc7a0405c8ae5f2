"""validate_lora refuses bad or mismatched LoRA files with stable codes, before any weight is touched."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from persona_ml.errors import LoraValidationError  # noqa: E402
from persona_ml.inference.testing import make_random_lora  # noqa: E402
from persona_ml.lora.validation import linear_modules, validate_lora  # noqa: E402

FP = "sha256:" + "ab" * 32
TARGETS = ["transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_k"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from persona_ml.models import build_tiny_flux_pipeline

    pipe = build_tiny_flux_pipeline(seed=0)
    tmp = tmp_path_factory.mktemp("val")
    good = make_random_lora(pipe, tmp / "good", seed=1, base_model="tiny-flux", base_fingerprint=FP, rank=4,
                            alpha=8.0, targets=TARGETS)
    return linear_modules(pipe.transformer), good, tmp


def _rewrite(src, dst, edit_sd=None, edit_meta=None):
    from safetensors import safe_open

    with safe_open(str(src), "pt") as fh:
        meta = dict(fh.metadata())
    sd = load_file(str(src))
    if edit_sd:
        edit_sd(sd)
    if edit_meta:
        edit_meta(meta)
    save_file(sd, str(dst), metadata=meta)
    return dst


def _code(path, modules, **kw):
    kw.setdefault("base_fingerprint", FP)
    kw.setdefault("max_rank", 16)
    with pytest.raises(LoraValidationError) as exc:
        validate_lora(path, modules, **kw)
    return exc.value


def test_good_lora_is_canonical_with_scaling_folded(env):
    modules, good, _ = env
    v = validate_lora(good.diffusers_path, modules, base_fingerprint=FP, max_rank=16)
    assert v.format == "diffusers" and v.rank == 4 and v.base_fingerprint == FP and v.base_model == "tiny-flux"
    raw = load_file(str(good.diffusers_path))
    m = "transformer_blocks.0.attn.to_q"
    # the export already folds alpha 8 / rank 4 into B (lora_alpha == r in its header): nothing left to fold
    assert torch.equal(v.state_dict[f"{m}.lora_B.weight"], raw[f"transformer.{m}.lora_B.weight"])
    assert len(v.target_modules) == 4 and v.nbytes > 0


def test_a_header_scale_is_folded_into_b(env, tmp_path):
    """A diffusers file that keeps alpha != r in lora_adapter_metadata (as PEFT saves it)."""
    import json

    modules, good, _ = env
    m = "transformer_blocks.0.attn.to_q"

    def halve(sd):
        for k in sd:
            if k.endswith("lora_B.weight"):
                sd[k] = sd[k] / 2

    def alpha8(meta):
        cfg = json.loads(meta["lora_adapter_metadata"])
        cfg["transformer.lora_alpha"] = 8.0
        meta["lora_adapter_metadata"] = json.dumps(cfg)

    path = _rewrite(good.diffusers_path, tmp_path / "peft_style.safetensors", halve, alpha8)
    v = validate_lora(path, modules, base_fingerprint=FP, max_rank=16)
    raw = load_file(str(path))
    assert torch.allclose(v.state_dict[f"{m}.lora_B.weight"], 2 * raw[f"transformer.{m}.lora_B.weight"])


def test_wrong_base_fingerprint(env):
    modules, good, _ = env
    err = _code(good.diffusers_path, modules, base_fingerprint="sha256:" + "cd" * 32)
    assert err.code == "lora_base_mismatch" and err.details["value"] == FP


def test_missing_fingerprint_refused_unless_allowed(env):
    modules, good, tmp = env
    bare = _rewrite(good.diffusers_path, tmp / "bare.safetensors",
                    edit_meta=lambda m: [m.pop(k) for k in list(m) if k.startswith("persona_ml.")])
    assert _code(bare, modules).code == "lora_base_unknown"
    assert validate_lora(bare, modules, base_fingerprint=FP, max_rank=16, require_base_fingerprint=False).rank == 4


def test_rank_too_large(env):
    modules, good, _ = env
    err = _code(good.diffusers_path, modules, max_rank=2)
    assert err.code == "lora_rank_too_large" and err.details["value"] == 4 and err.details["limit"] == 2


def test_unknown_module_keys(env):
    modules, good, tmp = env

    def add(sd):
        sd["transformer.transformer_blocks.0.attn.to_zz.lora_A.weight"] = torch.zeros(4, 32)
        sd["transformer.transformer_blocks.0.attn.to_zz.lora_B.weight"] = torch.zeros(32, 4)

    err = _code(_rewrite(good.diffusers_path, tmp / "extra.safetensors", edit_sd=add), modules)
    assert err.code == "lora_unused_keys" and any("to_zz" in k for k in err.details["value"])


def test_text_encoder_keys_are_unused(env):
    modules, good, tmp = env

    def add(sd):
        sd["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 32)
        sd["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"] = torch.zeros(32, 4)

    assert _code(_rewrite(good.diffusers_path, tmp / "te.safetensors", edit_sd=add), modules).code == \
        "lora_unused_keys"


def test_shape_mismatch(env):
    modules, good, tmp = env

    def bad(sd):
        k = "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
        sd[k] = torch.zeros(4, 7)

    err = _code(_rewrite(good.diffusers_path, tmp / "shape.safetensors", edit_sd=bad), modules)
    assert err.code == "lora_shape_mismatch"


def test_garbage_and_unknown_format(env, tmp_path):
    modules, _, _ = env
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 4 + b"not a safetensors file at all")
    assert _code(garbage, modules).code == "lora_file_invalid"
    assert _code(tmp_path / "missing.safetensors", modules).code == "lora_file_invalid"
    odd = tmp_path / "odd.safetensors"
    save_file({"model.layer.weight": torch.zeros(2, 2)}, str(odd), metadata={"persona_ml.base_model_fingerprint": FP})
    assert _code(odd, modules).code == "lora_format_unknown"


def test_kohya_keys_diffusers_would_drop_are_refused(env, tmp_path):
    modules, good, _ = env

    def add(sd):  # a text-encoder LoRA inside a kohya file: diffusers' Flux path drops it silently
        sd["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(4, 32)
        sd["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(32, 4)
        sd["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha"] = torch.tensor(4.0)

    v = validate_lora(good.kohya_path, modules, base_fingerprint=FP, max_rank=16)
    assert v.format == "kohya"
    err = _code(_rewrite(good.kohya_path, tmp_path / "te_kohya.safetensors", edit_sd=add), modules)
    assert err.code in ("lora_unused_keys", "lora_format_unknown")


def test_file_is_read_once_and_hash_matches_the_tensors(env, monkeypatch):
    """The sha256 the generator records and the tensors it uses come from one read of the file
    (a LoRA of several hundred MB used to be read twice: tensors, then a separate hash pass)."""
    import hashlib

    import safetensors.torch

    import persona_ml.lora.validation as lv

    modules, good, _ = env

    def second_read(*a, **k):
        raise AssertionError("the LoRA file was read a second time")

    monkeypatch.setattr(safetensors.torch, "load_file", second_read)
    monkeypatch.setattr(lv, "sha256_file", second_read, raising=False)
    found = []
    for path in (good.diffusers_path, good.kohya_path):
        v = validate_lora(path, modules, base_fingerprint=FP, max_rank=16)
        assert v.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and v.rank == 4
        found.append(set(v.target_modules))
    assert len(found[0]) == 4 and found[0] <= found[1]  # kohya's fused qkv adds to_v
