"""The configured dlib thresholds are fitted on half of ../shared/faces' people and hold on the others.

``tools/fit_face_thresholds.py`` splits the labelled people in two, fits on one half and checks on
the other; this test reruns it and checks that (1) the configured values are that fit (rounded to
the config's two decimals), (2) on the held-out people they keep FAR and FRR at or below 5%, and
(3) the held-out figures the README and configs/face_thresholds.yaml quote are the ones it prints.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("dlib", reason="the dlib backend needs dlib-bin (pip install 'persona-ml[dlib]')")

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("fit_face_thresholds", REPO / "tools" / "fit_face_thresholds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fitted(shared_faces):
    report, embedder, n_rows, n_faces = _tool().run(shared_faces, seed=0)
    assert n_faces >= 0.95 * n_rows
    return report, embedder


@pytest.mark.parametrize("name", ["same_person_min_cosine", "outlier_max_cosine"])
def test_configured_threshold_is_the_fit_on_the_fitting_people(fitted, name):
    report, embedder = fitted
    check = report.check(name)
    assert getattr(embedder.thresholds, name) == pytest.approx(round(check.fitted.threshold, 2), abs=1e-9), (
        f"{name} is configured {getattr(embedder.thresholds, name)}, the fit gives {check.fitted.threshold:.4f}: "
        "rerun tools/fit_face_thresholds.py and update configs/face_thresholds.yaml and the README")


@pytest.mark.parametrize("name", ["same_person_min_cosine", "outlier_max_cosine"])
def test_configured_threshold_holds_on_held_out_people(fitted, name):
    report, _ = fitted
    held = report.check(name).configured
    assert held.n_same >= 30 and held.n_different >= 500       # enough held-out scores to mean something
    assert held.far <= 0.05 and held.frr <= 0.05, held
    assert not set(report.fit_identities) & set(report.check_identities)


def test_readme_and_config_quote_the_held_out_figures(fitted):
    report, _ = fitted
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    config = (REPO / "persona_ml" / "configs" / "face_thresholds.yaml").read_text(encoding="utf-8")
    for line in report.summary_lines():
        assert line in readme, f"README does not quote: {line!r} (rerun tools/fit_face_thresholds.py)"
        assert line in config, f"face_thresholds.yaml does not quote: {line!r}"
