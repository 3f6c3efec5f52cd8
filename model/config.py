"""Typed run configuration shared by the CLI, the Prefect flows and the saved model.

Pydantic models so the Prefect UI renders real forms and a run can be rebuilt exactly from
its logged params (`TrainConfig.model_validate(params)`).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model.calibration import ThresholdMethod
from model.scoring import MapKind, ScoreMethod

Loss = Literal["mse", "l1", "ssim_l1"]


class AutoencoderConfig(BaseModel):
    """Architecture and training of the convolutional autoencoder."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(128, description="square input size in pixels (multiple of 16, e.g. 128 or 256)")
    base_channels: int = Field(32, ge=4, le=256, description="channels of the first encoder stage")
    latent_channels: int = Field(32, ge=1, le=512, description="channels of the bottleneck feature map")
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(16, ge=1, le=1024)
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    loss: Loss = Field("ssim_l1", description="mse (the seed's baseline), l1, or ssim_l1 (SSIM + L1)")
    augment: bool = Field(False, description="random flips/90° rotations (valid for top-view parts like Bottle)")
    map_kind: MapKind = Field("l2_ssim", description="per-pixel residual: l2, l1, ssim or l2_ssim")
    map_sigma: float = Field(2.0, ge=0, description="Gaussian smoothing of the anomaly map (pixels)")
    score_sigma: float = Field(4.0, ge=0, description="extra smoothing before the smoothed_max image score")

    @field_validator("image_size")
    @classmethod
    def _size_ok(cls, v: int) -> int:
        if v < 32 or v > 1024 or v % 16:
            raise ValueError("image_size must be a multiple of 16 between 32 and 1024")
        return v


class TrainConfig(BaseModel):
    """Everything one training run needs; logged as params, so it reproduces the run."""

    model_config = ConfigDict(extra="forbid")

    data_root: str | None = Field(None, description="MVTec-layout root; None = the built-in demo data")
    category: str = Field("bottle", description="category folder under data_root (demo data: 'demo')")
    detector: Literal["autoencoder"] = "autoencoder"
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    score_method: ScoreMethod = Field("smoothed_max", description="image score used for decisions")
    threshold_method: ThresholdMethod = Field("percentile", description="percentile or fpr on held-out normals; f1_max needs labels")
    threshold_percentile: float = Field(99.0, gt=0, le=100)
    target_fpr: float = Field(0.05, ge=0, lt=1)
    pixel_threshold_percentile: float = Field(99.5, gt=0, le=100, description="of held-out normal map values")
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="train/good share held out for calibration")
    seed: int = 0
    num_threads: int | None = Field(None, ge=1, description="torch threads; None = all cores")
    cache_dir: str | None = Field(None, description="disk cache of decoded, resized images")
    experiment_name: str | None = Field(None, description="MLflow experiment; None = anomaflow-<category>")
    registered_model_name: str | None = Field(None, description="None = anomaflow-<category>")

    @property
    def image_size(self) -> int:
        """Input size of the selected detector family (what the data is resized to)."""
        return getattr(self, self.detector).image_size

    @property
    def model_name(self) -> str:
        return self.registered_model_name or f"anomaflow-{self.category}"

    @property
    def experiment(self) -> str:
        return self.experiment_name or f"anomaflow-{self.category}"


def flatten_params(cfg: BaseModel, prefix: str = "") -> dict[str, object]:
    """Nested config -> flat {"autoencoder.epochs": 30, ...} for MLflow params."""
    out: dict[str, object] = {}
    for key, value in cfg:
        name = f"{prefix}{key}"
        if isinstance(value, BaseModel):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out
