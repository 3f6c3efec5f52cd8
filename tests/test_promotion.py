from anomaflow.model.evaluation.promotion import decide_promotion


def test_better_or_equal_challenger_is_promoted():
    d = decide_promotion({"image_auroc_max": 0.95}, {"image_auroc_max": 0.90})
    assert d.promote and "0.9500 >= champion 0.9000" in d.reason
    assert decide_promotion({"image_auroc_max": 0.90}, {"image_auroc_max": 0.90}).promote


def test_worse_challenger_is_rejected():
    d = decide_promotion({"image_auroc_max": 0.89}, {"image_auroc_max": 0.90})
    assert not d.promote and d.challenger_score == 0.89 and d.champion_score == 0.90
    assert decide_promotion({"image_auroc_max": 0.89}, {"image_auroc_max": 0.90}, tolerance=0.02).promote


def test_minimum_bars_and_fail_closed():
    d = decide_promotion({"image_auroc_max": 0.99, "pixel_auroc": 0.5}, None, min_bars={"pixel_auroc": 0.8})
    assert not d.promote and d.failed_bars == ["pixel_auroc=0.5 < 0.8"]
    assert not decide_promotion(
        {"image_auroc_max": 0.99}, None, min_bars={"pixel_aupro": 0.1}
    ).promote  # missing metric
    assert not decide_promotion({}, {"image_auroc_max": 0.5}).promote
    assert not decide_promotion({"image_auroc_max": float("nan")}, None).promote
    assert not decide_promotion({"image_auroc_max": 0.9}, {"other": 1.0}).promote  # champion not comparable
    assert decide_promotion({"image_auroc_max": 0.9}, None).promote  # first model, no bars
    assert decide_promotion({"pixel_aupro": 0.7}, {"pixel_aupro": 0.6}, primary_metric="pixel_aupro").promote


def test_field_precision_and_recall_on_reviewed_parts_must_not_be_worse():
    ch, cp = {"image_auroc": 0.95}, {"image_auroc": 0.90}
    same = {"precision": 0.8, "recall": 1.0}
    d = decide_promotion(ch, cp, "image_auroc", challenger_field=same, champion_field=same)
    assert d.promote and "field precision and recall" in d.reason
    assert d.field_metrics == {
        "challenger_field_precision": 0.8,
        "challenger_field_recall": 1.0,
        "champion_field_precision": 0.8,
        "champion_field_recall": 1.0,
    }
    d = decide_promotion(ch, cp, "image_auroc", challenger_field={"precision": 0.9, "recall": 0.8}, champion_field=same)
    assert not d.promote and "field recall 0.8000 < champion 1.0000" in d.reason and "precision" not in d.reason
    d = decide_promotion(ch, cp, "image_auroc", challenger_field={"precision": 0.7, "recall": 1.0}, champion_field=same)
    assert not d.promote and "field precision 0.7000 < champion 0.8000" in d.reason
    assert decide_promotion(
        ch, cp, "image_auroc", tolerance=0.15, challenger_field={"precision": 0.7, "recall": 0.9}, champion_field=same
    ).promote  # the tolerance applies to the field metrics too
    nothing_flagged = {"precision": float("nan"), "recall": 0.0}
    assert not decide_promotion(ch, cp, "image_auroc", challenger_field=nothing_flagged, champion_field=same).promote
    worse_primary = decide_promotion(
        {"image_auroc": 0.5}, cp, "image_auroc", challenger_field=same, champion_field=same
    )
    assert not worse_primary.promote and "< champion 0.9000" in worse_primary.reason
