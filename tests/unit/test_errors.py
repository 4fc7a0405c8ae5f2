import json
import pickle

import pytest

import persona_ml
from persona_ml.errors import ConfigError, ImageError, LoraRuleError, PersonaMLError


def test_codes_details_and_builtin_bases():
    err = ImageError("x.jpg: empty", code="image_empty", field="image", value="x.jpg")
    assert err.code == "image_empty" and err.http_status == 422
    assert isinstance(err, ValueError) and isinstance(err, PersonaMLError)
    assert json.loads(json.dumps(err.to_dict()))["details"] == {"field": "image", "value": "x.jpg"}
    assert ConfigError("bad").code == "config_invalid"


def test_errors_survive_pickling():
    err = pickle.loads(pickle.dumps(ImageError("m", code="image_truncated", field="image")))
    assert err.code == "image_truncated" and err.details == {"field": "image"} and str(err) == "m"


def test_rule_error_carries_violations():
    err = LoraRuleError("2 violations", violations=[{"code": "a"}, {"code": "b"}])
    assert err.violations == [{"code": "a"}, {"code": "b"}]
    assert err.to_dict()["details"]["violations"][1]["code"] == "b"


def test_rule_errors_keep_their_violations_across_pickling():
    """A worker that ships errors between processes (multiprocessing, a task queue) keeps ``violations``."""
    from persona_ml.errors import VoiceRuleError
    from persona_ml.rules import enforce_lora_request

    with pytest.raises(LoraRuleError) as exc:
        enforce_lora_request({"plan": "free", "num_images": 5, "rank": 64})
    err = pickle.loads(pickle.dumps(exc.value))
    assert type(err) is LoraRuleError and len(err.violations) >= 2
    assert [v.code for v in err.violations] == [v.code for v in exc.value.violations]
    assert err.to_dict() == exc.value.to_dict() and err.http_status == 422
    voice = pickle.loads(pickle.dumps(VoiceRuleError("1 violation", violations=[{"code": "too_short"}])))
    assert voice.violations == [{"code": "too_short"}]


def test_import_is_light_and_side_effect_free():
    import subprocess
    import sys

    code = ("import os, sys, logging; before=dict(os.environ); import persona_ml; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert dict(os.environ)==before, 'env changed'; "
            "assert not logging.getLogger().handlers, 'logging configured'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert persona_ml.__version__


def test_jsonable_converts_nested_numpy_and_unknown_values():
    from pathlib import Path

    import numpy as np

    from persona_ml._json import jsonable

    out = jsonable({"a": (1, np.float32(0.5)), 2: [None, np.int64(3)], "p": Path("x")})
    assert out == {"a": [1, 0.5], "2": [None, 3], "p": "x"}
    assert json.loads(json.dumps(out)) == out
    assert jsonable(Path("x"), fallback=repr) == "PosixPath('x')"
