"""scripts/gpu_check.py on CPU: --help and a --dry-run over the tiny config run the script's whole
code path, so the GPU check cannot rot on machines without a GPU (tests/gpu runs the real one)."""

from __future__ import annotations

import json
import math

import pytest


def test_help_runs_without_a_gpu(load_gpu_check, capsys):
    with pytest.raises(SystemExit) as exc:
        load_gpu_check().main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--quick" in out and "--dry-run" in out and "--json" in out


def test_dry_run_exercises_the_whole_code_path(load_gpu_check, tmp_path):
    report_path = tmp_path / "report.json"
    assert load_gpu_check().main(["--dry-run", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["ok"] is True and report["plan"]["dtype"] == "bfloat16"
    assert [t["resolution"] for t in report["train"]] == [64, 128]
    assert [t["image_tokens"] for t in report["train"]] == [16, 64]  # (px/16)^2 after VAE + 2x2 packing
    for t in report["train"]:
        assert t["s_per_step"] > 0 and all(math.isfinite(v) for v in t["losses"])
        assert t["grad_norms"][-1] > 0  # gradients reach the LoRA through gradient checkpointing
        assert t["lora_grads_nonzero"] and t["steps_timed"] == 2
    assert report["errors"] == [] and report["skipped"] == []
    assert report["inference"]["s_per_forward"] > 0
    assert report["lora_params_million"] > 0


# --- robustness: a GPU session may give the check one shot, so every failure must leave a report ----

_SMALL = ["--dry-run", "--resolutions", "64", "128", "--steps", "1"]


def test_a_failing_phase_is_recorded_and_the_others_still_run(load_gpu_check, tmp_path, monkeypatch):
    module = load_gpu_check()
    real = module.train_timing

    def oom_at_64(model, params, plan, resolution, deadline=math.inf):
        if resolution == 64:
            raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return real(model, params, plan, resolution, deadline)

    monkeypatch.setattr(module, "train_timing", oom_at_64)
    report_path = tmp_path / "report.json"
    assert module.main([*_SMALL, "--json", str(report_path)]) == 1
    report = json.loads(report_path.read_text())
    assert report["ok"] is False
    assert [e["phase"] for e in report["errors"]] == ["train_64"]
    assert "out of memory" in report["errors"][0]["message"]
    assert [t["resolution"] for t in report["train"]] == [128]  # the next resolution still ran
    assert report["inference"]["s_per_forward"] > 0


def test_a_failed_build_still_writes_the_report(load_gpu_check, tmp_path, monkeypatch):
    module = load_gpu_check()

    def boom(plan):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(module, "build_transformer", boom)
    report_path = tmp_path / "report.json"
    assert module.main([*_SMALL, "--json", str(report_path)]) == 1
    report = json.loads(report_path.read_text())
    assert report["ok"] is False and report["errors"][0]["phase"] == "build"
    assert {s["phase"] for s in report["skipped"]} == {"train_64", "train_128", "inference"}


def test_the_time_budget_stops_the_check_and_says_so(load_gpu_check, tmp_path):
    report_path = tmp_path / "report.json"
    assert load_gpu_check().main([*_SMALL, "--budget-s", "0.01", "--json", str(report_path)]) == 1
    report = json.loads(report_path.read_text())
    assert report["ok"] is False and report["errors"] == []
    assert [s["phase"] for s in report["skipped"]] == ["train_64", "train_128", "inference"]
    assert all("budget" in s["reason"] for s in report["skipped"])


def test_no_cuda_device_exits_2_with_a_report(load_gpu_check, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report_path = tmp_path / "report.json"
    assert load_gpu_check().main(["--quick", "--device", "cuda", "--json", str(report_path)]) == 2
    report = json.loads(report_path.read_text())
    assert report["ok"] is False and report["errors"][0]["phase"] == "device"
    assert "CUDA" in report["errors"][0]["message"]

