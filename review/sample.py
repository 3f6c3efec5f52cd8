"""A generated inspection output folder (results.csv + review copies), for tests and benchmarks
of the review app without training a model: the same files `anomaflow inspect` writes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from anomaflow.model.operations.heatmaps import overlay_rgb
from anomaflow.model.operations.inspection import FIELDS, RESULTS_FILE, Row, now_iso, save_png_atomic, view_paths


def make_inspection_folder(
    out: str | Path,
    n: int = 40,
    seed: int = 0,
    threshold: float = 1.0,
    images: int | None = None,
    model_name: str = "anomaflow-demo",
    model_version: str = "1",
    products: Sequence[str] = (),
) -> Path:
    """n rows: scores from a mixture (most NORMAL, some DEFECT), every 25th an ERROR row; the
    first `images` (default all) get 48x48 view and overlay JPEGs. `products`: model names the
    rows take in turn (several products in one folder) instead of `model_name`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = [",".join(f'"{f}"' for f in FIELDS) + "\n"]
    for i in range(n):
        name = products[i % len(products)] if products else model_name
        sha = hashlib.sha256(f"{seed}/{i}".encode()).hexdigest()
        if i % 25 == 24:
            row = Row(
                f"batch/{i:05d}.png",
                sha,
                None,
                "ERROR",
                threshold,
                name,
                model_version,
                now_iso(),
                "cannot decode image",
            )
        else:
            score = float(rng.gamma(4.0, 0.15) if rng.random() > 0.15 else 1.0 + rng.gamma(2.0, 0.4))
            row = Row(
                f"batch/{i:05d}.png",
                sha,
                score,
                "DEFECT" if score > threshold else "NORMAL",
                threshold,
                name,
                model_version,
                now_iso(),
            )
            if images is None or i < images:
                picture = np.full((48, 48, 3), 90 + (i * 7) % 120, np.uint8)
                heat = np.zeros((48, 48), np.float32)
                heat[10 + i % 20 : 20 + i % 20, 12:26] = score
                view, overlay = view_paths(out, sha)
                save_png_atomic(picture, view)
                save_png_atomic(overlay_rgb(picture, heat, 2 * threshold), overlay)
        lines.append(row.line().decode())
    (out / RESULTS_FILE).write_text("".join(lines))
    return out
