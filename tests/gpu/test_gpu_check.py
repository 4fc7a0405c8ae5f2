"""scripts/gpu_check.py at FLUX.1-dev size (LTX-2.5 and Wan2.2-Animate size in its video phases) on a GPU
(skipped without one; the CPU dry run is in tests/unit/test_gpu_check_dry_run.py), and the nf4 base,
which diffusers quantizes on CUDA only."""

from __future__ import annotations

import json

import pytest


@pytest.mark.gpu
def test_full_flux_dev_check_on_gpu(load_gpu_check, tmp_path):
    """The library's own path at FLUX.1-dev size: one 8-minute call on an H100/H200."""
    report_path = tmp_path / "gpu.json"
    code = load_gpu_check().main(["--json", str(report_path), "--workdir", str(tmp_path / "w")])
    report = json.loads(report_path.read_text())  # written even when a phase failed
    assert code == 0, (report["errors"], report["skipped"])
    params = report["phases"]["folder"]["params_billion"]["transformer"]
    assert 11.5 < params < 12.5
    bf16 = report["phases"]["train:persona-flux-dev"]
    assert [f["image_tokens"] for f in bf16["per_resolution"]] == [1024, 4096]
    assert bf16["train_peak_bytes"] > 20 * 2**30              # the bf16 weights alone are 22 GiB
    assert bf16["encode_peak_bytes"] < bf16["train_peak_bytes"]  # T5-XXL never sits beside the transformer
    q24 = report["phases"]["train:persona-flux-dev-24gb"]
    assert q24["peak_bytes"] < 24 * 2**30, "the 24gb preset must fit a 24 GB card"
    q16 = report["phases"]["train:persona-flux-dev-16gb"]
    assert q16["peak_bytes"] < 16 * 2**30, "the 16gb preset must fit a 16 GB card"
    assert report["phases"]["generate:compiled"]["recompiled_on_switch"] is False
    for name, billions in (("video:talking-head", 35.3), ("video:motion", 23.7)):   # real sizes, random weights
        video = report["phases"][name]
        assert sum(video["params_billion"].values()) == pytest.approx(billions, abs=0.1)
        assert [r["label"] for r in video["runs"]] == ["preview", "full"]
        assert all(r["status"] == "completed" and r["s_per_video_s"] > 0 and r["peak_bytes"] > 2 * billions * 1e9
                   for r in video["runs"])   # the bf16 weights stay resident through every run
    assert report["total_s"] < 8 * 60


@pytest.mark.gpu
def test_nf4_base_trains_on_tiny_flux(tmp_path):
    pytest.importorskip("bitsandbytes")
    from persona_ml.training import job as jobmod
    from persona_ml.training.config import load_train_config
    from persona_ml.training.testing import TinyLoader, make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n=2, size=64)
    cfg = load_train_config("tiny-cpu", [f"cache.dir={tmp_path / 'cache'}", "steps=3", "samples.every=-1",
                                         "device=cuda", "precision=bf16", "quantization=nf4"])
    loader = TinyLoader()
    old, jobmod._load_base_model = jobmod._load_base_model, loader
    try:
        result = jobmod.train_lora(cfg, data.root, tmp_path / "out")
    finally:
        jobmod._load_base_model = old
    assert result.status.value == "completed" and result.memory["train"]["measure"] == "cuda_max_allocated"
