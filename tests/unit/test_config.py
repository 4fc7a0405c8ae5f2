from dataclasses import dataclass, field
from pathlib import Path

import pytest

from persona_ml.config import apply_overrides, from_dict, load_config, to_dict
from persona_ml.errors import ConfigError, PersonaMLError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4
    name: str = "adamw"


@dataclass(frozen=True)
class Train:
    steps: int
    optim: Optim = field(default_factory=Optim)
    resolutions: tuple[int, ...] = (512,)
    mixed_precision: str | None = None


def test_unknown_key_names_dotted_path():
    with pytest.raises(ConfigError) as exc:
        from_dict(Train, {"steps": 10, "optim": {"lr_sheduler": 3}})
    assert "optim.lr_sheduler" in str(exc.value)
    assert exc.value.details["field"] == "optim.lr_sheduler"
    assert exc.value.code == "config_invalid"
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, PersonaMLError)


@pytest.mark.parametrize("data,field_name", [
    ({"steps": "ten"}, "steps"),
    ({"steps": True}, "steps"),
    ({"steps": 1, "optim": {"lr": "fast"}}, "optim.lr"),
    ({"steps": 1, "resolutions": 512}, "resolutions"),
    ({"steps": 1, "resolutions": [512, "x"]}, "resolutions[1]"),
])
def test_wrong_types_name_field_and_value(data, field_name):
    with pytest.raises(ConfigError) as exc:
        from_dict(Train, data)
    assert exc.value.details["field"] == field_name


def test_missing_required_key():
    with pytest.raises(ConfigError, match="steps"):
        from_dict(Train, {})


def test_yaml_and_overrides(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 5\noptim:\n  lr: 0.001\nresolutions: [512, 768]\n")
    cfg = load_config(Train, p, overrides=["optim.lr=2e-4", "steps=7", "mixed_precision=bf16"])
    assert cfg.steps == 7 and cfg.optim.lr == pytest.approx(2e-4) and cfg.resolutions == (512, 768)
    assert cfg.mixed_precision == "bf16"
    assert to_dict(cfg)["resolutions"] == [512, 768]
    with pytest.raises(ConfigError, match="optim.typo"):
        load_config(Train, p, overrides=["optim.typo=1"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"steps": 1}, ["steps.x=2"])


def test_bad_yaml_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Train, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Train, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Train, lst)


def test_configs_ship_in_the_package_and_a_user_folder_overrides_per_file(tmp_path, monkeypatch):
    from persona_ml.config import config_file, packaged_config_dir
    from persona_ml.rules import load_rules

    packaged = packaged_config_dir()
    assert packaged.parent.name == "persona_ml"  # inside the package, so a wheel carries it
    for name in ("lora_rules.yaml", "face_thresholds.yaml", "base_models.yaml", "train/tiny-cpu.yaml"):
        assert (packaged / name).is_file(), name
    monkeypatch.setenv("PERSONA_ML_CONFIG_DIR", str(tmp_path))
    # nothing in the user folder: the packaged default is used
    assert config_file("lora_rules.yaml") == packaged / "lora_rules.yaml"
    default_cost = load_rules().credits.default_cost
    assert default_cost == 500
    text = (packaged / "lora_rules.yaml").read_text().replace("default_cost: 500", "default_cost: 777")
    assert "default_cost: 777" in text
    (tmp_path / "lora_rules.yaml").write_text(text)
    assert config_file("lora_rules.yaml") == tmp_path / "lora_rules.yaml"
    assert load_rules().credits.default_cost == 777
    # an explicit path argument beats the environment
    assert load_rules(packaged / "lora_rules.yaml").credits.default_cost == default_cost
    # other files still come from the package
    assert config_file("face_thresholds.yaml") == packaged / "face_thresholds.yaml"
