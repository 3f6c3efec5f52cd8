import numpy as np
import pytest

from anomaflow.model.evaluation import calibration as cal


def test_percentile_threshold_matches_numpy():
    s = np.arange(1, 101, dtype=float)
    assert cal.percentile_threshold(s, 75) == pytest.approx(np.percentile(s, 75))
    assert cal.percentile_threshold(s, 99) == pytest.approx(99.01)
    with pytest.raises(ValueError, match="percentile"):
        cal.percentile_threshold(s, 0)
    with pytest.raises(ValueError, match="no normal scores"):
        cal.percentile_threshold(np.array([]), 95)
    with pytest.raises(ValueError, match="NaN"):
        cal.percentile_threshold(np.array([1.0, np.nan]), 95)


def test_fpr_threshold_respects_target():
    rng = np.random.default_rng(0)
    s = rng.normal(size=200)
    for target in (0.0, 0.01, 0.05, 0.2):
        thr = cal.fpr_threshold(s, target)
        fpr = (s > thr).mean()
        assert fpr <= target + 1e-12
        # the threshold is tight: one step lower would exceed the target (unless target is hit exactly)
        lower = np.sort(s)[np.searchsorted(np.sort(s), thr) - 1]
        assert (s > lower).mean() > target or target == 0.0 and thr == s.max()


def test_f1_max_threshold_separable():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 1.0])
    labels = np.array([0, 0, 0, 1, 1, 1])
    thr = cal.f1_max_threshold(scores, labels)
    assert 0.3 <= thr < 0.8
    assert list(cal.decide(scores, thr)) == ["NORMAL"] * 3 + ["DEFECT"] * 3
    with pytest.raises(ValueError, match="both"):
        cal.f1_max_threshold(scores, np.zeros(6))


def test_f1_max_threshold_overlap_is_optimal():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    scores = labels + rng.normal(scale=0.8, size=60)
    thr = cal.f1_max_threshold(scores, labels)

    def f1(t):
        p = scores > t
        tp = (p & (labels == 1)).sum()
        return 2 * tp / max(p.sum() + labels.sum(), 1)

    best = max(f1(t) for t in np.concatenate([scores, [scores.min() - 1]]))
    assert f1(thr) == pytest.approx(best)


def test_calibrate_dispatch_and_decide():
    normal = np.linspace(0, 1, 11)
    assert cal.calibrate("percentile", normal, percentile=50) == pytest.approx(0.5)
    assert cal.calibrate("fpr", normal, target_fpr=0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="labelled"):
        cal.calibrate("f1_max", normal)
    with pytest.raises(ValueError, match="unknown"):
        cal.calibrate("magic", normal)
    d = cal.decide(np.array([0.4, 0.5, 0.6]), 0.5)
    assert list(d) == ["NORMAL", "NORMAL", "DEFECT"]


def test_pixel_threshold_from_normal_maps():
    maps = np.random.default_rng(0).random((10, 100, 100)).astype(np.float32)
    thr = cal.pixel_threshold(maps, 99.0)
    assert 0.009 <= (maps > thr).mean() <= 0.0101


def test_training_config_refuses_f1_max_and_logs_the_method_used():
    from pydantic import ValidationError

    from anomaflow.model.config import TrainConfig

    with pytest.raises(ValidationError, match="f1_max' needs labelled defects"):
        TrainConfig(threshold_method="f1_max")
    cfg = TrainConfig(threshold_method="fpr", target_fpr=0.1)
    assert cfg.params()["threshold_method"] == "fpr"


def test_tail_threshold_stays_put_when_train_good_holds_a_few_odd_images():
    from anomaflow.model.evaluation.calibration import fpr_estimate, percentile_threshold, tail_threshold

    rng = np.random.default_rng(0)
    normals = rng.gumbel(1.0, 0.1, size=40)
    odd = np.r_[normals, [normals.max() * 5] * 2]  # two odd images among the held-out normals
    clean_tail, odd_tail = tail_threshold(normals, 0.01), tail_threshold(odd, 0.01)
    assert abs(odd_tail - clean_tail) / clean_tail < 0.05  # the tail model barely moves ...
    assert percentile_threshold(odd, 99.0) > 3 * percentile_threshold(
        normals, 99.0
    )  # ... the order statistic jumps to the odd ones
    # The fitted tail is near the true Gumbel quantile (1.0 + 0.1 * 4.6 = 1.46 at FPR 1 %).
    assert 1.3 < clean_tail < 1.65
    est = fpr_estimate(normals, clean_tail)
    assert (
        est["heldout_normals"] == 40 and est["heldout_fpr_low"] <= est["heldout_fpr"] <= est["heldout_fpr_high"] <= 0.2
    )
    with pytest.raises(ValueError, match="at least 4"):
        tail_threshold(normals[:3], 0.01)


def test_recall_threshold_keeps_the_target_share_of_defect_scores_above_it():
    from anomaflow.model.evaluation.calibration import recall_threshold

    rng = np.random.default_rng(0)
    defects = rng.normal(5, 1, 200)
    for target in (0.5, 0.9, 0.95, 1.0):
        t = recall_threshold(defects, target)
        assert np.mean(defects > t) >= target
        kth = np.sort(defects)[::-1][int(np.ceil(target * len(defects))) - 1]
        assert t < kth and np.mean(defects > kth) < target  # the largest such threshold
    with pytest.raises(ValueError, match="target_recall"):
        recall_threshold(defects, 0.0)


def test_tail_exceedance_at_the_tail_threshold_is_the_target_fpr():
    from anomaflow.model.evaluation.calibration import tail_exceedance, tail_threshold

    normal = np.random.default_rng(1).gumbel(3.0, 0.5, 40)
    for fpr in (0.001, 0.01, 0.05):
        assert tail_exceedance(normal, tail_threshold(normal, fpr)) == pytest.approx(fpr, rel=1e-9)
