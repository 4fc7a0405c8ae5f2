"""Issue 12, prepared datasets: a closed world; a changed file is never trusted (nor its cached latent)."""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pytest
from hostile_cases import assert_coded, hostile_json_texts, mutations
from PIL import Image

from persona_ml.dataset.manifest import PreparedDataset, dataset_hash, load_prepared
from persona_ml.errors import ArtifactError, PersonaMLError
from persona_ml.training.testing import make_synthetic_dataset


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "prepared"
    make_synthetic_dataset(root, n=3, size=32)
    return root


@pytest.fixture
def ds(template, tmp_path):
    root = tmp_path / "prepared"
    shutil.copytree(template, root)
    return root


def _lines(root):
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]


def _write_lines(root, items, *, rehash: bool = True):
    (root / "manifest.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))
    if rehash:
        from persona_ml.dataset.manifest import PreparedItem

        info = json.loads((root / "dataset.json").read_text())
        info["dataset_hash"] = dataset_hash([PreparedItem.from_dict(it) for it in items])
        info["num_items"] = len(items)
        (root / "dataset.json").write_text(json.dumps(info))


def _code(root) -> str:
    with pytest.raises(ArtifactError) as info:
        load_prepared(root)
    return info.value.code


def test_a_clean_dataset_loads(ds):
    loaded = load_prepared(ds)
    assert [it.id for it in loaded.items] == ["000", "001", "002"] and all(it.mask_sha256 for it in loaded.items)


@pytest.mark.parametrize("field", ["image", "mask"])
@pytest.mark.parametrize("path", ["../outside.png", "images/../../outside.png", "/etc/passwd", "C:\\\\x.png",
                                  "images/..\\\\..\\\\x.png"])
def test_manifest_paths_cannot_leave_the_folder(ds, field, path):
    shutil.copy(ds / "images" / "000.png", ds.parent / "outside.png")
    items = _lines(ds)
    items[0][field] = path
    _write_lines(ds, items)
    assert _code(ds) == "dataset_path_escapes"


def test_a_symlink_leaving_the_folder_is_refused_and_one_inside_is_fine(ds, tmp_path):
    outside = tmp_path / "secret.png"
    shutil.copy(ds / "images" / "000.png", outside)
    (ds / "images" / "000.png").unlink()
    os.symlink(outside, ds / "images" / "000.png")
    assert _code(ds) == "dataset_path_escapes"
    (ds / "images" / "000.png").unlink()
    shutil.copy(outside, ds / "images" / "real.png")
    os.symlink("real.png", ds / "images" / "000.png")
    assert len(load_prepared(ds).items) == 3
    # a linked folder leaving the dataset
    shutil.move(str(ds / "masks"), str(tmp_path / "masks_elsewhere"))
    os.symlink(tmp_path / "masks_elsewhere", ds / "masks")
    assert _code(ds) == "dataset_path_escapes"


def test_duplicate_ids_are_refused(ds):
    items = _lines(ds)
    items.append(dict(items[0]))
    _write_lines(ds, items)
    assert _code(ds) == "manifest_invalid"


def test_a_replaced_image_is_refused_by_sha256_and_by_size(ds):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(ds / "images" / "001.png")
    with pytest.raises(ArtifactError) as info:
        load_prepared(ds)
    assert info.value.code == "dataset_file_changed" and info.value.details["item"] == "001"
    # same bytes recorded, but the recorded size is not the file's
    items = _lines(ds)
    from persona_ml._atomic import sha256_file

    Image.fromarray(rng.integers(0, 255, (48, 32, 3), dtype=np.uint8)).save(ds / "images" / "001.png")
    items[1]["image_sha256"] = sha256_file(ds / "images" / "001.png")
    _write_lines(ds, items)
    with pytest.raises(ArtifactError) as info:
        load_prepared(ds)
    assert info.value.code == "dataset_file_changed" and "32x48" in info.value.message


def test_a_replaced_image_never_gets_its_stale_cached_latent(ds, tmp_path):
    """The latent cache is keyed by the recorded sha256; a dataset whose file changed after it was
    loaded (or one built by hand) is verified before a hit is returned."""
    import torch

    from persona_ml.training.cache import TensorCache, latent_key
    from persona_ml.training.data import Encoder, build_samples

    loaded = load_prepared(ds)
    cache = TensorCache(tmp_path / "cache")
    enc = Encoder(pipeline=None, fingerprint="fp", cache=cache, max_sequence_length=8, device="cpu")
    sample = build_samples(loaded, (32,))[0]
    it = sample.item
    stale = torch.zeros(1, 16, 4, 4)
    cache.put("latents", latent_key("fp", it.image_sha256, it.crop, it.width, it.height, sample.resolution),
              {"latents": stale})
    assert torch.equal(enc.latents(loaded, sample), stale)  # verified file: the hit is its latent
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(ds / it.image)  # replaced under the same name
    fresh = PreparedDataset(root=loaded.root, info=loaded.info, items=loaded.items)
    with pytest.raises(ArtifactError) as info:
        enc.latents(fresh, sample)
    assert info.value.code == "dataset_file_changed"


def test_dataset_paths_say_what_they_are(ds, tmp_path):
    (ds / "manifest.jsonl").unlink()
    (ds / "manifest.jsonl").mkdir()
    assert _code(ds) == "path_invalid"
    assert _code(tmp_path / ("d" * 300)) in ("path_invalid", "manifest_invalid")
    assert _code(tmp_path / "missing") == "manifest_invalid"


def test_fuzz_manifests_and_dataset_json(ds):
    rng = random.Random(9)
    items = _lines(ds)
    info = json.loads((ds / "dataset.json").read_text())
    good_manifest = (ds / "manifest.jsonl").read_bytes()
    good_info = (ds / "dataset.json").read_bytes()
    n_ok = 0
    for variant in mutations(items[0], rng, 150):
        try:
            line = json.dumps(variant)
        except (ValueError, RecursionError):
            continue
        (ds / "manifest.jsonl").write_text(line + "\n" + "".join(json.dumps(it) + "\n" for it in items[1:]))
        out = assert_coded(load_prepared, ds)
        n_ok += not isinstance(out, PersonaMLError)
    (ds / "manifest.jsonl").write_bytes(good_manifest)
    for variant in mutations(info, rng, 120):
        try:
            (ds / "dataset.json").write_text(json.dumps(variant))
        except (ValueError, RecursionError):
            continue
        out = assert_coded(load_prepared, ds)
        n_ok += not isinstance(out, PersonaMLError)
    for name, good in (("dataset.json", good_info), ("manifest.jsonl", good_manifest)):
        for text in hostile_json_texts(good.decode()):
            (ds / name).write_bytes(text)
            assert isinstance(assert_coded(load_prepared, ds), PersonaMLError)
        (ds / name).write_bytes(good)
    assert len(load_prepared(ds).items) == 3 and n_ok < 270


def test_dataset_entry_points_refuse_names_over_the_filesystem_limit(tmp_path):
    from pathlib import Path

    from persona_ml.dataset.prepare import check_out_dir
    from persona_ml.dataset.screening import screen_dataset
    from persona_ml.errors import InputError

    long = tmp_path / ("z" * 300)
    with pytest.raises(InputError) as info:
        check_out_dir(Path(long))
    assert info.value.code == "path_invalid"
    with pytest.raises(InputError) as info:
        screen_dataset(long, None, None)
    assert info.value.details["field"] == "images"
    assert _code(long) in ("path_invalid", "manifest_invalid")
