"""Training presets: strict keys, overrides, the dev-rules guard, resolved config round trip."""

from __future__ import annotations

import pytest
import yaml

from persona_ml.errors import ConfigError
from persona_ml.training.config import RESOLVED_NAME, load_train_config, write_resolved


def test_flux_dev_preset_matches_the_issue():
    cfg = load_train_config("persona-flux-dev")
    assert cfg.base_model == "flux-dev" and cfg.precision == "bf16" and cfg.gradient_checkpointing
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.optimizer.lr, cfg.steps) == (16, 16.0, 1e-4, 1000)
    assert cfg.optimizer.name == "adamw8bit" and cfg.noise.guidance == 1.0
    assert cfg.noise.timestep_sampling == "flux_shift"
    assert cfg.data.resolutions == (512, 768, 1024) and cfg.data.caption_dropout == 0.05
    assert cfg.rules.mode == "enforce"


def test_tiny_preset_is_a_marked_dev_run():
    cfg = load_train_config("tiny-cpu")
    assert cfg.base_model == "tiny-flux" and cfg.precision == "fp32" and cfg.rules.mode == "dev"


def test_unknown_key_names_its_dotted_path(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optimizer:\n  lr_sheduler: cosine\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(p)
    assert "optimizer.lr_sheduler" in str(err.value) and err.value.details["field"] == "optimizer.lr_sheduler"


def test_overrides_are_typed_and_checked():
    cfg = load_train_config("tiny-cpu", ["optimizer.lr=5e-4", "steps=7", "data.resolutions=[32]"])
    assert (cfg.optimizer.lr, cfg.steps, cfg.data.resolutions) == (5e-4, 7, (32,))
    with pytest.raises(ConfigError) as err:
        load_train_config("tiny-cpu", ["steps=many"])
    assert err.value.details["field"] == "steps"
    with pytest.raises(ConfigError):
        load_train_config("tiny-cpu", ["data.resolutions=[30]"])   # not a multiple of 16
    with pytest.raises(ConfigError):
        load_train_config("tiny-cpu", ["noise.timestep_sampling=cosmic"])


def test_dev_rules_mode_is_refused_for_real_models():
    with pytest.raises(ConfigError) as err:
        load_train_config("persona-flux-dev", ["rules.mode=dev"])
    assert err.value.details["field"] == "rules.mode"
    with pytest.raises(ConfigError):
        load_train_config("tiny-cpu", ["base_model=flux-dev"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_train_config("persona-flux-dev", ["steps=1200", "cache.dir=/tmp/x"])
    path = write_resolved(cfg, tmp_path)
    assert path.name == RESOLVED_NAME and yaml.safe_load(path.read_text())["steps"] == 1200
    again = load_train_config(path)
    assert again == cfg and again.training_hash() == cfg.training_hash()


def test_training_hash_ignores_cadence_but_not_what_is_trained():
    a = load_train_config("tiny-cpu")
    assert a.training_hash() == load_train_config("tiny-cpu", ["checkpoint.every=3", "samples.every=5"]).training_hash()
    assert a.training_hash() != load_train_config("tiny-cpu", ["optimizer.lr=2e-3"]).training_hash()


def test_flux_shift_moves_noise_levels_up_for_bigger_images():
    import torch

    from persona_ml.training.config import NoiseConfig
    from persona_ml.training.flux import flux_mu, sample_sigmas

    assert flux_mu(256) == pytest.approx(0.5) and flux_mu(4096) == pytest.approx(1.15)
    cfg = NoiseConfig()
    small = sample_sigmas(cfg, 4000, 256, torch.Generator().manual_seed(0))     # 256 px
    large = sample_sigmas(cfg, 4000, 4096, torch.Generator().manual_seed(0))    # 1024 px, same draws
    assert 0 < float(small.min()) and float(large.max()) < 1
    assert bool((large > small).all()) and float(large.mean()) > float(small.mean()) + 0.05
    plain = sample_sigmas(NoiseConfig(timestep_sampling="sigmoid"), 4000, 4096, torch.Generator().manual_seed(0))
    assert float(plain.mean()) == pytest.approx(0.5, abs=0.02)                  # logit-normal, no shift


def test_memory_tier_presets_differ_from_the_bf16_preset_only_in_the_base_quantization():
    base = load_train_config("persona-flux-dev").to_dict()
    for name, scheme in (("persona-flux-dev-24gb", "int8-weight-only"), ("persona-flux-dev-16gb", "nf4")):
        tier = load_train_config(name).to_dict()
        assert tier.pop("quantization") == scheme and base["quantization"] == "none"
        assert tier == {k: v for k, v in base.items() if k != "quantization"}, name
        assert tier["rules"]["mode"] == "enforce"   # a preset never opts out of the platform's rules
    with pytest.raises(ConfigError) as err:
        load_train_config("persona-flux-dev", ["quantization=int4"])
    assert err.value.details["field"] == "quantization"
