"""Resumable training checkpoints, written atomically, the newest K kept.

A checkpoint is a folder ``checkpoints/step-000250/`` holding:
    adapter.safetensors   the trainable LoRA tensors (fp32, PEFT names)
    state.pt              optimizer and LR-scheduler state dicts, RNG states (python, numpy,
                          torch, cuda, the run's training generator), loss history
    meta.json             step, data position (epoch + index into that epoch's seeded
                          permutation), the config's training hash, dataset hash and base-model
                          fingerprint; written last, so a folder without it is never used

The folder is built beside its final name and renamed (``persona_ml._atomic.atomic_dir``): a
process killed at any instant leaves either the previous checkpoint set or the new one.
``state.pt`` is read with ``torch.load(weights_only=True)`` (no pickled code).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_dir, atomic_write_json
from ..errors import TrainingError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


@dataclass(frozen=True)
class DataPosition:
    """Where the run is in its data order: ``index`` into epoch ``epoch``'s permutation."""

    epoch: int = 0
    index: int = 0


@dataclass
class CheckpointState:
    """Everything needed to continue a run exactly.

    Attributes:
        step: optimizer steps completed.
        position: the next sample to draw.
        adapter: LoRA tensor name -> tensor (CPU, fp32).
        optimizer: ``optimizer.state_dict()``.
        scheduler: ``lr_scheduler.state_dict()``.
        rng: ``capture_rng(generator)`` output.
        losses: per-step loss history so far.
        meta: identity of the run (``training_hash``, ``dataset_hash``, ``base_fingerprint``...).
    """

    step: int
    position: DataPosition
    adapter: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def capture_rng(generator=None) -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) global RNG states plus ``generator``'s, as tensors/ints
    only so ``torch.load(weights_only=True)`` reads them back."""
    import torch

    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached": float(np_cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state() if generator is not None else None,
    }
    return out


def restore_rng(state: dict[str, Any], generator=None) -> None:
    """Inverse of ``capture_rng``."""
    import torch

    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached"]))
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda) != n:  # resumed on a machine with another GPU count: restore the devices both have
            log.warning("checkpoint holds CUDA RNG states of %d devices, this machine has %d", len(cuda), n)
        for index, device_state in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(device_state, index)
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(ckpt_root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints (``meta.json`` present) under ``ckpt_root``, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "meta.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(ckpt_root: str | os.PathLike, state: CheckpointState, *, keep_last: int) -> Path:
    """Write ``state`` as ``<ckpt_root>/step-NNNNNN`` atomically and prune to the newest ``keep_last``.

    Returns:
        The checkpoint folder.
    """
    import torch
    from safetensors.torch import save_file

    root = Path(ckpt_root)
    final = root / step_dir_name(state.step)
    with atomic_dir(final) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.adapter.items()},
                  str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": state.optimizer, "scheduler": state.scheduler, "rng": state.rng,
                    "losses": [float(x) for x in state.losses]}, tmp / "state.pt")
        meta = dict(state.meta)
        meta.update(format_version=CHECKPOINT_FORMAT_VERSION, step=state.step,
                    position={"epoch": state.position.epoch, "index": state.position.index})
        atomic_write_json(tmp / "meta.json", meta)
    for _step, old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint written: %s", final)
    return final


def load_checkpoint(path: str | os.PathLike, *, expect: dict[str, Any] | None = None) -> CheckpointState:
    """Read a checkpoint folder.

    Args:
        path: a ``step-NNNNNN`` folder.
        expect: meta keys that must match (``training_hash``, ``dataset_hash``,
            ``base_fingerprint``): resuming a different run is refused.

    Raises:
        TrainingError: code ``checkpoint_invalid`` (missing/corrupt files, unknown format, or a
            mismatch with ``expect``, naming the field and both values).
    """
    import torch
    from safetensors.torch import load_file

    p = Path(path)
    try:
        meta = json.loads((p / "meta.json").read_text())
        adapter = load_file(str(p / "adapter.safetensors"))
        blob = torch.load(p / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # OSError, JSON, safetensors' SafetensorError, torch's UnpicklingError
        raise TrainingError(f"checkpoint {p} is unreadable: {exc}", code="checkpoint_invalid",
                            field="checkpoint", value=str(p)) from exc
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise TrainingError(f"checkpoint {p} has format_version {meta.get('format_version')!r}, expected "
                            f"{CHECKPOINT_FORMAT_VERSION}", code="checkpoint_invalid", field="format_version",
                            value=meta.get("format_version"))
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise TrainingError(f"checkpoint {p} belongs to another run: {key} is {meta.get(key)!r}, this run has "
                                f"{want!r}; use a new output folder or the same config/dataset/base model",
                                code="checkpoint_invalid", field=key, value=meta.get(key), expected=want)
    pos = meta.get("position", {})
    return CheckpointState(step=int(meta["step"]), position=DataPosition(int(pos.get("epoch", 0)), int(pos.get("index", 0))),
                           adapter=adapter, optimizer=blob["optimizer"], scheduler=blob["scheduler"], rng=blob["rng"],
                           losses=list(blob.get("losses", [])), meta=meta)


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder, or ``None``."""
    found = list_checkpoints(ckpt_root)
    return found[-1][1] if found else None
