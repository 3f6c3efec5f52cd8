"""Calibrate image and pixel thresholds on held-out normal images."""
from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from model import pipeline
from model.config import TrainConfig
from model.detector import Detector, ScoreResult


@task(name="calibrate_threshold", cache_policy=NO_CACHE)
def calibrate_threshold(detector: Detector, config: TrainConfig, holdout: ScoreResult) -> dict[str, float]:
    thresholds = pipeline.calibrate_detector(detector, config, holdout)
    get_run_logger().info("threshold=%.6g (%s), pixel_threshold=%.6g", thresholds["threshold"], config.threshold_method, thresholds["pixel_threshold"])
    return thresholds
