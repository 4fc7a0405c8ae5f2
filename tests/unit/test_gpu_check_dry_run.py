"""scripts/gpu_check.py on CPU: --help and a --dry-run over the tiny config run the script's whole
code path, so the GPU check cannot rot on machines without a GPU (tests/gpu runs the real one)."""

from __future__ import annotations

import importlib.util
import json
import sys
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_help_runs_without_a_gpu(capsys):
    with pytest.raises(SystemExit) as exc:
        _load().main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--dry-run" in out and "--json" in out


def test_dry_run_exercises_the_whole_code_path(tmp_path):
    report_path = tmp_path / "report.json"
    assert _load().main(["--dry-run", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["ok"] is True and report["plan"]["dtype"] == "bfloat16"
    assert [t["resolution"] for t in report["train"]] == [64, 128]
    assert [t["image_tokens"] for t in report["train"]] == [16, 64]  # (px/16)^2 after VAE + 2x2 packing
    for t in report["train"]:
        assert t["s_per_step"] > 0 and all(math.isfinite(v) for v in t["losses"])
        assert t["grad_norms"][-1] > 0  # gradients reach the LoRA through gradient checkpointing
    assert report["inference"]["s_per_forward"] > 0
    assert report["lora_params_million"] > 0
