"""Reviewer labels as numbers (anomaflow.model.evaluation.feedback) and the curated copy with provenance
(anomaflow.model.data.curation)."""

import hashlib
import json

import numpy as np
import pytest

from anomaflow.model.data.curation import Addition, curate, curation_summary
from anomaflow.model.evaluation.feedback import at_threshold, propose, reviewed, threshold_table


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
