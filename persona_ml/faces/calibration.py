"""Fitting identity thresholds on labelled faces and checking them on held-out people.

An embedding model's thresholds (``configs/face_thresholds.yaml``) are operating points on two
score distributions:

- ``same_person_min_cosine``: pairwise cosines of two photos of one person (``same``) against two
  photos of different people (``different``). FAR is the share of different-person pairs at or
  above the threshold, FRR the share of same-person pairs below it.
- ``outlier_max_cosine``: a reference photo against the centroid of the person's OTHER references
  (``same``: their own photo; ``different``: another person's photo against that centroid). A
  reference below the threshold is flagged as an outlier: FRR is the share of real references
  flagged, FAR the share of intruders that pass.

Fitting on some people and checking on others (``split_identities``) shows how the threshold
does on faces it was not fitted on. ``calibrate`` does both for both thresholds; it needs only
embeddings and labels, so it serves any embedding model (a researcher's insightface pack too).

Example:
    >>> from persona_ml.faces.calibration import calibrate                       # doctest: +SKIP
    >>> report = calibrate(embeddings, identities, configured=thresholds_for(prov))  # doctest: +SKIP
    >>> print("\\n".join(report.summary_lines()))                                  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["OperatingPoint", "ThresholdCheck", "CalibrationReport", "rates", "fit_threshold", "pair_scores",
           "centroid_scores", "split_identities", "calibrate"]


@dataclass(frozen=True)
class OperatingPoint:
    """Error rates of one threshold on one set of scores.

    Attributes:
        threshold: scores at or above it are accepted.
        far: false accepts / ``n_different`` (different-person scores at or above the threshold).
        frr: false rejects / ``n_same`` (same-person scores below the threshold).
        n_same, n_different: how many scores of each kind were counted.
    """

    threshold: float
    far: float
    frr: float
    n_same: int
    n_different: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ThresholdCheck:
    """One threshold fitted on some people and checked on others.

    Attributes:
        name: the threshold's config key (``same_person_min_cosine``, ``outlier_max_cosine``).
        fitted: the equal-error point on the fitting people.
        held_out: the fitted threshold on the held-out people.
        configured: the configured threshold on the held-out people (``None`` without one).
    """

    name: str
    fitted: OperatingPoint
    held_out: OperatingPoint
    configured: OperatingPoint | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fitted": self.fitted.to_dict(), "held_out": self.held_out.to_dict(),
                "configured": self.configured.to_dict() if self.configured else None}


@dataclass(frozen=True)
class CalibrationReport:
    """What ``calibrate`` fitted and measured.

    Attributes:
        fit_identities, check_identities: the two disjoint sets of people.
        checks: one ``ThresholdCheck`` per threshold.
    """

    fit_identities: tuple[str, ...]
    check_identities: tuple[str, ...]
    checks: tuple[ThresholdCheck, ...]

    def check(self, name: str) -> ThresholdCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def summary_lines(self) -> list[str]:
        """The figures as quoted in the README and the thresholds config (percentages, 1 decimal)."""
        lines = [f"split by person: fitted on {len(self.fit_identities)} identities, checked on "
                 f"{len(self.check_identities)} others"]
        for c in self.checks:
            f, h = c.fitted, c.held_out
            lines.append(f"{c.name}: fitted {f.threshold:.3f} (FAR {_pct(f.far)}, FRR {_pct(f.frr)} on "
                         f"{f.n_same}/{f.n_different} fitting scores); held out at {h.threshold:.3f}: FAR {_pct(h.far)}, "
                         f"FRR {_pct(h.frr)} ({h.n_same}/{h.n_different})")
            if c.configured is not None:
                k = c.configured
                lines.append(f"{c.name}: configured {k.threshold:.3f} held out: FAR {_pct(k.far)}, FRR {_pct(k.frr)}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"fit_identities": list(self.fit_identities), "check_identities": list(self.check_identities),
                "checks": [c.to_dict() for c in self.checks]}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _scores(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise InputError(f"{name} is empty: an operating point needs scores of both kinds", field=name, value=0)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} holds NaN or infinite scores", field=name, value=int((~np.isfinite(arr)).sum()))
    return arr


def rates(same: Sequence[float], different: Sequence[float], threshold: float) -> OperatingPoint:
    """FAR and FRR of ``threshold`` (accept at or above it).

    Raises:
        InputError: an empty or non-finite score set.
    """
    s, d = _scores(same, "same"), _scores(different, "different")
    t = float(threshold)
    return OperatingPoint(threshold=t, far=float((d >= t).mean()), frr=float((s < t).mean()), n_same=int(s.size),
                          n_different=int(d.size))


def fit_threshold(same: Sequence[float], different: Sequence[float]) -> OperatingPoint:
    """The equal-error operating point: the threshold minimising ``max(FAR, FRR)``.

    Candidates are the midpoints between adjacent distinct scores (and just past both ends), so
    the threshold never sits on a score; among equally good candidates those with the smallest
    ``|FAR - FRR|`` win, and of those the middle one (on separable scores: the middle of the gap).

    Raises:
        InputError: an empty or non-finite score set.
    """
    s, d = _scores(same, "same"), _scores(different, "different")
    values = np.unique(np.concatenate([s, d]))
    candidates = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-6]])
    s_sorted, d_sorted = np.sort(s), np.sort(d)
    frr = np.searchsorted(s_sorted, candidates, side="left") / s.size          # same below t
    far = (d.size - np.searchsorted(d_sorted, candidates, side="left")) / d.size  # different at or above t
    worst = np.maximum(far, frr)
    gap = np.abs(far - frr)
    tied = np.flatnonzero((worst == worst.min()) & (gap == gap[worst == worst.min()].min()))
    best = int(tied[len(tied) // 2])  # equally good thresholds form a run: take its middle (the widest margin)
    return OperatingPoint(threshold=float(candidates[best]), far=float(far[best]), frr=float(frr[best]),
                          n_same=int(s.size), n_different=int(d.size))


def _unit(embeddings: Any) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] == 0:
        raise InputError(f"embeddings must be an (N, D) array, got shape {e.shape}", field="embeddings",
                         value=list(e.shape))
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(e)):
        raise InputError("embeddings hold a zero or non-finite vector", field="embeddings", value=list(e.shape))
    return e / norms


def _labels(identities: Sequence[str], n: int) -> list[str]:
    labels = [str(x) for x in identities]
    if len(labels) != n:
        raise InputError(f"{len(labels)} identities for {n} embeddings", field="identities", value=len(labels))
    return labels


def pair_scores(embeddings: Any, identities: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of every pair: ``(same_person, different_person)``."""
    e = _unit(embeddings)
    labels = _labels(identities, len(e))
    sims = e @ e.T
    same, diff = [], []
    for i, j in itertools.combinations(range(len(e)), 2):
        (same if labels[i] == labels[j] else diff).append(sims[i, j])
    return np.asarray(same), np.asarray(diff)


