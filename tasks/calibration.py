"""Calibrate image and pixel thresholds on held-out normal images."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anomaflow.model import pipeline
from anomaflow.model.config import TrainConfig
from anomaflow.model.detectors.base import Detector, ScoreResult


@task(name="calibrate_threshold", cache_policy=NO_CACHE)
def calibrate_threshold(
    detector: Detector,
    config: TrainConfig,
    holdout: ScoreResult,
    synthetic_scores: np.ndarray | None = None,
    arrays: pipeline.Arrays | None = None,
) -> dict[str, Any]:
    thresholds = pipeline.calibrate_detector(detector, config, holdout, synthetic_scores)
    if arrays is not None:  # the reference inspection batches are checked for drift against
        pipeline.drift_reference(detector, arrays, holdout)
    get_run_logger().info(
        "threshold=%.6g (%s), pixel_threshold=%.6g",
        thresholds["threshold"],
        thresholds["threshold_method_used"],
        thresholds["pixel_threshold"],
    )
    return thresholds
