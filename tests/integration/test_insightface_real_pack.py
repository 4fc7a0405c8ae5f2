"""The insightface backend on a REAL model pack (buffalo_l, antelopev2 or a 2.x manifest package).

Packs are downloaded from the internet, which this project never does, so the test runs only
where ``PERSONA_ML_INSIGHTFACE_DIR`` points at a local copy (the pack folder, or insightface's
root with ``models/<name>/``). ``PERSONA_ML_INSIGHTFACE_DEVICE`` (default ``cpu``) picks the
device, e.g. ``cuda:0`` on a GPU worker. The photos ship inside the insightface wheel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

PACK_DIR = os.environ.get("PERSONA_ML_INSIGHTFACE_DIR")
DEVICE = os.environ.get("PERSONA_ML_INSIGHTFACE_DEVICE", "cpu")

pytestmark = pytest.mark.skipif(
    not PACK_DIR,
    reason="set PERSONA_ML_INSIGHTFACE_DIR to a local insightface pack (e.g. ~/.insightface/models/buffalo_l) "
           "to run the real-pack test; packs are never downloaded")


@pytest.fixture(scope="module")
def backend():
    from persona_ml.faces.insightface_backend import InsightFaceBackend

    return InsightFaceBackend(Path(PACK_DIR).expanduser(), device=DEVICE)


@pytest.fixture(scope="module")
def analysed(backend, insightface_images):
    from persona_ml.images import load_image

    group = load_image(insightface_images / "t1.jpg")
    hanks = load_image(insightface_images / "Tom_Hanks_54745.png")
    hanks_mirrored = load_image(np.ascontiguousarray(hanks.pixels[:, ::-1]))
    faces = backend.analyze_images([group, hanks, hanks_mirrored])
    return {"group": faces[0], "hanks": faces[1], "hanks_mirrored": faces[2], "images": (group, hanks)}


def test_real_pack_loads_with_512_d_provenance(backend):
    prov = backend.provenance
    assert prov.backend == "insightface" and prov.dim == 512
    assert len(prov.files) == 2 and all(len(h) == 64 for h in prov.files.values())
    assert prov.license  # "non-commercial (no MODEL.LICENSE)" for the public packs
    if prov.license.startswith("non-commercial (no"):
        assert prov.commercial_use is False


def test_group_photo_shows_several_faces_and_the_portrait_one(analysed):
    group, hanks = analysed["group"], analysed["hanks"]
    assert len(group) >= 5, [f.bbox for f in group]
    assert len(hanks) == 1
    for face in group + hanks:
        assert face.embedding.shape == (512,)
        assert abs(float(np.linalg.norm(face.embedding)) - 1.0) < 1e-4
        assert face.det_score >= 0.5 and face.face_size > 20 and face.pose is not None
    areas = [f.area for f in group]
    assert areas == sorted(areas, reverse=True)


def test_identity_same_person_scores_above_other_people(analysed):
    hanks = analysed["hanks"][0]
    mirrored = analysed["hanks_mirrored"][0]
    same = hanks.similarity(mirrored)
    others = [hanks.similarity(f) for f in analysed["group"]]
    assert same > 0.5, same
    assert same > max(others) + 0.2, (same, others)


def test_matches_insightface_face_analysis_on_the_same_pack(backend, analysed):
    """Our sessions, BGR handling and batching give insightface's own embeddings."""
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(backend.pack.folder), allowed_modules=["detection", "recognition"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    group_image = analysed["images"][0]
    reference = app.get(np.ascontiguousarray(group_image.pixels[..., ::-1]))
    assert len(reference) == len(analysed["group"])
    for face in analysed["group"]:
        box = face.extra["raw_bbox"]  # before clipping to the image, as insightface reports it
        ref = max(reference, key=lambda r: _iou(box, r.bbox))
        assert _iou(box, ref.bbox) > 0.95
        assert float(np.dot(face.embedding, ref.normed_embedding)) > 0.99


def _iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0
