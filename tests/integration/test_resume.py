"""A run SIGKILLed at a random step and resumed ends bitwise identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from persona_ml.training import train_lora
from persona_ml.training.config import load_train_config
from persona_ml.training.testing import make_synthetic_dataset
from persona_ml.training.types import JobStatus

STEPS = 10

CHILD = textwrap.dedent("""
    import os, signal, sys, json, torch
    torch.set_num_threads(1)
    from persona_ml.training import train_lora
    from persona_ml.training.config import load_train_config
    args = json.loads(sys.argv[1])
    def on_event(e):
        if e.kind == "step" and e.step == args["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
    train_lora(load_train_config("tiny-cpu", args["overrides"]), args["data"], args["out"], on_event=on_event)
    sys.exit(3)  # never reached: the kill comes first
""")


@pytest.fixture
def one_thread():
    """Same thread count in this process and the child: float reductions then match bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tensors(result):
    return load_file(str(result.lora_path))


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(tmp_path, one_thread):
    data = make_synthetic_dataset(tmp_path / "prepared", n=2, size=64)
    overrides = [f"cache.dir={tmp_path / 'cache'}", f"steps={STEPS}", "checkpoint.every=3", "samples.every=-1",
                 "data.resolutions=[32, 64]", "optimizer.lr=1e-2"]
    cfg = load_train_config("tiny-cpu", overrides)
    reference = train_lora(cfg, data.root, tmp_path / "reference")
    assert reference.status is JobStatus.COMPLETED

    kill_at = random.Random(os.urandom(8)).randint(1, STEPS)
    out = tmp_path / "interrupted"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"kill_at": kill_at, "overrides": overrides,
                                                                     "data": str(data.root), "out": str(out)})],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, f"kill_at={kill_at}: {child.stderr[-2000:]}"
    assert not (out / "lora").exists()

    resumed = train_lora(cfg, data.root, out, resume=True)
    assert resumed.status is JobStatus.COMPLETED
    # the kill lands after step kill_at's update, before its checkpoint: the newest complete one is older
    assert resumed.resumed_from == (((kill_at - 1) // 3) * 3 or None), kill_at
    assert resumed.losses == reference.losses, f"kill_at={kill_at}"
    ref, got = _tensors(reference), _tensors(resumed)
    assert ref.keys() == got.keys() and len(ref) > 0
    differing = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differing, f"kill_at={kill_at}: {len(differing)} tensors differ, e.g. {differing[:3]}"
    assert any(t.abs().sum() > 0 for k, t in got.items() if "lora_B" in k or "lora_up" in k), "LoRA never trained"
