"""Verification figures from scored pairs: ROC AUC and the equal-error rate.

Shared by every identity model (faces, voices): scores of same-identity and different-identity pairs in,
AUC (rank-sum, ties count half), EER and its threshold out. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class VerificationMetrics:
    """AUC, EER and the threshold at the EER, over ``n_same`` + ``n_different`` pairs."""

    auc: float
    eer: float
    eer_threshold: float
    n_same: int
    n_different: int
    same_min: float
    different_max: float

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def verification_metrics(same: np.ndarray, different: np.ndarray) -> VerificationMetrics:
    """ROC AUC (ties count half) and EER of cosine scores of same- and different-identity pairs (speakers, faces).

    The EER is where the false-accept and false-reject rates cross, interpolated between the two
    thresholds that bracket the crossing.
    """
    same = np.asarray(same, dtype=np.float64).ravel()
    different = np.asarray(different, dtype=np.float64).ravel()
    if len(same) == 0 or len(different) == 0:
        raise InputError("need at least one same-identity and one different-identity score", field="scores",
                         value=[len(same), len(different)])
    scores = np.concatenate([same, different])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks of ties (Mann-Whitney U)
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    auc = (ranks[: len(same)].sum() - len(same) * (len(same) + 1) / 2.0) / (len(same) * len(different))
    thresholds = np.unique(scores)
    frr = np.searchsorted(np.sort(same), thresholds, side="left") / len(same)                    # rises
    far = 1.0 - np.searchsorted(np.sort(different), thresholds, side="left") / len(different)  # falls
    j = int(np.argmax(frr >= far))  # the first threshold at which rejects catch up with accepts
    if j == 0:
        eer, threshold = (frr[0] + far[0]) / 2.0, float(thresholds[0])
    else:  # interpolate the crossing between thresholds j-1 and j
        d0, d1 = far[j - 1] - frr[j - 1], frr[j] - far[j]
        w = d0 / (d0 + d1) if d0 + d1 > 0 else 0.5
        eer = frr[j - 1] + w * (frr[j] - frr[j - 1])
        threshold = float(thresholds[j - 1] + w * (thresholds[j] - thresholds[j - 1]))
    return VerificationMetrics(auc=float(auc), eer=float(eer), eer_threshold=float(threshold), n_same=int(len(same)),
                               n_different=int(len(different)), same_min=float(same.min()),
                               different_max=float(different.max()))
