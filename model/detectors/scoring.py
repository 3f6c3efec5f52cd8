"""Anomaly maps and image scores from a reconstruction.

The autoencoder's core signal is the residual between an image and its reconstruction.
Per-pixel squared error localises colour/intensity defects; a structural (SSIM) residual
also catches texture and edge defects whose mean intensity barely changes. Image scores
are pooled from the map: the mean (the seed's score), the max, and the max of a smoothed
map, which is robust to single noisy pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from anomaflow.model.config import SCORE_METHODS, MapKind

TOP_SHARE = 0.001  # top_mean: the mean of this share of an image's own pixels, the highest (at least one)


def _gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps, computed in Python so a traced graph (model.operations.export) holds them
    as a constant."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    taps = [math.exp(-(i * i) / (2.0 * sigma**2)) for i in range(-radius, radius + 1)]
    k = torch.tensor(taps, dtype=torch.float32)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N,C,H,W) with reflect padding; sigma <= 0 is identity. Channels
    are folded into the batch, so the kernel's shape never depends on the input (an exportable graph)."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel1d(sigma).to(x.device)
    r = k.numel() // 2
    h, w = x.shape[-2:]
    y = x.reshape(-1, 1, h, w)
    mode = "reflect" if min(h, w) > r else "replicate"
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return y.reshape(x.shape)


def ssim_map(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM of two (N,C,H,W) batches, averaged over channels -> (N,H,W)."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x = gaussian_blur(x, sigma)
    mu_y = gaussian_blur(y, sigma)
    sxx = gaussian_blur(x * x, sigma) - mu_x**2
    syy = gaussian_blur(y * y, sigma) - mu_y**2
    sxy = gaussian_blur(x * y, sigma) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).mean(dim=1)


def residual_map(x: torch.Tensor, recon: torch.Tensor, kind: MapKind = "l2") -> torch.Tensor:
    """Per-pixel anomaly map (N,H,W) from inputs and reconstructions in [0,1]."""
    if kind == "l2":
        return ((x - recon) ** 2).mean(dim=1)
    if kind == "l1":
        return (x - recon).abs().mean(dim=1)
    if kind == "ssim":
        return (1.0 - ssim_map(x, recon)).clamp(min=0.0) / 2.0
    if kind == "l2_ssim":
        # Both terms live in comparable ranges for [0,1] images; the sum keeps colour and structure.
        return ((x - recon) ** 2).mean(dim=1) + (1.0 - ssim_map(x, recon)).clamp(min=0.0) / 2.0
    raise ValueError(f"unknown map kind {kind!r}; expected one of l2, l1, ssim, l2_ssim")


def smooth_maps(maps: np.ndarray | torch.Tensor, sigma: float) -> np.ndarray:
    """Gaussian-smooth a stack of maps (N,H,W); returns float32 numpy."""
    t = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    if sigma > 0:
        t = gaussian_blur(t.unsqueeze(1), sigma).squeeze(1)
    return t.numpy().astype(np.float32, copy=False)


def fill_outside(maps: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Maps with every pixel outside the image's box (padding, see model.data.frame) set to the
    lowest value inside it, so padding can neither raise a score nor show on a heat map."""
    if valid is None:
        return maps
    maps = np.array(maps, dtype=np.float32, copy=True)
    for i in range(len(maps)):
        inside = maps[i][valid[i]]
        maps[i][~valid[i]] = inside.min() if inside.size else 0.0
    return maps


def image_scores(maps: np.ndarray, smooth_sigma: float = 4.0, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Pool maps (N,H,W) into image scores: mean, max, smoothed max and top-share mean (keys of SCORE_METHODS).

    valid (N,H,W) bool: pool over each image's own pixels only (padding left out)."""
    maps = np.asarray(maps, dtype=np.float32)
    n, pixels = maps.shape[0], int(np.prod(maps.shape[1:]))
    if n == 0:
        return {m: np.zeros(0) for m in SCORE_METHODS}
    maps = fill_outside(maps, valid)
    flat = maps.reshape(n, pixels)
    smoothed = smooth_maps(maps, smooth_sigma).reshape(n, pixels)
    if valid is None:
        v = np.ones((n, pixels), bool)
        out = {
            "mean": flat.mean(axis=1).astype(np.float64),
            "max": flat.max(axis=1).astype(np.float64),
            "smoothed_max": smoothed.max(axis=1).astype(np.float64),
        }
    else:
        v = np.asarray(valid, bool).reshape(n, pixels)
        out = {
            "mean": np.array([f[m].mean() for f, m in zip(flat, v)], dtype=np.float64),
            "max": np.array([f[m].max() for f, m in zip(flat, v)], dtype=np.float64),
            "smoothed_max": np.array([f[m].max() for f, m in zip(smoothed, v)], dtype=np.float64),
        }
    out["top_mean"] = np.array([top_mean(f[m]) for f, m in zip(flat, v)], dtype=np.float64)
    return out


def top_mean(values: np.ndarray, share: float = TOP_SHARE) -> float:
    """Mean of the highest `share` of the values: a defect's peak without hanging on one pixel
    (chosen for PaDiM and fusion on the development sets: benchmarks/results/README.md)."""
    k = max(1, int(len(values) * share))
    return float(np.partition(values, len(values) - k)[len(values) - k :].astype(np.float64).mean())


def image_score_tensor(
    maps: torch.Tensor, valid: torch.Tensor, method: str, smooth_sigma: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fill_outside` and one `image_scores` method in torch operators, for the exported graph
    (model.operations.export): (maps with padding filled, scores (N,)). valid (N,H,W) bool, all True when
    nothing is padded. Equal to the numpy path to float32 rounding (tests/test_export.py)."""
    if method not in SCORE_METHODS:
        raise ValueError(f"unknown score method {method!r}; expected one of {SCORE_METHODS}")
    big = torch.finfo(maps.dtype).max
    inside_min = torch.where(valid, maps, big).flatten(1).amin(1)
    filled = torch.where(valid, maps, inside_min.view(-1, 1, 1))
    count = valid.flatten(1).sum(1)
    if method == "mean":
        return filled, (filled * valid).flatten(1).sum(1) / count
    if method == "smoothed_max":
        smoothed = gaussian_blur(filled.unsqueeze(1), smooth_sigma).squeeze(1)
        return filled, torch.where(valid, smoothed, -big).flatten(1).amax(1)
    flat = torch.where(valid, filled, -big).flatten(1)
    if method == "max":
        return filled, flat.amax(1)
    k_max = max(1, int(flat.shape[1] * TOP_SHARE))  # the most any image can need: all pixels its own
    top = torch.topk(flat, k_max, dim=1).values
    k = torch.clamp(torch.floor(count.double() * TOP_SHARE), min=1).long()
    return filled, top.cumsum(1).gather(1, (k - 1).view(-1, 1)).squeeze(1) / k.float()
