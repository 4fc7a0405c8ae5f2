"""``persona-ml prepare`` end to end on ../shared/faces photos with the dlib backend.

No person in ../shared/faces has 10 distinct photos, so the set is Angelina's 9 photos plus two
tighter crops of them: near-duplicates, which pass the rules only under --allow-near-duplicates
(and stay flagged in the report).
"""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from persona_ml.cli import main
from persona_ml.dataset.manifest import load_prepared

pytestmark = pytest.mark.shared_faces

CROPS = {"img4.jpg": (350, 250, 1500, 1500), "img7.jpg": (150, 350, 1250, 1550)}


@pytest.fixture(scope="module")
def case(shared_faces, tmp_path_factory):
    pytest.importorskip("dlib", reason="the dlib backend is needed")
    from persona_ml.faces.api import build_profile, embed_reference
    from persona_ml.faces.embedder import FaceEmbedder

    root = tmp_path_factory.mktemp("prepare_cli")
    photos = root / "photos"
    photos.mkdir()
    people = shared_faces / "people" / "angelina"
    for p in sorted(people.glob("*.jpg")):
        shutil.copy(p, photos / p.name)
    for name, box in CROPS.items():
        Image.open(people / name).crop(box).save(photos / f"crop_{name}", quality=92)
    shutil.copy(shared_faces / "people" / "deepface_p08" / "img8.jpg", photos / "intruder.jpg")
    shutil.copy(shared_faces / "groups" / "couple.jpg", photos / "couple.jpg")
    (photos / "img6.txt").write_text("at a film premiere, black dress, hazel eyes, evening\n")
    embedder = FaceEmbedder("dlib")
    profile = build_profile([embed_reference(people / n, embedder) for n in ("img1.jpg", "img2.jpg", "img5.jpg")])
    profile.save(root / "angelina")
    return root, photos, root / "angelina"


def run_prepare(case, out_name, *extra, capsys):
    root, photos, profile = case
    rc = main(["prepare", str(photos), "--profile", str(profile), "--out", str(root / out_name),
               "--trigger", "ohwx", "--json", *extra])
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def first_run(case):
    import contextlib
    import io

    buf = io.StringIO()
    root, photos, profile = case
    with contextlib.redirect_stdout(buf):
        rc = main(["prepare", str(photos), "--profile", str(profile), "--out", str(root / "out_a"),
                   "--trigger", "ohwx", "--json", "--allow-near-duplicates"])
    return rc, json.loads(buf.getvalue())


def test_prepare_with_override_satisfies_rules(case, first_run):
    rc, report = first_run
    assert rc == 0, report["rule_violations"] + report["prepared"]["rule_violations"]
    codes = {r["source"].rsplit("/", 1)[-1]: r["code"] for r in report["rejected"]}
    assert codes == {"intruder.jpg": "identity_mismatch", "couple.jpg": "multiple_faces"}
    flagged = sorted(a["source"].rsplit("/", 1)[-1] for a in report["accepted"]
                     if any(w["code"] == "near_duplicate" for w in a["warnings"]))
    # the full photos are the ones kept clean; of img11 and its mirrored enlargement, img11
    assert flagged == ["crop_img4.jpg", "crop_img7.jpg", "img11_reflection.jpg"]
    assert report["overrides"] == ["allow_near_duplicates"]
    prepared = report["prepared"]
    assert prepared["ok"] and prepared["num_source_images"] >= 10

    root = case[0]
    ds = load_prepared(root / "out_a")
    assert ds.info.trigger == "ohwx" and ds.info.caption_dropout == 0.05
    assert ds.info.extra["screening"]["overrides"] == ["allow_near_duplicates"]
    assert ds.info.extra["screening"]["near_duplicates_kept"] == flagged
    assert ds.info.profile_fingerprint == report["profile_fingerprint"]
    for it in ds.items:
        assert it.caption.startswith("ohwx")
        assert "eyes" not in it.caption
        assert (root / "out_a" / it.mask).is_file()
    assert any("film premiere" in it.caption for it in ds.items if it.source == "img6.jpg")
    assert not any(it.source in ("intruder.jpg", "couple.jpg") for it in ds.items)


def test_prepare_rerun_gives_identical_bytes(case, first_run, capsys):
    rc, _ = run_prepare(case, "out_b", "--allow-near-duplicates", capsys=capsys)
    assert rc == 0
    a, b = case[0] / "out_a", case[0] / "out_b"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) > 20
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_prepare_without_override_violates_rules(case, capsys):
    root, photos, profile = case
    rc = main(["prepare", str(photos), "--profile", str(profile), "--out", str(root / "out_c"), "--trigger",
               "ohwx", "--plan", "free"])
    text = capsys.readouterr().out
    assert rc == 3
    assert text.count("[near_duplicate]") == 3 and "[identity_mismatch]" in text
    assert "plan_not_allowed" in text and "too_few_images" in text
    assert "prepared " in text


@pytest.mark.parametrize("what", ["no_folder", "no_profile", "bad_trigger", "bad_setting", "busy_out",
                                  "out_under_a_file"])
def test_prepare_bad_input_exit_2(case, what, capsys):
    root, photos, profile = case
    argv = ["prepare", str(photos), "--profile", str(profile), "--out", str(root / "out_e"), "--trigger", "ohwx"]
    if what == "no_folder":
        argv[1] = str(root / "missing")
    elif what == "no_profile":
        argv[3] = str(root / "nobody")
    elif what == "bad_trigger":
        argv[-1] = "a,b"
    elif what == "bad_setting":
        argv += ["--set", "prepare.max_upscle=2"]
    elif what == "out_under_a_file":  # used to screen every photo, then die with a traceback
        (root / "a_file").write_text("x")
        argv[5] = str(root / "a_file" / "out")
    else:
        (root / "out_e").mkdir(exist_ok=True)
        (root / "out_e" / "keep.txt").write_text("not a dataset")
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_check_images_counts_what_prepare_trains_on(case, capsys):
    # `check --images` used to count files on a raw folder (OK for a set prepare then cut down),
    # read 0 images on a prepared folder, and count crops on its images/ subfolder
    root, photos, profile = case
    rc, report = run_prepare(case, "out_count", capsys=capsys)
    prepared = report["prepared"]["num_source_images"]
    files = len([p for p in photos.iterdir() if p.suffix == ".jpg"])
    assert prepared < files
    counts = {}
    for where in (photos, root / "out_count", root / "out_count" / "images"):
        rc = main(["check", "--plan", "pro", "--images", str(where), "--profile", str(profile), "--json"])
        out = json.loads(capsys.readouterr().out)
        counts[where.name] = (out["images_count"]["count"], out["images_source"], rc)
    assert counts == {"photos": (prepared, "screened", 3), "out_count": (prepared, "prepared", 3),
                      "images": (prepared, "prepared", 3)}
    rc = main(["check", "--plan", "pro", "--images", str(photos), "--profile", str(profile)])
    text = capsys.readouterr().out
    assert f"screened: {prepared} of {files} photos would be trained on" in text and "near_duplicate" in text
