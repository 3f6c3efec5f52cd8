"""Tests for anomaflow.model.evaluation.metrics: sklearn cross-checks, hand-computed cases and a
brute-force PRO reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score, roc_curve

from anomaflow.model.evaluation.metrics import (
    f1_at,
    good_image_false_positive_rate,
    image_auroc,
    image_roc,
    iou,
    pixel_aupro,
    pixel_auroc,
    pixel_f1_max_threshold,
    pixel_iou_by_defect,
    pixel_iou_per_image,
    pro_curve,
)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _random_masks(rng: np.random.Generator, n: int, h: int, w: int, max_rects: int = 2) -> np.ndarray:
    """Masks with a few random rectangles per image (some images left empty)."""
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, max_rects + 1)):
            r0, c0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
            r1, c1 = r0 + rng.integers(1, h // 2), c0 + rng.integers(1, w // 2)
            masks[i, r0:r1, c0:c1] = True
    if not masks.any():
        masks[0, 1:3, 1:4] = True
    return masks


def _reference_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float) -> float:
    """Slow, obviously-correct AUPRO: brute force at every unique threshold."""
    regions = []
    for i in range(masks.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            region = np.zeros(masks.shape, dtype=bool)
            region[i] = lab == k
            regions.append(region)
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = (pred & normal).sum() / normal.sum()
        pro = np.mean([(pred & r).sum() / r.sum() for r in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2.0
    return area / max_fpr


# --------------------------------------------------------------------------- #
# image level
# --------------------------------------------------------------------------- #
def test_image_auroc_and_roc_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200)
    scores = rng.normal(size=200) + 0.8 * labels
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thr = image_roc(labels, scores)
    ref_fpr, ref_tpr, ref_thr = roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thr, ref_thr)


def test_image_auroc_hand_case_and_bool_labels() -> None:
    # pairs (pos, neg): (0.9>0.1) (0.9>0.5) (0.4>0.1) (0.4<0.5) -> 3/4
    labels = np.array([True, True, False, False])
    assert image_auroc(labels, np.array([0.9, 0.4, 0.1, 0.5])) == pytest.approx(0.75)


@pytest.mark.parametrize("labels", [np.zeros(5, dtype=int), np.ones(5, dtype=int)])
def test_image_auroc_raises_on_one_class(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="both"):
        image_auroc(labels, np.linspace(0, 1, 5))


def test_image_inputs_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same length"):
        image_auroc(np.array([0, 1, 1]), np.array([0.1, 0.2]))


def test_f1_at_hand_case_and_inclusive_threshold() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.2, 0.8, 0.1, 0.7])
    # pred [1,0,1,0,1]: tp=2 fp=1 fn=1 -> 4/6
    assert f1_at(labels, scores, 0.5) == pytest.approx(2 / 3)
    assert f1_at(labels, scores, 0.7) == pytest.approx(2 / 3)  # >= is inclusive
    # pred [1,0,1,0,0]: tp=1 fp=1 fn=2 -> 2/5
    assert f1_at(labels, scores, 0.71) == pytest.approx(0.4)
    assert f1_at(labels, scores, 2.0) == 0.0
    assert f1_at(np.zeros(3, dtype=int), np.zeros(3), 1.0) == 1.0


# --------------------------------------------------------------------------- #
# pixel AUROC
# --------------------------------------------------------------------------- #
def test_pixel_auroc_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    masks = _random_masks(rng, 5, 16, 16)
    maps = rng.random(masks.shape) + 0.3 * masks
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_raises_without_positive_pixels() -> None:
    with pytest.raises(ValueError, match="positive"):
        pixel_auroc(np.zeros((2, 4, 4), dtype=bool), np.random.default_rng(2).random((2, 4, 4)))


def test_pixel_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        pixel_auroc(np.ones((2, 4, 4), dtype=bool), np.zeros((2, 4, 5)))


# --------------------------------------------------------------------------- #
# PRO / AUPRO
# --------------------------------------------------------------------------- #
def test_aupro_perfect_map_is_one() -> None:
    masks = _random_masks(np.random.default_rng(3), 4, 20, 20)
    assert pixel_aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-12)


def test_aupro_inverted_map_is_zero() -> None:
    masks = _random_masks(np.random.default_rng(4), 4, 20, 20)
    assert pixel_aupro(masks, 1.0 - masks.astype(float)) == pytest.approx(0.0, abs=1e-12)


def _two_region_case() -> tuple[np.ndarray, np.ndarray]:
    """10x10 image: 2x2 region fully at 1.0, 4x4 region half at 1.0 and half at 0.5,
    2 normal pixels at 1.0 and 6 normal pixels at 0.75 (80 normal pixels)."""
    mask = np.zeros((10, 10), dtype=bool)
    mask[0:2, 0:2] = True  # small region, 4 px
    mask[5:9, 5:9] = True  # large region, 16 px
    amap = np.zeros((10, 10))
    amap[0:2, 0:2] = 1.0
    amap[5:7, 5:9] = 1.0  # top half of large region
    amap[7:9, 5:9] = 0.5  # bottom half
    amap[0, 9] = amap[9, 0] = 1.0  # 2 false positives at 1.0
    amap[3, 3:9] = 0.75  # 6 false positives at 0.75
    return mask[None], amap[None]


def test_pro_curve_two_regions_is_mean_of_region_overlaps() -> None:
    masks, maps = _two_region_case()
    fprs, pros = pro_curve(masks, maps)
    # t=1.0: PRO = mean(4/4, 8/16) = 0.75 (pixel-pooled would be 12/20 = 0.6), FPR 2/80
    # t=0.75: PRO unchanged, FPR 8/80; t=0.5: PRO 1, FPR 8/80; t=0: everything.
    np.testing.assert_allclose(fprs, [0.0, 2 / 80, 8 / 80, 8 / 80, 1.0], atol=1e-12)
    np.testing.assert_allclose(pros, [0.0, 0.75, 0.75, 1.0, 1.0], atol=1e-12)


def test_pixel_aupro_two_regions_hand_computed() -> None:
    masks, maps = _two_region_case()
    # area on [0, 0.3]: triangle to (0.025, 0.75), flat 0.75 to 0.1, then 1.0 to 0.3
    area = 0.5 * 0.025 * 0.75 + 0.075 * 0.75 + 0.2 * 1.0
    assert pixel_aupro(masks, maps, max_fpr=0.3) == pytest.approx(area / 0.3, abs=1e-12)
    # interpolation at max_fpr inside the first segment: y = 30 * x
    assert pixel_aupro(masks, maps, max_fpr=0.01) == pytest.approx(0.5 * 0.01 * 0.3 / 0.01, abs=1e-12)


def test_pro_uses_eight_connectivity() -> None:
    # (0,0) and (1,1) touch diagonally and (1,2) touches (1,1): one region of 3 px.
    mask = np.zeros((1, 4, 4), dtype=bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 1, 2] = True
    amap = np.zeros((1, 4, 4))
    amap[0, 0, 0] = 1.0
    fprs, pros = pro_curve(mask, amap)
    assert pros[1] == pytest.approx(1 / 3)  # 4-connectivity would give mean(1, 0) = 0.5
    assert fprs[1] == 0.0


def test_pro_regions_are_labelled_per_image() -> None:
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[0, 0, 0] = True  # 1 px region, covered
    masks[1, 0, :] = True  # 3 px region at the same place in the next image, missed
    maps = np.zeros((2, 3, 3))
    maps[0, 0, 0] = 1.0
    _, pros = pro_curve(masks, maps)
    assert pros[1] == pytest.approx(0.5)  # a 3-D labelling would merge them: 1/4


def test_pro_ties_switch_together() -> None:
    mask = np.array([[[1, 1, 0, 0]]], dtype=bool)
    amap = np.array([[[1.0, 0.5, 0.5, 0.0]]])
    fprs, pros = pro_curve(mask, amap)
    # no intermediate point where only one of the two 0.5 pixels is on
    np.testing.assert_allclose(fprs, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(pros, [0.0, 0.5, 1.0, 1.0])
    # fully constant map: the curve is the diagonal, area on [0, 0.3] is 0.045
    masks = _random_masks(np.random.default_rng(5), 3, 8, 8)
    fprs, pros = pro_curve(masks, np.full(masks.shape, 0.2))
    np.testing.assert_allclose(fprs, [0.0, 1.0])
    np.testing.assert_allclose(pros, [0.0, 1.0])
    assert pixel_aupro(masks, np.full(masks.shape, 0.2)) == pytest.approx(0.15)


def test_pro_curve_is_monotone_and_covers_full_range() -> None:
    rng = np.random.default_rng(6)
    masks = _random_masks(rng, 4, 16, 16)
    maps = rng.random(masks.shape) + 0.5 * masks
    fprs, pros = pro_curve(masks, maps)
    assert fprs[0] == 0.0 and pros[0] == 0.0
    assert fprs[-1] == pytest.approx(1.0) and pros[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fprs) >= 0) and np.all(np.diff(pros) >= 0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_pixel_aupro_matches_brute_force_reference(seed: int, max_fpr: float) -> None:
    rng = np.random.default_rng(100 + seed)
    masks = _random_masks(rng, 3, 12, 12)
    # rounding creates many ties, including between normal and defective pixels
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 1 if seed % 2 else 3)
    expected = _reference_aupro(masks, maps, max_fpr)
    assert pixel_aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-6)


def test_pro_curve_num_thresholds_points_lie_on_exact_curve() -> None:
    rng = np.random.default_rng(7)
    masks = _random_masks(rng, 3, 16, 16)
    maps = rng.random(masks.shape) + 0.5 * masks
    full_f, full_p = pro_curve(masks, maps)
    sub_f, sub_p = pro_curve(masks, maps, num_thresholds=20)
    assert 2 < sub_f.size <= 21
    assert sub_f[-1] == pytest.approx(1.0) and sub_p[-1] == pytest.approx(1.0)
    full_points = set(zip(np.round(full_f, 12), np.round(full_p, 12)))
    for point in zip(np.round(sub_f, 12), np.round(sub_p, 12)):
        assert point in full_points


def test_pixel_aupro_raises_without_regions() -> None:
    with pytest.raises(ValueError, match="region"):
        pixel_aupro(np.zeros((2, 5, 5), dtype=bool), np.zeros((2, 5, 5)))


# --------------------------------------------------------------------------- #
# thresholded pixel metrics
# --------------------------------------------------------------------------- #
def test_iou_hand_cases() -> None:
    assert iou(np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool)) == pytest.approx(1 / 3)
    assert iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0
    assert iou(np.ones((3, 3), bool), np.zeros((3, 3), bool)) == 0.0
    assert iou(np.ones((3, 3), bool), np.ones((3, 3), bool)) == 1.0


def test_pixel_iou_per_image_matches_iou() -> None:
    rng = np.random.default_rng(8)
    masks = _random_masks(rng, 5, 10, 10)
    maps = rng.random(masks.shape) + 0.5 * masks
    per_image = pixel_iou_per_image(masks, maps, 0.8)
    assert per_image.shape == (5,)
    for i in range(5):
        assert per_image[i] == pytest.approx(iou(maps[i] >= 0.8, masks[i]))


def test_pixel_iou_per_image_empty_mask_and_prediction_is_one() -> None:
    masks = np.zeros((2, 3, 3), dtype=bool)
    maps = np.zeros((2, 3, 3))
    maps[1, 0, 0] = 1.0  # image 1: empty mask but one false positive
    np.testing.assert_array_equal(pixel_iou_per_image(masks, maps, 0.5), [1.0, 0.0])


def _defect_case() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Good image full of false positives plus crack IoUs 1.0, 0.5 and hole IoU 0.25."""
    masks = np.zeros((4, 4, 4), dtype=bool)
    maps = np.zeros((4, 4, 4))
    maps[0] = 1.0  # good image, every pixel a false positive
    masks[1, 0, :2] = True
    maps[1, 0, :2] = 1.0  # IoU 1
    masks[2, 0, :2] = True
    maps[2, 0, :1] = 1.0  # IoU 1/2
    masks[3, 0, :1] = True
    maps[3, 0, :4] = 1.0  # IoU 1/4
    return masks, maps, ["good", "crack", "crack", "hole"]


