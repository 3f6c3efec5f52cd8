"""scheduled-retraining: train a challenger, compare with the champion, promote through a gate."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.training import train_pipeline
from model.config import TrainConfig
from tasks.feedback import curate_reviewed_normals, default_db
from tasks.promotion import apply_promotion, challenger_gate_metrics, decide, decision_dict, evaluate_champion, publish_promotion


@flow(name="scheduled-retraining", log_prints=True)
def scheduled_retraining(
    config: TrainConfig = TrainConfig(),
    primary_metric: str = "image_auroc",
    min_bars: dict[str, float] = {"image_auroc": 0.8, "pixel_auroc": 0.8},
    tolerance: float = 0.0,
    review_results: list[str] | None = None,
    review_db: str | None = None,
    curated_root: str | None = None,
) -> dict[str, Any]:
    """The challenger becomes champion only if it meets min_bars and is at least as good as the
    champion on primary_metric. Both are measured on the gate part of the test split (a seeded
    partition, config.gate_fraction), never on the part the runs report, so the champion's
    reported number does not drift upward by selection. image_auroc is the AUROC of the score
    the model decides with (its score_method). Any error keeps the champion.

    review_results: inspection folders reviewed in `anomaflow review`; their false alarms (DEFECT
    verdicts labelled good) are added to train/good of a curated copy of the dataset under
    curated_root (default: <data_root>-curated), which the challenger trains on. The copy's
    curation.json lists each addition; the run's data fingerprint changes and its tags say why."""
    if config.gate_fraction <= 0:
        raise ValueError("the promotion gate needs a gate part of the test split: set config.gate_fraction > 0 (default 0.3)")
    if review_results:
        if config.data_root is None:
            raise ValueError("review_results needs config.data_root: the dataset the reviewed parts are added to")
        curated, _added = curate_reviewed_normals(list(review_results), review_db or default_db(list(review_results)), config.model_name,
                                                  config.data_root, config.category, curated_root or f"{config.data_root.rstrip('/')}-curated")
        config = config.model_copy(update={"data_root": curated})
    champion_version, champion_metrics = evaluate_champion(config)
    challenger = train_pipeline(config, first_champion=False)
    version, run_id = challenger["model_version"], challenger["mlflow_run_id"]
    decision = None
    try:
        decision = decide(challenger_gate_metrics(challenger), champion_metrics, primary_metric, dict(min_bars), tolerance)
        apply_promotion(config.model_name, version, champion_version, run_id, decision)
    except Exception as exc:  # fail-closed: record, keep the champion, fail the run
        apply_promotion(config.model_name, version, champion_version, run_id, None, error=f"{type(exc).__name__}: {exc}")
        publish_promotion(config.model_name, version, champion_version, decision, str(exc))
        raise
    publish_promotion(config.model_name, version, champion_version, decision, None)
    return {"challenger_version": version, "champion_version_before": champion_version, "promoted": decision.promote,
            "decision": decision_dict(decision)}
