"""Tasks of the retraining gate: evaluate the champion, decide, apply and record."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from anomaflow.model import pipeline
from anomaflow.model.config import TrainConfig
from anomaflow.model.evaluation.promotion import PromotionDecision, decide_promotion
from anomaflow.tasks import tracking
from anomaflow.tasks.registration import TRACKING_RETRIES
from anomaflow.tasks.reporting import artifact_key

GATE_SPLIT = "the gate part of the test split (seeded partition; the run's reported metrics use the other part)"


@task(name="evaluate_champion", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def evaluate_champion(config: TrainConfig) -> tuple[str | None, dict[str, float] | None]:
    """(version, metrics) of the current champion on the gate part of the test split: the same
    seeded partition the challenger's gate_* metrics come from."""
    tracking.configure()
    version = tracking.resolve_alias(config.model_name, tracking.CHAMPION)
    if version is None:
        get_run_logger().info("%s has no champion yet", config.model_name)
        return None, None
    det = tracking.load_registered_detector(config.model_name, version)
    root, category = pipeline.resolve_data_root(config)
    ds = pipeline.load_dataset(root, category)
    metrics = pipeline.evaluate_detector(det, ds, config.gate_fraction, config.cache_dir).metrics
    get_run_logger().info(
        "champion v%s on the gate part of %s: %s",
        version,
        category,
        {k: round(v, 4) for k, v in metrics.items() if k.startswith(("image_auroc", "pixel_"))},
    )
    return version, metrics


@task(name="decide_promotion", cache_policy=NO_CACHE)
def decide(
    challenger: dict[str, Any],
    champion: dict[str, float] | None,
    primary_metric: str,
    min_bars: dict[str, float],
    tolerance: float,
    challenger_field: dict[str, float] | None = None,
    champion_field: dict[str, float] | None = None,
) -> PromotionDecision:
    decision = decide_promotion(
        challenger, champion, primary_metric, min_bars, tolerance, challenger_field, champion_field
    )
    get_run_logger().info("promotion: %s (%s)", decision.promote, decision.reason)
    return decision


@task(name="apply_promotion", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def apply_promotion(
    model_name: str,
    challenger_version: str,
    champion_version: str | None,
    run_id: str,
    decision: PromotionDecision | None,
    error: str | None = None,
) -> None:
    """Move `champion` when promoted; always record the decision on the run and the version."""
    if decision is not None and decision.promote and error is None:
        tracking.set_alias(model_name, tracking.CHAMPION, challenger_version)
    tags = {
        "anomaflow.promotion.decision": "promoted"
        if decision and decision.promote and error is None
        else ("error" if error else "rejected"),
        "anomaflow.promotion.reason": error or (decision.reason if decision else ""),
        "anomaflow.promotion.primary_metric": decision.primary_metric if decision else "",
        "anomaflow.promotion.challenger_score": decision.challenger_score if decision else "",
        "anomaflow.promotion.champion_score": decision.champion_score if decision else "",
        "anomaflow.promotion.champion_version": champion_version or "none",
        "anomaflow.promotion.evaluation_split": GATE_SPLIT,
    }
    if decision is not None:
        tags.update({f"anomaflow.promotion.{k}": f"{v:.4f}" for k, v in decision.field_metrics.items()})
    tracking.tag_run(run_id, tags)
    tracking.tag_version(model_name, challenger_version, tags)


@task(name="publish_promotion", cache_policy=NO_CACHE)
def publish_promotion(
    model_name: str,
    challenger_version: str,
    champion_version: str | None,
    decision: PromotionDecision | None,
    error: str | None,
) -> None:
    verdict = (
        "error: champion kept"
        if error
        else ("PROMOTED" if decision and decision.promote else "rejected: champion kept")
    )
    lines = [
        f"# Retraining {model_name}: {verdict}",
        "",
        f"- challenger: version {challenger_version}",
        f"- champion before: {('version ' + champion_version) if champion_version else 'none'}",
    ]
    if decision is not None:
        lines += [
            f"- compared on: {GATE_SPLIT}",
            f"- {decision.primary_metric}: challenger {decision.challenger_score}, champion {decision.champion_score}",
            f"- reason: {decision.reason}",
        ]
        fm = decision.field_metrics
        if fm:
            lines.append(
                "- on the reviewed parts (each model at its own threshold): "
                + ", ".join(
                    f"field {k} challenger {fm.get('challenger_field_' + k, float('nan')):.4f}, "
                    f"champion {fm.get('champion_field_' + k, float('nan')):.4f}"
                    for k in ("precision", "recall")
                )
            )
    if error:
        lines.append(f"- error: {error}")
    create_markdown_artifact(
        "\n".join(lines), key=artifact_key("retraining", model_name), description="promotion gate decision"
    )


def challenger_gate_metrics(challenger: dict[str, Any]) -> dict[str, float]:
    """The challenger's gate_* metrics under their plain names, comparable with the champion's."""
    return {k.removeprefix("gate_"): v for k, v in challenger.items() if k.startswith("gate_")}


def decision_dict(decision: PromotionDecision | None) -> dict[str, Any]:
    return asdict(decision) if decision else {}


def gate(
    model_name: str,
    challenger_run: dict[str, Any],
    champion_version: str | None,
    champion: dict[str, float] | None,
    primary_metric: str,
    min_bars: dict[str, float],
    tolerance: float,
    champion_field: dict[str, float] | None = None,
) -> PromotionDecision:
    """Decide, apply and publish the promotion; fail-closed: any error is recorded on the run and
    the version, the champion stays, and the error is raised. champion_field: the champion's field
    precision/recall on reviewed parts the challenger was calibrated on (its own are in
    challenger_run as field_*_reviewed); both must then also hold (decide_promotion)."""
    version, run_id = challenger_run["model_version"], challenger_run["mlflow_run_id"]
    decision = None
    challenger_field = (
        {
            k: challenger_run[f"field_{k}_reviewed"]
            for k in ("precision", "recall")
            if f"field_{k}_reviewed" in challenger_run
        }
        if champion_field is not None
        else None
    )
    try:
        decision = decide(
            challenger_gate_metrics(challenger_run),
            champion,
            primary_metric,
            min_bars,
            tolerance,
            challenger_field,
            champion_field,
        )
        apply_promotion(model_name, version, champion_version, run_id, decision)
    except Exception as exc:
        apply_promotion(model_name, version, champion_version, run_id, None, error=f"{type(exc).__name__}: {exc}")
        publish_promotion(model_name, version, champion_version, decision, str(exc))
        raise
    publish_promotion(model_name, version, champion_version, decision, None)
    return decision
