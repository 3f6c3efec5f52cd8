"""The one interface every detector family offers.

In the spirit of a scikit-learn estimator: the constructor takes config, `fit` learns from
good images only, and everything learned (weights, thresholds, preprocessing) is saved with
the model, so inspection can never apply a model with the wrong resize or threshold.
Images enter as uint8 arrays (N,H,W,3) already placed in the detector's `frame` (see
model.data.frame: the short side is `image_size`, the long side follows the training images' aspect
ratio); the frame is learned in `fit` from the images' shape and saved with the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from anomaflow.model.data.frame import Frame, square
from anomaflow.model.data.preprocessing import Batch, Preprocessing
from anomaflow.model.detectors.scoring import SCORE_METHODS, fill_outside, image_scores
from anomaflow.model.evaluation.calibration import decide
from anomaflow.model.files import atomic_write, write_json_atomic

# Version 2: frame, keep_aspect and the drift reference are always written. Version 1 files come in
# three shapes (before drift references, before frames, before the aspect policy); `migrate` reads them.
FORMAT_VERSION = 2
METADATA_FILE = "detector.json"
ProgressFn = Callable[[dict[str, Any]], None]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W,3) -> float (N,3,H,W) in [0,1], the input every family's network takes."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def save_torch_atomic(obj: Any, path: Path) -> None:
    """torch.save written whole (model.files.atomic_write): a crash never leaves half a weights file."""
    with atomic_write(path) as fh:
        torch.save(obj, fh)


def migrate(meta: dict[str, Any], source: Path | str = METADATA_FILE) -> dict[str, Any]:
    """Saved metadata of any known format version brought to FORMAT_VERSION: the one place that
    knows old formats. Version 1 without a frame was a square frame with images squashed into it;
    without a reference it has no drift report."""
    version = meta.get("format_version")
    if version == 1:
        size = meta.get("image_size") or meta.get("config", {}).get("image_size")
        meta = {
            **meta,
            "format_version": 2,
            "frame": meta.get("frame") or [size, size],
            "keep_aspect": bool(meta.get("keep_aspect", False)),
            "reference": meta.get("reference"),
        }
        version = 2
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{source}: unsupported format_version {version!r} (this anomaflow reads 1 to {FORMAT_VERSION})"
        )
    return meta


@dataclass
class ScoreResult:
    """Anomaly maps (N,H,W) at input resolution and pooled image scores by method; `valid`
    (N,H,W) marks each image's own pixels when some images are padded in the frame (else None)."""

    maps: np.ndarray
    scores: dict[str, np.ndarray]
    valid: np.ndarray | None = None


