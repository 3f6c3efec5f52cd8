"""Reviewer labels turned into numbers a threshold can be set by (pure numpy).

A reviewed part is a defect when labelled `defect` (a confirmed DEFECT verdict) or `missed` (a
NORMAL verdict that was a defect), good when labelled `good`; `unsure` is left out. The labelled
set is what people chose to review: mostly DEFECT verdicts, so field precision is well measured
and field recall only counts the misses someone found. The counts are always reported with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TRUTH = {"defect": 1, "missed": 1, "good": 0}


@dataclass
class Reviewed:
    scores: np.ndarray
    truth: np.ndarray  # 1 defect, 0 good

    @property
    def defects(self) -> int:
        return int(self.truth.sum())

    @property
    def goods(self) -> int:
        return int((self.truth == 0).sum())


def reviewed(scores: list[float], labels: list[str]) -> Reviewed:
    """The reviewed parts with a definite label (unsure and unscored left out)."""
    keep = [
        (s, TRUTH[label]) for s, label in zip(scores, labels) if label in TRUTH and s is not None and np.isfinite(s)
    ]
    return Reviewed(np.array([k[0] for k in keep], np.float64), np.array([k[1] for k in keep], np.int64))


def at_threshold(r: Reviewed, threshold: float) -> dict[str, float]:
    """Confusion counts and field precision / recall / FPR of `score > threshold` on the reviewed parts."""
    pred = r.scores > threshold
    tp, fp = int(np.sum(pred & (r.truth == 1))), int(np.sum(pred & (r.truth == 0)))
    fn, tn = int(np.sum(~pred & (r.truth == 1))), int(np.sum(~pred & (r.truth == 0)))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    fpr = fp / (fp + tn) if fp + tn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "fpr": fpr,
        "f1": f1,
    }


# Relative: inspection may score with onnxruntime or OpenVINO, within 1e-4 of torch's scores
# (tests/test_export.py), and results.csv keeps 8 significant digits.
CUT_MARGIN = 1e-4


def _cuts(scores: np.ndarray) -> list[float]:
    """A threshold just below each distinct score, so that part counts as DEFECT: CUT_MARGIN below
    it (never down to the next lower score), not the next float, so that the same part scored again
    by the same weights (another runtime, another batch, or read back from results.csv) stays above."""
    distinct = np.unique(scores)[::-1]
    out = []
    for i, s in enumerate(distinct):
        cut = float(s - CUT_MARGIN * max(abs(float(s)), 1e-12))
        if i + 1 < len(distinct):
            cut = max(cut, float((s + distinct[i + 1]) / 2))
        out.append(min(cut, float(np.nextafter(s, -np.inf))))
    return out


def threshold_table(r: Reviewed) -> list[dict[str, float]]:
    """The precision/recall table over every threshold that changes a reviewed decision: just below
    each reviewed score (_cuts), highest first."""
    return [at_threshold(r, t) for t in _cuts(r.scores)]


def propose(r: Reviewed, target_recall: float | None = None, target_fpr: float | None = None) -> dict[str, float]:
    """The threshold for an operating point on the reviewed parts: the highest one whose recall is
    at least target_recall, or the lowest whose FPR is at most target_fpr."""
    if (target_recall is None) == (target_fpr is None):
        raise ValueError("give exactly one of target_recall and target_fpr")
    if target_recall is not None and r.defects == 0:
        raise ValueError("no reviewed defects (labels defect or missed) to set a recall on")
    if target_fpr is not None and r.goods == 0:
        raise ValueError("no parts reviewed as good to set a false-positive rate on")
    table = threshold_table(r)
    if target_recall is not None:
        ok = [row for row in table if row["recall"] >= target_recall]
        return ok[0]  # highest threshold that reaches it (the last row always does: every part above)
    ok = [row for row in table if not row["fpr"] > target_fpr]
    top = max(float(r.scores.max()), 0.0)
    return ok[-1] if ok else at_threshold(r, top)


def require_reviewed(r: Reviewed, minimum: int, what: str) -> None:
    """A recalibration needs `minimum` reviewed defects and `minimum` reviewed good parts."""
    if min(r.defects, r.goods) < minimum:
        raise ValueError(
            f"{what}: {r.defects} parts reviewed as defects and {r.goods} as good; "
            f"recalibration needs at least {minimum} of each (anomaflow review)"
        )


def field_gate(
    current: dict[str, float], proposal: dict[str, float], target_recall: float | None, target_fpr: float | None
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(challenger, champion, bars) of the reviewed gate: the proposal's field recall at least the
    target (or its FPR at most the target), and its field F1 not below the current threshold's."""
    bars = (
        {"field_recall": target_recall} if target_recall is not None else {"field_specificity": 1 - float(target_fpr)}
    )
    challenger = {
        "field_f1": proposal["f1"],
        "field_recall": proposal["recall"],
        "field_specificity": 1 - proposal["fpr"],
    }
    return challenger, {"field_f1": current["f1"]}, bars


def threshold_source(r: Reviewed, target_recall: float | None, target_fpr: float | None) -> str:
    """Why a recalibrated version has its threshold (tagged on the version)."""
    target = f"target recall {target_recall}" if target_recall is not None else f"target FPR {target_fpr}"
    return f"reviewed labels ({r.defects} defects, {r.goods} good), {target}"


