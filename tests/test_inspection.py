"""Batch-inspection bookkeeping and the inspect loop, on a small trained detector."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from model import inspection
from model.autoencoder import AutoencoderDetector
from model.config import AutoencoderConfig
from model.data import load_images, scan_mvtec


@pytest.fixture(scope="module")
def detector(demo_root):
    ds = scan_mvtec(demo_root, "demo")
    det = AutoencoderDetector(AutoencoderConfig(image_size=64, base_channels=8, latent_channels=8, epochs=2, batch_size=8))
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
        return inspection.inspect_files(det, files, inbox, ledger, model_name="m", model_version="1",
                                        threshold=det.threshold if threshold is None else threshold, batch_size=batch_size)


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
        s3 = inspection.inspect_files(detector, inspection.list_inbox(inbox), inbox, ledger, model_name="m", model_version="2", threshold=1e9)
    assert s3.normal == 6 and len(inspection.read_results(out / "results.csv")) == 12


def test_scores_match_direct_detector_call(detector, inbox, tmp_path):
    run(detector, inbox, tmp_path / "out", threshold=0.5)
    rows = inspection.read_results(tmp_path / "out" / "results.csv")
    files = [inbox / r["path"] for r in rows]
    from model.data import load_image

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
    for name, reason in [("zero.png", "empty file"), ("noise.jpg", "not a readable image"),
                         ("truncated.png", "truncated"), ("float.tif", "unsupported image mode")]:
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


def test_duplicate_content_inspected_once(detector, inbox, tmp_path):
    shutil.copy(inbox / "img 0.png", inbox / "copy.png")
    s = run(detector, inbox, tmp_path / "out")
    assert s.duplicates == 1 and len(inspection.read_results(tmp_path / "out" / "results.csv")) == 6


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
