"""The shared roots of issue 12: bounded JSON/YAML, the regular-file reader, bounded error details,
atomic writes with umask permissions."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from persona_ml._atomic import atomic_dir, atomic_write_bytes, atomic_write_json, check_output_path
from persona_ml._files import FileProblem, read_regular_file
from persona_ml._parse import ParseProblem, loads_json, loads_yaml
from persona_ml.errors import InputError, PersonaMLError

# a 672-byte YAML that expands to 9**9 (387 million) strings through aliases
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")])


def test_the_billion_laughs_yaml_is_refused_quickly_without_expanding():
    assert len(BILLION_LAUGHS) < 700
    t0 = time.process_time()
    with pytest.raises(ParseProblem) as info:
        loads_yaml(BILLION_LAUGHS)
    assert info.value.reason == "aliases" and time.process_time() - t0 < 5
    assert loads_yaml("a: &x [1, 2]\nb: *x") == {"a": [1, 2], "b": [1, 2]}  # a modest alias is fine
    with pytest.raises(ParseProblem, match="recursive"):
        loads_yaml("&a [*a]")


@pytest.mark.parametrize("text, reason", [
    ("steps: 010", "octal"), ("steps: -007", "octal"), ("t: 1:30", "octal"), ("t: 1:30.5", "octal"),
    ("n: " + "9" * 5000, "number"), ("n: " + "[" * 500 + "]" * 500, "depth"), ("a: 1\na: 2", "duplicate_key"),
    ("a: [1, 2", "syntax"), ("d: 2024-13-45", "syntax"),
])
def test_yaml_surprises_are_refused_with_a_reason(text, reason):
    with pytest.raises(ParseProblem) as info:
        loads_yaml(text)
    assert info.value.reason == reason
    assert len(info.value.message) < 400  # the 5000-digit number is not echoed


def test_yaml_reads_what_people_mean():
    assert loads_yaml("steps: 10\nhex: 0x10\nsep: 1_000\nzero: 0\nf: 1.5\nq: '010'") == {
        "steps": 10, "hex": 16, "sep": 1000, "zero": 0, "f": 1.5, "q": "010"}
    with pytest.raises(ParseProblem) as info:
        loads_yaml(b"a: \xff\xfe")
    assert info.value.reason == "encoding"


@pytest.mark.parametrize("text, reason", [
    (b"[" * 100_000 + b"]" * 100_000, "depth"), (b"[" * 100 + b"]" * 100, "depth"), (b"1" * 5000, "number"),
    (b"123456789012345678901234", "number"), (b"1e400", "number"), (b"NaN", "number"), (b"[-Infinity]", "number"),
    (b"\xff\xfe{}", "encoding"), (b'{"a": 1, "a": 2}', "duplicate_key"), (b"{", "syntax"),
])
def test_json_bounds(text, reason):
    with pytest.raises(ParseProblem) as info:
        loads_json(text)
    assert info.value.reason == reason and len(info.value.message) < 400


def test_json_accepts_ordinary_documents():
    doc = {"a": [1, 2.5, None, True, "é"], "b": {"c": -3}, "big": 2**63}
    assert loads_json(json.dumps(doc).encode()) == doc
    assert loads_json("\ufeff[1]") == [1]


def test_error_details_and_messages_are_bounded_at_the_root():
    nested: list = [1]
    for _ in range(30):
        nested = [nested, nested]  # 2**30 leaves if expanded
    err = InputError("x" * 100_000, field="f", value="v" * 100_000, big=10**5000, items=list(range(10_000)),
                     nested=nested)
    text = json.dumps(err.to_dict())
    assert len(text) < 20_000
    assert len(err.message) < 4100 and "more characters cut" in err.message
    assert err.details["big"].startswith("<integer of") and len(err.details["items"]) == 51
    small = InputError("m", field="f", value=[1, 2], limit=(3, 4))
    assert small.details == {"field": "f", "value": [1, 2], "limit": (3, 4)}  # ordinary details untouched


def test_reader_names_what_a_path_is(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    cases = {tmp_path: ("not_a_file", "a folder"), fifo: ("not_a_file", "FIFO"),
             tmp_path / ("n" * 300): ("name_too_long", "longer than"), tmp_path / "missing": ("not_found", "no such"),
             tmp_path / "a\x00b": ("unreadable", "NUL")}
    if os.path.exists("/dev/null"):
        cases["/dev/null"] = ("not_a_file", "character device")
    for path, (reason, words) in cases.items():
        with pytest.raises(FileProblem) as info:
            read_regular_file(path, max_bytes=10)
        assert info.value.reason == reason and words in info.value.message, (path, info.value.message)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    with pytest.raises(FileProblem) as info:
        read_regular_file(big, max_bytes=10)
    assert info.value.reason == "too_large"


def test_reader_reports_a_file_deleted_between_the_check_and_the_read(tmp_path, monkeypatch):
    import persona_ml._files as files

    target = tmp_path / "photo.jpg"
    target.write_bytes(b"data")
    real_open = os.open

    def vanishing_open(path, flags, *args):
        if str(path) == str(target):
            os.unlink(target)
        return real_open(path, flags, *args)

    monkeypatch.setattr(files.os, "open", vanishing_open)
    with pytest.raises(FileProblem) as info:
        read_regular_file(target)
    assert info.value.reason == "not_found" and "removed before it could be read" in info.value.message


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_artefacts_get_the_umask_permissions_of_a_plain_write(tmp_path, mask):
    old = os.umask(mask)
    try:
        f = atomic_write_json(tmp_path / "result.json", {"a": 1})
        with atomic_dir(tmp_path / "lora") as d:
            (d / "x.safetensors").write_bytes(b"1")
        plain = tmp_path / "plain"
        plain.write_text("x")
        (tmp_path / "plain_dir").mkdir()
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "lora").stat().st_mode) == stat.S_IMODE((tmp_path / "plain_dir").stat().st_mode)


@pytest.mark.parametrize("out", ["", ".", "..", "/", "a/..", "x/."])
def test_output_paths_that_name_nothing_are_refused(tmp_path, out):
    with pytest.raises(InputError) as info:
        check_output_path(out)
    assert info.value.code == "path_invalid"
    with pytest.raises(PersonaMLError) as info:
        atomic_write_bytes(out, b"x")
    assert info.value.code == "path_invalid"


def test_write_errors_are_coded_and_keep_the_old_file(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("old")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(PersonaMLError) as info:
        atomic_write_bytes(tmp_path / "dir.json", b"x")
    assert info.value.code == "path_invalid"
    with pytest.raises(PersonaMLError) as info:
        atomic_write_bytes(tmp_path / ("n" * 300), b"x")
    assert info.value.code == "path_invalid"
    with pytest.raises(PersonaMLError) as info:
        atomic_write_bytes(target / "under_a_file", b"x")
    assert info.value.code == "path_invalid"
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        with pytest.raises(PersonaMLError) as info:
            atomic_write_bytes(ro / "x", b"x")
        assert info.value.code == "write_failed" and info.value.details["value"] == str(ro / "x")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
