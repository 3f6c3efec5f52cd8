"""Seeded, generated demo dataset in the MVTec AD layout.

Why: the project must run end to end (``make demo``, the core tests) without
anyone downloading MVTec AD.  The generator draws a round, machined part (a
bottle/flange seen from the top) that varies only slightly between good
samples, so a small autoencoder learns it from ~50 images, and paints
clearly visible defects whose ground-truth masks are exact by construction.

Layout written under ``root/category/``::

    train/good/000.png ...
    test/good/000.png ...
    test/<defect>/000.png ...
    ground_truth/<defect>/000_mask.png   (mode "L", 0 = normal, 255 = defect)
    .demo.json                           (parameters; written last)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DEFECT_TYPES",
    "MARKER_NAME",
    "add_defect",
    "summary",
    "make_demo_dataset",
    "render_part",
]

DEFECT_TYPES: tuple[str, ...] = ("scratch", "blob", "crack")
MARKER_NAME = ".demo.json"

# Bump when the generator's output changes, so an old cached dataset is not
# silently reused as if it were what the current code would produce.
_GENERATOR_VERSION = 1

# Stable stream ids for the per-image generators: adding images to one split,
# or choosing a subset of defects, never changes the images of another split.
_SPLIT_TRAIN = 0
_SPLIT_TEST_GOOD = 1
_SPLIT_DEFECT_BASE = 10  # + index in DEFECT_TYPES

# Smallest mask, as a fraction of the image, that add_defect accepts: smaller
# defects are invisible in a demo and make pixel metrics meaningless.
_MIN_MASK_FRACTION = 0.001


# --------------------------------------------------------------------------
# Good images
# --------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: a coarse random grid upsampled bicubically.

    Why: real backgrounds and surfaces vary at low frequency; white noise would
    be unlearnable for an autoencoder and dominate its reconstruction error.
    """
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float64)


def _radial_profile(r_px: np.ndarray, radius: float) -> np.ndarray:
    """Luminance of the part as a function of the distance to its centre.

    Concentric zones (cap, collar, brushed plate, groove, flange, rim) with
    ~1.5 px anti-aliased edges so the part looks machined, not pixel-art.
    """
    # (normalised radius of the edge, luminance inside the edge)
    zones = [
        (0.12, 200.0),  # centre cap
        (0.17, 95.0),  # dark collar
        (0.55, 150.0),  # brushed plate
        (0.62, 100.0),  # groove
        (0.90, 172.0),  # flange
        (1.00, 205.0),  # rim
    ]
    eps = 0.75 / radius
    knots: list[float] = [0.0]
    values: list[float] = [zones[0][1]]
    for k, (edge, value) in enumerate(zones):
        knots.append(edge - eps)
        values.append(value)
        if k + 1 < len(zones):
            knots.append(edge + eps)
            values.append(zones[k + 1][1])
    return np.interp(r_px / radius, knots, values)


