"""Synthetic anomalies made from good images, for model selection without defect labels.

Configurations are compared on held-out *normal* images and on copies of them with
generated defects (cut-paste patches, smooth-noise textures, scratches), whose masks are
exact by construction. The test split is never looked at.
"""

from __future__ import annotations

import numpy as np

KINDS = ("cutpaste", "noise", "scratch")
SUBTLE_KINDS = ("thin_line", "small_spot")  # small and low-contrast: they do not saturate where KINDS do


def _subtle(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Mask of a thin line (1-2 px, 17-42 % of the short side) or a small spot (radius 1.4-2.5 %
    of the short side) in the middle 60 % of the image; the caller shifts its intensity."""
    h, w, _ = image.shape
    short = min(h, w)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "thin_line":
        length, angle = rng.uniform(0.17, 0.42) * short, rng.uniform(0, np.pi)
        half_width = max(0.5, short / 360) * rng.uniform(0.7, 1.0)
        dy, dx = yy - cy, xx - cx
        along = dx * np.cos(angle) + dy * np.sin(angle)
        across = -dx * np.sin(angle) + dy * np.cos(angle)
        return (np.abs(along) <= length / 2) & (np.abs(across) <= half_width)
    r = rng.uniform(0.014, 0.025) * short
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= max(r, 1.0) ** 2


def _smooth_noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [0,1]: random grid upsampled bilinearly (a cheap Perlin stand-in)."""
    gh, gw = max(2, h // scale), max(2, w // scale)
    grid = rng.random((gh + 1, gw + 1))
    ys = np.linspace(0, gh, h, endpoint=False)
    xs = np.linspace(0, gw, w, endpoint=False)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _region_mask(rng: np.random.Generator, h: int, w: int, size: float) -> np.ndarray:
    """An irregular blob near the image centre (where the part usually is)."""
    noise = _smooth_noise(rng, h, w, max(4, int(min(h, w) * size / 2)))
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - cy) / h, (xx - cx) / w)
    return (noise - 1.5 * r / size) > 0.2


def add_synthetic_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(defective uint8 image, exact bool mask) from a good uint8 (H,W,3) image."""
    h, w, _ = image.shape
    out = image.copy()
    if kind == "cutpaste":
        ph, pw = int(h * rng.uniform(0.08, 0.2)), int(w * rng.uniform(0.08, 0.2))
        sy, sx = rng.integers(0, h - ph), rng.integers(0, w - pw)
        ty, tx = rng.integers(int(h * 0.2), int(h * 0.8) - ph), rng.integers(int(w * 0.2), int(w * 0.8) - pw)
        patch = image[sy : sy + ph, sx : sx + pw].astype(np.int16)
        patch = np.clip(patch + rng.integers(-40, 41, size=3), 0, 255)  # jitter so it differs from the target
        mask = np.zeros((h, w), bool)
        mask[ty : ty + ph, tx : tx + pw] = True
        out[mask] = patch.reshape(-1, 3).astype(np.uint8)
    elif kind == "noise":
        mask = np.zeros((h, w), bool)
        for _ in range(10):
            mask = _region_mask(rng, h, w, rng.uniform(0.08, 0.2))
            if mask.sum() >= 0.002 * h * w:
                break
        texture = (_smooth_noise(rng, h, w, int(rng.integers(2, 8)))[..., None] * rng.uniform(0, 255, size=3)).astype(
            np.uint8
        )
        out[mask] = texture[mask]
    elif kind == "scratch":
        mask = np.zeros((h, w), bool)
        y0, x0 = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.15, 0.35) * min(h, w)
        width = max(1, int(round(min(h, w) / 96)))
        for t in np.linspace(-length / 2, length / 2, int(length * 2)):
            y, x = int(y0 + t * np.sin(angle)), int(x0 + t * np.cos(angle))
            mask[max(0, y - width) : y + width + 1, max(0, x - width) : x + width + 1] = True
        colour = 255 if image[mask].mean() < 128 else 0
        out[mask] = colour
    elif kind in SUBTLE_KINDS:
        mask = _subtle(image, kind, rng)
        shift = int(rng.integers(40, 71)) * (1 if image[mask].mean() < 128 else -1)
        out[mask] = np.clip(image[mask].astype(np.int16) + shift, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown synthetic defect {kind!r}; expected one of {KINDS + SUBTLE_KINDS}")
    # The mask is exact: only pixels that actually changed count as defective.
    changed = np.any(out != image, axis=-1)
    return out, mask & changed


def synthetic_set(
    normals: np.ndarray, seed: int = 0, per_image: int = 1, kinds: tuple[str, ...] = KINDS
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Defective copies of held-out normal images: (images, masks, kinds), deterministic."""
    rng = np.random.default_rng(seed)
    imgs, masks, kinds_out = [], [], []
    for i, img in enumerate(normals):
        for j in range(per_image):
            kind = kinds[(i * per_image + j) % len(kinds)]
            d, m = add_synthetic_defect(img, kind, rng)
            if m.any():
                imgs.append(d)
                masks.append(m)
                kinds_out.append(kind)
    return np.stack(imgs), np.stack(masks), kinds_out
