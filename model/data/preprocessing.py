"""How a file becomes model input: one object, saved with the detector, that every path uses.

Training, evaluation, inspection, the served model and the benchmarks all prepare images through
a `Preprocessing` (the frame and whether images keep their aspect ratio in it), never by passing
the two settings to the loaders one by one: a caller that passes the frame and forgets the other
half would train on letterboxed images a model that inspects squashed ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaflow.model.data import datasets as data
from anomaflow.model.data.frame import Box, Frame, as_frame, frame_box, model_frame, valid_mask

Source = tuple[str | Path, bytes | None]  # a path (for messages and decoding) and its bytes when already read


@dataclass(frozen=True)
class Framed:
    """One image prepared for the model: its pixels in the frame, where it lies there, and its
    displayed (width, height), which heat maps are mapped back to."""

    array: np.ndarray
    box: Box
    size: tuple[int, int]
    picture: Any = None  # the decoded RGB Pillow image, kept only when asked (inspection's DEFECT overlays)


@dataclass
class Batch:
    """A stack of framed images ready for `Detector.score`."""

    images: np.ndarray
    boxes: list[Box]
    sizes: list[tuple[int, int]]
    valid: np.ndarray | None


@dataclass(frozen=True)
class Preprocessing:
    frame: Frame
    keep_aspect: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame", as_frame(self.frame))

    @classmethod
    def for_training(cls, samples: Sequence[data.Sample], short_side: int, keep_aspect: bool) -> "Preprocessing":
        """The frame for a training set (model.data.frame.model_frame), from image headers only."""
        return cls(model_frame(data.image_sizes(samples), short_side, keep_aspect), keep_aspect)

    def describe(self) -> str:
        return f"{self.frame[0]}x{self.frame[1]} (HxW, " + ("aspect ratio kept)" if self.keep_aspect else "squashed)")

    # -- one image -------------------------------------------------------------------------
    def box(self, size: tuple[int, int]) -> Box:
        return frame_box(size, self.frame, self.keep_aspect)

    def image(self, path: str | Path, raw: bytes | None = None, keep_picture: bool = False) -> Framed:
        arr, box, shown, picture = data.load_framed_decoded(path, self.frame, data=raw, keep_aspect=self.keep_aspect)
        return Framed(arr, box, shown, picture if keep_picture else None)

    # -- batches -----------------------------------------------------------------------------
    def stack(self, framed: Sequence[Framed]) -> Batch:
        boxes = [f.box for f in framed]
        images = np.stack([f.array for f in framed]) if framed else np.zeros((0, *self.frame, 3), np.uint8)
        return Batch(images, boxes, [f.size for f in framed], valid_mask(boxes, self.frame) if framed else None)

    def batch(self, sources: Sequence[Source]) -> Batch:
        """Decode and frame every source; the first unreadable one raises (data.DataError)."""
        return self.stack([self.image(p, raw) for p, raw in sources])

    # -- dataset samples (training and evaluation, through the decoded-image cache) --------
    def images(self, samples: Sequence[data.Sample], cache: data.ImageCache | None = None) -> np.ndarray:
        if not samples:
            return np.zeros((0, *self.frame, 3), np.uint8)
        return data.load_images(samples, self.frame, cache, keep_aspect=self.keep_aspect)

    def masks(self, samples: Sequence[data.Sample], cache: data.ImageCache | None = None) -> np.ndarray:
        if not samples:
            return np.zeros((0, *self.frame), bool)
        return data.load_masks(samples, self.frame, cache, keep_aspect=self.keep_aspect)

    def valid(self, samples: Sequence[data.Sample]) -> np.ndarray | None:
        """(N,H,W) each image's own pixels in the frame; None when no image is padded."""
        return data.valid_masks(samples, self.frame, self.keep_aspect)
