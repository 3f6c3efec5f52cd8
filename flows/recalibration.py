"""recalibrate: a threshold from what reviewers said about the verdicts, through the promotion gate."""
from __future__ import annotations

from typing import Any

from prefect import flow

from model import feedback
from tasks.feedback import default_db, load_reviewed, log_field_metrics, publish_recalibration, register_recalibrated
from tasks.promotion import apply_promotion, decide


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
    if min(reviewed.defects, reviewed.goods) < min_reviewed:
        raise ValueError(f"{model_name} v{version}: {reviewed.defects} parts reviewed as defects and {reviewed.goods} as good; "
                         f"recalibration needs at least {min_reviewed} of each (anomaflow review)")
    current = feedback.at_threshold(reviewed, threshold)
    proposal = feedback.propose(reviewed, target_recall, target_fpr) if (target_recall is not None or target_fpr is not None) else None
    table = feedback.threshold_table(reviewed)
    run_id = log_field_metrics(model_name, version, current, proposal, table, reviewed)
    result: dict[str, Any] = {"model_version": version, "field": current, "proposal": proposal, "reviewed_defects": reviewed.defects,
                              "reviewed_good": reviewed.goods, "mlflow_run_id": run_id}
    outcome = "proposal only (apply=False)"
    if apply and proposal is not None:
        why = (f"reviewed labels ({reviewed.defects} defects, {reviewed.goods} good), "
               + (f"target recall {target_recall}" if target_recall is not None else f"target FPR {target_fpr}"))
        new_version = register_recalibrated(model_name, version, proposal["threshold"], run_id, why)
        bars = {"field_recall": target_recall} if target_recall is not None else {"field_specificity": 1 - float(target_fpr)}
        challenger = {"field_f1": proposal["f1"], "field_recall": proposal["recall"], "field_specificity": 1 - proposal["fpr"]}
        decision = decide(challenger, {"field_f1": current["f1"]}, "field_f1", bars, 0.0)
        apply_promotion(model_name, new_version, version, run_id, decision)
        result.update(new_version=new_version, promoted=decision.promote, reason=decision.reason)
        outcome = f"registered v{new_version}: {'PROMOTED to champion' if decision.promote else 'not promoted'} ({decision.reason})"
    publish_recalibration(model_name, version, current, proposal, outcome)
    print(outcome)
    return result
