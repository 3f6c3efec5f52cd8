"""scheduled-retraining: train a challenger, compare with the champion, promote through a gate."""

from __future__ import annotations

from typing import Any

from prefect import flow

from anomaflow.flows.training import train_pipeline
from anomaflow.model.config import TrainConfig
from anomaflow.model.evaluation.promotion import GATE_BARS
from anomaflow.tasks.feedback import curated_config
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
) -> dict[str, Any]:
    """The challenger becomes champion only if it meets min_bars and is at least as good as the
    champion on primary_metric, both measured on the gate part of the test split (a seeded
    partition, config.gate_fraction) the runs never report on; image_auroc is the AUROC of the score
    the model decides with. Any error keeps the champion. review_results: reviewed inspection folders
    whose false alarms join train/good of a curated copy of the data (under curated_root, default
    <data_root>-curated; curation.json lists each addition), which the challenger trains on."""
    if config.gate_fraction <= 0:
        raise ValueError(
            "the promotion gate needs a gate part of the test split: set config.gate_fraction > 0 (default 0.3)"
        )
    if review_results:
        config = curated_config(config, list(review_results), review_db, curated_root)
    champion_version, champion_metrics = evaluate_champion(config)
    challenger = train_pipeline(config, first_champion=False)
    decision = gate(
        config.model_name, challenger, champion_version, champion_metrics, primary_metric, dict(min_bars), tolerance
    )
    return {
        "challenger_version": challenger["model_version"],
        "champion_version_before": champion_version,
        "promoted": decision.promote,
        "decision": decision_dict(decision),
    }