def render_part(rng: np.random.Generator, size: int) -> np.ndarray:
    """Render one good sample: a round machined part on a textured background.

    Jitter (a few px shift, a few degrees rotation of the bolt pattern, ±5%
    brightness, smooth texture) makes good images alike but not identical,
    which is what an anomaly detector must learn to tolerate.

    Returns a uint8 array of shape (size, size, 3).
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres

    # Background: dark brownish grey with low-amplitude smooth variation.
    bg_lum = 72.0 + 5.0 * _smooth_noise(rng, size, 5)
    # A soft drop shadow below-right of the part gives it some depth.
    radius = 0.38 * s
    cx = s / 2 + rng.uniform(-0.015, 0.015) * s
    cy = s / 2 + rng.uniform(-0.015, 0.015) * s
    d_shadow = np.hypot(xx - cx - 0.02 * s, yy - cy - 0.025 * s)
    shadow = np.clip((radius * 1.06 - d_shadow) / (0.06 * s), 0.0, 1.0)
    bg_lum = bg_lum * (1.0 - 0.35 * shadow)
    background = bg_lum[..., None] * np.array([1.0, 0.95, 0.86])

    # Part: concentric zones + fine brushed rings + directional lighting.
    dx, dy = xx - cx, yy - cy
    dist = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    lum = _radial_profile(dist, radius)
    plate = (dist > 0.17 * radius) & (dist < 0.55 * radius)
    lum = lum + np.where(plate, 5.0 * np.sin(dist * 1.3), 0.0)
    # Light from the top-left: linear gradient plus a highlight on the rim.
    lum = lum * (1.0 - 0.10 * (dx + dy) / (radius * math.sqrt(2.0)))
    rim = dist > 0.90 * radius
    lum = lum + np.where(rim, 25.0 * np.cos(theta + 3.0 * math.pi / 4.0), 0.0)

    # Bolt holes on the flange: the only non-radial pattern, rotated slightly.
    angle = rng.uniform(-math.radians(6.0), math.radians(6.0))
    hole_r = 0.05 * radius
    for k in range(6):
        a = angle + k * math.pi / 3.0
        hx, hy = cx + 0.76 * radius * math.cos(a), cy + 0.76 * radius * math.sin(a)
        d_hole = np.hypot(xx - hx, yy - hy)
        cover = np.clip(hole_r - d_hole + 0.5, 0.0, 1.0)
        lum = lum * (1.0 - cover) + 55.0 * cover

    lum = lum + 2.5 * _smooth_noise(rng, size, 9)
    part = lum[..., None] * np.array([0.97, 1.0, 1.04])

    alpha = np.clip(radius - dist + 0.5, 0.0, 1.0)[..., None]  # anti-aliased edge
    image = alpha * part + (1.0 - alpha) * background
    image = image * rng.uniform(0.95, 1.05)
    image = image + rng.normal(0.0, 1.0, size=image.shape)  # faint sensor noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------


def _polyline_mask(points: np.ndarray, width: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies within width/2 of the polyline (x, y points)."""
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    half = width / 2.0
    x0 = max(int(math.floor(points[:, 0].min() - half)) - 1, 0)
    x1 = min(int(math.ceil(points[:, 0].max() + half)) + 1, w)
    y0 = max(int(math.floor(points[:, 1].min() - half)) - 1, 0)
    y1 = min(int(math.ceil(points[:, 1].max() + half)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return mask
    py, px = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    best = np.full(px.shape, np.inf)
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        vx, vy = bx - ax, by - ay
        length2 = vx * vx + vy * vy
        if length2 > 0:
            t = np.clip(((px - ax) * vx + (py - ay) * vy) / length2, 0.0, 1.0)
        else:
            t = np.zeros_like(px)
        best = np.minimum(best, np.hypot(px - (ax + t * vx), py - (ay + t * vy)))
    mask[y0:y1, x0:x1] = best <= half
    return mask


def _ellipse_mask(centre: tuple[float, float], a: float, b: float, rot: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside the rotated ellipse."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64) + 0.5
    dx, dy = xx - centre[0], yy - centre[1]
    c, s = math.cos(rot), math.sin(rot)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _point_on_part(rng: np.random.Generator, shape: tuple[int, int], frac: float) -> np.ndarray:
    """Uniform point in a disc of radius frac*min(H, W) around the image centre.

    Why: the part is centred (up to a few px), so this keeps defects on it
    without add_defect having to segment the image.
    """
    h, w = shape
    r = frac * min(h, w) * math.sqrt(rng.uniform())
    a = rng.uniform(0.0, 2.0 * math.pi)
    return np.array([w / 2 + r * math.cos(a), h / 2 + r * math.sin(a)])


def _scratch(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    s = min(shape)
    scale = max(1.0, s / 256.0)
    mid = _point_on_part(rng, shape, 0.22)
    length = rng.uniform(0.22, 0.45) * s
    heading = rng.uniform(0.0, math.pi)
    d = np.array([math.cos(heading), math.sin(heading)])
    normal = np.array([-d[1], d[0]])
    p0, p2 = mid - d * length / 2, mid + d * length / 2
    p1 = mid + normal * rng.uniform(-0.12, 0.12) * length  # bow: straight..slightly curved
    t = np.linspace(0.0, 1.0, 24)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bézier
    return _polyline_mask(pts, rng.uniform(1.0, 3.0) * scale, shape)


def _crack(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    s = min(shape)
    scale = max(1.0, s / 256.0)
    width = rng.uniform(2.0, 4.0) * scale

    def walk(start: np.ndarray, heading: float, n: int) -> np.ndarray:
        pts = [start]
        for _ in range(n):
            heading += rng.normal(0.0, 0.55)
            step = rng.uniform(0.02, 0.04) * s
            pts.append(pts[-1] + step * np.array([math.cos(heading), math.sin(heading)]))
        return np.array(pts)

    heading = rng.uniform(0.0, 2.0 * math.pi)
    main = walk(_point_on_part(rng, shape, 0.2), heading, int(rng.integers(8, 15)))
    mask = _polyline_mask(main, width, shape)
    if rng.uniform() < 0.5:  # an occasional side branch, thinner
        k = int(rng.integers(1, len(main) - 1))
        side = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
        branch = walk(main[k], side, int(rng.integers(3, 7)))
        mask |= _polyline_mask(branch, max(1.5, 0.7 * width), shape)
    return mask


def _blob(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    s = min(shape)
    a = rng.uniform(0.035, 0.08) * s
    b = a * rng.uniform(0.5, 1.0)
    centre = _point_on_part(rng, shape, 0.25)
    return _ellipse_mask((centre[0], centre[1]), a, b, rng.uniform(0.0, math.pi), shape)


_SHAPES = {"scratch": _scratch, "blob": _blob, "crack": _crack}

# Foreign colours for contamination: rust, oil/grease, red paint, blue ink.
_BLOB_COLOURS = np.array([[150.0, 72.0, 25.0], [45.0, 85.0, 35.0], [195.0, 40.0, 35.0], [40.0, 70.0, 190.0]])


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of ``kind`` onto a copy of ``image``.

    The shape is drawn first as a boolean mask and only masked pixels are
    painted, so the returned mask is exact ground truth (no changed pixel lies
    outside it).  Colours are chosen against the local appearance so that the
    defect is clearly visible.

    Returns (defective uint8 image of the same shape, bool mask (H, W)).
    """
    if kind not in _SHAPES:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {DEFECT_TYPES}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    shape = (int(image.shape[0]), int(image.shape[1]))
    min_area = max(4, math.ceil(_MIN_MASK_FRACTION * shape[0] * shape[1]))

    mask = _SHAPES[kind](rng, shape)
    for _ in range(50):  # redraw degenerate shapes (e.g. a walk that left the image)
        if mask.sum() >= min_area:
            break
        mask = _SHAPES[kind](rng, shape)
    else:
        raise ValueError(f"could not draw a {kind!r} of >= {min_area} px on a {shape} image")

    n = int(mask.sum())
    under = image[mask].astype(np.float64)  # (n, 3) original pixels
    local = float(under.mean())
    if kind == "scratch":
        # Bare metal glints on a dull surface; on a bright surface it reads dark.
        base = 240.0 if local < 165.0 else 35.0
        paint = base + rng.normal(0.0, 6.0, size=(n, 1)) + np.zeros((n, 3))
    elif kind == "crack":
        paint = 0.18 * under + rng.normal(0.0, 3.0, size=(n, 1))
    else:  # blob
        colour = _BLOB_COLOURS[rng.integers(len(_BLOB_COLOURS))]
        if np.abs(colour - under.mean(axis=0)).mean() < 60.0:  # too close: go dark
            colour = colour * 0.4
        paint = colour + rng.normal(0.0, 6.0, size=(n, 1))

    out = image.copy()
    out[mask] = np.clip(np.rint(paint), 0, 255).astype(np.uint8)
    return out, mask


# --------------------------------------------------------------------------
# Dataset on disk
# --------------------------------------------------------------------------


def _save_png(array: np.ndarray, path: Path) -> None:
    # No metadata and fixed settings: same pixels -> byte-identical file.
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=3)


def _digits(n: int) -> int:
    """Zero-padding width for n file names (000.png ...), so names sort correctly."""
    return max(3, len(str(max(n - 1, 0))))


def _write_dataset(out: Path, params: dict, seed: int, image_size: int, defects: Sequence[str]) -> None:
    """Write all images and masks into ``out`` (a fresh directory), marker last."""
    splits = [("train/good", _SPLIT_TRAIN, params["n_train"]), ("test/good", _SPLIT_TEST_GOOD, params["n_test_good"])]
    for rel, split_id, n in splits:
        d = out / rel
        d.mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([seed, split_id, i])
            _save_png(render_part(rng, image_size), d / f"{i:0{_digits(n)}d}.png")

    n = params["n_test_per_defect"]
    for kind in defects:
        split_id = _SPLIT_DEFECT_BASE + DEFECT_TYPES.index(kind)
        img_dir, gt_dir = out / "test" / kind, out / "ground_truth" / kind
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng([seed, split_id, i])
            image, mask = add_defect(render_part(rng, image_size), kind, rng)
            name = f"{i:0{_digits(n)}d}"
            _save_png(image, img_dir / f"{name}.png")
            _save_png(mask.astype(np.uint8) * 255, gt_dir / f"{name}_mask.png")

    (out / MARKER_NAME).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None


def make_demo_dataset(
    root: str | Path,
    category: str = "demo",
    *,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 60,
    n_test_good: int = 10,
    n_test_per_defect: int = 8,
    defects: Sequence[str] = DEFECT_TYPES,
) -> Path:
    """Write the demo dataset to ``root/category`` and return that path.

    Deterministic: equal arguments give byte-identical PNGs.  If the folder
    already holds a dataset made with the same parameters it is reused as is
    (cheap cache); any other existing folder raises FileExistsError, because
    this function never deletes or overwrites data it did not just create.
    The dataset is built in a temporary sibling folder and renamed into place,
    so an interrupted run never looks like a complete dataset.
    """
    if not category or category in (".", "..") or "/" in category or os.sep in category:
        raise ValueError(f"category must be a plain folder name, got {category!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if n_train < 1 or n_test_good < 0 or n_test_per_defect < 0:
        raise ValueError("need n_train >= 1 and non-negative test counts")
    if isinstance(defects, str):
        raise TypeError("defects must be a sequence of names, not a string")
    defects = tuple(defects)
    unknown = [d for d in defects if d not in DEFECT_TYPES]
    if unknown or len(set(defects)) != len(defects):
        raise ValueError(f"defects must be distinct names from {DEFECT_TYPES}, got {defects}")

    params = {
        "generator_version": _GENERATOR_VERSION,
        "category": category,
        "seed": int(seed),
        "image_size": int(image_size),
        "n_train": int(n_train),
        "n_test_good": int(n_test_good),
        "n_test_per_defect": int(n_test_per_defect),
        "defects": list(defects),
    }
    root = Path(root)
    target = root / category

    def check_existing() -> Path:
        found = _read_marker(target)
        if found == params:
            return target
        if found is None:
            why = f"it exists and has no readable {MARKER_NAME} marker (not a demo dataset?)"
        else:
            why = f"it holds a demo dataset made with different parameters {found}"
        raise FileExistsError(
            f"refusing to write the demo dataset to {target}: {why}; choose another path or remove the folder yourself"
        )

    if target.exists() or target.is_symlink():
        return check_existing()

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{category}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_dataset(tmp, params, int(seed), int(image_size), defects)
        try:
            # rename (not replace): fails instead of clobbering a folder that
            # appeared meanwhile (e.g. a concurrent run).
            os.rename(tmp, target)
        except OSError:
            if target.exists():
                return check_existing()
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)  # only ever our own, freshly created temp folder
    return target


def summary(out: Path, reused: bool) -> str:
    """One line about a written (or reused) demo dataset: counts, size, seed."""
    params = _read_marker(out) or {}
    n_def = params.get("n_test_per_defect", 0) * len(params.get("defects", []))
    return (
        f"{'reused' if reused else 'wrote'} demo dataset {out}: "
        f"{params.get('n_train')} train, {params.get('n_test_good')} good test, "
        f"{n_def} defect test ({', '.join(params.get('defects', []))}), "
        f"{params.get('image_size')} px, seed {params.get('seed')}"
    )
