"""Reviewer labels as numbers (anomaflow.model.evaluation.feedback) and the curated copy with provenance
(anomaflow.model.data.curation)."""

import hashlib
import json

import numpy as np
import pytest

from anomaflow.model.data.curation import Addition, curate, curation_summary
from anomaflow.model.evaluation.feedback import (
    at_threshold,
    calibrate_with_reviews,
    operating_point,
    propose,
    reviewed,
    reviewed_truth,
    target_recall_of,
    threshold_source,
    threshold_table,
    too_few_to_compare,
)


def test_labels_become_truth_and_unsure_is_left_out():
    r = reviewed(
        [0.1, 0.5, 0.9, 1.2, 1.5, 0.7, None], ["good", "missed", "good", "defect", "defect", "unsure", "defect"]
    )
    assert (r.defects, r.goods) == (3, 2)
    now = at_threshold(r, 1.0)  # the 0.5 'missed' and the 0.9 'good' sit below
    assert (
        (now["tp"], now["fp"], now["fn"], now["tn"]) == (2, 0, 1, 2)
        and now["precision"] == 1.0
        and now["recall"] == pytest.approx(2 / 3)
    )


def test_the_table_and_the_proposals_are_the_extreme_thresholds_that_reach_the_target():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0, 1, 200), rng.normal(3, 1, 60)]
    r = reviewed(list(scores), ["good"] * 200 + ["defect"] * 60)
    table = threshold_table(r)
    assert [row["threshold"] for row in table] == sorted((row["threshold"] for row in table), reverse=True)
    assert all(a["recall"] <= b["recall"] for a, b in zip(table, table[1:]))
    for target in (0.8, 0.95, 1.0):
        p = propose(r, target_recall=target)
        assert p["recall"] >= target
        higher = [row for row in table if row["threshold"] > p["threshold"]]
        assert all(row["recall"] < target for row in higher)
    q = propose(r, target_fpr=0.05)
    assert q["fpr"] <= 0.05 and all(row["fpr"] > 0.05 for row in table if row["threshold"] < q["threshold"])
    with pytest.raises(ValueError, match="exactly one"):
        propose(r)
    with pytest.raises(ValueError, match="no reviewed defects"):
        propose(reviewed([0.1], ["good"]), target_recall=0.9)


def test_curation_copies_the_dataset_adds_with_provenance_and_refuses_changed_content(tmp_path):
    src = tmp_path / "data" / "cat"
    (src / "train" / "good").mkdir(parents=True)
    (src / "test" / "good").mkdir(parents=True)
    (src / "train" / "good" / "000.png").write_bytes(b"a")
    (src / "test" / "good" / "000.png").write_bytes(b"b")
    part = tmp_path / "inbox" / "p.png"
    part.parent.mkdir()
    part.write_bytes(b"reviewed part")
    sha = hashlib.sha256(b"reviewed part").hexdigest()
    add = Addition(str(part), sha, "m", "3", "ann", "2026-12-01T10:00:00")
    dest = curate(tmp_path / "data", "cat", [add, add], tmp_path / "curated")
    assert sorted(p.name for p in (dest / "train" / "good").iterdir()) == ["000.png", f"review_{sha[:16]}.png"]
    assert (dest / "test" / "good" / "000.png").read_bytes() == b"b"
    assert json.loads((dest / "curation.json").read_text())["added"][0]["reviewer"] == "ann"
    assert curation_summary(dest).startswith("1 part(s) reviewed as good (false alarms of m v3)")
    assert curation_summary(src) is None
    part.write_bytes(b"changed since")
    with pytest.raises(ValueError, match="content changed since it was reviewed"):
        curate(tmp_path / "data", "cat", [add], tmp_path / "curated")
    assert (dest / "train" / "good" / f"review_{sha[:16]}.png").is_file()  # the earlier copy is intact
    part.write_bytes(b"b")  # a reviewed part that is a test image of the dataset
    leak = Addition(str(part), hashlib.sha256(b"b").hexdigest(), "m", "3", "ann", "2026-12-01T11:00:00")
    dest = curate(tmp_path / "data", "cat", [leak], tmp_path / "curated")
    info = json.loads((dest / "curation.json").read_text())
    assert info["added"] == [] and "test image test/good/000.png" in info["refused"][0]["reason"]
    assert "1 refused (already in the test split)" in curation_summary(dest)


HELDOUT = np.linspace(0.0, 1.0, 21)  # t0 = 0.975 leaves one of 21 held-out normals above


