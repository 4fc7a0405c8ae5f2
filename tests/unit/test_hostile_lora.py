"""Issue 12, LoRA files: hostile headers, tensors and adapter metadata are coded errors."""

from __future__ import annotations

import json
import random
import struct

import pytest

torch = pytest.importorskip("torch")

from hostile_cases import assert_coded, mutations  # noqa: E402
from test_lora_validation import _rewrite  # noqa: E402

from persona_ml.errors import LoraValidationError, PersonaMLError  # noqa: E402
from persona_ml.inference.testing import make_random_lora  # noqa: E402
from persona_ml.lora.export import read_lora_file, read_lora_metadata  # noqa: E402
from persona_ml.lora.validation import linear_modules, read_safetensors_metadata, validate_lora  # noqa: E402

FP = "sha256:" + "cd" * 32
TARGETS = ["transformer_blocks.*.attn.to_q"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from persona_ml.models import build_tiny_flux_pipeline

    pipe = build_tiny_flux_pipeline(seed=0)
    tmp = tmp_path_factory.mktemp("hostile_lora")
    good = make_random_lora(pipe, tmp / "good", seed=1, base_model="tiny-flux", base_fingerprint=FP, rank=4,
                            alpha=8.0, targets=TARGETS)
    return linear_modules(pipe.transformer), good.diffusers_path


def _validate(path, modules):
    return validate_lora(path, modules, base_fingerprint=FP, max_rank=16)


def _raw_file(path, header: bytes, data: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def _codes(path, modules) -> set[str]:
    codes = set()
    for fn in (lambda: _validate(path, modules), lambda: read_lora_file(path), lambda: read_lora_metadata(path),
               lambda: read_safetensors_metadata(path)):
        out = assert_coded(fn)
        if isinstance(out, PersonaMLError):
            codes.add(out.code)
    return codes


def test_deeply_nested_headers_are_coded_not_recursion_errors(env, tmp_path):
    modules, _ = env
    for depth in (100, 5000, 50_000):
        path = _raw_file(tmp_path / f"deep{depth}.safetensors", b'{"a": ' + b"[" * depth + b"]" * depth + b"}")
        assert _codes(path, modules) <= {"lora_file_invalid", "lora_format_unknown"}
    meta = _raw_file(tmp_path / "deepmeta.safetensors",
                     json.dumps({"__metadata__": {"persona_ml": "[" * 10_000 + "]" * 10_000}}).encode())
    assert _codes(meta, modules)


def test_rank_zero_and_zero_dimensional_lora_tensors_are_refused(env, tmp_path):
    modules, good = env
    key = "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"

    def zero_d(sd):
        sd[key] = torch.tensor(1.0)

    def rank0(sd):
        sd[key] = sd[key][:0]
        b = key.replace("lora_A", "lora_B")
        sd[b] = sd[b][:, :0]

    for edit in (zero_d, rank0):
        path = _rewrite(good, tmp_path / f"{edit.__name__}.safetensors", edit_sd=edit)
        with pytest.raises(LoraValidationError) as info:
            _validate(path, modules)
        assert info.value.code == "lora_shape_mismatch" and info.value.details["field"] == key
        with pytest.raises(PersonaMLError) as info:
            read_lora_file(path)
        assert info.value.code == "lora_shape_mismatch"


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.int8])
def test_lora_weights_must_be_floating_point(env, tmp_path, dtype):
    modules, good = env
    key = "transformer.transformer_blocks.0.attn.to_q.lora_B.weight"
    path = _rewrite(good, tmp_path / "int.safetensors", edit_sd=lambda sd: sd.update({key: sd[key].to(dtype)}))
    with pytest.raises(LoraValidationError) as info:
        _validate(path, modules)
    assert info.value.code == "lora_dtype_invalid" and info.value.details["field"] == key
    with pytest.raises(PersonaMLError) as info:
        read_lora_file(path)
    assert info.value.code == "lora_dtype_invalid"


@pytest.mark.parametrize("meta_text", ["[1, 2]", '"text"', "5", "null", '{"transformer.r": 0}',
                                       '{"transformer.r": -4, "transformer.lora_alpha": 8}',
                                       '{"transformer.r": 4, "transformer.lora_alpha": -8}',
                                       '{"transformer.r": 4, "transformer.lora_alpha": "eight"}',
                                       '{"transformer.r": 4.5, "transformer.lora_alpha": 8}',
                                       '{"transformer.r": 4, "transformer.lora_alpha": NaN}',
                                       '{"transformer.r": true, "transformer.lora_alpha": 8}',
                                       '{"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.rank_pattern": []}',
                                       '{"transformer.r": 4, "transformer.lora_alpha": 8, '
                                       '"transformer.rank_pattern": {".*to_q": 0}}',
                                       '{"transformer.r": 4, "transformer.lora_alpha": 1e400}'])
def test_adapter_metadata_of_the_wrong_type_or_non_positive_r_alpha_is_refused(env, tmp_path, meta_text):
    modules, good = env
    path = _rewrite(good, tmp_path / "meta.safetensors",
                    edit_meta=lambda m: m.update({"lora_adapter_metadata": meta_text}))
    with pytest.raises(LoraValidationError) as info:
        _validate(path, modules)
    assert info.value.code == "lora_metadata_invalid"
    with pytest.raises(PersonaMLError) as info:
        read_lora_file(path)
    assert info.value.code == "lora_metadata_invalid"


def test_kohya_alpha_must_be_one_positive_number(env, tmp_path):
    modules, good = env
    kohya_path = next(good.parent.glob("*_kohya.safetensors"))
    assert validate_lora(kohya_path, modules, base_fingerprint=FP, max_rank=16).format == "kohya"
    for i, bad in enumerate((-1.0, float("nan"), [1.0, 2.0], 0.0)):
        path = _rewrite(kohya_path, tmp_path / f"kohya{i}.safetensors", edit_sd=lambda sd, bad=bad: sd.update(
            {k: torch.tensor(bad) for k in sd if k.endswith(".alpha")}))
        with pytest.raises(LoraValidationError) as info:
            _validate(path, modules)
        assert info.value.code in ("lora_metadata_invalid", "lora_shape_mismatch")


def test_fuzz_lora_headers_and_bytes(env, tmp_path):
    modules, good = env
    rng = random.Random(21)
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    for i, variant in enumerate(mutations(header, rng, 100)):
        try:
            text = json.dumps(variant).encode()
        except (ValueError, RecursionError):
            continue
        _codes(_raw_file(tmp_path / f"h{i % 5}.safetensors", text, data), modules)
    for i in range(60):
        blob = bytearray(raw)
        for _ in range(rng.randint(1, 5)):
            pos = rng.randrange(len(blob))
            if rng.random() < 0.8:
                blob[pos] ^= 1 << rng.randrange(8)
            else:
                del blob[pos:]
        path = tmp_path / f"b{i % 5}.safetensors"
        path.write_bytes(bytes(blob))
        _codes(path, modules)
