"""PaDiM-style detector: a Gaussian of pretrained features at every position of the frame.

Fit: the frozen backbone of the PatchCore family (EfficientNet-Lite0 by default) maps every good
image to a grid of patch descriptors (the same `aggregate` of two stages); at each grid position
the descriptors of all training images get a mean and a covariance. Inference: a patch's score is
its Mahalanobis distance to the Gaussian of its own position, upsampled to the frame and
smoothed; the image score is pooled from that map.

Why beside PatchCore: a nearest-neighbour bank forgets where a patch came from, so a texture
that is normal in one place and wrong in another (a tile edge in the middle, a print shifted)
looks normal to it. A Gaussian per position is that positional prior; it needs aligned parts,
which the fixed input frame gives.

Covariance: with D feature dims and N training images, the sample covariance of a position is
singular whenever N <= D (a 31-image set, D = 64). Each position's covariance is shrunk towards
a multiple of the identity with the Ledoit-Wolf intensity (closed form, no labels, no tuning),
plus a small ridge, so it is always invertible and a small training set still gives a usable
metric. The precision matrices, not the covariances, are kept: scoring is one batched product.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaflow.model.config import PadimConfig
from anomaflow.model.detectors.base import ProgressFn, save_torch_atomic
from anomaflow.model.detectors.features import FeatureDetector, fit_record, print_feature_phase

GAUSSIANS_FILE = "gaussians.pt"


def ledoit_wolf(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrunk covariances of centred samples x (P, N, D), one per position: ((P, D, D), the
    shrinkage intensity of each position (P,)), as sklearn.covariance.ledoit_wolf computes it."""
    p, n, d = x.shape
    s = torch.einsum("pnd,pne->pde", x, x) / n
    mu = torch.diagonal(s, dim1=1, dim2=2).sum(-1) / d
    s_sq = (s * s).sum(dim=(1, 2))
    beta = ((x * x).sum(-1).pow(2).sum(-1) / n - s_sq) / (d * n)
    delta = (s_sq - d * mu * mu) / d
    shrink = torch.where(delta > 0, torch.minimum(beta, delta) / delta.clamp(min=1e-30), torch.zeros_like(delta)).clamp(
        0.0, 1.0
    )
    eye = torch.eye(d, dtype=x.dtype)
    cov = (1.0 - shrink)[:, None, None] * s + (shrink * mu)[:, None, None] * eye
    return cov, shrink


def _print_progress(rec: dict[str, Any]) -> None:
    if not print_feature_phase("padim", rec, "positions"):
        print(
            f"padim: {rec['positions']} Gaussians of {rec['feature_dim']} dims "
            f"(mean shrinkage {rec['mean_shrinkage']:.2f}) in {rec['seconds']:.1f}s",
            flush=True,
        )


class PadimDetector(FeatureDetector):
    family = "padim"
    config_class = PadimConfig
    config: PadimConfig
    default_score_method = "top_mean"
    mean: torch.Tensor | None = None  # (h, w, D), set by fit
    precision: torch.Tensor | None = None  # (h*w, D, D), set by fit

    def fit(
        self, images: np.ndarray, holdout: np.ndarray | None = None, progress: ProgressFn | None = _print_progress
    ) -> list[dict[str, Any]]:
        """Mean and shrunk covariance of every position from good images (nothing is trained)."""
        if len(images) < 2:
            raise ValueError(f"padim needs at least 2 training images for a covariance, got {len(images)}")
        images = self.set_frame(images)
        t0 = time.perf_counter()
        feats = self.features(images)  # float32: 800 images at 256 px are 0.8 GB, in double twice that
        n, h, w, d = feats.shape
        t_feat = time.perf_counter() - t0
        if progress:
            progress({"phase": "features", "images": n, "positions": h * w, "feature_dim": d, "seconds": t_feat})
        x = feats.reshape(n, h * w, d)
        mean = torch.empty(h * w, d, dtype=torch.float64)
        precision = torch.empty(h * w, d, d, dtype=torch.float32)
        shrinks = []
        eye = torch.eye(d, dtype=torch.float64)
        with torch.inference_mode():
            for i in range(0, h * w, self.config.position_chunk):
                xc = (
                    x[:, i : i + self.config.position_chunk].transpose(0, 1).double()
                )  # (chunk, N, D), in double for the covariance
                mean[i : i + len(xc)] = xc.mean(dim=1)
                cov, shrink = ledoit_wolf(xc - mean[i : i + len(xc), None])
                ridge = self.config.ridge * torch.diagonal(cov, dim1=1, dim2=2).mean(-1).clamp(min=1e-12)
                cov = cov + ridge[:, None, None] * eye
                precision[i : i + len(cov)] = torch.cholesky_inverse(torch.linalg.cholesky(cov)).float()
                shrinks.append(shrink)
        del feats, x
        self.mean = mean.float().reshape(h, w, d).contiguous()
        self.precision = precision
        mean_shrink = float(torch.cat(shrinks).mean())
        rec = fit_record(t0, t_feat, images=n, positions=h * w, feature_dim=d, mean_shrinkage=mean_shrink)
        self.history = [rec]
        if progress:
            progress(rec)
        return self.history

    def require_fitted(self) -> None:
        if self.mean is None or self.precision is None:
            raise RuntimeError("the detector is not fitted (no Gaussians)")

    def score_descriptors(self, feats: torch.Tensor, exportable: bool = False) -> torch.Tensor:
        """Mahalanobis distance of every patch to its position's Gaussian: (N, h, w)."""
        self.require_fitted()
        assert self.mean is not None and self.precision is not None
        n, h, w, d = feats.shape
        if (h, w, d) != tuple(self.mean.shape):
            raise ValueError(f"feature grid {h}x{w}x{d} differs from the fitted {tuple(self.mean.shape)}")
        with torch.inference_mode():
            diff = (feats - self.mean).reshape(-1, h * w, d)
            y = torch.einsum("npd,pde->npe", diff, self.precision)
            return (y * diff).sum(-1).clamp(min=0.0).sqrt().reshape(-1, h, w)

    # -- persistence ---------------------------------------------------------------------
    def _save_weights(self, directory: Path) -> None:
        if self.mean is None or self.precision is None:
            raise RuntimeError("nothing to save: the detector is not fitted")
        save_torch_atomic({"mean": self.mean, "precision": self.precision}, directory / GAUSSIANS_FILE)

    def _load_weights(self, directory: Path) -> None:
        state = torch.load(directory / GAUSSIANS_FILE, map_location="cpu", weights_only=True)
        mean, prec = (state.get("mean"), state.get("precision")) if isinstance(state, dict) else (None, None)
        if not isinstance(mean, torch.Tensor) or not isinstance(prec, torch.Tensor) or mean.ndim != 3 or prec.ndim != 3:
            raise ValueError(
                f"{directory / GAUSSIANS_FILE}: no mean (h, w, D) and precision (h*w, D, D) tensors in the file"
            )
        h, w, d = mean.shape
        if d != self.feature_dim or prec.shape != (h * w, d, d):
            raise ValueError(
                f"{directory / GAUSSIANS_FILE}: Gaussians of {d} dims over {h}x{w}, "
                f"the configured features have {self.feature_dim}"
            )
        self.mean, self.precision = mean.float(), prec.float()
