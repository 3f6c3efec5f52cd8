"""Decision thresholds calibrated without test labels.

The production threshold comes from the held-out *normal* split (good images the model did
not train on): a percentile of their scores, or the score that keeps the false-positive
rate on them at a target. F1-max needs labelled defects and is offered for a labelled
calibration set; using it on the test split is an oracle and must be reported as such.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from sklearn.metrics import precision_recall_curve

from anomaflow.model.evaluation.decision import DEFECT, NORMAL, decide  # noqa: F401 - the rule lives in anomaflow.model.evaluation.decision

ThresholdMethod = Literal["percentile", "fpr", "tail", "recall", "f1_max"]


def _check_scores(scores: np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError(f"cannot calibrate a threshold: no {what} scores")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"cannot calibrate a threshold: {what} scores contain NaN or inf")
    return scores


def percentile_threshold(normal_scores: np.ndarray, percentile: float = 95.0) -> float:
    """Score at the given percentile of held-out normal scores (linear interpolation)."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    return float(np.percentile(_check_scores(normal_scores, "normal"), percentile))


def fpr_threshold(normal_scores: np.ndarray, target_fpr: float = 0.05) -> float:
    """Smallest threshold whose false-positive rate on normal scores is <= target_fpr.

    Decisions are `score > threshold`, so the threshold is one of the normal scores.
    """
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    s = np.sort(_check_scores(normal_scores, "normal"))
    n = s.size
    allowed = int(np.floor(target_fpr * n))  # normal images allowed above the threshold
    return float(s[n - 1 - allowed])


# Gumbel quantile offsets -ln(-ln p): an image score is a max over pixels, and maxima of many
# weakly dependent values follow a Gumbel law; its location and scale come from the median and
# the inter-quartile range, so a few odd images among the held-out normals move neither.
_GUMBEL_IQR = float(-np.log(-np.log(0.75)) + np.log(-np.log(0.25)))
_GUMBEL_MEDIAN = float(-np.log(np.log(2.0)))
TAIL_MIN_NORMALS = 4


def tail_fit(normal_scores: np.ndarray) -> tuple[float, float]:
    """(location, scale) of a Gumbel law fitted robustly (median, IQR) to held-out normal scores."""
    s = _check_scores(normal_scores, "normal")
    if s.size < TAIL_MIN_NORMALS:
        raise ValueError(f"the tail model needs at least {TAIL_MIN_NORMALS} held-out normal scores, got {s.size}")
    q25, q50, q75 = np.percentile(s, [25, 50, 75])
    scale = float(q75 - q25) / _GUMBEL_IQR
    if scale <= 0:
        scale = float(np.std(s)) or 1e-12  # more than half the scores tie: fall back to the spread
    return float(q50 - scale * _GUMBEL_MEDIAN), scale


def tail_threshold(normal_scores: np.ndarray, target_fpr: float = 0.01) -> float:
    """Threshold at which the fitted normal-score tail (see tail_fit) exceeds with probability
    target_fpr: set by the bulk of the held-out normals, not by their single largest score."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1) for the tail model, got {target_fpr}")
    loc, scale = tail_fit(normal_scores)
    return float(loc - scale * np.log(-np.log(1.0 - target_fpr)))


def tail_exceedance(normal_scores: np.ndarray, threshold: float) -> float:
    """The fitted normal-score tail's probability of exceeding `threshold`: the model's FPR estimate."""
    loc, scale = tail_fit(normal_scores)
    return float(-np.expm1(-np.exp(-(threshold - loc) / scale)))


def recall_threshold(defect_scores: np.ndarray, target_recall: float) -> float:
    """Largest threshold that keeps at least `target_recall` of the given defect scores above it
    (decisions `score > threshold`). Fed with synthetic defects, so the recall is an estimate."""
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    s = np.sort(_check_scores(defect_scores, "defect"))[::-1]
    k = int(np.ceil(target_recall * s.size - 1e-9))  # this many must stay above
    return float(np.nextafter(s[k - 1], -np.inf))


def fpr_estimate(normal_scores: np.ndarray, threshold: float, z: float = 1.96) -> dict[str, float]:
    """Share of held-out normal scores above the threshold with its Wilson 95 % interval: what
    the held-out count can say about the false-positive rate the product will see."""
    s = _check_scores(normal_scores, "normal")
    n, k = s.size, int(np.count_nonzero(s > threshold))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {
        "heldout_fpr": p,
        "heldout_fpr_low": max(0.0, centre - half),
        "heldout_fpr_high": min(1.0, centre + half),
        "heldout_normals": float(n),
    }


def f1_max_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold that maximises F1 on a labelled set (decisions `score > threshold`)."""
    scores = _check_scores(scores, "labelled")
    labels = np.asarray(labels).astype(int).ravel()
    if labels.shape != scores.shape:
        raise ValueError("scores and labels differ in length")
    if labels.min() == labels.max():
        raise ValueError("F1-max calibration needs both normal and defective examples")
    precision, recall, thr = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    # precision_recall_curve predicts positive at score >= thr; step just below for `>`.
    below = scores[scores < thr[best]]
    return float(below.max()) if below.size else float(np.nextafter(thr[best], -np.inf))


def calibrate(
    method: ThresholdMethod,
    normal_scores: np.ndarray,
    *,
    percentile: float = 95.0,
    target_fpr: float = 0.05,
    target_recall: float = 0.9,
    defect_scores: np.ndarray | None = None,
    labelled_scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> float:
    """Dispatch to one calibration method by name."""
    if method == "percentile":
        return percentile_threshold(normal_scores, percentile)
    if method == "fpr":
        return fpr_threshold(normal_scores, target_fpr)
    if method == "tail":
        return tail_threshold(normal_scores, target_fpr)
    if method == "recall":
        if defect_scores is None:
            raise ValueError("recall calibration needs defect scores (synthetic defects in held-out normals)")
        return recall_threshold(defect_scores, target_recall)
    if method == "f1_max":
        if labelled_scores is None or labels is None:
            raise ValueError("f1_max calibration needs labelled_scores and labels")
        return f1_max_threshold(labelled_scores, labels)
    raise ValueError(f"unknown threshold method {method!r}; expected percentile, fpr, tail, recall or f1_max")


def pixel_threshold(normal_maps: np.ndarray, percentile: float = 99.5, valid: np.ndarray | None = None) -> float:
    """Segmentation threshold: a high percentile of anomaly-map values on held-out normal images
    (their own pixels only when `valid` marks padding, see model.data.frame)."""
    maps = np.asarray(normal_maps, dtype=np.float32)
    return percentile_threshold(maps.ravel() if valid is None else maps[np.asarray(valid, bool)], percentile)
