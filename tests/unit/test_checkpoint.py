"""Checkpoints: exact round trip of tensors, optimizer, scheduler and RNG; pruning; refusal of another run's."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from persona_ml.errors import TrainingError
from persona_ml.training.checkpoint import (
    CheckpointState,
    DataPosition,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _state(step: int) -> tuple[CheckpointState, torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(step)
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        lin(torch.randn(2, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    st = CheckpointState(step=step, position=DataPosition(2, 5), adapter=dict(lin.state_dict()),
                         optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=capture_rng(),
                         losses=[0.5, 0.25], meta={"training_hash": "abc"})
    return st, lin, opt


def test_round_trip_is_exact(tmp_path):
    st, lin, opt = _state(10)
    path = save_checkpoint(tmp_path, st, keep_last=3)
    back = load_checkpoint(path, expect={"training_hash": "abc"})
    assert back.step == 10 and back.position == DataPosition(2, 5) and back.losses == [0.5, 0.25]
    for k, v in st.adapter.items():
        assert torch.equal(back.adapter[k], v)
    lin2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(lin2.parameters(), lr=1e-2)
    opt2.load_state_dict(back.optimizer)
    for a, b in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert back.scheduler["last_epoch"] == 3


def test_rng_states_restore_every_generator():
    st = capture_rng()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(1)
    restore_rng(st)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_keeps_only_the_newest_k_and_ignores_incomplete(tmp_path):
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, _state(step)[0], keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [15, 20]
    (tmp_path / "step-000025").mkdir()            # a crash before meta.json: never used
    (tmp_path / ".step-000030.abc.tmp").mkdir()   # an unfinished atomic write
    assert latest_checkpoint(tmp_path).name == "step-000020"


def test_another_runs_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, _state(3)[0], keep_last=1)
    with pytest.raises(TrainingError) as err:
        load_checkpoint(path, expect={"training_hash": "different"})
    assert err.value.code == "checkpoint_invalid" and err.value.details["field"] == "training_hash"


def test_corrupt_checkpoint_is_a_coded_error(tmp_path):
    path = save_checkpoint(tmp_path, _state(3)[0], keep_last=1)
    (path / "adapter.safetensors").write_bytes(b"garbage")
    with pytest.raises(TrainingError) as err:
        load_checkpoint(path)
    assert err.value.code == "checkpoint_damaged" and err.value.details["field"] == "adapter.safetensors"


def test_cache_keys_separate_models_sizes_and_captions_and_corrupt_entries_are_misses(tmp_path):
    from persona_ml.training.cache import TensorCache, latent_key, text_key

    base = latent_key("sha256:a", "img", (0, 0, 64, 64), 64, 64, 64)
    assert base != latent_key("sha256:b", "img", (0, 0, 64, 64), 64, 64, 64)     # another base model
    assert base != latent_key("sha256:a", "img", (0, 0, 64, 64), 64, 64, 32)     # another resolution
    assert base != latent_key("sha256:a", "img", (1, 0, 64, 64), 64, 64, 64)     # another crop
    assert text_key("sha256:a", "ohwx, smiling", 512) != text_key("sha256:a", "ohwx, smiling", 256)
    cache = TensorCache(tmp_path)
    t = torch.arange(6.0).reshape(2, 3)
    path = cache.put("latents", base, {"latents": t})
    assert torch.equal(cache.get("latents", base)["latents"], t)
    path.write_bytes(b"truncated")
    assert cache.get("latents", base) is None and not path.exists()


def test_resume_on_a_machine_with_fewer_gpus_restores_the_devices_it_has(monkeypatch):
    state = capture_rng()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]  # saved on 2 GPUs
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda st, device: restored.append((device, int(st[0]))))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda states: [torch.cuda.set_rng_state(st, i) for i, st in enumerate(states)])
    restore_rng(state)
    assert restored == [(0, 0)]  # device 1 does not exist here: not an "invalid device ordinal" crash
