"""Issue 12: a full disk under prepare, profile and checkpoint saves is a coded ``storage_full`` error
naming the path, and the previous artefact survives whole.

Runs on a 2 MiB tmpfs mounted for the test (needs root and ``mount``; skipped with the reason
otherwise). The disk is filled with a filler file before the save under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from persona_ml.errors import PersonaMLError, StorageError

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="tmpfs mounts are Linux-only")


@pytest.fixture
def small_disk(tmp_path):
    """A mounted 2 MiB tmpfs; skips when this machine does not allow mounting one."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a disk-full test needs root and mount(8) to mount a small tmpfs; not available here")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt, leave: int) -> None:
    """Fill ``mnt`` until fewer than ``leave`` bytes are free."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / ".filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    # tmpfs rounds to pages: top up until the free space is below the target
    with open(mnt / ".filler2", "wb") as fh:
        try:
            while os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize > leave:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError:
            pass


def _storage_full(fn, path_part: str) -> StorageError:
    with pytest.raises(StorageError) as info:
        fn()
    err = info.value
    assert err.code == "storage_full" and err.http_status == 507 and isinstance(err, OSError)
    assert path_part in err.details["value"] and path_part in err.message
    return err


def _no_temps(folder) -> None:
    leftovers = [p.name for p in folder.rglob(".*") if p.name not in (".filler", ".filler2")]
    assert not leftovers, leftovers


def test_profile_save_on_a_full_disk_keeps_the_previous_profile(small_disk):
    from test_hostile_profile import _profile

    from persona_ml import load_profile

    old = _profile(1, n=3)
    old.save(small_disk / "ada")
    _fill(small_disk, 2048)
    big = _profile(2, n=400)  # a few hundred KB: cannot fit
    _storage_full(lambda: big.save(small_disk / "ada"), "ada.safetensors")
    assert load_profile(small_disk / "ada").fingerprint == old.fingerprint
    _no_temps(small_disk)


def test_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoints(small_disk):
    from test_hostile_checkpoint import _state

    from persona_ml.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    save_checkpoint(small_disk / "ckpt", _state(2), keep_last=3)
    _fill(small_disk, 4096)
    _storage_full(lambda: save_checkpoint(small_disk / "ckpt", _state(900), keep_last=3), "step-000900")
    assert latest_checkpoint(small_disk / "ckpt").name == "step-000002"
    assert load_checkpoint(small_disk / "ckpt" / "step-000002").step == 2
    _no_temps(small_disk)


def test_prepare_on_a_full_disk_keeps_the_previous_dataset(small_disk, tmp_path):
    from PIL import Image

    from persona_ml.dataset.manifest import load_prepared
    from persona_ml.dataset.prepare import PrepareInput, prepare_dataset
    from persona_ml.faces.types import FaceObservation, ModelProvenance
    from persona_ml.images import load_image

    prov = ModelProvenance(backend="dlib", model_name="synthetic", files={"w.dat": "0" * 64}, dim=4, license="t")
    inputs = []
    for i in range(2):
        path = tmp_path / f"p{i}.jpg"
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (700, 600, 3), dtype=np.uint8)).save(path, quality=90)
        img = load_image(path)
        face = FaceObservation(bbox=(200.0, 150.0, 400.0, 400.0), landmarks=np.zeros((5, 2), np.float32),
                               det_score=1.0, face_size=200.0, sharpness=200.0, pose=(0.0, 0.0, 0.0),
                               embedding=np.array([1, 0, 0, 0], np.float32), image_sha256=img.sha256,
                               image_size=img.size, provenance=prov)
        inputs.append(PrepareInput(image=path, face=face))
    first = prepare_dataset(inputs[:1], small_disk / "prepared", trigger="ohwx", seed=0)
    _fill(small_disk, 8192)
    with pytest.raises(PersonaMLError) as info:
        prepare_dataset(inputs, small_disk / "prepared", trigger="ohwx", seed=0)
    assert info.value.code == "storage_full" and "prepared" in info.value.details["value"]
    assert load_prepared(small_disk / "prepared").info.dataset_hash == first.info.dataset_hash
    _no_temps(small_disk)


def test_a_library_writing_into_the_temp_path_on_a_full_disk_is_storage_full(small_disk):
    """safetensors and PIL report ENOSPC with their own exception types inside ``atomic_path``."""
    import torch
    from safetensors.torch import save_file

    from persona_ml._atomic import atomic_path

    _fill(small_disk, 2048)
    big = {"w": torch.zeros(256, 1024)}
    with pytest.raises(StorageError) as info:
        with atomic_path(small_disk / "entry.safetensors") as tmp:
            save_file(big, str(tmp))
    assert info.value.code == "storage_full" and "entry.safetensors" in info.value.details["value"]
    _no_temps(small_disk)
