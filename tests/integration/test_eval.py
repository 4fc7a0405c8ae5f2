"""Identity report, contact sheet, plots and the generate/eval CLIs on tiny-flux."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from persona_ml.cli import main
from persona_ml.errors import InputError

TARGETS = ["transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_v"]


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    from persona_ml.inference.testing import make_random_lora
    from persona_ml.models import load_base_model

    base = load_base_model("tiny-flux")
    tmp = tmp_path_factory.mktemp("eval")
    exp = make_random_lora(base.pipeline, tmp / "final", seed=3, base_model=base.name,
                           base_fingerprint=base.fingerprint, targets=TARGETS, trigger="ohwx")
    ck = make_random_lora(base.pipeline, tmp / "ck", seed=4, base_model=base.name,
                          base_fingerprint=base.fingerprint, targets=TARGETS, trigger="ohwx")
    return base, exp, ck


def test_evaluate_lora_writes_report_sheet_and_plots(lora, tmp_path, tom_profile):
    from PIL import Image

    from persona_ml.eval import evaluate_lora

    base, exp, ck = lora
    profile, embedder = tom_profile
    report = evaluate_lora(exp.diffusers_path, base=base, out_dir=tmp_path, profile=profile, embedder=embedder,
                           seeds=(0, 1), height=32, width=32, steps=1, max_sequence_length=32,
                           checkpoints=[(10, ck.diffusers_path), (20, exp.diffusers_path)],
                           losses=[1.0, 0.8, 0.7, 0.65])
    assert [p.name for p in report.prompts] == ["portrait", "half_body", "low_light", "golden_hour", "group"]
    assert all(p.prompt.count("ohwx") == 1 for p in report.prompts)
    # random tiny models draw no faces: every image is honestly reported as faceless
    assert all(p.detection_rate == 0.0 and p.mean_similarity is None for p in report.prompts)
    assert all(f == ("no_face",) for p in report.prompts for f in p.flags)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["summary"]["detection_rate"] == 0.0 and data["lora_sha256"] == report.lora_sha256
    assert [c["step"] for c in data["checkpoints"]] == [10, 20]
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.size[1] >= 5 * 128 and sheet.size[0] >= 2 * 128
    for name in ("similarity_per_checkpoint.png", "loss_curve.png"):
        assert Image.open(tmp_path / name).format == "PNG"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.fixture(scope="module")
def tom_profile(insightface_images):
    from persona_ml.faces import FaceEmbedder, FaceProfile

    embedder = FaceEmbedder("dlib")
    return FaceProfile.build([embedder.embed_primary(insightface_images / "Tom_Hanks_54745.png")]), embedder


def test_generate_and_eval_cli(lora, tmp_path, capsys):
    _, exp, _ = lora
    rc = main(["generate", "--lora", str(exp.out_dir), "--prompt", "a photo of {trigger}", "--seeds", "3", "4",
               "--height", "32", "--width", "32", "--steps", "1", "--max-sequence-length", "32",
               "--out", str(tmp_path / "gen")])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["seed"] for r in lines] == [3, 4] and all(r["tier"] == "lora" for r in lines)
    assert (tmp_path / "gen" / "seed3.png").is_file() and (tmp_path / "gen" / "results.json").is_file()
    rc = main(["eval", "--lora", str(exp.diffusers_path), "--seeds", "0", "--height", "32", "--width", "32",
               "--steps", "1", "--max-sequence-length", "32", "--out", str(tmp_path / "ev")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["detection_rate"] == 0.0 and (tmp_path / "ev" / "contact_sheet.png").is_file()


def test_cli_refuses_mismatched_lora(lora, tmp_path, capsys):
    from persona_ml.inference.testing import make_random_lora

    base, _, _ = lora
    other = make_random_lora(base.pipeline, tmp_path / "other", seed=5, base_model="flux-dev",
                             base_fingerprint="sha256:" + "1" * 64, targets=TARGETS)
    rc = main(["generate", "--lora", str(other.diffusers_path), "--prompt", "x", "--height", "32", "--width", "32",
               "--steps", "1", "--out", str(tmp_path / "g")])
    assert rc == 2
    assert json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]["code"] == "lora_base_mismatch"


def test_bad_checkpoint_is_refused_before_the_suite_runs(lora, tmp_path):
    """A missing/mismatched checkpoint used to surface only after the whole suite was generated
    (contact sheet written, no report): now every LoRA is validated first."""
    from persona_ml.errors import LoraValidationError
    from persona_ml.eval import evaluate_lora
    from persona_ml.inference import CharacterGenerator

    base, exp, ck = lora
    gen = CharacterGenerator(base)  # default rank: the module's pipeline may already carry that slot
    with pytest.raises(LoraValidationError) as exc:
        evaluate_lora(exp.diffusers_path, base=gen, out_dir=tmp_path / "ev", seeds=(0,), height=32, width=32,
                      steps=1, max_sequence_length=32,
                      checkpoints=[(10, ck.diffusers_path), (20, tmp_path / "nope.safetensors")])
    assert exc.value.code == "lora_file_invalid"
    assert not (tmp_path / "ev" / "contact_sheet.png").exists()
    assert gen._characters == {} and gen.cache_stats().memory == ()  # nothing left registered or cached
    with pytest.raises(InputError) as bad:
        evaluate_lora(exp.diffusers_path, base=gen, out_dir=tmp_path / "ev2", checkpoints=[("ten", ck.diffusers_path)])
    assert bad.value.details["field"] == "checkpoints"


@pytest.mark.parametrize("what", ["ip_pair", "out_under_file", "losses_missing", "losses_not_list"])
def test_cli_bad_arguments_are_coded_before_any_work(what, tmp_path, capsys, monkeypatch):
    import persona_ml.models as models

    def no_load(*a, **k):  # every refusal below must come before the base model is loaded
        raise AssertionError("base model loaded before the argument was checked")

    monkeypatch.setattr(models, "load_base_model", no_load)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "losses.json").write_text('{"step": 1}')
    lora = str(tmp_path / "l.safetensors")
    argv = {
        "ip_pair": ["generate", "--reference", lora, "--ip-adapter", lora, "--prompt", "x", "--out", str(tmp_path / "o")],
        "out_under_file": ["generate", "--lora", lora, "--prompt", "x", "--out", str(tmp_path / "a_file" / "o")],
        "losses_missing": ["eval", "--lora", lora, "--losses", str(tmp_path / "no.json"), "--out", str(tmp_path / "o")],
        "losses_not_list": ["eval", "--lora", lora, "--losses", str(tmp_path / "losses.json"), "--out", str(tmp_path / "o")],
    }[what]
    assert main(argv) == 2
    err = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["error"]
    assert err["code"] == "invalid_input"
    assert err["details"]["field"] == {"ip_pair": "ip_encoder", "out_under_file": "out"}.get(what, "losses")
