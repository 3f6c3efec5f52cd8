"""Batch-inspection bookkeeping and the inspect loop, on a small trained detector."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from anomaflow.model.config import AutoencoderConfig
from anomaflow.model.data.datasets import load_images, scan_mvtec
from anomaflow.model.detectors.autoencoder import AutoencoderDetector
from anomaflow.model.operations import inspection


@pytest.fixture(scope="module")
def detector(demo_root):
    ds = scan_mvtec(demo_root, "demo")
    det = AutoencoderDetector(
        AutoencoderConfig(image_size=64, base_channels=8, latent_channels=8, epochs=2, batch_size=8)
    )
    det.fit(load_images(ds.train, 64), progress=None)
    det.threshold, det.pixel_threshold = 0.0, 0.05  # threshold 0: everything is a DEFECT (exercises figures)
    return det


@pytest.fixture()
def inbox(demo_root, tmp_path):
    d = tmp_path / "inbox"
    d.mkdir()
    for i, p in enumerate(sorted((demo_root / "demo" / "test").rglob("*.png"))[:6]):
        shutil.copy(p, d / f"img {i}.png")  # a space in the name too
    return d


def run(det, inbox, out, threshold=None, batch_size=4):
    files = inspection.list_inbox(inbox)
    with inspection.Ledger(out) as ledger:
        return inspection.inspect_files(
            det,
            files,
            inbox,
            ledger,
            model_name="m",
            model_version="1",
            threshold=det.threshold if threshold is None else threshold,
            batch_size=batch_size,
        )


def test_one_row_per_image_and_rerun_skips(detector, inbox, tmp_path):
    out = tmp_path / "out"
    s = run(detector, inbox, out)
    rows = inspection.read_results(out / "results.csv")
    assert len(rows) == 6 and s.inspected == 6 and s.defect == 6
    assert list(rows[0]) == list(inspection.FIELDS)
    assert {r["decision"] for r in rows} == {"DEFECT"}
    heat, over = inspection.defect_figure_paths(out, rows[0]["sha256"])
    assert Image.open(heat).size == (64, 64) and Image.open(over).mode == "RGB"
    s2 = run(detector, inbox, out)
    assert s2.inspected == 0 and s2.skipped == 6
    assert len(inspection.read_results(out / "results.csv")) == 6
    # A new model version inspects everything again, in the same ledger.
    with inspection.Ledger(out) as ledger:
        s3 = inspection.inspect_files(
            detector, inspection.list_inbox(inbox), inbox, ledger, model_name="m", model_version="2", threshold=1e9
        )
    assert s3.normal == 6 and len(inspection.read_results(out / "results.csv")) == 12


def test_scores_match_direct_detector_call(detector, inbox, tmp_path):
    run(detector, inbox, tmp_path / "out", threshold=0.5)
    rows = inspection.read_results(tmp_path / "out" / "results.csv")
    files = [inbox / r["path"] for r in rows]
    from anomaflow.model.data.datasets import load_image

    direct = detector.score(np.stack([load_image(f, 64) for f in files])).scores[detector.score_method]
    np.testing.assert_allclose([float(r["score"]) for r in rows], direct, rtol=1e-6)
    assert all(r["threshold"] == "0.5" for r in rows)


def test_bad_files_get_error_rows_and_batch_continues(detector, inbox, tmp_path):
    (inbox / "zero.png").write_bytes(b"")
    (inbox / "noise.jpg").write_bytes(os.urandom(500))
    good = (inbox / "img 0.png").read_bytes()
    (inbox / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(inbox / "float.tif")
    (inbox / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "out"
    s = run(detector, inbox, out, batch_size=3)
    rows = {r["path"]: r for r in inspection.read_results(out / "results.csv")}
    assert len(rows) == 10 and s.error == 4
    for name, reason in [
        ("zero.png", "empty file"),
        ("noise.jpg", "not a readable image"),
        ("truncated.png", "truncated"),
        ("float.tif", "unsupported image mode"),
    ]:
        assert rows[name]["decision"] == "ERROR" and reason in rows[name]["error"], (name, rows[name]["error"])
        assert rows[name]["score"] == ""
    assert sum(r["decision"] == "DEFECT" for r in rows.values()) == 6


def test_torn_last_line_is_repaired(detector, inbox, tmp_path):
    out = tmp_path / "out"
    run(detector, inbox, out)
    csv_path = out / "results.csv"
    data = csv_path.read_bytes()
    lines = data.splitlines(keepends=True)
    csv_path.write_bytes(b"".join(lines[:-1]) + lines[-1][:20])  # crash mid-row
    assert len(inspection.read_results(csv_path)) == 5  # the torn row does not count
    s = run(detector, inbox, out)
    assert s.inspected == 1
    rows = inspection.read_results(csv_path)
    assert len(rows) == 6 and len({r["sha256"] for r in rows}) == 6
    assert csv_path.read_bytes().count(b"\n") == 7


def test_row_torn_inside_a_quoted_newline_is_repaired(detector, inbox, tmp_path):
    """A name holding a newline is one quoted field; a crash right after that newline leaves a torn
    record that ends in "\\n". It must not count, and the rerun must cut it, not append after it."""
    (inbox / "img 0.png").rename(inbox / "line\nbreak.png")
    out = tmp_path / "out"
    run(detector, inbox, out)
    csv_path = out / "results.csv"
    data = csv_path.read_bytes()
    start = data.index(b'"line\n')  # its row: sorted last
    csv_path.write_bytes(data[: start + len(b'"line\n')])  # crash right after the quoted newline
    assert inspection.complete_prefix(csv_path.read_bytes()) == start
    assert len(inspection.read_results(csv_path)) == len(data[:start].splitlines()) - 1
    run(detector, inbox, out)
    rows = inspection.read_results(csv_path)
    assert sorted(r["path"] for r in rows) == sorted(p.name for p in inbox.iterdir())


def test_identical_files_under_two_names_each_get_a_row_scored_once(detector, inbox, tmp_path, monkeypatch):
    shutil.copy(inbox / "img 0.png", inbox / "x copy.png")
    shutil.copy(inbox / "img 5.png", inbox / "z late copy.png")  # its original is in an earlier batch
    scored: list[int] = []
    real_score = detector.score
    monkeypatch.setattr(
        detector, "score", lambda images, valid=None: scored.append(len(images)) or real_score(images, valid)
    )
    out = tmp_path / "out"
    s = run(detector, inbox, out, batch_size=3)
    rows = {r["path"]: r for r in inspection.read_results(out / "results.csv")}
    assert sorted(rows) == sorted(p.name for p in inbox.iterdir())  # every file, under its own path
    assert sum(scored) == 6 and s.inspected == 6 and s.duplicates == 2  # distinct content scored once
    assert (s.defect, s.normal, s.error) == (8, 0, 0)
    for copy, original in (("x copy.png", "img 0.png"), ("z late copy.png", "img 5.png")):
        assert rows[copy]["duplicate_of"] == original
        assert (rows[copy]["score"], rows[copy]["decision"], rows[copy]["sha256"]) == (
            rows[original]["score"],
            rows[original]["decision"],
            rows[original]["sha256"],
        )
    assert all(rows[n]["duplicate_of"] == "" for n in rows if n not in ("x copy.png", "z late copy.png"))

    again = run(detector, inbox, out)  # resuming is idempotent
    assert (again.inspected, again.duplicates, again.skipped) == (0, 0, 8) and len(
        inspection.read_results(out / "results.csv")
    ) == 8
    shutil.copy(inbox / "img 1.png", inbox / "renamed later.png")  # content scored by an earlier run
    later = run(detector, inbox, out)
    assert (later.inspected, later.duplicates, later.skipped) == (0, 1, 8) and sum(scored) == 6
    rows = {r["path"]: r for r in inspection.read_results(out / "results.csv")}
    assert rows["renamed later.png"]["duplicate_of"] == "img 1.png" and len(rows) == 9


def test_a_results_file_from_before_duplicate_of_is_upgraded_without_loss(detector, inbox, tmp_path):
    out = tmp_path / "out"
    run(detector, inbox, out)
    csv_path = out / "results.csv"
    before = inspection.read_results(csv_path)
    legacy = [",".join(inspection.FIELDS[:-1])] + [
        ",".join(f'"{r[k]}"' for k in inspection.FIELDS[:-1]) for r in before
    ]
    csv_path.write_text("\n".join(legacy) + "\n")
    shutil.copy(inbox / "img 2.png", inbox / "copy.png")
    s = run(detector, inbox, out)
    after = inspection.read_results(csv_path)
    assert list(after[0]) == list(inspection.FIELDS) and (s.skipped, s.duplicates) == (6, 1)
    assert [{k: r[k] for k in inspection.FIELDS[:-1]} for r in after[:6]] == [
        {k: r[k] for k in inspection.FIELDS[:-1]} for r in before
    ]
    assert after[6]["path"] == "copy.png" and after[6]["duplicate_of"] == "img 2.png"
    csv_path.write_text("name,verdict\na.png,ok\n")
    with pytest.raises(ValueError, match="not an anomaflow results file"):
        run(detector, inbox, out)
    assert csv_path.read_text() == "name,verdict\na.png,ok\n"


def test_inbox_listing_skips_links_that_leave_the_folder(inbox, tmp_path):
    outside = tmp_path / "secret.png"
    shutil.copy(inbox / "img 0.png", outside)
    (inbox / "link.png").symlink_to(outside)
    (inbox / "inner.png").symlink_to(inbox / "img 1.png")
    names = [p.name for p in inspection.list_inbox(inbox)]
    assert "link.png" not in names and "inner.png" in names
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inspection.list_inbox(tmp_path / "nope")


def test_ledger_lock_excludes_a_second_run(tmp_path):
    with inspection.Ledger(tmp_path / "out"):
        with pytest.raises(TimeoutError, match="another inspection run"):
            with inspection.Ledger(tmp_path / "out", wait_seconds=0.3):
                pass
    with inspection.Ledger(tmp_path / "out", wait_seconds=0.3):
        pass  # released
