"""scheduled-retraining: train a challenger, compare with the champion, promote through a gate."""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.training import train_pipeline
from model.config import TrainConfig
from tasks.promotion import apply_promotion, challenger_gate_metrics, decide, decision_dict, evaluate_champion, publish_promotion


@flow(name="scheduled-retraining", log_prints=True)
def scheduled_retraining(
    config: TrainConfig = TrainConfig(),
    primary_metric: str = "image_auroc",
    min_bars: dict[str, float] = {"image_auroc": 0.8, "pixel_auroc": 0.8},
    tolerance: float = 0.0,
) -> dict[str, Any]:
    """The challenger becomes champion only if it meets min_bars and is at least as good as the
    champion on primary_metric. Both are measured on the gate part of the test split (a seeded
    partition, config.gate_fraction), never on the part the runs report, so the champion's
    reported number does not drift upward by selection. image_auroc is the AUROC of the score
    the model decides with (its score_method). Any error keeps the champion."""
    if config.gate_fraction <= 0:
        raise ValueError("the promotion gate needs a gate part of the test split: set config.gate_fraction > 0 (default 0.3)")
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