def test_pixel_iou_by_defect_ignores_good_and_averages_per_type() -> None:
    masks, maps, defects = _defect_case()
    result = pixel_iou_by_defect(masks, maps, defects, threshold=0.5)
    assert set(result) == {"crack", "hole", "overall"}
    assert result["crack"] == pytest.approx(0.75)
    assert result["hole"] == pytest.approx(0.25)
    # mean over defective images, not mean of the per-type means (0.5)
    assert result["overall"] == pytest.approx((1.0 + 0.5 + 0.25) / 3)


def test_pixel_iou_by_defect_length_mismatch_raises() -> None:
    masks, maps, defects = _defect_case()
    with pytest.raises(ValueError, match="entries"):
        pixel_iou_by_defect(masks, maps, defects[:-1], threshold=0.5)


def test_good_image_false_positive_rate() -> None:
    masks, maps, _ = _defect_case()
    maps[0, 1:, :] = 0.0  # good image: 4 of 16 pixels stay at 1.0
    assert good_image_false_positive_rate(masks, maps, 0.5) == pytest.approx(4 / 16)
    assert good_image_false_positive_rate(masks[1:], maps[1:], 0.5) == 0.0


def test_pixel_f1_max_threshold_separating_map_gives_perfect_iou() -> None:
    rng = np.random.default_rng(9)
    masks = _random_masks(rng, 4, 12, 12)
    # defective pixels in [0.6, 1], normal in [0, 0.4]: a perfect threshold exists
    maps = np.where(masks, 0.6 + 0.4 * rng.random(masks.shape), 0.4 * rng.random(masks.shape))
    t = pixel_f1_max_threshold(masks, maps)
    assert 0.4 < t <= 1.0
    assert iou(maps >= t, masks) == 1.0
    assert np.all(pixel_iou_per_image(masks, maps, t) == 1.0)


