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

ThresholdMethod = Literal["percentile", "fpr", "f1_max"]
NORMAL, DEFECT = "NORMAL", "DEFECT"


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
    labelled_scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> float:
    """Dispatch to one calibration method by name."""
    if method == "percentile":
        return percentile_threshold(normal_scores, percentile)
    if method == "fpr":
        return fpr_threshold(normal_scores, target_fpr)
    if method == "f1_max":
        if labelled_scores is None or labels is None:
            raise ValueError("f1_max calibration needs labelled_scores and labels")
        return f1_max_threshold(labelled_scores, labels)
    raise ValueError(f"unknown threshold method {method!r}; expected percentile, fpr or f1_max")


def decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    """NORMAL/DEFECT per score: DEFECT when score > threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(scores > threshold, DEFECT, NORMAL)


def pixel_threshold(normal_maps: np.ndarray, percentile: float = 99.5, valid: np.ndarray | None = None) -> float:
    """Segmentation threshold: a high percentile of anomaly-map values on held-out normal images
    (their own pixels only when `valid` marks padding, see model.frame)."""
    maps = np.asarray(normal_maps, dtype=np.float32)
    return percentile_threshold(maps.ravel() if valid is None else maps[np.asarray(valid, bool)], percentile)
