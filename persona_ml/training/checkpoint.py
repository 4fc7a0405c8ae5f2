"""Resumable training checkpoints, written atomically, the newest K kept.

A checkpoint is a folder ``checkpoints/step-000250/`` holding:
    adapter.safetensors   the trainable LoRA tensors (fp32, PEFT names)
    state.pt              optimizer and LR-scheduler state dicts, RNG states (python, numpy,
                          torch, cuda, the run's training generator), loss history
    meta.json             step, data position (epoch + index into that epoch's seeded
                          permutation), the config's training hash, dataset hash and base-model
                          fingerprint, and the sha256 and size of the two files above; written
                          last, so a folder without it is never used

On resume every file is checked against its recorded sha256: a damaged newest checkpoint (a bit
flip, a truncation) is skipped with a warning and the newest intact one is used instead.
Temp folders of a run killed mid-save are removed by the next save.

The folder is built beside its final name and renamed (``persona_ml._atomic.atomic_dir``): a
process killed at any instant leaves either the previous checkpoint set or the new one.
``state.pt`` is read with ``torch.load(weights_only=True)`` (no pickled code).
"""

from __future__ import annotations

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
from .._json import short_repr
from ..errors import TrainingError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT_VERSION = 2  # 2: meta.json records each file's sha256 and size; 1 is still read, unverified
_READABLE_VERSIONS = (1, 2)
_CHECKSUMMED = ("adapter.safetensors", "state.pt")
MAX_META_BYTES = 16 * 1024 * 1024
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
    try:
        if not root.is_dir():
            return []
        entries = list(root.iterdir())
    except OSError:
        return []
    found = []
    for p in entries:
        m = _STEP_DIR.match(p.name)
        try:
            if m and p.is_dir() and (p / "meta.json").is_file():
                found.append((int(m.group(1)), p))
        except OSError:  # vanished while listing
            continue
    return sorted(found)