@dataclass
class ReviewedPart:
    """One reviewed part a retraining calibrates on: its original image and what reviewers said."""

    path: str  # the original file, found through the inspection folder's inputs.json
    sha256: str  # the content that was reviewed
    truth: int  # 1 defect, 0 good


@dataclass
class ReviewCalibration:
    """What a challenger's threshold is calibrated on beside its held-out normals.

    target_recall: the reviewed operating point (the champion's field recall on these parts), None
    when there is none; min_reviewed: how many reviewed defects (goods) it takes before they move
    the threshold (the FPR estimate)."""

    parts: list[ReviewedPart]
    target_recall: float | None = None
    min_reviewed: int = 5
    target_from: str = ""  # where target_recall came from, for the threshold's source


def target_recall_of(source: str) -> float | None:
    """The target recall a version's threshold_source names (a recalibration or a retraining with
    reviews set it), None when its threshold was not set for a recall."""
    import re

    m = re.search(r"target recall (\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)", source or "")
    return float(m.group(1)) if m else None


def operating_point(tagged: float | None, measured: float, version: str) -> tuple[float | None, str]:
    """The target recall a challenger keeps from champion `version`: the higher of the recall its
    threshold was set for (tagged) and its field recall on the reviewed parts (measured, NaN when
    none was reviewed as a defect), with where it came from."""
    if tagged is not None and not measured >= tagged:  # NaN measured: the tag
        return tagged, f"the target recall of champion v{version}"
    if measured != measured:
        return None, f"champion v{version} has no reviewed defects"
    return float(measured), f"the field recall of champion v{version}"


def too_few_to_compare(field: dict[str, float], min_reviewed: int) -> str | None:
    """Why field metrics rest on too few reviewed parts to gate a promotion on (None: enough):
    min_reviewed defects and as many good parts."""
    if min(field["defects"], field["goods"]) >= min_reviewed:
        return None
    return (
        f"{field['defects']:g} reviewed defects and {field['goods']:g} good, "
        f"fewer than min_reviewed={min_reviewed} of each"
    )


def reviewed_truth(scores: list[float | None], truth: list[int]) -> Reviewed:
    """Reviewed parts from scores and truths (1 defect, 0 good); unscored parts left out."""
    return reviewed(scores, ["defect" if t else "good" for t in truth])


def calibrate_with_reviews(
    heldout_threshold: float,
    heldout_normals: np.ndarray,
    r: Reviewed,
    target_recall: float | None,
    min_reviewed: int = 5,
    target_from: str = "",
    synthetic_scores: np.ndarray | None = None,
) -> dict[str, Any]:
    """A challenger's threshold from its held-out threshold t0 and the reviewed parts it scored.

    Reviewed defects set the operating point: with at least min_reviewed of them and a target
    recall, the threshold is the highest one whose field recall on them reaches the target (propose),
    if that is below t0; the held-out calibration is never raised by reviews, so a recalibration that
    lowered the champion's threshold survives the next promotion. Reviewed good parts bound the FPR
    estimate from below: with at least min_reviewed of them, fpr_estimate_with_reviews is
    max(held-out FPR, field FPR on them) at the final threshold, never less than the reviews show
    (they are mostly parts a reviewer looked at because they were flagged, so this errs high).
    Fewer reviews than the minimum keep t0 (or the held-out estimate), and threshold_source says why.
    The held-out FPR, its interval, the tail and synthetic-recall estimates are those at the final
    threshold."""
    from anomaflow.model.evaluation import calibration

    t0, floor = float(heldout_threshold), max(int(min_reviewed), 1)
    threshold = t0
    if target_recall is None or not np.isfinite(target_recall):
        source = "held-out normals (no reviewed operating point to keep)"
    elif r.defects < floor:
        source = f"held-out normals ({r.defects} reviewed defects, fewer than the {floor} it takes to move it)"
    else:
        why = f"target recall {target_recall:g}" + (f" ({target_from})" if target_from else "")
        if at_threshold(r, t0)["recall"] >= target_recall:
            source = f"held-out normals (its field recall already reaches the {why})"
        else:
            threshold = float(propose(r, target_recall=float(target_recall))["threshold"])
            source = f"reviewed labels ({r.defects} defects, {r.goods} good), {why}: lowered from {t0:.6g}"
    field = at_threshold(r, threshold)
    out: dict[str, Any] = {
        "threshold": threshold,
        "threshold_heldout": t0,
        "threshold_source": source,
        **calibration.fpr_estimate(heldout_normals, threshold),
        "reviewed_defects": float(r.defects),
        "reviewed_good": float(r.goods),
        "field_precision_reviewed": field["precision"],
        "field_recall_reviewed": field["recall"],
        "field_fpr_reviewed": field["fpr"],
    }
    combined = out["heldout_fpr"]
    if r.goods >= floor:
        combined = max(combined, field["fpr"])
    out["fpr_estimate_with_reviews"] = combined
    if len(heldout_normals) >= calibration.TAIL_MIN_NORMALS:
        out["tail_fpr_estimate"] = calibration.tail_exceedance(heldout_normals, threshold)
    if synthetic_scores is not None and len(synthetic_scores):
        out["syn_recall_estimate"] = float(np.mean(np.asarray(synthetic_scores) > threshold))
    return out
