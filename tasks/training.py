"""Load images once and train the detector on good images only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anomaflow.model import pipeline
from anomaflow.model.config import TrainConfig
from anomaflow.model.data import datasets as data
from anomaflow.model.data.screen import Screen
from anomaflow.model.detectors.base import Detector
from anomaflow.model.evaluation.selection import Selection, SyntheticCheck, near_chance_warning, synthetic_check
from anomaflow.tasks import tracking


@dataclass
class TrainedModel:
    detector: Detector
    history: list[dict[str, Any]]
    train_seconds: float
    logged_epochs: set[int] = field(default_factory=set)  # epochs already in the MLflow run (live)

    def unlogged_history(self) -> list[dict[str, Any]]:
        return [r for r in self.history if int(r.get("epoch", 0)) not in self.logged_epochs]


@task(name="load_images", cache_policy=NO_CACHE)
def load_images(dataset: data.Dataset, config: TrainConfig) -> pipeline.Arrays:
    log = get_run_logger()
    return pipeline.load_arrays(dataset, config, log=log.info)


@task(name="screen_training_set", cache_policy=NO_CACHE)
def screen_training_set(config: TrainConfig, arrays: pipeline.Arrays) -> tuple[pipeline.Arrays, Screen]:
    """Cross-fitted screen of train/good; with exclude_suspects the suspects leave fit and holdout."""
    log = get_run_logger()
    pipeline.configure_threads(config.num_threads)
    found = pipeline.screen_training_set(config, arrays, log=log.info)
    # INFO, not WARNING: a z > 3.5 screen flags a few good images on most sets (3-5 of Bottle's 209), and the
    # report sits in validation.json and the MLflow tag; leaving them out is the user's call (--exclude-suspects).
    hint = "" if config.exclude_suspects or not found.suspects else " (report only; --exclude-suspects leaves them out)"
    log.info("%s%s", found.summary(), hint)
    if config.exclude_suspects and found.suspects:
        arrays, found = pipeline.without_suspects(arrays, found)
        log.info(
            "left %d suspects out of training and calibration (--exclude-suspects): %d fit, %d held-out images remain",
            len(found.excluded),
            len(arrays.fit),
            len(arrays.holdout),
        )
    return arrays, found


@task(name="train_model", cache_policy=NO_CACHE)
def train_model(config: TrainConfig, arrays: pipeline.Arrays, run_id: str | None = None) -> TrainedModel:
    """Fit; with run_id each epoch's metrics go to that MLflow run as the epoch ends (best effort:
    an epoch the server missed is logged with the rest at the end)."""
    log = get_run_logger()
    logged: set[int] = set()
    threads = pipeline.configure_threads(config.num_threads)
    log.info(
        "training %s on %d good images (%d held out), %d torch threads",
        config.detector,
        len(arrays.fit),
        len(arrays.holdout),
        threads,
    )

    def progress(rec: dict[str, Any]) -> None:
        if "train_loss" not in rec:  # a family without epochs (PatchCore): log its stage record
            log.info("%s", {k: round(v, 3) if isinstance(v, float) else v for k, v in rec.items()})
            return
        val = f" val_loss={rec['val_loss']:.5f}" if rec.get("val_loss") is not None else ""
        log.info("epoch %d/%d loss=%.5f%s (%.1fs)", rec["epoch"], rec["epochs"], rec["train_loss"], val, rec["seconds"])
        if run_id is not None:
            try:
                tracking.log_epoch(run_id, rec)
                logged.add(int(rec["epoch"]))
            except Exception as exc:
                log.warning("epoch %d not logged live to MLflow (%s); it is logged at the end", rec["epoch"], exc)

    det, history, seconds = pipeline.fit_detector(config, arrays, progress=progress)
    log.info("trained in %.1fs", seconds)
    return TrainedModel(det, history, seconds, logged)


@task(name="choose_detector", cache_policy=NO_CACHE)
def choose_detector(
    config: TrainConfig, arrays: pipeline.Arrays, dataset: data.Dataset, screened: Screen | None = None
) -> tuple[Selection, pipeline.Arrays]:
    """--detector auto: candidates scored on synthetic defects in held-out normals (never the test
    split), then the frame policy; returns the choice and the arrays (frame) the run goes on with."""
    log = get_run_logger()
    pipeline.configure_threads(config.num_threads)
    choice, arrays = pipeline.choose_detector(config, dataset, arrays, screened, log=log.info)
    log.info(
        "auto: chose %s (%s)",
        choice.chosen,
        ", ".join(f"{r['name']} {r.get('syn_image_auroc', float('nan')):.4f}" for r in choice.rows),
    )
    if choice.warning:
        log.warning("%s", choice.warning)
    return choice, arrays


@task(name="check_on_synthetic_defects", cache_policy=NO_CACHE)
def check_on_synthetic_defects(
    detector: Detector, config: TrainConfig, arrays: pipeline.Arrays
) -> tuple[SyntheticCheck, str]:
    """Synthetic-defect AUROC of the trained model on held-out normals; a warning when near chance."""
    check = synthetic_check(detector, arrays.holdout, arrays.holdout_valid, config.seed)
    warning = near_chance_warning(f"the {detector.family} model", check.metrics.get("syn_image_auroc"))
    if warning:
        get_run_logger().warning("%s", warning)
    return check, warning


@dataclass
class Fitted:
    """The detector a run goes on with, how it was checked on synthetic defects, and the config
    and arrays (frame) it was fitted with: with auto, the chosen candidate's."""

    config: TrainConfig
    arrays: pipeline.Arrays
    trained: TrainedModel
    synthetic: SyntheticCheck
    warning: str
    selection: Selection | None = None


def fit_detector(
    config: TrainConfig, arrays: pipeline.Arrays, dataset: data.Dataset, screened: Screen | None, run_id: str
) -> Fitted:
    """--detector auto: the candidate choose_detector picked, already fitted and checked while
    choosing; otherwise train the configured family and check it on synthetic defects."""
    if config.detector == "auto":
        selection, arrays = choose_detector(config, arrays, dataset, screened)
        trained = TrainedModel(selection.detector, selection.history, selection.fit_seconds)
        return Fitted(selection.config, arrays, trained, selection.synthetic, selection.warning, selection)
    trained = train_model(config, arrays, run_id)
    synthetic, warning = check_on_synthetic_defects(trained.detector, config, arrays)
    return Fitted(config, arrays, trained, synthetic, warning)
