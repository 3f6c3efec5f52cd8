"""Heat-map colouring for the inspection hot path: numpy look-up tables and Pillow, no matplotlib.

A defect's figures were coloured by matplotlib and written as RGB PNGs at up to 1024 px, about
0.3 s per DEFECT on a 900x900 part (benchmarks/inspection_speed.py). Here the map becomes a uint8
index into a 256-entry jet table once; the heat map is a palette PNG of that index (one byte a
pixel) and the overlay a Pillow blend. Colours equal matplotlib's "jet" with 256 entries (tested).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# matplotlib's jet segment data: (x, value) breakpoints per channel, linear in between.
_JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
LUT_SIZE = 256


def _table() -> np.ndarray:
    x = np.linspace(0.0, 1.0, LUT_SIZE)
    channels = [np.interp(x, *zip(*_JET[c])) for c in ("red", "green", "blue")]
    return (np.stack(channels, axis=1) * 255).astype(np.uint8)


JET_LUT = _table()  # (256, 3) uint8
JET_PALETTE = JET_LUT.reshape(-1).tolist()


def map_index(anomaly_map: np.ndarray, vmax: float) -> np.ndarray:
    """Map -> uint8 colour index on a fixed scale 0..vmax (so colours mean the same in every image);
    values at or above vmax take the last entry, as matplotlib's colour maps do."""
    scaled = np.nan_to_num(np.asarray(anomaly_map, np.float32), nan=0.0, posinf=vmax, neginf=0.0)
    scaled = scaled * np.float32(LUT_SIZE / max(vmax, 1e-12))
    return np.clip(scaled, 0, LUT_SIZE - 1).astype(np.uint8)


def heatmap_rgb(anomaly_map: np.ndarray, vmax: float) -> np.ndarray:
    """Map -> uint8 RGB (H, W, 3) through the jet table."""
    return JET_LUT[map_index(anomaly_map, vmax)]


def heatmap_image(anomaly_map: np.ndarray, vmax: float) -> Image.Image:
    """Map -> palette image with the jet table: the same colours as heatmap_rgb at a third of the bytes."""
    img = Image.fromarray(map_index(anomaly_map, vmax))  # "L"; putpalette makes it "P"
    img.putpalette(JET_PALETTE)
    return img


def overlay_image(image, anomaly_map: np.ndarray, vmax: float, alpha: float = 0.45) -> Image.Image:
    """The part (uint8 RGB array or Pillow image) with its heat map blended in."""
    return blend(image, heatmap_image(anomaly_map, vmax), alpha)


def blend(image, heat: Image.Image, alpha: float = 0.45) -> Image.Image:
    """Blend a heat map (palette image) into the part: palette -> RGB and the blend are single C
    passes in Pillow (rounding to nearest), so a DEFECT's heat map and overlay share one colouring."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if heat.size != picture.size:
        raise ValueError(f"map {heat.size} and picture {picture.size} differ in size")
    return Image.blend(picture.convert("RGB"), heat.convert("RGB"), alpha)


def overlay_rgb(image: np.ndarray, anomaly_map: np.ndarray, vmax: float, alpha: float = 0.45) -> np.ndarray:
    return np.asarray(overlay_image(image, anomaly_map, vmax, alpha))
