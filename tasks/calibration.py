"""Calibrate image and pixel thresholds on held-out normal images (and, in a retraining with
reviews, on the reviewed parts)."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anomaflow.model import pipeline
from anomaflow.model.config import TrainConfig
from anomaflow.model.detectors.base import Detector, ScoreResult
from anomaflow.model.evaluation import feedback


@task(name="calibrate_threshold", cache_policy=NO_CACHE)
def calibrate_threshold(
    detector: Detector,
    config: TrainConfig,
    holdout: ScoreResult,
    synthetic_scores: np.ndarray | None = None,
    arrays: pipeline.Arrays | None = None,
    reviewed: feedback.ReviewCalibration | None = None,
) -> dict[str, Any]:
    """Thresholds from the held-out normals; with `reviewed`, the image threshold then follows the
    reviewed parts as this detector scores them (feedback.calibrate_with_reviews), before the drift
    reference is taken, so what is logged, registered and drift-checked is the final threshold."""
    log = get_run_logger()
    thresholds = pipeline.calibrate_detector(detector, config, holdout, synthetic_scores)
    if reviewed is not None:
        from anomaflow.tasks.feedback import score_parts

        r = score_parts(detector, reviewed.parts)
        update = feedback.calibrate_with_reviews(
            thresholds["threshold"],
            holdout.scores[config.score_method],
            r,
            reviewed.target_recall,
            reviewed.min_reviewed,
            reviewed.target_from,
            synthetic_scores,
        )
        detector.calibrate(threshold=update["threshold"])
        thresholds.update(update, threshold=detector.threshold)
        log.info(
            "threshold from %s; FPR estimate %.4f (held-out %.4f, reviewed good %.4f)",
            update["threshold_source"],
            update["fpr_estimate_with_reviews"],
            update["heldout_fpr"],
            update["field_fpr_reviewed"],
        )
    if arrays is not None:  # the reference inspection batches are checked for drift against
        pipeline.drift_reference(detector, arrays, holdout)
    log.info(
        "threshold=%.6g (%s), pixel_threshold=%.6g",
        thresholds["threshold"],
        thresholds["threshold_method_used"],
        thresholds["pixel_threshold"],
    )
    return thresholds
