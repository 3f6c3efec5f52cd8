"""Drift of incoming images against what the model was calibrated on (pure numpy/scipy).

The model carries a reference (saved in detector.json): the held-out normal scores its threshold
was calibrated on, and simple input statistics of its training images (brightness, sizes,
colour modes). Each inspection batch is compared with it: the share of images above the
threshold against the share of reference normals above it, a two-sample Kolmogorov-Smirnov
statistic between the batch's scores and the reference normals, the brightness shift in units
of the training images' spread, and the share of images whose size or mode training never saw.
A batch past any limit is flagged; the limits are the user's (DriftLimits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DriftLimits:
    ks_statistic: float = 0.3  # batch scores vs reference normals (0 = same distribution, 1 = disjoint)
    share_above_ratio: float = 3.0  # share above threshold / the reference normals' share (with a floor of 1 %)
    brightness_shift: float = 2.0  # |mean brightness change| in training-image standard deviations
    unseen_share: float = 0.1  # images whose size or mode never occurred in training
    min_images: int = 20  # fewer scored images than this: reported, never flagged
    alpha: float = 0.01  # the score limits flag only a change this unlikely by chance (KS and binomial tests)


def image_stats(image: np.ndarray) -> float:
    """Mean brightness (0-255) of an (H,W,3) uint8 image."""
    return float(np.asarray(image, np.float32).mean())


def reference(
    normal_scores: np.ndarray, brightness: list[float], sizes: list[tuple[int, int]], modes: list[str], threshold: float
) -> dict[str, Any]:
    scores = np.asarray(normal_scores, np.float64)
    return {
        "normal_scores": [float(s) for s in scores],
        "normal_share_above": float(np.mean(scores > threshold)) if scores.size else 0.0,
        "brightness_mean": float(np.mean(brightness)) if brightness else None,
        "brightness_std": float(np.std(brightness)) if brightness else None,
        "sizes": sorted({f"{w}x{h}" for w, h in sizes}),
        "modes": sorted(set(modes)),
    }


@dataclass
class DriftReport:
    images: int
    share_above: float
    reference_share_above: float
    ks_statistic: float | None
    ks_pvalue: float | None
    brightness_shift: float | None
    unseen_size_share: float
    unseen_mode_share: float
    flagged: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        head = "DRIFT: " + "; ".join(self.reasons) if self.flagged else "no drift past the limits"
        ks = f", KS {self.ks_statistic:.3f}" if self.ks_statistic is not None else ""
        br = f", brightness shift {self.brightness_shift:+.2f} sd" if self.brightness_shift is not None else ""
        return (
            f"{head} ({self.images} images: {self.share_above:.1%} above the threshold "
            f"vs {self.reference_share_above:.1%} of calibration normals{ks}{br}, "
            f"unseen size {self.unseen_size_share:.1%}, unseen mode {self.unseen_mode_share:.1%})"
        )

    def metrics(self) -> dict[str, float]:
        return {
            f"drift_{k}": float(v) for k, v in asdict(self).items() if isinstance(v, (int, float)) and v is not None
        }

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary}


def compare(
    ref: dict[str, Any],
    scores: np.ndarray,
    brightness: list[float],
    sizes: list[tuple[int, int]],
    modes: list[str],
    threshold: float,
    limits: DriftLimits = DriftLimits(),
) -> DriftReport:
    from scipy.stats import binomtest, ks_2samp

    scores = np.asarray(scores, np.float64)
    n = int(scores.size)
    normal = np.asarray(ref.get("normal_scores") or [], np.float64)
    share = float(np.mean(scores > threshold)) if n else 0.0
    ref_share = float(np.mean(normal > threshold)) if normal.size else float(ref.get("normal_share_above") or 0.0)
    ks = ks_2samp(scores, normal) if n and normal.size else None
    shift = None
    if brightness and ref.get("brightness_mean") is not None:
        shift = (float(np.mean(brightness)) - ref["brightness_mean"]) / max(ref["brightness_std"] or 0.0, 1.0)
    seen_sizes, seen_modes = set(ref.get("sizes") or []), set(ref.get("modes") or [])
    unseen_size = float(np.mean([f"{w}x{h}" not in seen_sizes for w, h in sizes])) if sizes and seen_sizes else 0.0
    unseen_mode = float(np.mean([m not in seen_modes for m in modes])) if modes and seen_modes else 0.0
    reasons = []
    if ks is not None and ks.statistic > limits.ks_statistic and ks.pvalue < limits.alpha:
        reasons.append(f"score distribution moved (KS {ks.statistic:.3f} > {limits.ks_statistic}, p {ks.pvalue:.2g})")
    expected = max(ref_share, 0.01)
    above_p = float(binomtest(int(round(share * n)), n, expected, alternative="greater").pvalue) if n else 1.0
    if share > limits.share_above_ratio * expected and above_p < limits.alpha:
        reasons.append(
            f"{share:.1%} above the threshold, more than {limits.share_above_ratio:g}x the calibration normals' "
            f"{ref_share:.1%} (p {above_p:.2g})"
        )
    if shift is not None and abs(shift) > limits.brightness_shift:
        reasons.append(f"brightness moved {shift:+.2f} training standard deviations")
    if max(unseen_size, unseen_mode) > limits.unseen_share:
        reasons.append(f"{max(unseen_size, unseen_mode):.1%} of images have a size or colour mode training never saw")
    flagged = bool(reasons) and n >= limits.min_images
    return DriftReport(
        n,
        share,
        ref_share,
        None if ks is None else float(ks.statistic),
        None if ks is None else float(ks.pvalue),
        shift,
        unseen_size,
        unseen_mode,
        flagged,
        reasons,
    )
