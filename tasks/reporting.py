"""Run summary for people: Prefect artifacts and the metrics.json file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from anomaflow.model import pipeline
from anomaflow.tasks.evaluation import EvaluationOutput

HEADLINE = (
    "image_auroc_mean",
    "image_auroc_max",
    "pixel_auroc",
    "pixel_aupro",
    "pixel_iou",
    "f1",
    "threshold",
    "pixel_threshold",
    "train_seconds",
)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def summary_markdown(category: str, metrics: dict[str, Any], registration: Any | None) -> str:
    lines = [f"# anomaflow training: {category}", "", "| metric | value |", "| --- | --- |"]
    for k in HEADLINE:
        if k in metrics:
            lines.append(f"| {k} | {metrics[k]:.4f} |")
    per_defect = sorted(k for k in metrics if k.startswith("pixel_iou_") and k != "pixel_iou_oracle")
    for k in per_defect:
        lines.append(f"| {k} | {metrics[k]:.4f} |")
    if metrics.get("pixel_metrics_note"):
        lines += ["", f"Pixel metrics: {metrics['pixel_metrics_note']}."]
    if registration is not None:
        lines += [
            "",
            f"MLflow run `{registration.run_id}`, model `{registration.model_name}` "
            f"version {registration.version} ({', '.join(registration.aliases)})",
        ]
        if registration.ui_url:
            lines.append(f"[open in MLflow]({registration.ui_url})")
    return "\n".join(lines)


@task(name="publish_summary", cache_policy=NO_CACHE)
def publish_summary(
    category: str,
    metrics: dict[str, Any],
    evaluated: EvaluationOutput | None,
    registration: Any | None,
    output_dir: Path | None,
) -> None:
    """The run's summary artifact, its IoU table (when evaluated with masks) and metrics.json."""
    iou_table = evaluated.evaluation.iou_table if evaluated else []
    create_markdown_artifact(
        summary_markdown(category, metrics, registration),
        key=artifact_key("train-summary", category),
        description=f"training run summary for {category}",
    )
    if iou_table:
        create_table_artifact(
            iou_table, key=artifact_key("iou-per-defect", category), description="pixel IoU per defect type"
        )
    if output_dir is not None:
        pipeline.write_json(metrics, Path(output_dir) / "metrics.json")
