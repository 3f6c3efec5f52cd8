"""Score a split: anomaly maps and image scores."""

from __future__ import annotations

import time

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anomaflow.model.detectors.base import Detector, ScoreResult


@task(name="score_images", cache_policy=NO_CACHE)
def score_images(
    detector: Detector, images: np.ndarray, split: str, valid: np.ndarray | None = None
) -> tuple[ScoreResult, float]:
    """Returns the result and throughput (images/s) of the model call; `valid` marks padding (model.frame)."""
    t0 = time.perf_counter()
    result = detector.score(images, valid)
    seconds = time.perf_counter() - t0
    rate = len(images) / seconds if len(images) and seconds > 0 else float("nan")
    get_run_logger().info("scored %d %s images (%.1f images/s)", len(images), split, rate)
    return result, rate
