"""scripts/gpu_check.py at FLUX.1-dev size on a GPU (skipped without one; the CPU dry run is in
tests/unit/test_gpu_check_dry_run.py)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.gpu
def test_full_flux_dev_check_on_gpu(load_gpu_check, tmp_path):
    """The real check at FLUX.1-dev size (about 2-4 minutes on an H100/H200)."""
    report_path = tmp_path / "gpu.json"
    code = load_gpu_check().main(["--quick", "--json", str(report_path)])
    report = json.loads(report_path.read_text())  # written even when a phase failed
    assert code == 0, (report["errors"], report["skipped"])
    assert 11.5 < report["params_billion"] < 12.5
    assert [t["image_tokens"] for t in report["train"]] == [1024, 4096]
    for t in report["train"]:
        assert t["finite"] and t["peak_mem_gib"] > 20  # the bf16 weights alone are 22 GiB
        assert t["lora_grads_nonzero"] and not t["stopped_by_budget"]
    assert report["inference"]["finite"] and report["inference"]["s_per_forward"] > 0
    assert report["total_s"] < 8 * 60
