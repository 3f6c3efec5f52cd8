"""Tests for the generated demo dataset (model/data/demo.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaflow.model.data.demo import DEFECT_TYPES, MARKER_NAME, add_defect, make_demo_dataset, render_part

SMALL = dict(image_size=64, n_train=3, n_test_good=2, n_test_per_defect=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), "part", seed=3, **SMALL)


def test_render_part_shape_dtype_and_variation() -> None:
    a = render_part(np.random.default_rng(1), 64)
    b = render_part(np.random.default_rng(2), 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, b), "good images must not be identical"
    np.testing.assert_array_equal(a, render_part(np.random.default_rng(1), 64))


def test_render_part_is_a_centred_bright_part_on_darker_background() -> None:
    img = render_part(np.random.default_rng(0), 128).astype(float).mean(axis=2)
    centre = img[40:88, 40:88].mean()
    corners = np.mean([img[:12, :12].mean(), img[-12:, -12:].mean(), img[:12, -12:].mean()])
    assert centre > corners + 40


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_add_defect_mask_is_exact_and_visible(kind: str) -> None:
    for i in range(5):
        rng = np.random.default_rng([7, i])
        good = render_part(rng, 64)
        bad, mask = add_defect(good, kind, rng)
        assert bad.shape == good.shape and bad.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == bool
        assert mask.sum() >= 0.001 * mask.size and mask.sum() >= 4
        assert mask.mean() < 0.1, "a defect should be local"
        np.testing.assert_array_equal(bad[~mask], good[~mask])  # nothing changed outside
        diff = np.abs(bad.astype(int) - good.astype(int)).mean(axis=2)
        assert diff[mask].mean() > 40, f"{kind} not visible enough"
        # Mostly on the part: the mask's centroid lies within the part's disc.
        ys, xs = np.nonzero(mask)
        assert np.hypot(xs.mean() + 0.5 - 32, ys.mean() + 0.5 - 32) < 0.38 * 64


def test_add_defect_does_not_modify_input_and_rejects_unknown_kind() -> None:
    good = render_part(np.random.default_rng(0), 64)
    before = good.copy()
    add_defect(good, "blob", np.random.default_rng(0))
    np.testing.assert_array_equal(good, before)
    with pytest.raises(ValueError, match="unknown defect"):
        add_defect(good, "dent", np.random.default_rng(0))


def test_good_images_alike_compared_to_defect_contrast() -> None:
    goods = [render_part(np.random.default_rng([0, i]), 64) for i in range(6)]
    as_int = [g.astype(int) for g in goods]
    # Mostly the ±5% brightness jitter; shapes coincide up to a pixel or so.
    between_good = np.mean([np.abs(as_int[0] - g).mean() for g in as_int[1:]])
    assert between_good < 20
    for kind in DEFECT_TYPES:
        contrast = []
        for i, good in enumerate(goods):
            bad, mask = add_defect(good, kind, np.random.default_rng(i))
            contrast.append(np.abs(bad.astype(int) - as_int[i])[mask].mean())
        assert np.mean(contrast) > 4 * between_good, kind


def test_layout_counts_and_masks(small_dataset: Path) -> None:
    root = small_dataset
    assert root.name == "part"
    assert sorted(p.name for p in (root / "train").iterdir()) == ["good"]
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(["good", *DEFECT_TYPES])
    train = sorted((root / "train/good").iterdir())
    assert [p.name for p in train] == ["000.png", "001.png", "002.png"]
    assert len(list((root / "test/good").glob("*.png"))) == 2
    assert not (root / "ground_truth" / "good").exists()
    for kind in DEFECT_TYPES:
        images = sorted((root / "test" / kind).glob("*.png"))
        assert [p.name for p in images] == ["000.png", "001.png"]
        for img_path in images:
            mask_path = root / "ground_truth" / kind / f"{img_path.stem}_mask.png"
            with Image.open(img_path) as img, Image.open(mask_path) as m:
                assert img.mode == "RGB" and img.size == (64, 64)
                assert m.mode == "L" and m.size == img.size
                values = np.asarray(m)
            assert set(np.unique(values)) == {0, 255}
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["seed"] == 3 and marker["image_size"] == 64
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")], "temp dir left over"


def test_same_seed_identical_bytes_different_seed_differs(tmp_path: Path, small_dataset: Path) -> None:
    again = make_demo_dataset(tmp_path / "a", "part", seed=3, **SMALL)
    other = make_demo_dataset(tmp_path / "b", "part", seed=4, **SMALL)
    ref = _files(small_dataset)
    assert _files(again) == ref
    other_files = _files(other)
    assert other_files.keys() == ref.keys()
    assert all(other_files[k] != ref[k] for k in ref if not k.startswith("ground_truth"))


def test_rerun_same_params_is_noop(small_dataset: Path) -> None:
    files = sorted(small_dataset.rglob("*"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    out = make_demo_dataset(small_dataset.parent, "part", seed=3, **SMALL)
    assert out == small_dataset
    assert sorted(small_dataset.rglob("*")) == files
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes


def test_existing_foreign_or_different_folder_raises(tmp_path: Path, small_dataset: Path) -> None:
    foreign = tmp_path / "demo"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="marker"):
        make_demo_dataset(tmp_path, "demo", **SMALL)
    assert (foreign / "mine.txt").read_text() == "user data"
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]

    with pytest.raises(FileExistsError, match="different parameters"):
        make_demo_dataset(small_dataset.parent, "part", seed=99, **SMALL)
    assert (small_dataset / "train/good/000.png").exists()


def test_defect_subset_and_validation(tmp_path: Path) -> None:
    out = make_demo_dataset(
        tmp_path, seed=0, image_size=32, n_train=1, n_test_good=0, n_test_per_defect=1, defects=("blob",)
    )
    assert sorted(p.name for p in (out / "test").iterdir()) == ["blob", "good"]
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path, "x", defects=("dent",))
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path, "../escape")
    assert not (tmp_path / "x").exists()


def test_the_demo_data_command_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from anomaflow.flows.cli import main

    assert main(["demo-data", str(tmp_path), "--seed", "1", "--size", "32"]) == 0
    line = capsys.readouterr().out.strip()
    assert "wrote" in line and "60 train" in line and "32 px" in line
    assert (tmp_path / "demo" / MARKER_NAME).exists()
    main(["demo-data", str(tmp_path), "--seed", "1", "--size", "32"])
    assert capsys.readouterr().out.startswith("reused")
