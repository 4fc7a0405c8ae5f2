"""``persona-ml talking-head`` on the tiny pipeline: JSON result, files, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("av")


def test_talking_head_cli_preview(tmp_path, capsys):
    from persona_ml.cli import main
    from persona_ml.video.io import write_video

    speech = tmp_path / "speech.m4a"
    t = np.arange(12000) / 16000
    write_video(tmp_path / "carrier.mp4", np.zeros((12, 32, 32, 3), np.uint8), 16.0,
                audio=(0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sample_rate=16000)
    (tmp_path / "carrier.mp4").rename(speech)
    from PIL import Image

    Image.fromarray(np.full((80, 64, 3), 120, np.uint8)).save(tmp_path / "portrait.png")
    rc = main(["talking-head", "--portrait", str(tmp_path / "portrait.png"), "--speech", str(speech),
               "--base-model", "tiny-ltx2", "--preview", "--height", "64", "--width", "64", "--steps", "2",
               "--out", str(tmp_path / "job")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status"] == "completed" and out["steps_done"] == 2
    assert (tmp_path / "job" / "video.mp4").is_file() and out["fps"] == 12.0

    rc = main(["talking-head", "--portrait", str(tmp_path / "portrait.png"), "--speech", str(tmp_path / "portrait.png"),
               "--base-model", "tiny-ltx2", "--out", str(tmp_path / "bad")])
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert rc == 2 and err["error"]["code"] == "audio_not_audio"
