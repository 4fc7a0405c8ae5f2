"""IP-Adapter weights that are pickles (or anything but fitting safetensors) get a coded refusal,
never ``torch.load`` and never a traceback (issue 12)."""

from __future__ import annotations

import pickle
import shutil

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from persona_ml.errors import ArtifactError, InputError, ModelNotFoundError  # noqa: E402
from persona_ml.inference import CharacterGenerator, IPAdapterSpec  # noqa: E402
from persona_ml.inference.ip_adapter import check_ip_adapter_files  # noqa: E402
from persona_ml.inference.testing import build_tiny_ip_adapter  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from persona_ml.models import load_base_model

    base = load_base_model("tiny-flux")
    tmp = tmp_path_factory.mktemp("ipf")
    weights, encoder = build_tiny_ip_adapter(tmp / "ip", base.pipeline)
    return base, weights, encoder, tmp


@pytest.fixture
def no_torch_load(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.load was called on an IP-Adapter file")

    monkeypatch.setattr(torch, "load", refuse)


class _Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def _refused(spec, transformer):
    with pytest.raises(ArtifactError) as exc:
        check_ip_adapter_files(spec, transformer)
    assert exc.value.code == "ip_adapter_invalid" and exc.value.http_status == 422
    return exc.value.details["reason"]


def test_pickles_and_non_safetensors_are_refused_before_loading(env, tmp_path, no_torch_load, capsys):
    base, weights, encoder, _ = env
    t = base.pipeline.transformer
    sd = load_file(str(weights))
    raw = tmp_path / "ip_adapter.bin"
    raw.write_bytes(pickle.dumps({"state": _Payload()}))
    assert _refused(IPAdapterSpec(raw, encoder), t) == "pickle"
    zipped = tmp_path / "ip_adapter.pt"
    torch.save(sd, str(zipped))  # torch's zip archive (its data.pkl is a pickle too)
    assert _refused(IPAdapterSpec(zipped, encoder), t) == "pickle"
    renamed = tmp_path / "disguised.safetensors"  # a pickle under a safetensors name
    shutil.copyfile(raw, renamed)
    assert _refused(IPAdapterSpec(renamed, encoder), t) == "pickle"
    named_bin = tmp_path / "weights.bin"  # real safetensors bytes, but diffusers would torch.load this name
    shutil.copyfile(weights, named_bin)
    assert _refused(IPAdapterSpec(named_bin, encoder), t) == "not_safetensors"
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    assert _refused(IPAdapterSpec(junk, encoder), t) == "bad_header"
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    assert _refused(IPAdapterSpec(empty, encoder), t) == "not_safetensors"
    assert _refused(IPAdapterSpec(tmp_path, encoder), t) == "not_a_file"
    with pytest.raises(ModelNotFoundError):
        check_ip_adapter_files(IPAdapterSpec(tmp_path / "missing.safetensors", encoder), t)
    assert "pickle code ran" not in capsys.readouterr().out


def test_encoder_folder_with_only_pickles_is_refused(env, tmp_path, no_torch_load):
    base, weights, encoder, _ = env
    enc = tmp_path / "enc"
    enc.mkdir()
    shutil.copyfile(encoder / "config.json", enc / "config.json")
    (enc / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload()}))
    assert _refused(IPAdapterSpec(weights, enc), base.pipeline.transformer) == "pickle"
    (enc / "pytorch_model.bin").unlink()
    assert _refused(IPAdapterSpec(weights, enc), base.pipeline.transformer) == "encoder_weights_missing"
    no_cfg = tmp_path / "no_cfg"
    no_cfg.mkdir()
    assert _refused(IPAdapterSpec(weights, no_cfg), base.pipeline.transformer) == "encoder_config_missing"


def test_weights_that_do_not_fit_the_transformer_are_refused(env, tmp_path):
    base, weights, encoder, _ = env
    t = base.pipeline.transformer
    sd = load_file(str(weights))
    dropped = dict(sd)
    dropped.pop("ip_adapter.1.to_v_ip.weight")
    save_file(dropped, str(tmp_path / "missing.safetensors"))
    assert _refused(IPAdapterSpec(tmp_path / "missing.safetensors", encoder), t) == "keys_missing"
    wide = dict(sd, **{"ip_adapter.0.to_k_ip.weight": torch.zeros(7, sd["ip_adapter.0.to_k_ip.weight"].shape[1])})
    save_file(wide, str(tmp_path / "wide.safetensors"))
    assert _refused(IPAdapterSpec(tmp_path / "wide.safetensors", encoder), t) == "shape_mismatch"
    proj = sd["image_proj.proj.weight"]
    other_enc = dict(sd, **{"image_proj.proj.weight": torch.zeros(proj.shape[0], proj.shape[1] + 8)})
    save_file(other_enc, str(tmp_path / "enc.safetensors"))  # made for an encoder of another projection_dim
    assert _refused(IPAdapterSpec(tmp_path / "enc.safetensors", encoder), t) == "shape_mismatch"


def test_generator_refuses_a_pickle_with_a_code_and_loads_a_good_file_without_torch_load(env, tmp_path,
                                                                                        no_torch_load):
    from persona_ml.models import load_base_model

    _, weights, encoder, _ = env
    raw = tmp_path / "ip_adapter.bin"
    raw.write_bytes(pickle.dumps({"state": _Payload()}))
    fresh = load_base_model("tiny-flux")
    with pytest.raises(ArtifactError) as exc:
        CharacterGenerator(fresh, ip_adapter=IPAdapterSpec(raw, encoder))
    assert exc.value.code == "ip_adapter_invalid"
    assert getattr(fresh.pipeline.transformer, "encoder_hid_proj", None) is None  # nothing was loaded
    gen = CharacterGenerator(fresh, ip_adapter=IPAdapterSpec(weights, encoder))
    assert gen.slot.ip_procs is not None
    # a second generator on the pipeline reuses that IP-Adapter; another one is refused, not swapped in under it
    assert CharacterGenerator(fresh, ip_adapter=IPAdapterSpec(weights, encoder)).slot is gen.slot
    other = tmp_path / "other.safetensors"
    shutil.copyfile(weights, other)
    with pytest.raises(InputError) as exc:
        CharacterGenerator(fresh, ip_adapter=IPAdapterSpec(other, encoder))
    assert exc.value.code == "base_has_adapters"