def test_pixel_f1_max_threshold_is_the_f1_maximiser() -> None:
    rng = np.random.default_rng(10)
    masks = _random_masks(rng, 2, 8, 8)
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2)
    t = pixel_f1_max_threshold(masks, maps)
    best = max(f1_at(masks.ravel(), maps.ravel(), u) for u in np.unique(maps))
    assert f1_at(masks.ravel(), maps.ravel(), t) == pytest.approx(best, abs=1e-12)


def test_pixel_iou_oracle_is_an_upper_bound_of_calibrated_iou():
    from anomaflow.model.evaluation.metrics import pixel_iou_by_defect, pixel_iou_oracle

    rng = np.random.default_rng(7)
    masks = np.zeros((4, 16, 16), bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 8:14, 3:9] = True
    masks[2, 1:3, 10:15] = True
    maps = rng.random((4, 16, 16)) * 0.6 + masks * 0.5
    defects = ["a", "a", "b", "good"]
    for thr in (0.3, 0.55, 0.7, 0.95):
        calibrated = pixel_iou_by_defect(masks, maps, defects, thr)["overall"]
        oracle, othr = pixel_iou_oracle(masks, maps, [thr])
        assert oracle >= calibrated - 1e-12
    oracle, othr = pixel_iou_oracle(masks, maps)
    assert oracle == pytest.approx(pixel_iou_by_defect(masks, maps, defects, othr)["overall"])
    assert oracle > 0.8  # a separable-ish map has a threshold with high overlap


def test_recall_at_fpr_reads_the_roc_curve():
    from anomaflow.model.evaluation.metrics import recall_at_fpr

    labels = np.array([0] * 20 + [1] * 10)
    scores = np.r_[np.arange(20) / 20, [0.97, 0.96, 0.5, 0.4, 0.3, 0.99, 0.98, 0.2, 0.1, 0.0]]
    # Good scores 0.00..0.95; one good above 0.9 is 5 % FPR: threshold 0.95 keeps 0.96..0.99 (4 of 10).
    assert recall_at_fpr(labels, scores, 0.0) == pytest.approx(0.4)
    assert recall_at_fpr(labels, scores, 0.05) == pytest.approx(0.4)
    assert recall_at_fpr(labels, scores, 0.10) == pytest.approx(0.4)  # 0.90 next: still no defect between
    assert recall_at_fpr(labels, scores, 0.55) == pytest.approx(0.5)  # 11 goods above 0.45: 0.5 joins
    with pytest.raises(ValueError, match="both"):
        recall_at_fpr(np.zeros(4), np.arange(4.0), 0.05)
