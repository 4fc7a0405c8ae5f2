"""Verification figures and the VAD's segmentation logic (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from persona_ml.voice.metrics import verification_metrics
from persona_ml.voice.models import vad_spec
from persona_ml.voice.vad import segments_from_probabilities


def test_separable_scores_have_auc_1_and_eer_0():
    m = verification_metrics(np.array([0.8, 0.9, 0.95]), np.array([0.1, 0.5, 0.7]))
    assert m.auc == 1.0 and m.eer == 0.0 and 0.7 <= m.eer_threshold <= 0.8
    assert (m.n_same, m.n_different, m.same_min, m.different_max) == (3, 3, 0.8, 0.7)


def test_overlapping_scores_give_the_crossing_rate():
    rng = np.random.default_rng(0)
    same, diff = rng.normal(1.0, 1.0, 20000), rng.normal(-1.0, 1.0, 20000)
    m = verification_metrics(same, diff)
    # two unit normals 2 apart cross at 0 with error Phi(-1) = 15.87 %; AUC = Phi(2 / sqrt 2) = 0.9214
    assert m.eer == pytest.approx(0.1587, abs=0.006)
    assert m.auc == pytest.approx(0.9214, abs=0.004)
    assert abs(m.eer_threshold) < 0.03
    assert verification_metrics(diff, same).auc == pytest.approx(1 - m.auc, abs=1e-9)


def test_segments_hysteresis_min_speech_padding_and_merge():
    spec = vad_spec()  # threshold 0.5, neg 0.35, min speech 0.25 s, min silence 0.1 s, pad 0.03 s
    f = 0.032
    probs = np.zeros(200, np.float32)
    probs[10:60] = 0.9    # 1.6 s of speech
    probs[60:62] = 0.4    # a dip above neg_threshold: still speech
    probs[62:80] = 0.9
    probs[80:83] = 0.1    # 96 ms below neg_threshold: shorter than min_silence, no split
    probs[83:100] = 0.9
    probs[150:154] = 0.9  # 128 ms: shorter than min_speech, dropped
    act = segments_from_probabilities(probs, 200 * f, spec)
    assert len(act.segments) == 1
    start, end = act.segments[0]
    assert start == pytest.approx(10 * f - 0.03, abs=1e-3) and end == pytest.approx(100 * f + 0.03, abs=1e-3)
    probs[100:110] = 0.0
    probs[110:140] = 0.9
    act = segments_from_probabilities(probs, 200 * f, spec)
    assert len(act.segments) == 2 and act.speech_s == pytest.approx(sum(e - s for s, e in act.segments))
    assert segments_from_probabilities(np.zeros(50, np.float32), 1.6, spec).segments == ()
    mask = act.mask(int(200 * f * 16000), 16000)
    assert mask.sum() == pytest.approx(act.speech_s * 16000, abs=4)
