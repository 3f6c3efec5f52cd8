"""Image- and pixel-level evaluation with the metric names the user sees everywhere.

Thresholds are inputs: they were calibrated on held-out normal images, so nothing here
feeds test labels back into a decision. The one exception, `pixel_iou_oracle`, is an upper
bound computed at the test-optimal pixel threshold and is named as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score

from anomaflow.model.evaluation import metrics
from anomaflow.model.evaluation.calibration import DEFECT, decide


@dataclass
class Evaluation:
    metrics: dict[str, float]
    roc_curves: dict[str, tuple[np.ndarray, np.ndarray, float]]  # score method -> (fpr, tpr, auroc)
    iou_table: list[dict[str, Any]]  # rows: defect, n_images, pixel_iou
    per_image: list[dict[str, Any]] = field(default_factory=list)
    pixel_note: str = ""  # why pixel metrics are absent or cover only some defect types ("" = all covered)


def evaluate(
    *,
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    score_method: str,
    threshold: float,
    masks: np.ndarray | None,
    maps: np.ndarray | None,
    defects: list[str],
    pixel_threshold: float | None,
    paths: list[str] | None = None,
    pixel_truth: np.ndarray | None = None,
    valid: np.ndarray | None = None,
) -> Evaluation:
    """All metrics of one scored test split.

    labels: 1 = defective image; scores: image scores by method; masks/maps (N,H,W);
    defects: defect type per image ("good" for normals); pixel_truth: which images have pixel
    ground truth (default all). Defect images without it (image-level labels only) count for image
    metrics and are left out of pixel metrics, which are absent (not zero) when no mask is left.
    valid (N,H,W): each image's own pixels when images were padded into the frame (model.data.frame);
    pixel metrics leave the padding out.
    """
    labels = np.asarray(labels).astype(int)
    out: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    both_classes = labels.min() != labels.max()
    for method, s in scores.items():
        if both_classes:
            fpr, tpr, _ = metrics.image_roc(labels, s)
            auc = metrics.image_auroc(labels, s)
            out[f"image_auroc_{method}"] = auc
            curves[method] = (fpr, tpr, auc)
    if both_classes:
        out["image_auroc"] = out[f"image_auroc_{score_method}"]
        # Label-using references (thresholds read off the test labels), named as such; the
        # calibrated threshold's own recall and FPR are "recall" and "false_positive_rate".
        for pct in (1, 5):
            out[f"recall_at_test_fpr_{pct}pct"] = metrics.recall_at_fpr(labels, scores[score_method], pct / 100)
        # Per defect type: good images against that type only, so a type the model misses shows
        # even when the others carry the overall AUROC.
        names = np.asarray(defects, dtype=object)
        for d in sorted({str(x) for x, y in zip(defects, labels) if y == 1}):
            sel = (labels == 0) | (names == d)
            out[f"image_auroc_type_{d}"] = metrics.image_auroc(labels[sel], np.asarray(scores[score_method])[sel])

    chosen = np.asarray(scores[score_method])
    decisions = decide(chosen, threshold)
    pred = (decisions == DEFECT).astype(int)
    out["threshold"] = float(threshold)
    out["f1"] = float(f1_score(labels, pred, zero_division=0))
    out["precision"] = float(precision_score(labels, pred, zero_division=0))
    out["recall"] = float(recall_score(labels, pred, zero_division=0))
    out["accuracy"] = float((pred == labels).mean())
    out["false_positive_rate"] = float(pred[labels == 0].mean()) if (labels == 0).any() else float("nan")

    iou_rows: list[dict[str, Any]] = []
    truth = np.ones(len(labels), bool) if pixel_truth is None else np.asarray(pixel_truth, bool)
    unmasked = sorted({d for d, t, y in zip(defects, truth, labels) if y == 1 and not t})
    note = ""
    if masks is not None and maps is not None:
        masks, maps = np.asarray(masks, dtype=bool)[truth], np.asarray(maps)[truth]
        valid = None if valid is None else np.asarray(valid, bool)[truth]
        pix_defects = [d for d, t in zip(defects, truth) if t]
    if masks is None or maps is None or not masks.any():
        note = "absent: " + (
            f"defect types {', '.join(unmasked)} have image-level labels only (no ground_truth masks)"
            if unmasked
            else "no defect masks in the test split"
        )
    elif unmasked:
        note = (
            f"on defect types with masks only; {', '.join(unmasked)} have image-level labels only "
            "(no ground_truth masks)"
        )
    if masks is not None and maps is not None and masks.any():
        out["pixel_auroc"] = metrics.pixel_auroc(masks, maps, valid)
        out["pixel_aupro"] = metrics.pixel_aupro(masks, maps, 0.3, valid)
        if pixel_threshold is not None:
            by_defect = metrics.pixel_iou_by_defect(masks, maps, pix_defects, pixel_threshold, valid)
            out["pixel_threshold"] = float(pixel_threshold)
            out["pixel_iou"] = by_defect["overall"]
            out["good_pixel_fpr"] = metrics.good_image_false_positive_rate(masks, maps, pixel_threshold, valid)
            counts = {
                d: int(sum(1 for i, dd in enumerate(pix_defects) if dd == d and masks[i].any()))
                for d in by_defect
                if d != "overall"
            }
            for d in sorted(k for k in by_defect if k != "overall"):
                out[f"pixel_iou_{d}"] = by_defect[d]
                iou_rows.append({"defect": d, "n_images": counts[d], "pixel_iou": by_defect[d]})
            iou_rows.append({"defect": "overall", "n_images": sum(counts.values()), "pixel_iou": by_defect["overall"]})
        # Upper bound at the test-optimal threshold: reported as an oracle, never used to decide.
        extra = [pixel_threshold] if pixel_threshold is not None else []
        out["pixel_iou_oracle"], out["pixel_threshold_oracle"] = metrics.pixel_iou_oracle(
            masks, maps, extra, valid=valid
        )

    per_image = []
    for i in range(len(labels)):
        row: dict[str, Any] = {"path": paths[i] if paths else str(i), "defect": defects[i], "label": int(labels[i])}
        for method, s in scores.items():
            row[f"score_{method}"] = float(s[i])
        row["decision"] = str(decisions[i])
        per_image.append(row)
    return Evaluation(metrics=out, roc_curves=curves, iou_table=iou_rows, per_image=per_image, pixel_note=note)
