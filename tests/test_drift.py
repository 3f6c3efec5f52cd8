"""Drift of an inspection batch against the model's calibration reference (anomaflow.model.operations.drift)."""

import numpy as np

from anomaflow.model.operations.drift import DriftLimits, compare, reference


def _ref(rng):
    normal = rng.gumbel(1.0, 0.1, 60)
    return reference(
        normal,
        list(rng.normal(120, 5, 200)),
        [(900, 900)] * 200,
        ["RGB"] * 200,
        threshold=float(np.quantile(normal, 0.99)),
    )


def test_a_batch_like_the_calibration_normals_is_not_flagged():
    rng = np.random.default_rng(0)
    ref = _ref(rng)
    r = compare(
        ref, rng.gumbel(1.0, 0.1, 300), list(rng.normal(120, 5, 300)), [(900, 900)] * 300, ["RGB"] * 300, threshold=1.5
    )
    assert not r.flagged and r.reasons == [] and r.ks_statistic < 0.2 and abs(r.brightness_shift) < 0.5
    assert "no drift" in r.summary and r.metrics()["drift_flagged"] == 0.0


def test_each_kind_of_drift_is_flagged_with_its_reason():
    rng = np.random.default_rng(1)
    ref = _ref(rng)
    thr = float(np.quantile(ref["normal_scores"], 0.99))
    shifted = compare(
        ref, rng.gumbel(1.4, 0.1, 300), list(rng.normal(120, 5, 300)), [(900, 900)] * 300, ["RGB"] * 300, thr
    )
    assert shifted.flagged and any("score distribution moved" in x for x in shifted.reasons)
    assert any("above the threshold" in x for x in shifted.reasons)
    darker = compare(
        ref, rng.gumbel(1.0, 0.1, 300), list(rng.normal(90, 5, 300)), [(900, 900)] * 300, ["RGB"] * 300, thr
    )
    assert darker.flagged and darker.reasons == [
        f"brightness moved {darker.brightness_shift:+.2f} training standard deviations"
    ]
    resized = compare(
        ref, rng.gumbel(1.0, 0.1, 300), list(rng.normal(120, 5, 300)), [(640, 480)] * 300, ["L"] * 300, thr
    )
    assert resized.flagged and resized.unseen_size_share == 1.0 and resized.unseen_mode_share == 1.0


def test_a_handful_of_images_is_reported_but_never_flagged():
    rng = np.random.default_rng(2)
    ref = _ref(rng)
    few = compare(ref, rng.gumbel(3.0, 0.1, 5), [30.0] * 5, [(1, 1)] * 5, ["L"] * 5, 1.5, DriftLimits(min_images=20))
    assert few.reasons and not few.flagged
