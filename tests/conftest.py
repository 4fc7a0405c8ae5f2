"""Shared fixtures. Tests run offline on CPU; data from ../shared is optional and skipped clearly."""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FACES = Path(os.environ.get("PERSONA_ML_SHARED_FACES", REPO.parent / "shared" / "faces"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the base-model weight-hash cache goes to a temp folder, not the user's ~/.cache
os.environ.setdefault("PERSONA_ML_CACHE_DIR", tempfile.mkdtemp(prefix="persona_ml_test_cache_"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 (a broken CUDA install means "no GPU" here)
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _error_codes_are_declared():
    """Fail any test during which the library built a PersonaMLError with an undeclared code."""
    from persona_ml import errors

    before = len(errors.UNDECLARED_CODES_SEEN)
    yield
    seen = errors.UNDECLARED_CODES_SEEN[before:]
    del errors.UNDECLARED_CODES_SEEN[before:]
    assert not seen, f"errors raised with codes not declared in persona_ml.errors.ERROR_CODES: {seen}"


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """``../shared/faces`` (photos of real people with MANIFEST.tsv); skips where absent."""
    if not (SHARED_FACES / "MANIFEST.tsv").is_file():
        pytest.skip(f"../shared/faces not found at {SHARED_FACES} (a fresh clone has no shared data; "
                    "set PERSONA_ML_SHARED_FACES to point at a copy)")
    return SHARED_FACES


@pytest.fixture(scope="session")
def faces_manifest(shared_faces) -> list[dict]:
    """Rows of MANIFEST.tsv with an extra ``near_duplicate`` flag from the notes column."""
    with open(shared_faces / "MANIFEST.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for r in rows:
        notes = (r.get("notes") or "").lower()
        r["near_duplicate"] = "near-duplicate" in notes or "mirrored copy" in notes
    return rows


@pytest.fixture(scope="session")
def insightface_images() -> Path:
    """Photos that ship inside the insightface wheel (present on every fresh clone)."""
    import importlib.util

    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("insightface is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "images"
    if not path.is_dir():
        pytest.skip(f"insightface wheel has no data/images at {path}")
    return path


@pytest.fixture
def load_gpu_check():
    """Loader of ``scripts/gpu_check.py`` as a fresh module (each call re-executes it)."""
    import importlib.util
    import sys

    script = REPO / "scripts" / "gpu_check.py"

    def load():
        spec = importlib.util.spec_from_file_location("gpu_check", script)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load
