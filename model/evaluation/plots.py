"""Figures for evaluation reports: ROC, score histogram, heatmap and sample grids.

Why this shape: plots are produced inside long-running, headless pipeline
workers.  Every function builds a ``matplotlib.figure.Figure`` directly
(never through pyplot), so no GUI window can open, nothing is registered in
pyplot's global figure list, and a figure is freed as soon as the caller
drops it: no leak, no "More than 20 figures" warning in long runs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

# Headless default for anything that later imports pyplot in this process.
# Skipped when pyplot is already loaded: switching then would close the
# caller's open figures, and these functions never need pyplot anyway.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from anomaflow.model.files import atomic_write

__all__ = [
    "plot_heatmap_grid",
    "plot_roc",
    "plot_sample_grid",
    "plot_score_histogram",
    "save_figure",
]

_NORMAL_COLOUR = "tab:blue"
_DEFECT_COLOUR = "tab:red"


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]],
    title: str = "Image-level ROC",
) -> Figure:
    """One ROC line per named curve (fpr, tpr, auroc), AUROC in the legend.

    Several curves on one axes make model/run comparisons readable at a glance.
    """
    fig = Figure(figsize=(5.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    for name, (fpr, tpr, auroc) in curves.items():
        fpr, tpr = np.asarray(fpr, dtype=float).ravel(), np.asarray(tpr, dtype=float).ravel()
        if fpr.shape != tpr.shape:
            raise ValueError(f"curve {name!r}: fpr and tpr lengths differ ({fpr.size} vs {tpr.size})")
        ax.plot(fpr, tpr, linewidth=1.8, label=f"{name} (AUROC = {float(auroc):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1.0, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_score_histogram(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float | None,
    title: str = "Image scores",
) -> Figure:
    """Overlaid histograms of normal (label 0) and defect (label 1) scores.

    Shared bins make the overlap, i.e. how separable the classes are and where
    the threshold cuts, directly visible.  Non-finite scores are dropped.
    """
    scores = np.asarray(scores, dtype=float).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels lengths differ ({scores.size} vs {labels.size})")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (defect)")
    finite = np.isfinite(scores)
    scores, labels = scores[finite], labels[finite]

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    lo_hi = list(scores) + ([float(threshold)] if threshold is not None else [])
    lo, hi = (min(lo_hi), max(lo_hi)) if lo_hi else (0.0, 1.0)
    if hi <= lo:  # all equal: give the bins some width
        lo, hi = lo - 0.5, hi + 0.5
    n_bins = int(np.clip(2 * math.sqrt(max(scores.size, 1)), 10, 50))
    bins = np.linspace(lo, hi, n_bins + 1)
    for value, name, colour in ((0, "normal", _NORMAL_COLOUR), (1, "defect", _DEFECT_COLOUR)):
        part = scores[labels == value]
        if part.size:
            ax.hist(part, bins=bins, alpha=0.55, color=colour, label=f"{name} (n={part.size})")
    if threshold is not None:
        ax.axvline(
            float(threshold), color="black", linestyle="--", linewidth=1.5, label=f"threshold = {float(threshold):.4g}"
        )
    ax.set_xlabel("Anomaly score")
    ax.set_ylabel("Images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts, not fractions
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return fig


def _as_display_image(image: np.ndarray) -> np.ndarray:
    """uint8 stays as is; floats are clipped to [0, 1] (imshow would warn otherwise)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.clip(image.astype(float), 0.0, 1.0)


def _grid_shape(n: int, ncols: int) -> tuple[int, int]:
    """(nrows, ncols) for n panels, never wider than n."""
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


def plot_heatmap_grid(
    images: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    vmax: float | None = None,
) -> Figure:
    """Each image with its anomaly map overlaid ("jet") and the GT mask outlined.

    All panels share one colour scale (vmin = 0, or the minimum if maps go
    negative; vmax given or the 99th percentile of all maps) so that panels
    are comparable: a hot spot means the same score everywhere.  Maps (and
    masks) at another resolution than the images are stretched over them.
    The figure holds nrows*ncols panels (unused ones hidden) plus a colour bar.
    """
    images = np.asarray(images)
    maps = np.asarray(maps, dtype=float)
    if images.ndim not in (3, 4) or maps.ndim != 3 or len(images) != len(maps):
        raise ValueError(f"expected images (N,H,W[,3]) and maps (N,H,W), got {images.shape} and {maps.shape}")
    n = len(images)
    if n == 0:
        raise ValueError("no images to plot")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or len(masks) != n:
            raise ValueError(f"expected masks (N,H,W), got {masks.shape}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images")

    finite = maps[np.isfinite(maps)]
    vmin = 0.0 if finite.size == 0 or finite.min() >= 0 else float(finite.min())
    if vmax is None:
        vmax = float(np.percentile(finite, 99)) if finite.size else 1.0
    if vmax <= vmin:
        vmax = vmin + 1e-6

    nrows, ncols = _grid_shape(n, ncols)
    fig = Figure(figsize=(2.8 * ncols + 0.8, 2.9 * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)  # trailing cells of the last row
    overlay = None
    for i in range(n):
        ax = axes[i]
        h, w = images[i].shape[:2]
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # pixel edges: maps stretch to fit
        gray = images[i].ndim == 2
        ax.imshow(_as_display_image(images[i]), cmap="gray" if gray else None, extent=extent)
        overlay = ax.imshow(
            maps[i], cmap="jet", alpha=0.45, vmin=vmin, vmax=vmax, extent=extent, interpolation="bilinear"
        )
        if masks is not None:
            m = masks[i] > 0
            if m.any() and not m.all():
                mh, mw = m.shape
                xs = (np.arange(mw) + 0.5) * w / mw - 0.5
                ys = (np.arange(mh) + 0.5) * h / mh - 0.5
                ax.contour(xs, ys, m.astype(float), levels=[0.5], colors="white", linewidths=1.2)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    fig.colorbar(overlay, ax=axes[:n], shrink=0.8, label="anomaly score")
    return fig


def plot_sample_grid(
    groups: dict[str, Sequence[np.ndarray]],
    max_per_group: int = 4,
    title: str = "Dataset samples",
) -> Figure:
    """One row per group (e.g. defect type), up to max_per_group images each.

    For eyeballing a dataset: each row is labelled with its group name; cells
    beyond a group's images are hidden.  The figure holds
    len(groups) x min(max_per_group, largest group) axes.
    """
    if not groups:
        raise ValueError("no groups to plot")
    if max_per_group < 1:
        raise ValueError(f"max_per_group must be >= 1, got {max_per_group}")
    ncols = max(1, max(min(len(v), max_per_group) for v in groups.values()))
    nrows = len(groups)
    fig = Figure(figsize=(2.2 * ncols + 0.6, 2.3 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r, (name, images) in enumerate(groups.items()):
        shown = list(images)[:max_per_group]
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(shown) and c > 0:
                ax.set_visible(False)
                continue
            # Keep the first column's frame hidden but its y-label visible:
            # set_axis_off() would hide the row label too.
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(shown):
                img = _as_display_image(shown[c])
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            else:  # empty group: keep the labelled cell, say so
                ax.text(
                    0.5, 0.5, "(no images)", ha="center", va="center", transform=ax.transAxes, fontsize=9, color="grey"
                )
            if c == 0:
                ax.set_ylabel(str(name), fontsize=11)
    fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Save ``fig`` as PNG at ``path`` (parents created) and return the path.

    Written to a temporary sibling and renamed into place, so a crash or a
    concurrent reader (e.g. an artifact upload) never sees a half-written PNG.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    return path
