"""Evaluation metrics for image- and pixel-level anomaly detection.

Conventions (all arrays are numpy):

* ``labels``: 1-D int/bool array, 1 = defective image.
* ``scores``: 1-D float array, higher = more anomalous.
* ``masks``:  bool array ``(N, H, W)``, ground-truth defect pixels.
* ``maps``:   float array ``(N, H, W)``, anomaly maps, higher = more anomalous.

Pure numpy/scipy/sklearn on purpose: these functions run inside training
flows, benchmarks and tests alike, so they must not pull in orchestration or
tracking dependencies.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

__all__ = [
    "image_roc",
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "pixel_aupro",
    "f1_at",
    "recall_at_fpr",
    "iou",
    "pixel_iou_per_image",
    "pixel_iou_by_defect",
    "pixel_f1_max_threshold",
    "good_image_false_positive_rate",
]

# 8-connectivity: diagonal neighbours belong to the same defect region, as in
# the MVTec AD evaluation code.
_EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------- #
# input validation
# --------------------------------------------------------------------------- #
def _check_image_inputs(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(labels, scores)`` as 1-D bool/float arrays of equal length.

    Validating once here gives callers a clear error instead of an opaque
    sklearn broadcasting message.
    """
    labels_arr = np.asarray(labels)
    scores_arr = np.asarray(scores, dtype=np.float64)
    if labels_arr.ndim != 1 or scores_arr.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {labels_arr.shape} and {scores_arr.shape}")
    if labels_arr.shape != scores_arr.shape:
        raise ValueError(f"labels and scores must have the same length, got {labels_arr.size} and {scores_arr.size}")
    if np.isnan(scores_arr).any():
        raise ValueError("scores contain NaN")
    return labels_arr.astype(bool), scores_arr


