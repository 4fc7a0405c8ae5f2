"""``persona-ml embed`` and ``persona-ml profile`` through ``persona_ml.cli.main`` (dlib backend)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from persona_ml.cli import main

pytest.importorskip("dlib", reason="the CLI face tests use the dlib backend (pip install 'persona-ml[dlib]')")


def _lines(capsys) -> list[dict]:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _portrait(insightface_images, side: int = 300) -> Image.Image:
    face = Image.open(insightface_images / "Tom_Hanks_54745.png").convert("RGB")
    canvas = Image.new("RGB", (160, 200), tuple(int(v) for v in np.asarray(face)[0, 0]))
    canvas.paste(face, (24, 44))
    return canvas.resize((side * 160 // 200, side), Image.BICUBIC)


def test_embed_json_lines_and_exit_2_on_a_bad_input(tmp_path, insightface_images, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    group = insightface_images / "t1.jpg"
    one = insightface_images / "Tom_Hanks_54745.png"
    rc = main(["embed", str(group), str(bad), str(one), "--backend", "dlib", "--json"])
    assert rc == 2
    records = _lines(capsys)
    assert [r["path"] for r in records] == [str(group), str(bad), str(one)]
    assert len(records[0]["faces"]) >= 4 and len(records[2]["faces"]) == 1
    assert records[1]["error"]["code"] == "image_not_an_image" and records[1]["error"]["message"]
    face = records[2]["faces"][0]
    assert len(face["bbox"]) == 4 and face["det_score"] > 0
    assert face["provenance"]["backend"] == "dlib" and face["provenance"]["dim"] == 128
    assert "embedding" not in face


def test_embed_with_embedding_exit_0(insightface_images, capsys):
    rc = main(["embed", str(insightface_images / "Tom_Hanks_54745.png"), "--backend", "dlib", "--json",
               "--with-embedding"])
    assert rc == 0
    (record,) = _lines(capsys)
    vec = np.asarray(record["faces"][0]["embedding"])
    assert vec.shape == (128,) and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-4)


def test_embed_plain_text_output(insightface_images, capsys):
    assert main(["embed", str(insightface_images / "Tom_Hanks_54745.png")]) == 0
    assert "1 face(s)" in capsys.readouterr().out


def test_profile_saves_and_reports_similarity_and_outliers(tmp_path, insightface_images, capsys):
    refs = tmp_path / "refs"
    refs.mkdir()
    tom = _portrait(insightface_images)
    tom.save(refs / "a.png")
    tom.transpose(Image.FLIP_LEFT_RIGHT).save(refs / "b.jpg", quality=92)
    tom.resize((200, 250)).save(refs / "c.png")
    Image.eval(tom, lambda v: min(255, int(v * 1.1))).save(refs / "d.webp")
    # another person: one face cut out of the group photo, enlarged like a portrait
    group = Image.open(insightface_images / "t1.jpg").convert("RGB")
    group.crop((700, 320, 870, 520)).resize((240, 282), Image.BICUBIC).save(refs / "e_other.jpg", quality=92)
    (refs / "f_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "profiles" / "tom"
    rc = main(["profile", str(refs), "--backend", "dlib", "--out", str(out), "--json"])
    assert rc == 2  # the broken file is reported; the profile is still built from the others
    (report,) = _lines(capsys)
    assert sorted(p.name for p in (tmp_path / "profiles").iterdir()) == ["tom.safetensors"]  # one file, atomic
    assert report["files"] == [str(out) + ".safetensors"]
    by_name = {rec["path"].rsplit("/", 1)[-1]: rec for rec in report["images"]}
    assert by_name["f_broken.jpg"]["error"]["code"] in ("image_truncated", "image_not_an_image")
    assert report["outliers"] == [str(refs / "e_other.jpg")]
    assert by_name["e_other.jpg"]["outlier"] is True
    for name in "abcd":
        rec = by_name[f"{name}.{'png' if name in 'ac' else 'jpg' if name == 'b' else 'webp'}"]
        assert rec["outlier"] is False and rec["similarity"] > by_name["e_other.jpg"]["similarity"]
    assert report["n_references"] == 5

    from persona_ml import load_profile

    loaded = load_profile(out)
    assert loaded.fingerprint == report["fingerprint"] and loaded.outliers == (4,)


def test_profile_of_a_folder_without_usable_faces(tmp_path, capsys):
    folder = tmp_path / "empty_refs"
    folder.mkdir()
    Image.new("RGB", (200, 200), (250, 250, 250)).save(folder / "blank.png")
    rc = main(["profile", str(folder), "--out", str(tmp_path / "p"), "--json"])
    assert rc == 2
    (report,) = _lines(capsys)
    assert report["profile"] is None and report["images"][0]["error"]["code"] == "no_face"
    assert not (tmp_path / "p.json").exists()
    assert main(["profile", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 2


def test_profile_out_under_a_file_is_refused_before_any_work(tmp_path, insightface_images, capsys, monkeypatch):
    # used to embed every photo, then die with a NotADirectoryError traceback in save()
    import persona_ml.cli.faces as faces_cmd

    monkeypatch.setattr(faces_cmd, "_embedder", lambda args: pytest.fail("embedder built before --out was checked"))
    (tmp_path / "afile").write_text("x")
    rc = main(["profile", str(insightface_images), "--out", str(tmp_path / "afile" / "sub" / "p"), "--json"])
    assert rc == 2
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]
    assert err["code"] == "invalid_input" and err["details"]["field"] == "out"


def test_profile_json_names_images_by_path_and_exits_4_on_outliers(tmp_path, insightface_images, capsys):
    # a broken photo sorted first used to shift every near-duplicate index onto the wrong image,
    # and outliers exited 0
    refs = tmp_path / "refs"
    refs.mkdir()
    tom = _portrait(insightface_images)
    (refs / "0_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    tom.save(refs / "a.png")
    tom.resize((tom.width - 2, tom.height - 2)).save(refs / "a_copy.png")
    tom.transpose(Image.FLIP_LEFT_RIGHT).save(refs / "b.jpg", quality=92)
    Image.eval(tom, lambda v: min(255, int(v * 1.1))).save(refs / "d.webp")
    group = Image.open(insightface_images / "t1.jpg").convert("RGB")
    group.crop((700, 320, 870, 520)).resize((240, 282), Image.BICUBIC).save(refs / "e_other.jpg", quality=92)
    out = tmp_path / "tom"
    assert main(["profile", str(refs), "--out", str(out), "--json"]) == 2  # the broken file comes first
    (report,) = _lines(capsys)
    pairs = [sorted(Path(p).name for p in nd["images"]) for nd in report["near_duplicates"]]
    assert ["a.png", "a_copy.png"] in pairs
    assert all("0_broken.jpg" not in p for pair in pairs for p in pair)
    (refs / "0_broken.jpg").unlink()
    assert main(["profile", str(refs), "--out", str(out), "--json"]) == 4  # outliers: documented exit 4
    (report,) = _lines(capsys)
    assert [Path(p).name for p in report["outliers"]] == ["e_other.jpg"] and report["outlier_rule"] == "leave_one_out"
    # two references that disagree: nobody can be flagged; --strict makes that an exit 4 too
    two = tmp_path / "two"
    two.mkdir()
    tom.save(two / "a.png")
    Image.open(refs / "e_other.jpg").save(two / "e_other.jpg")
    assert main(["profile", str(two), "--out", str(tmp_path / "two_p"), "--json"]) == 0
    (report,) = _lines(capsys)
    assert report["outliers"] == [] and sorted(Path(p).name for p in report["undecided"]) == ["a.png", "e_other.jpg"]
    assert main(["profile", str(two), "--out", str(tmp_path / "two_p"), "--strict"]) == 4
    assert "cannot decide" in capsys.readouterr().out
