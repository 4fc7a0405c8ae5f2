"""Issue 12, the CLI: non-ASCII digits, outputs that name nothing, and every failure a coded line."""

from __future__ import annotations

import json
import os

import pytest
from test_hostile_parse import BILLION_LAUGHS

from persona_ml.cli import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_RULES, main
from persona_ml.cli.rules import count_images


def _error(capsys) -> dict:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("{")]
    assert lines, err
    return json.loads(lines[-1])["error"]


@pytest.mark.parametrize("text", ["²", "١٢", "٣", "¹⁰", "1²", "+3", "-1", "1e3", "0x10", " ", ""])
def test_images_count_is_ascii_digits_only(text):
    from persona_ml.errors import InputError

    with pytest.raises(InputError) as info:
        count_images(text)
    assert info.value.details["field"] == "images"


def test_images_count_accepts_ascii_numbers_and_folders(tmp_path):
    assert count_images("12") == (12, "number", None) and count_images(" 0 ") == (0, "number", None)
    assert count_images(str(tmp_path))[0] == 0


@pytest.mark.parametrize("argv", [
    ["check", "--plan", "pro", "--images", "12", "--steps", "١٢٠٠"],
    ["check", "--plan", "pro", "--images", "12", "--rank", "²"],
    ["check", "--plan", "pro", "--images", "12", "--credits", "1" * 40],
    ["eval", "--lora", "x", "--out", "o", "--seeds", "١"],
    ["eval", "--lora", "x", "--out", "o", "--guidance", "nan"],
    ["generate", "--lora", "x", "--prompt", "p", "--out", "o", "--width", "٥١٢"],
    ["generate", "--lora", "x", "--prompt", "p", "--out", "o", "--lora-scale", "inf"],
    ["generate", "--lora", "x", "--prompt", "p", "--out", "o", "--steps", "0"],
    ["prepare", "d", "--profile", "p", "--out", "o", "--trigger", "t", "--seed", "٧"],
    ["prepare", "d", "--profile", "p", "--out", "o", "--trigger", "t", "--max-upscale", "nan"],
    ["embed", "x.jpg", "--max-pixels", "١٠٠"],
])
def test_non_ascii_and_non_finite_numbers_are_usage_errors(argv, capsys):
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err


def test_checkpoint_steps_must_be_ascii(capsys):
    assert main(["eval", "--lora", "x", "--out", "o", "--checkpoint", "²=ckpt"]) == EXIT_BAD_INPUT
    assert _error(capsys)["details"]["field"] == "checkpoint"


@pytest.mark.parametrize("out", ["", ".", "/", "..", "a/.."])
def test_outputs_that_name_nothing_are_refused_before_any_work(tmp_path, out, capsys):
    (tmp_path / "refs").mkdir()
    assert main(["profile", str(tmp_path / "refs"), "--out", out]) == EXIT_BAD_INPUT
    assert "--out" in capsys.readouterr().err
    assert main(["prepare", str(tmp_path / "refs"), "--profile", "p", "--out", out, "--trigger", "ohwx"]) == \
        EXIT_BAD_INPUT
    assert "--out" in capsys.readouterr().err


def test_empty_out_folders_are_refused(capsys):
    for argv in (["generate", "--lora", "x", "--prompt", "p", "--out", ""], ["eval", "--lora", "x", "--out", ""]):
        assert main(argv) == EXIT_BAD_INPUT
        assert "--out" in capsys.readouterr().err


def test_hostile_files_and_paths_give_coded_lines(tmp_path, capsys):
    bomb = tmp_path / "rules.yaml"
    bomb.write_text(BILLION_LAUGHS)
    assert main(["check", "--plan", "pro", "--images", "12", "--rules", str(bomb)]) == EXIT_BAD_INPUT
    assert _error(capsys)["code"] == "config_invalid"
    fifo = tmp_path / "refs"
    os.mkfifo(fifo)
    assert main(["profile", str(fifo), "--out", str(tmp_path / "p")]) == EXIT_BAD_INPUT
    err = _error(capsys)
    assert err["code"] == "invalid_input" and "FIFO" in err["message"]
    assert main(["profile", str(tmp_path / ("r" * 300)), "--out", str(tmp_path / "p")]) == EXIT_BAD_INPUT
    assert _error(capsys)["code"] == "path_invalid"
    assert main(["check", "--plan", "pro", "--images", str(tmp_path / ("r" * 300))]) == EXIT_BAD_INPUT
    assert _error(capsys)["code"] == "invalid_input"
    assert main(["check", "--plan", "pro", "--images", "12"]) == EXIT_OK
    assert main(["check", "--plan", "free", "--images", "12"]) == EXIT_RULES


def test_a_bug_is_a_coded_internal_error_not_a_traceback(monkeypatch, capsys):
    import persona_ml.cli.rules as rules_cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(rules_cli, "run", broken)
    assert main(["check", "--plan", "pro", "--images", "12"]) == EXIT_INTERNAL
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    err = json.loads(captured.err.strip().splitlines()[-1])["error"]
    assert err["code"] == "internal_error" and "KeyError" in err["message"]
