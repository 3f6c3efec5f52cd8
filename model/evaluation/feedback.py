"""Reviewer labels turned into numbers a threshold can be set by (pure numpy).

A reviewed part is a defect when labelled `defect` (a confirmed DEFECT verdict) or `missed` (a
NORMAL verdict that was a defect), good when labelled `good`; `unsure` is left out. The labelled
set is what people chose to review: mostly DEFECT verdicts, so field precision is well measured
and field recall only counts the misses someone found. The counts are always reported with it.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def threshold_table(r: Reviewed) -> list[dict[str, float]]:
    """The precision/recall table over every threshold that changes a reviewed decision: just below
    each reviewed score (so that part counts as DEFECT), highest first."""
    cuts = sorted({float(np.nextafter(s, -np.inf)) for s in r.scores}, reverse=True)
    return [at_threshold(r, t) for t in cuts]


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