def _check_pixel_inputs(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(masks, maps)`` as ``(N, H, W)`` bool/float64 arrays of equal shape.

    A single ``(H, W)`` image is promoted to a batch of one so that every
    per-image computation can assume a leading image axis.
    """
    masks_arr = np.asarray(masks)
    maps_arr = np.asarray(maps, dtype=np.float64)
    if masks_arr.ndim == 2:
        masks_arr = masks_arr[None]
    if maps_arr.ndim == 2:
        maps_arr = maps_arr[None]
    if masks_arr.ndim != 3 or maps_arr.ndim != 3:
        raise ValueError(f"masks and maps must be (N, H, W), got shapes {masks_arr.shape} and {maps_arr.shape}")
    if masks_arr.shape != maps_arr.shape:
        raise ValueError(f"masks and maps must have the same shape, got {masks_arr.shape} and {maps_arr.shape}")
    if np.isnan(maps_arr).any():
        raise ValueError("maps contain NaN")
    # astype(bool) (not == 1) so that 0/255 uint8 masks are also accepted.
    return masks_arr.astype(bool), maps_arr


def _valid_pixels(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``valid`` (N, H, W) marks each image's own pixels when images are padded to a common
    frame (see model.data.frame); pixel metrics leave the padding out entirely. None: all pixels."""
    if valid is None:
        return None
    v = np.asarray(valid, dtype=bool)
    if v.ndim == 2:
        v = v[None]
    if v.shape != shape:
        raise ValueError(f"valid must have the shape of the maps, got {v.shape} and {shape}")
    return v


# --------------------------------------------------------------------------- #
# image level
# --------------------------------------------------------------------------- #
def image_roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image-level ROC curve ``(fpr, tpr, thresholds)``.

    Thin wrapper over :func:`sklearn.metrics.roc_curve` so that callers use one
    input convention (defective = positive) everywhere.
    """
    labels_b, scores_f = _check_image_inputs(labels, scores)
    fpr, tpr, thresholds = roc_curve(labels_b.astype(np.int64), scores_f)
    return fpr, tpr, thresholds


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Image-level AUROC (the headline MVTec AD detection metric).

    Raises ``ValueError`` when only one class is present, because the AUROC is
    undefined then and silently returning NaN would poison aggregated reports.
    """
    labels_b, scores_f = _check_image_inputs(labels, scores)
    n_pos = int(labels_b.sum())
    if n_pos == 0 or n_pos == labels_b.size:
        raise ValueError(
            f"image_auroc needs both good (0) and defective (1) images; got {n_pos} defective out of {labels_b.size}"
        )
    return float(roc_auc_score(labels_b.astype(np.int64), scores_f))


def recall_at_fpr(labels: np.ndarray, scores: np.ndarray, max_fpr: float) -> float:
    """Largest recall whose false-positive rate on the good images stays <= max_fpr.

    A label-using reference (the threshold is read off the test labels): it says what the score
    could do at that operating point, not what a calibrated threshold does.
    """
    labels_b, scores_f = _check_image_inputs(labels, scores)
    if labels_b.all() or not labels_b.any():
        raise ValueError("recall_at_fpr needs both good (0) and defective (1) images")
    fpr, tpr, _ = roc_curve(labels_b.astype(np.int64), scores_f)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def f1_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """F1 of the predictions ``scores >= threshold`` against ``labels``.

    F1 is what an operator experiences at a fixed operating point, unlike the
    threshold-free AUROC. When there are neither true nor predicted positives
    the result is 1.0 (perfect agreement, consistent with :func:`iou`).
    """
    labels_b, scores_f = _check_image_inputs(labels, scores)
    pred = scores_f >= threshold
    tp = int(np.count_nonzero(pred & labels_b))
    fp = int(np.count_nonzero(pred & ~labels_b))
    fn = int(np.count_nonzero(~pred & labels_b))
    denom = 2 * tp + fp + fn
    if denom == 0:
        return 1.0
    return 2.0 * tp / denom


# --------------------------------------------------------------------------- #
# pixel level: threshold-free
# --------------------------------------------------------------------------- #
def pixel_auroc(masks: np.ndarray, maps: np.ndarray, valid: np.ndarray | None = None) -> float:
    """AUROC over all pixels of all images pooled together (the `valid` ones only, if given).

    Pooling (rather than averaging per image) matches the MVTec AD protocol and
    keeps good images (no positive pixel) in the evaluation.
    """
    masks_b, maps_f = _check_pixel_inputs(masks, maps)
    v = _valid_pixels(valid, masks_b.shape)
    if v is not None:
        masks_b, maps_f = masks_b[v], maps_f[v]
    n_pos = int(np.count_nonzero(masks_b))
    if n_pos == 0:
        raise ValueError("pixel_auroc needs at least one positive (defective) mask pixel")
    if n_pos == masks_b.size:
        raise ValueError("pixel_auroc needs at least one negative (normal) mask pixel")
    return float(roc_auc_score(masks_b.ravel(), maps_f.ravel()))


def _label_regions(masks_b: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 8-connected ground-truth regions per image with globally unique ids.

    Returns ``(region_ids, n_regions)`` where ``region_ids`` has the shape of
    ``masks_b``, 0 marks normal pixels and ``1..n_regions`` the regions.
    Labelling per image keeps regions from different images apart even when
    they would touch across the batch axis.
    """
    region_ids = np.zeros(masks_b.shape, dtype=np.int64)
    offset = 0
    for i in range(masks_b.shape[0]):
        lab, n = ndimage.label(masks_b[i], structure=_EIGHT_CONNECTIVITY)
        if n:
            region_ids[i] = np.where(lab > 0, lab + offset, 0)
            offset += n
    return region_ids, offset


def pro_curve(
    masks: np.ndarray,
    maps: np.ndarray,
    max_fpr: float = 0.3,
    num_thresholds: int | None = None,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-region-overlap (PRO) curve ``(fprs, pros)`` of the MVTec AD protocol.

    PRO weights every connected defect region equally, so a detector cannot
    score well by only finding the few largest defects (which dominate pooled
    pixel metrics). At threshold ``t`` a pixel is anomalous if ``map >= t``;
    ``PRO(t)`` is the mean over all regions (8-connected, per image) of the
    covered fraction and ``FPR(t)`` the fraction of normal pixels flagged.

    Exact and fast: pixels are sorted once by descending score; since pixel
    ``p`` in region ``r`` adds ``1 / (R * |r|)`` to PRO when it switches on,
    PRO and FPR at every threshold are prefix sums read at the end of each
    group of tied scores (tied pixels switch together).

    The full curve (down to FPR 1) is returned, sorted by increasing FPR and
    starting at ``(0, 0)``; ``max_fpr`` is only validated here and used by
    :func:`pixel_aupro`. With ``num_thresholds`` the curve is evaluated only at
    that many score quantiles (each point still exact), for plotting.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
    masks_b, maps_f = _check_pixel_inputs(masks, maps)
    v = _valid_pixels(valid, masks_b.shape)
    if v is not None:
        masks_b = masks_b & v

    region_ids, n_regions = _label_regions(masks_b)
    if n_regions == 0:
        raise ValueError("pro_curve needs at least one ground-truth defect region (masks are all empty)")
    region_ids = region_ids.ravel()
    scores = maps_f.ravel()
    if v is not None:  # padding is neither a normal pixel nor part of a region
        region_ids, scores = region_ids[v.ravel()], scores[v.ravel()]
    region_sizes = np.bincount(region_ids, minlength=n_regions + 1)
    n_normal = int(region_sizes[0])
    if n_normal == 0:
        raise ValueError("pro_curve needs at least one normal pixel (FPR is undefined otherwise)")

    # Contribution of each pixel to FPR / PRO once it is predicted anomalous.
    weight_per_region = np.empty(n_regions + 1, dtype=np.float64)
    weight_per_region[0] = 0.0
    weight_per_region[1:] = 1.0 / (n_regions * region_sizes[1:])
    pro_weight = weight_per_region[region_ids]
    is_normal = region_ids == 0

    order = np.argsort(-scores)
    sorted_scores = scores[order]
    cum_fp = np.cumsum(is_normal[order], dtype=np.int64)
    cum_pro = np.cumsum(pro_weight[order])

    if num_thresholds is None:
        # Last index of every run of equal scores: all tied pixels switch at once.
        ends = np.flatnonzero(np.diff(sorted_scores) != 0)
        ends = np.append(ends, sorted_scores.size - 1)
    else:
        thresholds = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, num_thresholds)))
        # Number of pixels with score >= t, read from the descending order.
        counts = np.searchsorted(-sorted_scores, -thresholds, side="right")
        ends = np.unique(counts[counts > 0] - 1)

    fprs = cum_fp[ends] / n_normal
    pros = cum_pro[ends]
    # The float cumsum can drift by ~1e-16; clip so a perfect curve ends at 1.
    np.clip(pros, 0.0, 1.0, out=pros)
    fprs = np.concatenate(([0.0], fprs))
    pros = np.concatenate(([0.0], pros))
    return fprs, pros


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid rule (own helper: np.trapz is gone in numpy 2, np.trapezoid absent in 1.x)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Area under the piecewise-linear curve ``(x, y)`` on ``[x[0], x_max]``.

    ``x`` must be non-decreasing; the curve is linearly interpolated at exactly
    ``x_max`` so the result does not depend on where thresholds happen to fall.
    Vertical steps (equal consecutive ``x``) contribute no area.
    """
    beyond = np.flatnonzero(x > x_max)
    if beyond.size == 0:
        return _trapezoid(x, y)
    i = int(beyond[0])  # first point past x_max; i >= 1 because x[0] <= x_max
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    xs = np.append(x[:i], x_max)
    ys = np.append(y[:i], y_max)
    return _trapezoid(xs, ys)


def pixel_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3, valid: np.ndarray | None = None) -> float:
    """Normalised area under the PRO curve for FPR in ``[0, max_fpr]``.

    Restricting to low FPR (0.3 by MVTec convention) focuses on operating
    points that are usable in practice; dividing by ``max_fpr`` makes a perfect
    detector score 1.0. Raises ``ValueError`` if there is no defect region.
    """
    fprs, pros = pro_curve(masks, maps, max_fpr=max_fpr, valid=valid)
    return _area_up_to(fprs, pros, max_fpr) / max_fpr


# --------------------------------------------------------------------------- #
# pixel level: at a threshold
# --------------------------------------------------------------------------- #
def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two bool arrays.

    Returns 1.0 if both are empty: predicting nothing where there is nothing is
    perfect agreement, not a division by zero.
    """
    pred_b = np.asarray(pred).astype(bool)
    gt_b = np.asarray(gt).astype(bool)
    if pred_b.shape != gt_b.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred_b.shape} and {gt_b.shape}")
    union = int(np.count_nonzero(pred_b | gt_b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(pred_b & gt_b)) / union


def pixel_iou_per_image(
    masks: np.ndarray, maps: np.ndarray, threshold: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """Per-image IoU of ``maps >= threshold`` against ``masks`` (shape ``(N,)``).

    Per image rather than pooled so that small defects count as much as large
    ones; images with empty prediction and empty mask get 1.0 (see :func:`iou`).
    """
    masks_b, maps_f = _check_pixel_inputs(masks, maps)
    pred = maps_f >= threshold
    v = _valid_pixels(valid, masks_b.shape)
    if v is not None:
        pred, masks_b = pred & v, masks_b & v
    inter = np.count_nonzero(pred & masks_b, axis=(1, 2))
    union = np.count_nonzero(pred | masks_b, axis=(1, 2))
    out = np.ones(masks_b.shape[0], dtype=np.float64)
    nonempty = union > 0
    out[nonempty] = inter[nonempty] / union[nonempty]
    return out


def pixel_iou_by_defect(
    masks: np.ndarray,
    maps: np.ndarray,
    defects: list[str],
    threshold: float,
    valid: np.ndarray | None = None,
) -> dict[str, float]:
    """Mean per-image IoU per defect type, plus ``"overall"``.

    Only images with at least one positive mask pixel count: for good images
    IoU only measures false positives, which
    :func:`good_image_false_positive_rate` reports separately. Returns
    ``{defect: mean IoU, ..., "overall": mean IoU over all defective images}``
    with defect types in sorted order.
    """
    masks_b, maps_f = _check_pixel_inputs(masks, maps)
    if len(defects) != masks_b.shape[0]:
        raise ValueError(f"defects has {len(defects)} entries but there are {masks_b.shape[0]} images")
    if "overall" in defects:
        raise ValueError('"overall" is reserved and cannot be used as a defect type name')
    defective = masks_b.any(axis=(1, 2))
    if not defective.any():
        raise ValueError("pixel_iou_by_defect needs at least one image with a non-empty mask")
    ious = pixel_iou_per_image(masks_b, maps_f, threshold, valid)
    names = np.asarray(defects, dtype=object)

    result: dict[str, float] = {}
    for name in sorted(set(names[defective].tolist())):
        sel = defective & (names == name)
        result[name] = float(ious[sel].mean())
    result["overall"] = float(ious[defective].mean())
    return result


def pixel_f1_max_threshold(masks: np.ndarray, maps: np.ndarray) -> float:
    """Threshold maximising pixel-level F1 over all pixels pooled.

    ORACLE: this looks at the test ground truth, so it is only an upper bound
    on what a threshold chosen without labels (e.g. from good validation
    images) can achieve. Never use it to report a deployable operating point.
    """
    masks_b, maps_f = _check_pixel_inputs(masks, maps)
    if not masks_b.any():
        raise ValueError("pixel_f1_max_threshold needs at least one positive mask pixel")
    precision, recall, thresholds = precision_recall_curve(masks_b.ravel(), maps_f.ravel())
    # The last (precision=1, recall=0) point has no threshold.
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2.0 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(thresholds[int(np.argmax(f1))])


def pixel_iou_oracle(
    masks: np.ndarray,
    maps: np.ndarray,
    extra_thresholds: Sequence[float] = (),
    num_candidates: int = 64,
    valid: np.ndarray | None = None,
) -> tuple[float, float]:
    """Best mean per-image IoU over defective images on a threshold grid: (iou, threshold).

    ORACLE: the threshold is chosen on the test ground truth, so this is an upper bound
    for the calibrated ``pixel_iou``. Candidates are quantiles of the map values inside
    the defect regions plus ``extra_thresholds`` (pass the calibrated threshold so the
    bound is never below the calibrated value on the same metric).
    """
    masks_b, maps_f = _check_pixel_inputs(masks, maps)
    defective = masks_b.any(axis=(1, 2))
    if not defective.any():
        raise ValueError("pixel_iou_oracle needs at least one image with a non-empty mask")
    m, s = masks_b[defective], maps_f[defective]
    v = _valid_pixels(valid, masks_b.shape)
    v = None if v is None else v[defective]
    inside = s[m if v is None else m & v]
    grid = np.quantile(inside, np.linspace(0.0, 1.0, num_candidates))
    candidates = np.unique(np.concatenate([grid, np.asarray(extra_thresholds, dtype=np.float64)]))
    best_iou, best_thr = -1.0, float(candidates[0])
    for thr in candidates:
        value = float(pixel_iou_per_image(m, s, float(thr), v).mean())
        if value > best_iou:
            best_iou, best_thr = value, float(thr)
    return best_iou, best_thr


def good_image_false_positive_rate(
    masks: np.ndarray, maps: np.ndarray, threshold: float, valid: np.ndarray | None = None
) -> float:
    """Fraction of pixels of good (empty-mask) images with ``map >= threshold``.

    Companion to :func:`pixel_iou_by_defect`, which ignores good images: a low
    threshold can look great on IoU while flagging clean parts everywhere.
    Returns 0.0 if there are no good images.
    """
    masks_b, maps_f = _check_pixel_inputs(masks, maps)
    good = ~masks_b.any(axis=(1, 2))
    if not good.any():
        return 0.0
    v = _valid_pixels(valid, masks_b.shape)
    own = np.ones_like(masks_b[good]) if v is None else v[good]
    return float(np.count_nonzero((maps_f[good] >= threshold) & own) / np.count_nonzero(own))