def centroid_scores(embeddings: Any, identities: Sequence[str], *, min_references: int = 3
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out reference scores: ``(own, intruder)``.

    For every person with at least ``min_references`` photos and each of their photos: ``own`` is
    its cosine to the normalised centroid of their other photos; ``intruder`` holds every other
    person's photo against that same centroid (how an intruder among the references scores).
    """
    e = _unit(embeddings)
    labels = np.asarray(_labels(identities, len(e)))
    own, intruder = [], []
    for person in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == person)
        if len(idx) < min_references:
            continue
        others = np.flatnonzero(labels != person)
        for i in idx:
            rest = idx[idx != i]
            c = e[rest].mean(axis=0)
            c /= np.linalg.norm(c)
            own.append(float(e[i] @ c))
            intruder.extend((e[others] @ c).tolist())
    return np.asarray(own), np.asarray(intruder)


def split_identities(identities: Sequence[str], *, seed: int = 0, strata: Mapping[str, str] | None = None
                     ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split people (not photos) into a fitting half and a checking half.

    Each stratum (``strata[person]``, e.g. ``"crop"`` vs ``"photo"``) is shuffled with ``seed`` and
    dealt alternately, so both halves get people of every kind. Deterministic for a given seed.

    Returns:
        ``(fit, check)`` sorted tuples of identities.
    """
    people = sorted(set(map(str, identities)))
    if len(people) < 4:
        raise InputError(f"a split by person needs at least 4 identities, got {len(people)}", field="identities",
                         value=len(people))
    groups: dict[str, list[str]] = {}
    for p in people:
        groups.setdefault(str((strata or {}).get(p, "")), []).append(p)
    rng = np.random.default_rng(seed)
    fit: list[str] = []
    check: list[str] = []
    turn = 0
    for key in sorted(groups):
        members = groups[key]
        for k in rng.permutation(len(members)):
            (fit if turn % 2 == 0 else check).append(members[int(k)])
            turn += 1
    return tuple(sorted(fit)), tuple(sorted(check))


def calibrate(embeddings: Any, identities: Sequence[str], *, seed: int = 0, strata: Mapping[str, str] | None = None,
              configured: Any = None, min_references: int = 3) -> CalibrationReport:
    """Fit ``same_person_min_cosine`` and ``outlier_max_cosine`` on half of the people, check on the rest.

    Args:
        embeddings: ``(N, D)`` embeddings, one photo each (near-duplicates left out by the caller).
        identities: the person of each row.
        seed, strata: the split (``split_identities``).
        configured: ``FaceThresholds`` (or anything with those two attributes) whose values are
            also measured on the held-out people.
        min_references: people with fewer photos are left out of the outlier scores.

    Returns:
        CalibrationReport.

    Raises:
        InputError: bad shapes, too few people, or a half without scores of one kind.
    """
    e = _unit(embeddings)
    labels = _labels(identities, len(e))
    fit_ids, check_ids = split_identities(labels, seed=seed, strata=strata)
    parts = {}
    for name, ids in (("fit", set(fit_ids)), ("check", set(check_ids))):
        rows = [i for i, p in enumerate(labels) if p in ids]
        sub, sub_labels = e[rows], [labels[i] for i in rows]
        parts[name] = {"same_person_min_cosine": pair_scores(sub, sub_labels),
                       "outlier_max_cosine": centroid_scores(sub, sub_labels, min_references=min_references)}
    checks = []
    for key in ("same_person_min_cosine", "outlier_max_cosine"):
        fs, fd = parts["fit"][key]
        cs, cd = parts["check"][key]
        fitted = fit_threshold(fs, fd)
        held = rates(cs, cd, fitted.threshold)
        conf = rates(cs, cd, float(getattr(configured, key))) if configured is not None else None
        checks.append(ThresholdCheck(key, fitted, held, conf))
    return CalibrationReport(fit_ids, check_ids, tuple(checks))
