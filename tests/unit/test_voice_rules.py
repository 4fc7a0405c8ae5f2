"""Voice-clone rules and voice settings: every violation at once, defaults from config, strict keys."""

from __future__ import annotations

import pytest

from persona_ml.errors import ConfigError, InputError, VoiceRuleError
from persona_ml.voice.rules import (
    SampleFacts,
    VoiceRules,
    check_clone_request,
    check_voice_settings,
    enforce_clone_request,
    load_voice_rules,
)


def sample(i=0, **kw):
    base = dict(source=f"s{i}.wav", sha256=f"{i:064x}", format="wav", sample_rate=44100, channels=1,
                duration_s=20.0, speech_s=18.0)
    base.update(kw)
    return SampleFacts(**base)


def test_a_good_request_passes_with_defaults_from_config():
    rules = load_voice_rules()
    result = check_clone_request({"name": "Ava", "samples": [sample(0), sample(1)]})
    assert result.ok and result.codes == []
    assert result.settings.stability == rules.settings.stability.default == 0.55
    assert result.settings.similarity_boost == 0.8 and result.settings.style == 0.25
    assert result.settings.use_speaker_boost is True
    assert set(result.defaults_filled) == {"stability", "similarity_boost", "style", "use_speaker_boost"}
    assert result.total_speech_s == pytest.approx(36.0)


def test_every_violation_is_reported_at_once_with_field_limit_and_actual():
    samples = [
        sample(0, format="aiff"),                                # format not on the list
        sample(1, sample_rate=8000),                             # telephone rate
        sample(2, channels=6),
        sample(3, duration_s=0.4, speech_s=0.3),                 # too short, too little speech
        sample(4, warnings=("multiple_speakers", "clipping")),   # clipping alone is not refused
        sample(5, outlier=True),
        sample(0),                                               # the same file again
    ]
    result = check_clone_request({"name": "x" * 101, "description": "d" * 501, "samples": samples,
                                  "stability": 1.5, "use_speaker_boost": "yes", "style": float("nan")})
    by_code = {v.code: v for v in result.violations}
    assert set(by_code) == {"name_too_long", "description_too_long", "format_not_allowed", "sample_rate_too_low",
                            "too_many_channels", "sample_too_short", "sample_little_speech",
                            "sample_multiple_speakers", "sample_other_speaker", "duplicate_sample",
                            "setting_out_of_range", "invalid_type"}
    assert by_code["sample_rate_too_low"].field == "samples[1].sample_rate"
    assert by_code["sample_rate_too_low"].limit == 16000 and by_code["sample_rate_too_low"].actual == 8000
    assert by_code["setting_out_of_range"].field == "stability" and by_code["setting_out_of_range"].limit == [0.0, 1.0]
    assert {v.field for v in result.violations if v.code == "invalid_type"} == {"use_speaker_boost", "style"}
    assert by_code["duplicate_sample"].limit == 0 and by_code["duplicate_sample"].actual == 6
    assert not result.ok and result.settings is None
    d = result.to_dict()
    assert d["ok"] is False and all({"code", "field", "limit", "actual", "message"} <= set(v) for v in d["violations"])


def test_total_speech_limits_for_an_instant_clone():
    short = check_clone_request({"name": "Ava", "samples": [sample(0, speech_s=10.0), sample(1, speech_s=9.0)]})
    v = {x.code: x for x in short.violations}["total_speech_too_short"]
    assert v.limit == 30.0 and v.actual == pytest.approx(19.0) and "add 11 s" in v.message
    long = check_clone_request({"name": "Ava", "samples": [sample(i, duration_s=60, speech_s=59.0) for i in range(6)]})
    assert long.codes == ["total_speech_too_long"]
    many = check_clone_request({"name": "Ava", "samples": [sample(i, speech_s=2.0, duration_s=2.0) for i in range(26)]})
    assert "too_many_samples" in many.codes
    none = check_clone_request({"name": "Ava", "samples": []})
    assert none.codes == ["too_few_samples"]


def test_enforce_raises_one_coded_error_with_all_violations():
    with pytest.raises(VoiceRuleError) as ei:
        enforce_clone_request({"name": "", "samples": [sample(0, speech_s=5.0)]})
    err = ei.value
    assert err.code == "voice_rules_violation" and err.http_status == 422
    assert [v.code for v in err.violations] == ["name_missing", "total_speech_too_short"]
    assert err.details["violations"][1]["limit"] == 30.0


def test_settings_schema_alone_and_the_api_settings_object():
    ok = check_voice_settings({"stability": 0, "similarity_boost": 1, "use_speaker_boost": False})
    assert ok.ok and ok.settings.stability == 0.0 and ok.settings.style == 0.25 and ok.defaults_filled == {"style": 0.25}
    bad = check_voice_settings({"stability": -0.1, "similarity_boost": True, "style": "0.3"})
    assert [v.code for v in bad.violations] == ["setting_out_of_range", "invalid_type", "invalid_type"]
    nested = check_clone_request({"name": "Ava", "samples": [sample(0, speech_s=40)], "settings": {"style": 0.9}})
    assert nested.ok and nested.settings.style == 0.9
    with pytest.raises(InputError):
        check_voice_settings({"stabilty": 0.5})  # a typo is an error, not a silently ignored key
    with pytest.raises(InputError):
        check_clone_request({"name": "Ava", "samples": [], "sample_urls": []})
    with pytest.raises(InputError):
        check_clone_request({"samples": []})


def test_rules_file_is_strict(tmp_path):
    from persona_ml.config import load_config

    good = (load_voice_rules.__module__, load_voice_rules())
    assert isinstance(good[1], VoiceRules)
    import yaml

    from persona_ml.config import config_file

    data = yaml.safe_load(config_file("voice_rules.yaml").read_text())
    data["samples"]["totl_speech_s"] = data["samples"].pop("total_speech_s")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as ei:
        load_config(VoiceRules, path)
    assert "samples.totl_speech_s" in str(ei.value)
