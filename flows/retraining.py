"""scheduled-retraining: train a challenger, compare with the champion, promote through a gate."""

from __future__ import annotations

from typing import Any

from prefect import flow

from anomaflow.flows.training import train_pipeline
from anomaflow.model.config import TrainConfig
from anomaflow.model.evaluation.promotion import GATE_BARS
from anomaflow.tasks.feedback import curated_config, default_db, review_calibration, tag_threshold_source
from anomaflow.tasks.promotion import decision_dict, evaluate_champion, gate


@flow(name="scheduled-retraining", log_prints=True)
def scheduled_retraining(
    config: TrainConfig = TrainConfig(),
    primary_metric: str = "image_auroc",
    min_bars: dict[str, float] = GATE_BARS,
    tolerance: float = 0.0,
    review_results: list[str] | None = None,
    review_db: str | None = None,
    curated_root: str | None = None,
    min_reviewed: int = 5,
) -> dict[str, Any]:
    """The challenger becomes champion only if it meets min_bars and is at least as good as the
    champion on primary_metric, both measured on the gate part of the test split (a seeded
    partition, config.gate_fraction) the runs never report on; image_auroc is the AUROC of the score
    the model decides with. Any error keeps the champion.

    review_results: reviewed inspection folders. Their false alarms join train/good of a curated
    copy of the data (under curated_root, default <data_root>-curated; curation.json lists each
    addition), which the challenger trains on. Their other reviewed parts (defect, missed, good;
    none whose content is in the challenger's train or test split) calibrate the challenger beside
    its held-out normals: its threshold is lowered, if need be, to reach the champion's operating
    point on the reviewed defects (the higher of the target recall its threshold was set for and
    its field recall now: a reviewed recalibration survives), and its FPR estimate is never below
    its field FPR on the reviewed good parts (model.evaluation.feedback.calibrate_with_reviews;
    each needs min_reviewed of its kind). review_db: the label database (default: the review
    app's, tasks.feedback.default_db). With min_reviewed of both, the gate also requires field
    precision and recall on those parts, each model at its own threshold, not below the
    champion's (minus tolerance)."""
    if config.gate_fraction <= 0:
        raise ValueError(
            "the promotion gate needs a gate part of the test split: set config.gate_fraction > 0 (default 0.3)"
        )
    reviewed = champion_field = None
    if review_results:
        db = review_db or default_db(list(review_results))
        config = curated_config(config, list(review_results), db, curated_root)
    champion_version, champion_metrics = evaluate_champion(config)
    if review_results:
        reviewed, champion_field = review_calibration(list(review_results), db, config, champion_version, min_reviewed)
    challenger = train_pipeline(config, first_champion=False, reviewed=reviewed)
    if reviewed is not None:
        tag_threshold_source(config.model_name, challenger["model_version"], challenger)
    decision = gate(
        config.model_name,
        challenger,
        champion_version,
        champion_metrics,
        primary_metric,
        dict(min_bars),
        tolerance,
        champion_field,
    )
    headline = ("image_auroc", "pixel_auroc", "recall", "false_positive_rate", "auto_choice")
    return {
        **{k: challenger[k] for k in headline if k in challenger},  # the challenger's, for fleet tables
        "challenger_version": challenger["model_version"],
        "champion_version_before": champion_version,
        "promoted": decision.promote,
        "decision": decision_dict(decision),
    }