def remove_stale_temps(ckpt_root: str | os.PathLike) -> list[Path]:
    """Remove the temp folders a killed run left behind (``.step-NNNNNN.*.tmp`` being written,
    ``.step-NNNNNN.old-PID`` being replaced) and return them. Only one process writes a run's
    checkpoints, so any such folder found before a save is garbage."""
    from .._atomic import stale_temps

    removed = []
    for tmp in stale_temps(ckpt_root, "step-"):
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed.append(tmp)
    if removed:
        log.info("removed %d stale checkpoint temp folder(s) of a killed run: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def save_checkpoint(ckpt_root: str | os.PathLike, state: CheckpointState, *, keep_last: int) -> Path:
    """Write ``state`` as ``<ckpt_root>/step-NNNNNN`` atomically and prune to the newest ``keep_last``.

    ``meta.json`` records the sha256 and size of ``adapter.safetensors`` and ``state.pt``;
    ``load_checkpoint`` verifies them. Temp folders of killed runs are removed first.

    Returns:
        The checkpoint folder.

    Raises:
        StorageError: ``storage_full`` / ``write_failed`` naming the folder; the previous
            checkpoints are intact.
    """
    import hashlib
    import io

    import torch
    from safetensors.torch import save as st_save

    root = Path(ckpt_root)
    remove_stale_temps(root)
    final = root / step_dir_name(state.step)
    # serialised here, written by Python: a full disk is an OSError we can name, not a library's own error type
    adapter = st_save({k: v.detach().to("cpu").contiguous() for k, v in state.adapter.items()})
    buf = io.BytesIO()
    torch.save({"optimizer": state.optimizer, "scheduler": state.scheduler, "rng": state.rng,
                "losses": [float(x) for x in state.losses]}, buf)
    blobs = {"adapter.safetensors": adapter, "state.pt": buf.getvalue()}
    del buf
    with atomic_dir(final) as tmp:
        for name, data in blobs.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
        meta = dict(state.meta)
        meta.update(format_version=CHECKPOINT_FORMAT_VERSION, step=state.step,
                    position={"epoch": state.position.epoch, "index": state.position.index},
                    files={name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                           for name, data in blobs.items()})
        atomic_write_json(tmp / "meta.json", meta)
    for _step, old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint written: %s", final)
    return final


def _invalid(p: Path, message: str, **details: Any) -> TrainingError:
    details.setdefault("field", "checkpoint")
    details.setdefault("value", str(p))
    return TrainingError(f"checkpoint {p}: {message}", code="checkpoint_invalid", **details)


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``meta.json`` of a checkpoint folder, parsed within bounds and checked field by field.

    Raises:
        TrainingError: ``checkpoint_invalid`` (missing, not JSON, wrong types or ranges,
            unknown format version), naming the field.
    """
    from .._files import FileProblem, read_regular_file
    from .._parse import ParseProblem, loads_json

    p = Path(path)
    try:
        meta = loads_json(read_regular_file(p / "meta.json", max_bytes=MAX_META_BYTES), what="meta.json")
    except (FileProblem, ParseProblem) as exc:
        raise _invalid(p, f"meta.json is unreadable: {exc}", reason=getattr(exc, "reason", None)) from None
    if not isinstance(meta, dict):
        raise _invalid(p, f"meta.json must hold a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in _READABLE_VERSIONS:
        raise _invalid(p, f"format_version {short_repr(version)} is not one this persona_ml reads "
                          f"({', '.join(map(str, _READABLE_VERSIONS))})", field="format_version", value=version)
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 1 << 40:
        raise _invalid(p, f"step must be a non-negative integer, got {short_repr(step)}", field="step", value=step)
    pos = meta.get("position", {})
    if not isinstance(pos, dict) or not all(
            isinstance(pos.get(k, 0), int) and not isinstance(pos.get(k, 0), bool) and 0 <= pos.get(k, 0) < 1 << 40
            for k in ("epoch", "index")):
        raise _invalid(p, f"position must be {{'epoch': int >= 0, 'index': int >= 0}}, got {short_repr(pos)}",
                       field="position", value=pos)
    if version >= 2:
        files = meta.get("files")
        ok = isinstance(files, dict) and set(files) == set(_CHECKSUMMED) and all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int)
            and not isinstance(e.get("bytes"), bool) for e in files.values())
        if not ok:
            raise _invalid(p, "meta.json lacks the checksums of adapter.safetensors and state.pt", field="files",
                           value=short_repr(files))
    return meta


def verify_checkpoint(path: str | os.PathLike, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every file of a checkpoint against the sha256 and size its ``meta.json`` recorded.

    Returns:
        The checked ``meta.json``.

    Raises:
        TrainingError: ``checkpoint_damaged`` naming the file whose bytes changed (a bit flip,
            a truncation), ``checkpoint_invalid`` for a missing file or malformed meta.
    """
    from .._atomic import sha256_file
    from .._files import FileProblem, check_regular_file

    p = Path(path)
    meta = meta if meta is not None else read_checkpoint_meta(p)
    if meta["format_version"] < 2:
        log.warning("checkpoint %s was written before checksums were recorded; resuming from it unverified", p)
        return meta
    for name, entry in meta["files"].items():
        try:
            st = check_regular_file(p / name)
            digest = sha256_file(p / name)
        except FileProblem as exc:
            raise _invalid(p, f"{name}: {exc.message}", field=name) from None
        except OSError as exc:
            raise _invalid(p, f"{name} cannot be read: {exc.strerror or exc}", field=name) from None
        if st.st_size != entry["bytes"] or digest != entry["sha256"]:
            raise TrainingError(f"checkpoint {p}: {name} is damaged ({st.st_size} bytes, sha256 {digest[:12]}...; "
                                f"written as {entry['bytes']} bytes, sha256 {entry['sha256'][:12]}...)",
                                code="checkpoint_damaged", field=name, value=digest, expected=entry["sha256"],
                                checkpoint=str(p))
    return meta


def load_checkpoint(path: str | os.PathLike, *, expect: dict[str, Any] | None = None) -> CheckpointState:
    """Read a checkpoint folder, verifying its files' checksums first.

    Args:
        path: a ``step-NNNNNN`` folder.
        expect: meta keys that must match (``training_hash``, ``dataset_hash``,
            ``base_fingerprint``): resuming a different run is refused.

    Raises:
        TrainingError: code ``checkpoint_damaged`` (a file's bytes differ from what was written)
            or ``checkpoint_invalid`` (missing/corrupt files, malformed ``meta.json``, unknown
            format, or a mismatch with ``expect``, naming the field and both values).
    """
    import torch
    from safetensors.torch import load_file

    p = Path(path)
    meta = verify_checkpoint(p)
    try:
        adapter = load_file(str(p / "adapter.safetensors"))
        blob = torch.load(p / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # OSError, safetensors' SafetensorError, torch's UnpicklingError
        raise TrainingError(f"checkpoint {p} is unreadable: {exc}", code="checkpoint_invalid",
                            field="checkpoint", value=str(p)) from exc
    if not isinstance(blob, dict) or not all(isinstance(blob.get(k), dict) for k in ("optimizer", "scheduler", "rng")) \
            or not isinstance(blob.get("losses", []), list):
        raise _invalid(p, "state.pt does not hold optimizer, scheduler and rng states", field="state.pt")
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise TrainingError(f"checkpoint {p} belongs to another run: {key} is {short_repr(meta.get(key))}, this "
                                f"run has {want!r}; use a new output folder or the same config/dataset/base model",
                                code="checkpoint_invalid", field=key, value=meta.get(key), expected=want)
    pos = meta.get("position", {})
    return CheckpointState(step=meta["step"], position=DataPosition(pos.get("epoch", 0), pos.get("index", 0)),
                           adapter=adapter, optimizer=blob["optimizer"], scheduler=blob["scheduler"], rng=blob["rng"],
                           losses=list(blob.get("losses", [])), meta=meta)


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint folder, or ``None``.

    A newer checkpoint whose files fail their checksums (or whose ``meta.json`` is malformed)
    is skipped with a warning naming it and the one resumed from instead.
    """
    skipped: list[tuple[Path, str]] = []
    for _step, path in reversed(list_checkpoints(ckpt_root)):
        try:
            verify_checkpoint(path)
        except TrainingError as exc:
            skipped.append(exc.message)
            continue
        for why in skipped:
            log.warning("%s; falling back to the newest intact checkpoint, %s", why, path.name)
        return path
    for why in skipped:
        log.warning("%s; no intact checkpoint is left to resume from", why)
    return None
