"""What the feature-based families share: a frozen pretrained backbone, one patch-descriptor
grid per image, and the map from patch scores to a smoothed anomaly map at the frame's size.

PatchCore (nearest patch in a memory bank) and PaDiM (a Gaussian per grid position) differ only
in how a descriptor is scored, so everything before and after that lives here once.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from anomaflow.model.config import FeatureConfig
from anomaflow.model.detectors.backbone import FeatureBackbone
from anomaflow.model.detectors.base import Detector, to_tensor
from anomaflow.model.detectors.scoring import gaussian_blur


def aggregate(features: list[torch.Tensor], pool_size: int = 3, feature_dim: int | None = None) -> torch.Tensor:
    """Feature maps of several stages -> one (N, h, w, D) patch-descriptor grid.

    Each map is averaged over its pool_size x pool_size neighbourhood (stride 1, borders
    averaged over the pixels that exist), brought onto the grid of the first map (coarser
    maps upsampled bilinearly, finer ones average-pooled), and concatenated along channels;
    optionally averaged down to `feature_dim` channels.
    """
    h, w = features[0].shape[-2:]
    out = []
    for f in features:
        if pool_size > 1:
            f = F.avg_pool2d(f, pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)
        if f.shape[-2] > h or f.shape[-1] > w:  # a finer stage: average down onto the grid
            f = F.adaptive_avg_pool2d(f, (h, w))
        elif f.shape[-2:] != (h, w):
            f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        out.append(f)
    x = torch.cat(out, dim=1).permute(0, 2, 3, 1)  # (N, h, w, D)
    if feature_dim is not None and feature_dim < x.shape[-1]:
        n = x.shape[0]
        x = F.adaptive_avg_pool1d(x.reshape(-1, 1, x.shape[-1]), feature_dim).reshape(n, h, w, feature_dim)
    return x.contiguous()


def print_feature_phase(family: str, rec: dict[str, Any], unit: str) -> bool:
    """The progress line of a feature family's backbone pass (`rec["phase"] == "features"`), with
    `unit` the record's count of what the features became (patches, positions); False for other phases."""
    if rec.get("phase") != "features":
        return False
    print(
        f"{family}: features of {rec['images']} images -> {rec[unit]} {unit} "
        f"x {rec['feature_dim']} dims ({rec['seconds']:.1f}s)",
        flush=True,
    )
    return True


def fit_record(t0: float, feature_seconds: float, **extra: Any) -> dict[str, Any]:
    """The one history record of a feature family's fit: no epochs (1 of 1) and no losses, the time
    since t0, and what the family reports (`extra`, in its order)."""
    head = {"epoch": 1, "epochs": 1, "train_loss": 0.0, "val_loss": None}
    return {**head, "seconds": time.perf_counter() - t0, "feature_seconds": feature_seconds, **extra}


class FeatureDetector(Detector):
    """A detector over backbone patch descriptors; subclasses score the descriptors."""

    config_class: ClassVar[type[FeatureConfig]]
    default_score_method: ClassVar[str] = "max"

    def __init__(
        self,
        config: FeatureConfig | None = None,
        score_method: str | None = None,
        seed: int = 0,
        expected_weights_sha256: str | None = None,
    ) -> None:
        self.config = config or self.config_class()
        super().__init__(self.config.image_size, score_method or self.default_score_method, self.config.score_sigma)
        self.seed = seed
        self.backbone = FeatureBackbone(self.config.backbone, self.config.layers, self.config.weights_path)
        if expected_weights_sha256 is not None and expected_weights_sha256 != self.backbone.weights_sha256:
            raise ValueError(
                f"backbone weights {self.backbone.weights_file} (sha256 {self.backbone.weights_sha256[:12]}...) "
                f"differ from the ones this model was fitted with (sha256 {expected_weights_sha256[:12]}...); "
                f"install the same weights (package {self.config.backbone!r} version / weights_path) or refit"
            )
        self.history: list[dict[str, Any]] = []

    @property
    def feature_dim(self) -> int:
        total = sum(self.backbone.channels)
        return min(total, self.config.feature_dim) if self.config.feature_dim else total

    def features(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images (N,H,W,3) -> patch descriptors (N, h, w, D), in batches of config.batch_size."""
        images = self.check_images(images)
        cfg = self.config
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), cfg.batch_size):
                feats = self.backbone(to_tensor(images[i : i + cfg.batch_size]))
                out.append(aggregate(feats, cfg.pool_size, cfg.feature_dim))
        if not out:
            return torch.zeros(0, 0, 0, 0)
        return torch.cat(out)

    def patch_scores(self, images: np.ndarray) -> torch.Tensor:
        """Anomaly score of every patch of every image: (N, h, w) on the feature grid."""
        self.require_fitted()
        return self.score_descriptors(self.features(images))

    @abstractmethod
    def score_descriptors(self, feats: torch.Tensor, exportable: bool = False) -> torch.Tensor:
        """Patch descriptors (N, h, w, D) -> patch scores (N, h, w). exportable: torch operators only
        (no faiss), so the exported graph (model.operations.export) runs this very code."""

    @abstractmethod
    def require_fitted(self) -> None:
        """Raise RuntimeError naming what is missing when the detector has not been fitted."""

    def map_tensor(self, x: torch.Tensor, exportable: bool = False) -> torch.Tensor:
        """[0,1] images (N,3,H,W) -> smoothed anomaly maps (N,H,W) at the frame's size."""
        feats = aggregate(self.backbone(x), self.config.pool_size, self.config.feature_dim)
        s = self.score_descriptors(feats, exportable).unsqueeze(1)
        m = F.interpolate(s, size=self.frame, mode="bilinear", align_corners=False)
        return gaussian_blur(m, self.config.map_sigma).squeeze(1)

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        images = self.check_images(images)
        self.require_fitted()
        maps = []
        with torch.inference_mode():
            for i in range(0, len(images), self.config.batch_size):
                maps.append(self.map_tensor(to_tensor(images[i : i + self.config.batch_size])))
        if not maps:
            return np.zeros((0, *self.frame), np.float32)
        return torch.cat(maps).numpy().astype(np.float32, copy=False)

    # -- persistence ---------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            self.family: self.config.model_dump(),
            "seed": self.seed,
            "backbone_weights": {"file": self.backbone.weights_file.name, "sha256": self.backbone.weights_sha256},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FeatureDetector":
        weights = config.get("backbone_weights") or {}
        return cls(
            cls.config_class.model_validate(config[cls.family]),
            seed=config.get("seed", 0),
            expected_weights_sha256=weights.get("sha256"),
        )
