"""LoRA training rules: every boundary, several violations at once, defaults, types, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from persona_ml.cli import main
from persona_ml.config import packaged_config_dir
from persona_ml.errors import ConfigError, InputError, LoraRuleError
from persona_ml.rules import (
    LoraRequest,
    RuleViolation,
    check_image_count,
    check_lora_request,
    enforce_lora_request,
    load_rules,
)


def ok_request(**kw) -> dict:
    base = {"plan": "pro", "num_images": 12, "training_steps": 1200, "lora_rank": 16, "base_model": "flux-dev"}
    base.update(kw)
    return base


@pytest.mark.parametrize("n, code", [(9, "too_few_images"), (10, None), (30, None), (31, "too_many_images")])
def test_image_count_boundaries(n, code):
    result = check_lora_request(ok_request(num_images=n))
    assert result.codes == ([code] if code else [])
    if code:
        v = result.violations[0]
        assert (v.field, v.actual, v.limit) == ("num_images", n, 10 if n < 10 else 30)


@pytest.mark.parametrize("steps, code", [(999, "steps_too_low"), (1000, None), (1500, None),
                                         (1501, "steps_too_high")])
def test_steps_boundaries(steps, code):
    result = check_lora_request(ok_request(training_steps=steps))
    assert result.codes == ([code] if code else [])
    if code:
        assert result.violations[0].field == "training_steps"
        assert result.violations[0].limit == (1000 if steps < 1000 else 1500)


@pytest.mark.parametrize("rank, code", [(15, "rank_too_low"), (16, None), (32, None), (33, "rank_too_high")])
def test_rank_boundaries(rank, code):
    result = check_lora_request(ok_request(lora_rank=rank))
    assert result.codes == ([code] if code else [])
    if code:
        assert result.violations[0].field == "lora_rank"
        assert result.violations[0].actual == rank


@pytest.mark.parametrize("plan", ["pro", "agency"])
def test_paid_plans_allowed(plan):
    assert check_lora_request(ok_request(plan=plan)).ok


def test_free_plan_refused():
    result = check_lora_request(ok_request(plan="free"))
    assert result.codes == ["plan_not_allowed"]
    v = result.violations[0]
    assert v.field == "plan" and v.actual == "free" and set(v.limit) == {"pro", "agency"}
    assert "pro" in v.message


def test_all_violations_reported_together():
    result = check_lora_request({"plan": "free", "num_images": 31, "steps": 999, "rank": 33,
                                 "base_model": "sdxl-1.0"})
    assert result.codes == ["plan_not_allowed", "too_many_images", "steps_too_low", "rank_too_high",
                            "base_model_not_allowed"]
    assert not result.ok
    d = result.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert {tuple(sorted(v)) for v in d["violations"]} == {("actual", "code", "field", "limit", "message")}


def test_unknown_base_model_and_alias():
    bad = check_lora_request(ok_request(base_model="stable-diffusion-xl"))
    assert bad.codes == ["base_model_not_allowed"]
    assert "flux-dev" in bad.violations[0].limit and "fal-ai/flux-lora" in bad.violations[0].limit
    alias = check_lora_request(ok_request(base_model="fal-ai/flux-lora"))
    assert alias.ok and alias.request.base_model == "flux-dev"
    assert alias.normalized == {"base_model": {"from": "fal-ai/flux-lora", "to": "flux-dev"}}


def test_defaults_filled_and_reported():
    result = check_lora_request(LoraRequest(plan="agency", num_images=20))
    assert result.ok
    assert result.defaults_filled == {"training_steps": 1000, "lora_rank": 16, "base_model": "flux-dev"}
    assert (result.request.training_steps, result.request.lora_rank, result.request.base_model) == (1000, 16,
                                                                                                     "flux-dev")
    assert result.credit_cost == 500
    given = check_lora_request(ok_request())
    assert given.defaults_filled == {}


@pytest.mark.parametrize("field_name, value", [("num_images", "12"), ("training_steps", 1200.0),
                                               ("lora_rank", True), ("plan", None), ("base_model", 3),
                                               ("num_images", None)])
def test_wrong_types_are_violations(field_name, value):
    result = check_lora_request(ok_request(**{field_name: value}))
    assert result.codes == ["invalid_type"]
    assert result.violations[0].field == field_name
    assert result.violations[0].actual == value


def test_from_dict_rejects_unknown_and_missing_fields():
    with pytest.raises(InputError) as exc:
        LoraRequest.from_dict({"plan": "pro", "num_images": 12, "lora_rnak": 16})
    assert exc.value.details["field"] == "lora_rnak"
    with pytest.raises(InputError):
        LoraRequest.from_dict({"plan": "pro"})
    with pytest.raises(InputError):
        check_lora_request(["pro", 12])  # type: ignore[arg-type]


def test_credits_checked_against_config_cost():
    assert check_lora_request(ok_request(credits=500)).ok
    short = check_lora_request(ok_request(credits=499))
    assert short.codes == ["insufficient_credits"]
    assert (short.violations[0].limit, short.violations[0].actual) == (500, 499)


@pytest.mark.parametrize("credits", [float("nan"), float("inf")])
def test_non_finite_credits_are_violations(credits):
    # NaN < 500 is False: a NaN balance used to pass the credit check
    result = check_lora_request(ok_request(credits=credits))
    assert result.codes == ["invalid_type"] and result.violations[0].field == "credits"


def test_credit_cost_comes_from_config(tmp_path):
    text = (packaged_config_dir() / "lora_rules.yaml").read_text()
    custom = tmp_path / "rules.yaml"
    custom.write_text(text.replace("per_plan: {}", "per_plan: {agency: 350}"))
    rules = load_rules(custom)
    assert check_lora_request(ok_request(plan="agency"), rules).credit_cost == 350
    assert check_lora_request(ok_request(plan="pro"), rules).credit_cost == 500


def test_rules_config_edge_values(tmp_path):
    text = (packaged_config_dir() / "lora_rules.yaml").read_text()
    custom = tmp_path / "rules.yaml"
    # no plan may train (a valid setting): the image-count check used by screening still works
    custom.write_text(text.replace("plans_allowed: [pro, agency]", "plans_allowed: []"))
    rules = load_rules(custom)
    assert [v.code for v in check_image_count(9, rules)] == ["too_few_images"]
    assert check_lora_request(ok_request(), rules).codes == ["plan_not_allowed"]
    # a negative price is a config error, not a refund
    custom.write_text(text.replace("default_cost: 500", "default_cost: -500"))
    with pytest.raises(ConfigError) as exc:
        load_rules(custom)
    assert "default_cost" in str(exc.value)


def test_rules_config_is_strict(tmp_path):
    bad = tmp_path / "rules.yaml"
    bad.write_text((packaged_config_dir() / "lora_rules.yaml").read_text()
                   .replace("plans_allowed", "plans_alowed"))
    with pytest.raises(ConfigError) as exc:
        load_rules(bad)
    assert "plans_alowed" in str(exc.value)


def test_enforce_raises_with_all_violations():
    with pytest.raises(LoraRuleError) as exc:
        enforce_lora_request({"plan": "free", "num_images": 5, "rank": 64})
    err = exc.value
    assert err.code == "lora_rules_violation"
    assert [v.code for v in err.violations] == ["plan_not_allowed", "too_few_images", "rank_too_high"]
    assert all(isinstance(v, RuleViolation) for v in err.violations)
    assert [v["code"] for v in err.to_dict()["details"]["violations"]] == [v.code for v in err.violations]
    assert enforce_lora_request(ok_request()).ok


def test_check_image_count_only():
    assert [v.code for v in check_image_count(9)] == ["too_few_images"]
    assert check_image_count(10) == ()


def test_rules_import_no_torch():
    code = "import sys, persona_ml.rules; from persona_ml import check_lora_request; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_check_ok(capsys):
    rc = main(["check", "--plan", "pro", "--steps", "1200", "--rank", "16", "--images", "12", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["violations"] == []
    assert out["defaults_filled"] == {"base_model": "flux-dev"}


def test_cli_check_violations_exit_3(capsys, tmp_path):
    for i in range(9):
        (tmp_path / f"p{i}.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not an image")
    rc = main(["check", "--plan", "free", "--steps", "1501", "--rank", "16", "--images", str(tmp_path), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 3
    assert [v["code"] for v in out["violations"]] == ["plan_not_allowed", "too_few_images", "steps_too_high"]
    # a raw folder is screened, not counted: nine files that are not photos give no training image
    assert out["request"]["num_images"] == 0 and out["images_source"] == "screened"
    assert out["images_count"]["files"] == 9 and sum(out["images_count"]["left_out"].values()) == 9


def test_cli_check_text_output(capsys):
    rc = main(["check", "--plan", "pro", "--images", "31", "--base-model", "fal-ai/flux-lora"])
    text = capsys.readouterr().out
    assert rc == 3 and "too_many_images" in text and "fal-ai/flux-lora -> flux-dev" in text


@pytest.mark.parametrize("argv", [["check", "--plan", "pro", "--images", "/no/such/dir"],
                                  ["check", "--plan", "pro", "--images", "12", "--steps", "many"],
                                  ["check", "--images", "12"]])
def test_cli_check_bad_input_exit_2(argv, capsys):
    assert main(argv) == 2
