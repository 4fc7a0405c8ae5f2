"""Issue 12, checkpoints: a bit flip is detected on resume, a damaged newest checkpoint falls back
to the newest intact one, stale temp folders go, malformed meta.json is a coded error."""

from __future__ import annotations

import json
import logging
import random

import pytest
import torch
from hostile_cases import assert_coded, hostile_json_texts, mutations

from persona_ml.errors import PersonaMLError, TrainingError
from persona_ml.training.checkpoint import (
    CheckpointState,
    DataPosition,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)


def _state(step: int) -> CheckpointState:
    torch.manual_seed(step)
    lin = torch.nn.Linear(8, 8)
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-2)
    lin(torch.randn(2, 8)).pow(2).sum().backward()
    opt.step()
    return CheckpointState(step=step, position=DataPosition(0, step), adapter=dict(lin.state_dict()),
                           optimizer=opt.state_dict(), scheduler={"last_epoch": step}, rng=capture_rng(),
                           losses=[0.1] * step, meta={"training_hash": "h"})


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["adapter.safetensors", "state.pt"])
def test_a_single_bit_flip_is_detected_on_resume(tmp_path, name):
    path = save_checkpoint(tmp_path, _state(4), keep_last=3)
    size = (path / name).stat().st_size
    _flip(path / name, size - 3)  # deep in the tensor data: safetensors/torch would load it silently
    with pytest.raises(TrainingError) as info:
        load_checkpoint(path)
    assert info.value.code == "checkpoint_damaged" and info.value.details["field"] == name


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one_saying_so(tmp_path, caplog):
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, _state(step), keep_last=3)
    _flip(tmp_path / "step-000006" / "adapter.safetensors", -2)
    (tmp_path / "step-000004" / "state.pt").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="persona_ml.training.checkpoint"):
        chosen = latest_checkpoint(tmp_path)
    assert chosen.name == "step-000002"
    text = caplog.text
    assert "step-000006" in text and "step-000004" in text and "falling back" in text and "step-000002" in text
    assert load_checkpoint(chosen).step == 2
    _flip(tmp_path / "step-000002" / "state.pt", -2)
    assert latest_checkpoint(tmp_path) is None


def test_stale_temp_folders_of_killed_runs_are_removed_by_the_next_save(tmp_path):
    save_checkpoint(tmp_path, _state(2), keep_last=3)
    (tmp_path / ".step-000004.k3j2.tmp").mkdir()  # killed while writing step 4
    (tmp_path / ".step-000004.k3j2.tmp" / "adapter.safetensors").write_bytes(b"half")
    (tmp_path / ".step-000002.old-4242").mkdir()  # killed while replacing step 2
    (tmp_path / "notes.txt").write_text("user file")
    save_checkpoint(tmp_path, _state(4), keep_last=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "step-000002", "step-000004"]


def test_checkpoints_of_format_1_still_resume_unverified(tmp_path, caplog):
    path = save_checkpoint(tmp_path, _state(3), keep_last=1)
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 1
    del meta["files"]
    (path / "meta.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(path).step == 3
    assert "unverified" in caplog.text


def test_fuzz_checkpoint_meta_through_the_public_loaders(tmp_path):
    rng = random.Random(4)
    path = save_checkpoint(tmp_path, _state(3), keep_last=1)
    good = (path / "meta.json").read_text()
    meta = json.loads(good)
    for variant in mutations(meta, rng, 200):
        try:
            (path / "meta.json").write_text(json.dumps(variant))
        except (ValueError, RecursionError):
            continue
        for fn in (read_checkpoint_meta, load_checkpoint, latest_checkpoint):
            out = assert_coded(fn, path if fn is not latest_checkpoint else tmp_path)
            if fn is load_checkpoint and not isinstance(out, PersonaMLError):
                assert isinstance(out.step, int) and out.step >= 0
    for text in hostile_json_texts(good):
        (path / "meta.json").write_bytes(text)
        assert isinstance(assert_coded(load_checkpoint, path), PersonaMLError)
        assert latest_checkpoint(tmp_path) is None
    (path / "meta.json").unlink()
    (path / "meta.json").mkdir()
    assert isinstance(assert_coded(load_checkpoint, path), PersonaMLError)