class Detector(ABC):
    family: ClassVar[str]

    def __init__(self, image_size: int, score_method: str = "smoothed_max", score_sigma: float = 4.0) -> None:
        if score_method not in SCORE_METHODS:
            raise ValueError(f"unknown score method {score_method!r}; expected one of {SCORE_METHODS}")
        self.image_size = image_size
        self.frame: Frame = square(image_size)  # set from the training images by fit()
        self.keep_aspect = True  # False: images squashed into the frame (--no-keep-aspect, version 1 files)
        self.score_method = score_method
        self.score_sigma = score_sigma
        self.threshold: float | None = None  # image-level, calibrated on held-out normals
        self.pixel_threshold: float | None = None  # segmentation threshold for IoU / overlays
        self.reference: dict[str, Any] | None = (
            None  # what inspection batches are compared with (model.operations.drift)
        )

    # -- learning and inference -------------------------------------------------------
    @abstractmethod
    def fit(
        self, images: np.ndarray, holdout: np.ndarray | None = None, progress: ProgressFn | None = None
    ) -> list[dict[str, Any]]:
        """Learn from good images; return per-epoch history records."""

    @abstractmethod
    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """Per-pixel anomaly scores (N,H,W) float32 at input resolution."""

    def map_tensor(self, x: torch.Tensor, exportable: bool = False) -> torch.Tensor:
        """[0,1] images (N,3,H,W) -> anomaly maps (N,H,W), torch operators only: the computation
        model.operations.export traces into an ONNX graph. exportable: no library calls outside torch (faiss)."""
        raise NotImplementedError(f"{self.family} models cannot be exported")

    def check_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        expected = (*self.frame, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"expected images of shape (N, {self.frame[0]}, {self.frame[1]}, 3), got {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images, got {images.dtype}")
        return images

    def set_frame(self, images: np.ndarray) -> np.ndarray:
        """Learn the frame from the training images' shape (fit calls this first)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) != self.image_size:
            raise ValueError(
                f"expected training images (N, H, W, 3) with short side {self.image_size}, got {images.shape}"
            )
        self.frame = (int(images.shape[1]), int(images.shape[2]))
        return self.check_images(images)

    def set_input(self, frame: Frame, keep_aspect: bool) -> None:
        """The preprocessing the training images were prepared with (fit learns the same frame from
        their shape); a fusion takes its members'."""
        self.frame, self.keep_aspect = (int(frame[0]), int(frame[1])), bool(keep_aspect)

    def calibrate(
        self,
        threshold: float | None = None,
        pixel_threshold: float | None = None,
        reference: dict[str, Any] | None = None,
    ) -> None:
        """Set what calibration learned on held-out normals (or a reviewed recalibration): the
        image threshold, the pixel threshold, the drift reference. None leaves a value as it is."""
        if threshold is not None:
            self.threshold = float(threshold)
        if pixel_threshold is not None:
            self.pixel_threshold = float(pixel_threshold)
        if reference is not None:
            self.reference = reference

    def score(self, images: np.ndarray, valid: np.ndarray | None = None) -> ScoreResult:
        """Maps and image scores; with `valid`, padding is left out of both (model.data.frame)."""
        maps = fill_outside(self.anomaly_maps(images), valid)
        return ScoreResult(maps=maps, scores=image_scores(maps, self.score_sigma, valid), valid=valid)

    @property
    def preprocessing(self) -> Preprocessing:
        """How this model prepares every image it scores, from what it saves (frame, keep_aspect)."""
        return Preprocessing(self.frame, self.keep_aspect)

    def score_batch(self, batch: Batch) -> ScoreResult:
        """Score images prepared by `self.preprocessing` (inspection and the served model)."""
        if batch.images.shape[1:3] != self.frame:
            raise ValueError(
                f"batch prepared for a {batch.images.shape[1]}x{batch.images.shape[2]} frame, "
                f"the model's is {self.frame[0]}x{self.frame[1]}"
            )
        return self.score(batch.images, batch.valid)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            raise RuntimeError("the detector has no calibrated threshold yet")
        return decide(scores, self.threshold)

    # -- persistence -------------------------------------------------------------------
    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """Constructor config, JSON-serialisable."""

    @abstractmethod
    def _save_weights(self, directory: Path) -> None: ...

    @abstractmethod
    def _load_weights(self, directory: Path) -> None: ...

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any]) -> "Detector": ...

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "image_size": self.image_size,
            "frame": list(self.frame),
            "keep_aspect": self.keep_aspect,
            "score_method": self.score_method,
            "score_sigma": self.score_sigma,
            "threshold": self.threshold,
            "pixel_threshold": self.pixel_threshold,
            "reference": self.reference,
            "config": self.config_dict(),
        }

    def restore(self, meta: dict[str, Any]) -> None:
        """Everything but the weights from saved metadata at FORMAT_VERSION (see `migrate`)."""
        self.score_method, self.score_sigma = meta["score_method"], meta["score_sigma"]
        self.threshold, self.pixel_threshold, self.reference = (
            meta["threshold"],
            meta["pixel_threshold"],
            meta["reference"],
        )
        self.set_input(tuple(meta["frame"]), meta["keep_aspect"])

    def save(self, directory: str | Path) -> Path:
        """Write weights and metadata; the metadata file is written last, atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_weights(directory)
        write_json_atomic(self.metadata(), directory / METADATA_FILE)
        return directory
