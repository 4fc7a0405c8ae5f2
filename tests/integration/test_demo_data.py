"""The demo's photo set: augmented views of one portrait, honest about being near-duplicates."""

import numpy as np
import pytest

from persona_ml.demo_data import augmented_views, make_demo_photos


def test_views_are_deterministic_and_varied(tmp_path):
    a = make_demo_photos(tmp_path / "a", n=4, seed=0)
    b = make_demo_photos(tmp_path / "b", n=4, seed=0)
    assert [p.read_bytes() for p in a.views] == [p.read_bytes() for p in b.views]
    views = augmented_views(4, seed=0)
    assert len({v.shape for v in views}) > 1  # different crops/sizes, not one image repeated


def test_every_view_shows_one_face_of_the_same_person_and_is_a_near_duplicate():
    pytest.importorskip("dlib")
    from persona_ml.faces import thresholds_for
    from persona_ml.faces.embedder import FaceEmbedder

    emb = FaceEmbedder("dlib")
    views = augmented_views(6, seed=0)
    obs = [emb.embed_primary(v) for v in views]  # raises if a view has no face or two faces
    thr = thresholds_for(emb.provenance)
    sims = np.array([[a.similarity(b) for b in obs] for a in obs])
    assert sims.min() > thr.same_person_min_cosine
    # augmented views of one photo are what screening must call near-duplicates (cosine and pHash)
    assert np.median(sims[np.triu_indices(len(obs), 1)]) > thr.near_duplicate_min_cosine - 0.02
