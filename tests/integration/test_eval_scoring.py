"""evaluate_lora's numbers on controlled faces: per-prompt similarity, detection and bleeding
rates, the summary, and the checkpoint ranking, computed from faces whose similarities to the
profile are chosen by the test (the random tiny model draws no face, so without this the ranking
code would only ever see ``None``).

The scripted embedder hands out planned faces image by image, in the order the images are
scored: the suite's prompts in order, each prompt's seeds in order, then each checkpoint's seeds.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")

from persona_ml.faces.profile import FaceProfile
from persona_ml.faces.thresholds import FaceThresholds
from persona_ml.faces.types import FaceObservation, ModelProvenance

DIM = 8
PROV = ModelProvenance(backend="dlib", model_name="scripted_test_model", files={"scripted.dat": "c" * 64}, dim=DIM,
                       license="test")
THR = FaceThresholds(same_person_min_cosine=0.6, outlier_max_cosine=0.5, near_duplicate_min_cosine=0.99,
                     min_face_size_px=10, min_sharpness=0.0)
TARGETS = ["transformer_blocks.*.attn.to_q", "transformer_blocks.*.attn.to_v"]
SEEDS = (0, 1)


def _face(similarity: float, tag: str = "x") -> FaceObservation:
    """A face whose cosine to the profile (centroid e0) is exactly ``similarity``."""
    emb = np.zeros(DIM, np.float64)
    emb[0], emb[1] = similarity, math.sqrt(max(0.0, 1.0 - similarity * similarity))
    return FaceObservation(bbox=(0.0, 0.0, 20.0, 20.0), landmarks=np.zeros((5, 2), np.float32), det_score=1.0,
                           face_size=20.0, sharpness=50.0, pose=(0.0, 0.0, 0.0), embedding=emb.astype(np.float32),
                           image_sha256=tag, image_size=(32, 32), provenance=PROV)


class ScriptedEmbedder:
    """Returns planned faces (lists of similarities) for each image it is given, in order."""

    def __init__(self, plan):
        self.plan = list(plan)
        self.seen = 0
        self.provenance = PROV
        self.thresholds = THR

    def analyze(self, images):
        images = list(images)
        out = []
        for im in images:
            assert self.seen < len(self.plan), f"more images scored than planned ({len(self.plan)})"
            assert np.asarray(im).shape == (32, 32, 3), "the embedder must get the generated image itself"
            out.append([_face(s, f"{self.seen}-{j}") for j, s in enumerate(self.plan[self.seen])])
            self.seen += 1
        return out


# per prompt of the default suite, per seed: the similarities of the faces found in that image
SUITE_PLAN = {
    "portrait": [[0.95], [0.85]],
    "half_body": [[0.7], []],                   # the second image shows no face
    "low_light": [[0.3], [0.5, 0.2]],           # faces, none the character: identity_low
    "golden_hour": [[0.65, 0.1], [0.8]],        # the character beside a stranger: not bleeding
    "group": [[0.9, 0.8, 0.1], [0.9, 0.2]],     # two people wear the character's face in the first image
}
# checkpoint step -> per seed, on the first (portrait) prompt
CHECKPOINT_PLAN = {10: [[0.5], [0.6]], 20: [[0.9], [0.7]], 30: [[0.8], [0.8]], 40: [[], []]}


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    from persona_ml.inference.testing import make_random_lora
    from persona_ml.models import load_base_model

    base = load_base_model("tiny-flux")
    tmp = tmp_path_factory.mktemp("eval_scoring")
    final = make_random_lora(base.pipeline, tmp / "final", seed=3, base_model=base.name,
                             base_fingerprint=base.fingerprint, targets=TARGETS, trigger="ohwx")
    ck = {step: make_random_lora(base.pipeline, tmp / f"ck{step}", seed=10 + step, base_model=base.name,
                                 base_fingerprint=base.fingerprint, targets=TARGETS, trigger="ohwx")
          for step in CHECKPOINT_PLAN}
    return base, final, ck


@pytest.fixture(scope="module")
def report(loras, tmp_path_factory):
    from persona_ml.eval import DEFAULT_PROMPT_SUITE, evaluate_lora

    base, final, ck = loras
    assert [p.name for p in DEFAULT_PROMPT_SUITE] == list(SUITE_PLAN)
    plan = [faces for p in DEFAULT_PROMPT_SUITE for faces in SUITE_PLAN[p.name]]
    plan += [faces for step in CHECKPOINT_PLAN for faces in CHECKPOINT_PLAN[step]]
    embedder = ScriptedEmbedder(plan)
    e0 = np.zeros(DIM, np.float32)
    e0[0] = 1.0
    ref = _face(1.0, "reference")
    profile = FaceProfile.build([FaceObservation(**{**ref.__dict__, "embedding": e0})], THR)
    out = tmp_path_factory.mktemp("eval_out")
    rep = evaluate_lora(final.diffusers_path, base=base, out_dir=out, profile=profile, embedder=embedder,
                        seeds=SEEDS, height=32, width=32, steps=1, max_sequence_length=32,
                        checkpoints=[(step, ck[step].diffusers_path) for step in CHECKPOINT_PLAN])
    assert embedder.seen == len(plan), f"{embedder.seen} images scored, {len(plan)} planned"
    return rep, out


def test_per_prompt_similarity_detection_and_flags(report):
    rep, _ = report
    by = {p.name: p for p in rep.prompts}
    assert by["portrait"].similarities == pytest.approx((0.95, 0.85), abs=1e-5)
    assert by["portrait"].mean_similarity == pytest.approx(0.9, abs=1e-5)
    assert by["portrait"].detection_rate == 1.0 and by["portrait"].flags == ((), ())
    assert by["half_body"].similarities[0] == pytest.approx(0.7, abs=1e-5) and by["half_body"].similarities[1] is None
    assert by["half_body"].detection_rate == 0.5 and by["half_body"].mean_similarity == pytest.approx(0.7, abs=1e-5)
    assert by["half_body"].flags == ((), ("no_face",))
    # the best face of each image is its similarity, even below the threshold
    assert by["low_light"].similarities == pytest.approx((0.3, 0.5), abs=1e-5)
    assert by["low_light"].flags == (("identity_low",), ("identity_low",))
    assert by["golden_hour"].similarities == pytest.approx((0.65, 0.8), abs=1e-5)
    assert by["golden_hour"].bleeding_rate == 0.0 and by["golden_hour"].flags == ((), ())


def test_bleeding_rate_counts_images_where_several_faces_match(report):
    rep, _ = report
    group = next(p for p in rep.prompts if p.name == "group")
    assert group.flags == (("identity_bleeding",), ())
    assert group.bleeding_rate == 0.5
    assert all(p.bleeding_rate == 0.0 for p in rep.prompts if p.name != "group")


def test_summary_leaves_the_group_scene_out_of_the_mean_and_takes_the_worst_bleeding(report):
    rep, out = report
    summary = rep.summary()
    single = [0.95, 0.85, 0.7, 0.3, 0.5, 0.65, 0.8]   # every scored image but the group scene's
    assert summary["mean_similarity"] == pytest.approx(sum(single) / len(single), abs=1e-5)
    assert summary["detection_rate"] == pytest.approx(9 / 10)
    assert summary["bleeding_rate"] == 0.5
    saved = json.loads((out / "report.json").read_text())
    assert saved["summary"] == summary
    assert [p["similarities"][0] for p in saved["prompts"]] == pytest.approx([0.95, 0.7, 0.3, 0.65, 0.9], abs=1e-5)


def test_checkpoints_are_ranked_by_identity_ties_to_the_earlier_step(report):
    rep, out = report
    got = {c.step: (c.mean_similarity, c.detection_rate) for c in rep.checkpoints}
    assert got[10] == (pytest.approx(0.55, abs=1e-5), 1.0)
    assert got[20] == (pytest.approx(0.8, abs=1e-5), 1.0)
    assert got[30] == (pytest.approx(0.8, abs=1e-5), 1.0)
    assert got[40] == (None, 0.0)                      # no face: never ranked best
    assert rep.summary()["best_checkpoint"] == 20      # 20 and 30 tie at 0.8: the earlier step wins
    assert "similarity_plot" in rep.files and (out / "similarity_per_checkpoint.png").is_file()


def test_generator_keeps_the_best_unflagged_images(loras):
    """best-of-N on controlled faces: unflagged images by similarity, then flagged ones, then faceless."""
    from persona_ml.inference import Character, CharacterGenerator, GenerationRequest

    base, final, _ = loras
    seeds = (0, 1, 2, 3, 4)
    #           0.7 ok   bleeding (0.95 twice)  no face  0.85 ok  identity_low
    embedder = ScriptedEmbedder([[0.7], [0.95, 0.95], [], [0.85, 0.1], [0.4]])
    e0 = np.zeros(DIM, np.float32)
    e0[0] = 1.0
    profile = FaceProfile.build([FaceObservation(**{**_face(1.0, "ref").__dict__, "embedding": e0})], THR)
    gen = CharacterGenerator(base, face_embedder=embedder)
    gen.register(Character("c", lora_path=final.diffusers_path, profile=profile, trigger="ohwx"))
    try:
        res = gen.generate(GenerationRequest("c", "a photo of {trigger}", seeds=seeds, height=32, width=32, steps=1,
                                             max_sequence_length=32, keep=2))
    finally:
        gen.unregister("c")
    assert [im.flags for im in res.images] == [(), ("identity_bleeding",), ("no_face",), (), ("identity_low",)]
    assert res.selected == (3, 0)
    assert res.best.seed == 3 and res.best.identity_score == pytest.approx(0.85, abs=1e-5)
