"""Threshold fitting and checking (persona_ml.faces.calibration) on scores with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from persona_ml.errors import InputError
from persona_ml.faces.calibration import (
    calibrate,
    centroid_scores,
    fit_threshold,
    pair_scores,
    rates,
    split_identities,
)


def test_rates_count_accepts_at_or_above_the_threshold():
    op = rates(same=[0.9, 0.8, 0.7, 0.6], different=[0.1, 0.5, 0.7, 0.75], threshold=0.7)
    assert (op.far, op.frr) == (0.5, 0.25)       # 0.7 and 0.75 accepted; 0.6 rejected
    assert (op.n_same, op.n_different) == (4, 4)


def test_separable_scores_fit_the_middle_of_the_gap():
    op = fit_threshold(same=[0.8, 0.9, 0.95], different=[0.1, 0.2, 0.4])
    assert (op.far, op.frr) == (0.0, 0.0)
    assert op.threshold == pytest.approx(0.6)    # halfway between 0.4 and 0.8


def test_overlapping_scores_fit_the_equal_error_point():
    same = [0.55, 0.6, 0.7, 0.8, 0.9]
    different = [0.1, 0.2, 0.3, 0.5, 0.65]
    op = fit_threshold(same, different)
    # a cut in (0.55, 0.6) makes one error of each kind (0.55 rejected, 0.65 accepted); a cut in
    # (0.5, 0.55) has the same worst rate (FAR 0.2, FRR 0) but unequal rates, so it loses
    assert (op.far, op.frr) == (0.2, 0.2) and 0.55 < op.threshold < 0.6
    assert rates(same, different, op.threshold) == op


def test_bad_scores_are_coded_errors():
    with pytest.raises(InputError) as err:
        fit_threshold([], [0.1])
    assert err.value.details["field"] == "same"
    with pytest.raises(InputError):
        rates([0.5, float("nan")], [0.1], 0.3)


def _people(rng, n_people=8, per=5, dim=16, noise=0.3):
    centres = rng.standard_normal((n_people, dim))
    emb, ids = [], []
    for k in range(n_people):
        for _ in range(per):
            emb.append(centres[k] + noise * rng.standard_normal(dim))
            ids.append(f"p{k}")
    return np.asarray(emb), ids


def test_pair_and_centroid_scores_separate_people():
    emb, ids = _people(np.random.default_rng(0))
    same, diff = pair_scores(emb, ids)
    assert len(same) == 8 * 10 and len(diff) == (40 * 39) // 2 - 80
    assert same.min() > diff.max()
    own, intruder = centroid_scores(emb, ids)
    assert len(own) == 40 and len(intruder) == 40 * 35
    assert own.min() > intruder.max()
    # a person with fewer than min_references photos gives no outlier scores
    own2, _ = centroid_scores(emb[:7], ids[:7], min_references=3)
    assert len(own2) == 5


def test_split_is_by_person_disjoint_deterministic_and_balanced_across_strata():
    people = [f"tv{i}" for i in range(6)] + [f"photo{i}" for i in range(8)]
    strata = {p: p[:2] for p in people}
    fit, check = split_identities(people, seed=3, strata=strata)
    assert set(fit) | set(check) == set(people) and not set(fit) & set(check)
    assert split_identities(list(reversed(people)), seed=3, strata=strata) == (fit, check)
    assert split_identities(people, seed=4, strata=strata) != (fit, check)
    assert sum(p.startswith("tv") for p in fit) == 3 and sum(p.startswith("tv") for p in check) == 3
    with pytest.raises(InputError):
        split_identities(["a", "b", "c"])


def test_calibrate_fits_on_one_half_and_checks_on_the_other():
    emb, ids = _people(np.random.default_rng(1), n_people=10, noise=0.9)   # overlapping: errors are possible

    class Configured:
        same_person_min_cosine = 0.5
        outlier_max_cosine = 0.6

    report = calibrate(emb, ids, seed=0, configured=Configured())
    assert not set(report.fit_identities) & set(report.check_identities)
    same = report.check("same_person_min_cosine")
    fit_rows = [i for i, p in enumerate(ids) if p in report.fit_identities]
    check_rows = [i for i, p in enumerate(ids) if p in report.check_identities]
    expected_fit = fit_threshold(*pair_scores(emb[fit_rows], [ids[i] for i in fit_rows]))
    assert same.fitted == expected_fit
    assert same.held_out == rates(*pair_scores(emb[check_rows], [ids[i] for i in check_rows]), expected_fit.threshold)
    assert same.configured.threshold == 0.5 and same.held_out.n_same == 5 * 10
    lines = report.summary_lines()
    assert lines[0] == "split by person: fitted on 5 identities, checked on 5 others"
    assert any(line.startswith("outlier_max_cosine: configured 0.600 held out: FAR ") for line in lines)
