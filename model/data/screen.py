"""Training-set screen: which `train/good` images look defective to a model that never saw them.

Good folders hold mistakes (a scratched part filed as good). A detector fitted on them learns the
defect as normal, and a defect in the held-out part raises the threshold, so recall falls where it
cannot be seen. The screen cross-fits: the training images are split into seeded folds, a fast
detector is fitted on all folds but one and scores the one left out, so every image is scored by a
model that never saw it. Scores far above the rest (a robust z-score over all cross-fitted scores:
median and MAD, the 3.5 limit of Iglewicz and Hoaglin, fixed, not tuned on test labels) are
suspects. The screen only reports unless the run asks to exclude them (`--exclude-suspects`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from anomaflow.model.detectors.base import Detector

Z_LIMIT = 3.5  # modified z-score above which an observation is a likely outlier (Iglewicz & Hoaglin 1993)
MIN_IMAGES = 8  # below this a fold is too small to fit on and the MAD too noisy to flag anything


@dataclass(frozen=True)
class Screen:
    """Cross-fitted score and robust z-score of every screened image, and which are suspects."""

    names: list[str]
    scores: np.ndarray
    z: np.ndarray
    suspects: list[int]  # indices into names, most suspicious first
    folds: int
    seconds: float
    score_method: str
    z_limit: float = Z_LIMIT
    skipped: str | None = None  # why nothing was screened (too few images)
    excluded: list[str] = field(default_factory=list)  # names left out of training, when asked
    folder: str = ""  # the names are relative to this folder

    def summary(self, max_names: int = 5) -> str:
        if self.skipped:
            return f"training-set screen skipped: {self.skipped}"
        head = (
            f"training-set screen ({self.folds}-fold cross-fit, "
            f"{self.seconds:.1f}s{', in ' + self.folder if self.folder else ''}): "
        )
        if not self.suspects:
            return head + f"no suspects among {len(self.names)} good images (robust z <= {self.z_limit})"
        shown = ", ".join(f"{self.names[i]} (z {self.z[i]:.1f})" for i in self.suspects[:max_names])
        more = f" and {len(self.suspects) - max_names} more" if len(self.suspects) > max_names else ""
        return head + f"{len(self.suspects)} of {len(self.names)} good images look defective: {shown}{more}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": f"{self.folds}-fold cross-fitted {self.score_method} scores, "
            f"robust z = 0.6745 (score - median) / MAD",
            "folder": self.folder,
            "z_limit": self.z_limit,
            "folds": self.folds,
            "seconds": round(self.seconds, 2),
            "skipped": self.skipped,
            "suspects": [
                {"image": self.names[i], "score": float(self.scores[i]), "z": float(self.z[i])} for i in self.suspects
            ],
            "excluded": self.excluded,
            "images": [
                {"image": n, "score": float(s), "z": float(z)} for n, s, z in zip(self.names, self.scores, self.z)
            ],
        }


def robust_z(scores: np.ndarray) -> np.ndarray:
    """0.6745 (x - median) / MAD: about N(0,1) for normal data, and one outlier cannot move it."""
    scores = np.asarray(scores, np.float64)
    med = float(np.median(scores))
    mad = float(np.median(np.abs(scores - med)))
    if mad <= 0:  # over half the scores equal: scale by the mean deviation instead of dividing by 0
        mad = float(np.mean(np.abs(scores - med))) or 1.0
    return 0.6745 * (scores - med) / mad


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """Seeded, balanced fold index of each of n images."""
    rng = np.random.default_rng([seed, 7031])
    return rng.permutation(np.arange(n) % folds)


def cross_fit(
    images: np.ndarray,
    names: list[str],
    build: Callable[[], Detector],
    *,
    valid: np.ndarray | None = None,
    folds: int = 2,
    seed: int = 0,
    z_limit: float = Z_LIMIT,
    log: Callable[[str], None] = print,
) -> Screen:
    """Cross-fit `build()` detectors over `folds` folds of `images` and flag the outliers.

    `build` returns a fresh, unfitted detector (a fast one: it is fitted `folds` times)."""
    if len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    if folds < 2:
        raise ValueError("a cross-fit needs at least 2 folds")
    n = len(images)
    if n < max(MIN_IMAGES, 2 * folds):
        empty = np.zeros(n)
        return Screen(
            list(names),
            empty,
            empty,
            [],
            folds,
            0.0,
            "",
            z_limit,
            skipped=f"{n} good images, need at least {max(MIN_IMAGES, 2 * folds)}",
        )
    t0 = time.perf_counter()
    fold = fold_of(n, folds, seed)
    scores = np.zeros(n)
    method = ""
    for k in range(folds):
        out, inn = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        det = build()
        det.fit(images[inn], progress=None)  # quiet: one line per fold instead
        method = det.score_method
        result = det.score(images[out], None if valid is None else valid[out])
        scores[out] = result.scores[method]
        log(f"screen fold {k + 1}/{folds}: fitted on {len(inn)}, scored {len(out)} ({time.perf_counter() - t0:.1f}s)")
    z = robust_z(scores)
    suspects = [int(i) for i in np.argsort(-z, kind="stable") if z[i] > z_limit]
    return Screen(list(names), scores, z, suspects, folds, time.perf_counter() - t0, method, z_limit)
