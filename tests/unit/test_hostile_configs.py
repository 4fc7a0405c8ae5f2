"""Issue 12, configs and rules requests: hostile YAML and values are coded errors or right."""

from __future__ import annotations

import math
import random
import time

import pytest
import yaml
from hostile_cases import assert_coded, mutations
from test_hostile_parse import BILLION_LAUGHS

from persona_ml.config import config_file, from_dict, read_yaml
from persona_ml.dataset.settings import load_dataset_config
from persona_ml.errors import ConfigError, PersonaMLError
from persona_ml.faces.thresholds import load_thresholds_table
from persona_ml.models.base_models import list_base_models
from persona_ml.rules import LoraRequest, check_lora_request, enforce_lora_request, load_rules
from persona_ml.training.config import (
    DataConfig,
    LoraConfig,
    NoiseConfig,
    OptimizerConfig,
    SampleConfig,
    TrainConfig,
    load_train_config,
)

LOADERS = {
    "lora_rules.yaml": load_rules,
    "train/tiny-cpu.yaml": load_train_config,
    "face_thresholds.yaml": load_thresholds_table,
    "base_models.yaml": list_base_models,
}


def _write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_the_672_byte_alias_bomb_is_refused_by_every_config_loader(tmp_path, name):
    path = _write(tmp_path, name, BILLION_LAUGHS)
    t0 = time.process_time()
    with pytest.raises(ConfigError) as info:
        LOADERS[name](path)
    assert info.value.details["reason"] == "aliases" and time.process_time() - t0 < 5
    assert len(info.value.message) < 1000


@pytest.mark.parametrize("override", ["steps=010", "steps=0010", "seed=-07", "steps=1:40"])
def test_yaml_1_1_octal_and_base_60_overrides_are_refused_not_reinterpreted(override):
    with pytest.raises(ConfigError) as info:
        load_train_config("tiny-cpu", [override])
    assert info.value.details["reason"] == "octal"
    assert load_train_config("tiny-cpu", ["steps=10"]).steps == 10


@pytest.mark.parametrize("override", ["optimizer.lr=.nan", "optimizer.lr=nan", "optimizer.lr=.inf", "lora.alpha=-.inf",
                                      "lora.alpha=1e400", "noise.shift=NaN", "samples.guidance=.nan",
                                      "data.caption_dropout=.nan", "data.face_loss_weight=.inf"])
def test_every_float_field_refuses_nan_and_infinity(override):
    with pytest.raises(ConfigError):
        load_train_config("tiny-cpu", [override])


@pytest.mark.parametrize("cls, kwargs, field", [
    (LoraConfig, {"alpha": math.nan}, "alpha"), (LoraConfig, {"dropout": math.nan}, "lora.dropout"),
    (LoraConfig, {"rank": "16"}, "rank"),
    (OptimizerConfig, {"lr": math.nan}, "lr"), (OptimizerConfig, {"betas": (0.9, 1.0)}, "optimizer.betas"),
    (OptimizerConfig, {"betas": (-0.1, 0.9)}, "optimizer.betas"), (OptimizerConfig, {"betas": (math.nan, 0.9)},
                                                                   "optimizer.betas"),
    (OptimizerConfig, {"weight_decay": math.nan}, "optimizer.weight_decay"),
    (NoiseConfig, {"shift": math.nan}, "shift"), (NoiseConfig, {"guidance": math.inf}, "noise.guidance"),
    (DataConfig, {"max_sequence_length": 0}, "max_sequence_length"),
    (DataConfig, {"caption_dropout": math.nan}, "data.caption_dropout"),
    (DataConfig, {"face_loss_weight": math.nan}, "data.face_loss_weight"),
    (SampleConfig, {"width": 0}, "samples.width"), (SampleConfig, {"height": -16}, "samples.height"),
    (SampleConfig, {"width": 1000}, "samples.width"), (SampleConfig, {"steps": math.nan}, "steps"),
    (TrainConfig, {"steps": math.nan}, "steps"),
])
def test_ranges_are_checked_for_nan_and_types_on_direct_construction(cls, kwargs, field):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert info.value.details["field"] == field


def test_mixed_type_keys_huge_ints_and_non_utf8_are_coded(tmp_path):
    for text in ("steps: 10\n1: 2\n", "? [1, 2]\n: 3\n", "null: 1\n", "steps: " + "9" * 5000,
                 "steps: 99999999999999999999", "optimizer: {lr: 1e-4, lr: 2e-4}"):
        with pytest.raises(ConfigError) as info:
            load_train_config(_write(tmp_path, "t.yaml", text))
        assert len(info.value.message) < 1000, text[:40]
    with pytest.raises(ConfigError) as info:
        load_train_config(_write(tmp_path, "latin1.yaml", "trigger: caf\xe9\n".encode("latin-1")))
    assert "UTF-8" in info.value.message
    with pytest.raises(ConfigError) as info:
        from_dict(LoraConfig, {1: 2, "rank": 4})
    assert "keys must be names" in info.value.message


def test_config_paths_say_what_they_are(tmp_path):
    import os

    os.mkfifo(tmp_path / "rules.yaml")
    for path in (tmp_path, tmp_path / "rules.yaml", tmp_path / ("r" * 300 + ".yaml")):
        with pytest.raises(ConfigError) as info:
            read_yaml(path)
        assert info.value.code == "path_invalid", path
    with pytest.raises(ConfigError) as info:
        load_rules(tmp_path / ("r" * 300 + ".yaml"))
    assert info.value.code == "path_invalid"


@pytest.mark.parametrize("name", sorted(LOADERS) + ["dataset"])
def test_fuzz_config_files(tmp_path, name):
    rng = random.Random(hash(name) % 1000)
    if name == "dataset":
        doc = {"screening": {"batch_size": 8}, "prepare": {"max_upscale": 1.25, "caption_dropout": 0.05}}
        loader = load_dataset_config
    else:
        doc = yaml.safe_load(config_file(name).read_text())
        loader = LOADERS[name]
    for i, variant in enumerate(mutations(doc, rng, 60)):
        try:
            text = yaml.safe_dump(variant, allow_unicode=True)
        except (yaml.YAMLError, ValueError, RecursionError):
            continue
        path = _write(tmp_path, f"{i}/{name.replace('/', '_')}", text)
        assert_coded(loader, path)


def test_fuzz_rules_requests():
    rng = random.Random(5)
    base = {"plan": "pro", "num_images": 12, "steps": 1200, "rank": 16, "base_model": "fal-ai/flux-lora",
            "credits": 600, "trigger": "ohwx"}
    for variant in mutations(base, rng, 400):
        result = assert_coded(check_lora_request, variant)
        if not isinstance(result, PersonaMLError):
            import json

            json.dumps(result.to_dict())  # every result is reportable
            assert result.ok == (not result.violations)
            for v in result.violations:
                assert len(v.message) < 2000
        assert_coded(enforce_lora_request, variant)
    for value in (10**5000, -(10**5000), 2**64):
        result = check_lora_request(LoraRequest(plan="pro", num_images=value))
        assert result.codes == ["invalid_type"] and len(result.violations[0].message) < 400
