"""recalibrate: a threshold from what reviewers said about the verdicts, through the promotion gate."""

from __future__ import annotations

from typing import Any

from prefect import flow

from anomaflow.model.evaluation import feedback
from anomaflow.tasks.feedback import (
    default_db,
    load_reviewed,
    log_field_metrics,
    publish_recalibration,
    register_recalibrated,
)
from anomaflow.tasks.promotion import apply_promotion, decide


@flow(name="recalibrate", log_prints=True)
def recalibrate(
    results_dirs: list[str],
    model_name: str,
    version: str | None = None,
    db_url: str | None = None,
    target_recall: float | None = None,
    target_fpr: float | None = None,
    apply: bool = False,
    min_reviewed: int = 5,
) -> dict[str, Any]:
    """Field precision and recall of a model version from reviewed labels (logged to MLflow), the
    precision/recall table over thresholds, and a proposed threshold for target_recall or
    target_fpr on the reviewed parts. apply=True registers the same weights with that threshold as
    a new version; it becomes champion only through the gate: field recall at least the target (or
    FPR at most the target) and field F1 not below the current version's."""
    db_url = db_url or default_db(results_dirs)
    version, threshold, reviewed = load_reviewed(results_dirs, db_url, model_name, version)
    feedback.require_reviewed(reviewed, min_reviewed, f"{model_name} v{version}")
    current = feedback.at_threshold(reviewed, threshold)
    asked = target_recall is not None or target_fpr is not None
    proposal = feedback.propose(reviewed, target_recall, target_fpr) if asked else None
    run_id = log_field_metrics(model_name, version, current, proposal, feedback.threshold_table(reviewed), reviewed)
    result: dict[str, Any] = {"model_version": version, "field": current, "proposal": proposal}
    result.update(reviewed_defects=reviewed.defects, reviewed_good=reviewed.goods, mlflow_run_id=run_id)
    outcome = "proposal only (apply=False)"
    if apply and proposal is not None:
        why = feedback.threshold_source(reviewed, target_recall, target_fpr)
        new_version = register_recalibrated(model_name, version, proposal["threshold"], run_id, why)
        challenger, champion, bars = feedback.field_gate(current, proposal, target_recall, target_fpr)
        decision = decide(challenger, champion, "field_f1", bars, 0.0)
        apply_promotion(model_name, new_version, version, run_id, decision)
        result.update(new_version=new_version, promoted=decision.promote, reason=decision.reason)
        verdict = "PROMOTED to champion" if decision.promote else "not promoted"
        outcome = f"registered v{new_version}: {verdict} ({decision.reason})"
    publish_recalibration(model_name, version, current, proposal, outcome)
    print(outcome)
    return result
