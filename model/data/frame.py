"""The model's input frame: every image keeps its aspect ratio, nothing is squashed.

A dataset gets one frame (height, width): the short side is the configured image size and the
long side follows the training images' median aspect ratio (a multiple of 32, so every stride of
the backbone and the autoencoder divides it). Each image is resized to fit inside the frame with
its own aspect ratio and centred; the rest (only for images whose aspect ratio differs from the
median) is filled by repeating the edge pixels. A `Box` records where the image lies in the frame:
anomaly maps are scored and evaluated inside it only, and are cropped and resized back to the
image's own size for heat maps and overlays. Square images in a square frame are unchanged.

Why not squash: a thin crack across a 500x1250 image loses 80 % of its length resolution when
the image is squeezed to a square, and a texture stretched by different factors in different
images looks anomalous to a nearest-neighbour model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

Frame = tuple[int, int]  # (height, width) of the model input
FRAME_MULTIPLE = 32  # every backbone stride divides this (the autoencoder's short_side/8 too, see model_frame)
MAX_ASPECT = 4.0  # long/short side of the frame at most; beyond it a frame would be mostly padding or huge
FILL_TOLERANCE = 0.02  # an image within 2 % of the frame's aspect ratio is resized to fill it (no 1-px padding stripes)


@dataclass(frozen=True)
class Box:
    """Where an image lies inside the frame: rows top..top+height, columns left..left+width."""

    top: int
    left: int
    height: int
    width: int

    def fills(self, frame: Frame) -> bool:
        return (self.top, self.left, self.height, self.width) == (0, 0, frame[0], frame[1])


def square(size: int) -> Frame:
    return (int(size), int(size))


def as_frame(size: int | Sequence[int]) -> Frame:
    """An int is a square frame; a (height, width) pair is taken as is."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        return square(int(size))
    h, w = (int(v) for v in size)  # type: ignore[union-attr]
    if h <= 0 or w <= 0:
        raise ValueError(f"frame sides must be positive, got {h}x{w}")
    return (h, w)


def model_frame(sizes: Sequence[tuple[int, int]], short_side: int, keep_aspect: bool = True) -> Frame:
    """The frame for a dataset from its training images' (width, height): median aspect ratio.

    Rounded to FRAME_MULTIPLE (or short_side/8, the autoencoder's total stride, when larger) on
    the long side and capped at MAX_ASPECT; a (near-)square dataset gets the square frame it had
    before frames existed.
    """
    if not keep_aspect or not sizes:
        return square(short_side)
    multiple = max(FRAME_MULTIPLE, short_side // 8)
    ratio = float(np.median([w / h for w, h in sizes]))
    ratio = min(max(ratio, 1.0 / MAX_ASPECT), MAX_ASPECT)
    long_over_short = max(ratio, 1.0 / ratio)
    long_side = max(short_side, int(round(short_side * long_over_short / multiple)) * multiple)
    return (short_side, long_side) if ratio >= 1.0 else (long_side, short_side)


def fit_box(size: tuple[int, int], frame: Frame) -> Box:
    """The box an image of (width, height) occupies in the frame when it keeps its aspect ratio."""
    w, h = size
    fh, fw = frame
    scale = min(fh / h, fw / w)
    bh, bw = max(1, min(fh, int(round(h * scale)))), max(1, min(fw, int(round(w * scale))))
    if (fh - bh) <= FILL_TOLERANCE * fh and (fw - bw) <= FILL_TOLERANCE * fw:
        return Box(0, 0, fh, fw)
    top, left = (fh - bh) // 2, (fw - bw) // 2
    return Box(top, left, bh, bw)


def frame_box(size: tuple[int, int], frame: Frame, keep_aspect: bool) -> Box:
    """The box an image of (width, height) occupies: `fit_box` when it keeps its aspect ratio,
    the whole frame when it is squashed. The one rule images, masks and valid masks all follow."""
    return fit_box(size, frame) if keep_aspect else Box(0, 0, *frame)


def place(
    img: Image.Image, frame: Frame, resample: Image.Resampling, box: Box | None = None, pad_edge: bool = True
) -> np.ndarray:
    """Resize a PIL image into its box (default: from its own size) and pad the rest of the frame
    (edge pixels, or zeros). Pass the box computed from the file's displayed size when the image
    was decoded at reduced scale, so image, mask and map boxes agree to the pixel."""
    box = box or fit_box(img.size, frame)
    if img.size != (box.width, box.height):
        img = img.resize((box.width, box.height), resample)
    arr = np.asarray(img)
    if box.fills(frame):
        return np.ascontiguousarray(arr)
    pad = [(box.top, frame[0] - box.top - box.height), (box.left, frame[1] - box.left - box.width)] + [(0, 0)] * (
        arr.ndim - 2
    )
    return np.pad(arr, pad, mode="edge" if pad_edge else "constant")


def valid_mask(boxes: Sequence[Box], frame: Frame) -> np.ndarray | None:
    """(N,H,W) bool, True inside each image's box; None when every image fills the frame."""
    if all(b.fills(frame) for b in boxes):
        return None
    out = np.zeros((len(boxes), *frame), dtype=bool)
    for i, b in enumerate(boxes):
        out[i, b.top : b.top + b.height, b.left : b.left + b.width] = True
    return out


def to_image_frame(anomaly_map: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """A map on the frame -> the same map over the image itself at (width, height), float32."""
    crop = np.ascontiguousarray(
        anomaly_map[box.top : box.top + box.height, box.left : box.left + box.width], dtype=np.float32
    )
    if (crop.shape[1], crop.shape[0]) == tuple(size):
        return crop
    return np.asarray(Image.fromarray(crop, mode="F").resize(tuple(size), Image.Resampling.BILINEAR), dtype=np.float32)


def display_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(width, height) scaled down so the long side is at most `longest`, aspect ratio kept."""
    w, h = size
    scale = min(1.0, longest / max(w, h))
    return max(1, int(round(w * scale))), max(1, int(round(h * scale)))
