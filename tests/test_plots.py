"""Tests for the report figures (model/evaluation/plots.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from anomaflow.model.evaluation import plots

plt = pytest.importorskip("matplotlib.pyplot")


@pytest.fixture(autouse=True)
def no_pyplot_figures_left():
    """Every plotting call must leave pyplot's global figure list untouched."""
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def _check_png(fig: Figure, path: Path) -> tuple[int, int]:
    out = plots.save_figure(fig, path, dpi=50)
    assert out == path and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()  # fails on a truncated file
        return img.size


def _visible(fig: Figure) -> int:
    return sum(ax.get_visible() for ax in fig.axes)


def test_backend_is_headless() -> None:
    assert matplotlib.get_backend().lower() == "agg"


def test_plot_roc(tmp_path: Path) -> None:
    t = np.linspace(0, 1, 11)
    fig = plots.plot_roc({"ae": (t, np.sqrt(t), 0.8333), "pca": (t, t, 0.5)}, title="ROC")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["ae (AUROC = 0.833)", "pca (AUROC = 0.500)", "chance"]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title() == "ROC"
    assert _check_png(fig, tmp_path / "roc.png")[0] > 0
    with pytest.raises(ValueError):
        plots.plot_roc({"bad": (t, t[:-1], 0.5)})


def test_plot_score_histogram(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0, 1, 30), rng.normal(3, 1, 20)])
    labels = np.array([0] * 30 + [1] * 20)
    fig = plots.plot_score_histogram(scores, labels, threshold=1.5)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "normal (n=30)" in legend and "defect (n=20)" in legend
    assert "threshold = 1.5" in legend
    # Shared bins: both histograms have bars of equal width at the same edges.
    normal_x = sorted({round(p.get_x(), 9) for p in ax.containers[0]})
    defect_x = sorted({round(p.get_x(), 9) for p in ax.containers[1]})
    assert normal_x == defect_x
    _check_png(fig, tmp_path / "hist.png")

    # No threshold, a single class, constant scores: still a figure.
    fig = plots.plot_score_histogram(np.ones(5), np.zeros(5), None)
    assert len(fig.axes[0].containers) == 1
    with pytest.raises(ValueError):
        plots.plot_score_histogram(np.ones(3), np.array([0, 1, 2]), None)


@pytest.mark.parametrize("with_masks", [False, True])
def test_plot_heatmap_grid(tmp_path: Path, with_masks: bool) -> None:
    rng = np.random.default_rng(0)
    n, h, w = 5, 24, 24
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    maps = rng.random((n, h, w))
    masks = np.zeros((n, h, w), dtype=bool)
    masks[:, 8:14, 8:14] = True
    masks[1] = False  # a good image: no contour, no error
    fig = plots.plot_heatmap_grid(
        images, maps, masks if with_masks else None, titles=[f"img {i}" for i in range(n)], ncols=3
    )
    # 2 rows x 3 cols of panels (last one hidden) + 1 colour bar.
    assert len(fig.axes) == 2 * 3 + 1
    assert _visible(fig) == n + 1
    panels = fig.axes[:n]
    assert [ax.get_title() for ax in panels] == [f"img {i}" for i in range(n)]
    # Shared colour scale: overlay images all use the same limits (vmin 0, p99 vmax).
    overlays = [ax.get_images()[1] for ax in panels]
    p99 = float(np.percentile(maps, 99))
    assert all(ov.get_clim() == (0.0, pytest.approx(p99)) for ov in overlays)
    n_contours = sum(len(ax.collections) for ax in panels)
    assert (n_contours > 0) == with_masks
    _check_png(fig, tmp_path / f"heat_{with_masks}.png")


def test_plot_heatmap_grid_float_images_given_vmax_and_low_res_maps(tmp_path: Path) -> None:
    images = np.random.default_rng(1).random((2, 32, 32, 3))
    maps = np.zeros((2, 8, 8))
    maps[0, 2, 2] = 5.0
    fig = plots.plot_heatmap_grid(images, maps, ncols=4, vmax=2.0)
    assert len(fig.axes) == 2 + 1  # ncols shrinks to n
    assert fig.axes[0].get_images()[1].get_clim() == (0.0, 2.0)
    _check_png(fig, tmp_path / "heat_float.png")
    with pytest.raises(ValueError):
        plots.plot_heatmap_grid(images, maps[:1])


def test_plot_sample_grid(tmp_path: Path) -> None:
    img = np.zeros((16, 16, 3), dtype=np.uint8)
    groups = {"good": [img] * 6, "scratch": [img] * 2, "blob": [], "gray": [img[..., 0]]}
    fig = plots.plot_sample_grid(groups, max_per_group=4, title="samples")
    assert len(fig.axes) == 4 * 4
    assert _visible(fig) == 4 + 2 + 1 + 1
    row_labels = [fig.axes[r * 4].get_ylabel() for r in range(4)]
    assert row_labels == list(groups)
    assert fig.get_suptitle() == "samples"
    _check_png(fig, tmp_path / "samples.png")


def test_save_figure_creates_parents_and_leaves_no_temp(tmp_path: Path) -> None:
    fig = plots.plot_roc({})
    path = tmp_path / "a" / "b" / "fig.png"
    _check_png(fig, path)
    assert [p.name for p in path.parent.iterdir()] == ["fig.png"]
    _check_png(fig, path)  # overwriting an existing file works too


def test_save_figure_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fig = plots.plot_roc({})
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")

    def boom(target, *args, **kwargs):  # half a PNG into the file save_figure hands over, then a failure
        target.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError):
        plots.save_figure(fig, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
