import os
from pathlib import Path

import pytest

from persona_ml._atomic import atomic_dir, atomic_path, atomic_write_json, atomic_write_text, sha256_file


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"b": 1, "a": 2})
    assert target.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_old_file(tmp_path: Path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_atomic_dir_replaces_whole_folder(tmp_path: Path):
    out = tmp_path / "prepared"
    with atomic_dir(out) as d:
        (d / "x.txt").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(out) as d:
            (d / "y.txt").write_text("2")
            raise ValueError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["x.txt"]
    with atomic_dir(out) as d:
        (d / "z.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["z.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_sha256_file(tmp_path: Path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