def test_reviewed_defects_lower_the_threshold_to_the_reviewed_recall_and_never_raise_it():
    r = reviewed_truth([0.5, 0.7, 1.2, 1.5, 2.0, 0.2, 0.3, 0.6, 0.9, 1.1], [1] * 5 + [0] * 5)
    out = calibrate_with_reviews(0.975, HELDOUT, r, target_recall=1.0, min_reviewed=5, target_from="champion v3")
    assert 0.4999 < out["threshold"] < 0.5  # just below the lowest reviewed defect
    assert out["field_recall_reviewed"] == 1.0 and out["threshold_heldout"] == 0.975
    assert "target recall 1 (champion v3): lowered from 0.975" in out["threshold_source"]
    assert out["heldout_fpr"] == pytest.approx(np.mean(HELDOUT > out["threshold"]))  # at the final threshold
    kept = calibrate_with_reviews(0.975, HELDOUT, r, target_recall=0.6, min_reviewed=5)
    assert kept["threshold"] == 0.975 and "already reaches" in kept["threshold_source"]  # 3 of 5 above t0
    low = calibrate_with_reviews(0.1, HELDOUT, r, target_recall=0.2, min_reviewed=5)
    assert low["threshold"] == 0.1  # reviews never raise the held-out threshold
    assert calibrate_with_reviews(0.975, HELDOUT, r, None)["threshold"] == 0.975


def test_reviewed_goods_raise_the_fpr_estimate_never_lower_it():
    defects = [2.0] * 5
    flagged = reviewed_truth([*defects, 1.2, 1.3, 1.4, 0.1, 0.2], [1] * 5 + [0] * 5)  # 3 of 5 goods above t0
    out = calibrate_with_reviews(0.975, HELDOUT, flagged, target_recall=1.0)
    assert out["field_fpr_reviewed"] == pytest.approx(0.6) and out["heldout_fpr"] == pytest.approx(1 / 21)
    assert out["fpr_estimate_with_reviews"] == pytest.approx(0.6)
    quiet = reviewed_truth([*defects, 0.1, 0.1, 0.2, 0.2, 0.3], [1] * 5 + [0] * 5)  # no reviewed false alarm
    out = calibrate_with_reviews(0.975, HELDOUT, quiet, target_recall=1.0)
    assert out["field_fpr_reviewed"] == 0.0 and out["fpr_estimate_with_reviews"] == pytest.approx(1 / 21)


def test_too_few_reviews_keep_the_heldout_threshold_and_estimate():
    r = reviewed_truth([0.5, 0.6, 1.5, 1.6], [1, 1, 0, 0])  # 2 defects below t0, 2 false alarms
    out = calibrate_with_reviews(0.975, HELDOUT, r, target_recall=1.0, min_reviewed=5)
    assert out["threshold"] == 0.975 and "2 reviewed defects, fewer than the 5" in out["threshold_source"]
    assert out["field_fpr_reviewed"] == 1.0 and out["fpr_estimate_with_reviews"] == out["heldout_fpr"]
    moved = calibrate_with_reviews(0.975, HELDOUT, r, target_recall=1.0, min_reviewed=2)
    assert moved["threshold"] < 0.5 and moved["fpr_estimate_with_reviews"] == 1.0


def test_cuts_leave_a_margin_for_re_scoring_and_the_target_recall_is_read_back_from_the_source():
    r = reviewed_truth([1.0, 0.5, 0.1], [1, 1, 0])
    p = propose(r, target_recall=1.0)
    assert p["threshold"] == pytest.approx(0.5 * (1 - 1e-4)) and p["recall"] == 1.0
    assert 0.49997 > p["threshold"]  # the same part scored again by another runtime stays a DEFECT
    close = propose(reviewed_truth([1.0, 0.5, 0.49999], [1, 1, 0]), target_recall=1.0)
    assert 0.49999 < close["threshold"] < 0.5 and close["fp"] == 0  # never down to the next lower score
    assert target_recall_of(threshold_source(r, 1.0, None)) == 1.0
    source = "reviewed labels (9 defects, 4 good), target recall 0.888889 (champion v2): lowered from 0.55"
    assert target_recall_of(source) == 0.888889
    assert target_recall_of(threshold_source(r, None, 0.05)) is None and target_recall_of("") is None


def test_the_operating_point_kept_is_the_higher_of_the_chosen_and_the_measured_recall():
    assert operating_point(1.0, 0.9, "3") == (1.0, "the target recall of champion v3")  # reviewers chose 1.0
    assert operating_point(0.9, 0.95, "3") == (0.95, "the field recall of champion v3")  # else the gate refuses
    assert operating_point(None, 0.8, "3") == (0.8, "the field recall of champion v3")
    assert operating_point(0.9, float("nan"), "3")[0] == 0.9  # no reviewed defects: the tag
    assert operating_point(None, float("nan"), "3")[0] is None


def test_the_gate_compares_field_metrics_only_on_enough_reviewed_parts_of_each_kind():
    assert too_few_to_compare({"defects": 5, "goods": 5}, 5) is None
    why = too_few_to_compare({"defects": 9, "goods": 2}, 5)
    assert why == "9 reviewed defects and 2 good, fewer than min_reviewed=5 of each"
