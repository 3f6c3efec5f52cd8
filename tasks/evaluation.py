"""Image- and pixel-level evaluation on the reported part of the test split, with figures; the
promotion gate's part is scored apart (gate_* metrics), never mixed into the reported numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anomaflow.model import pipeline
from anomaflow.model.detectors.base import Detector, ScoreResult
from anomaflow.model.evaluation.evaluate import Evaluation


@dataclass
class EvaluationOutput:
    evaluation: Evaluation  # the reported part of the test split
    figures: dict[str, Path]
    gate: dict[str, float] = field(default_factory=dict)  # gate_* metrics on the gate part
    split: dict[str, Any] = field(default_factory=dict)  # which test images are in which part


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(
    detector: Detector,
    arrays: pipeline.Arrays,
    test: ScoreResult,
    score_method: str,
    workdir: Path,
    gate_fraction: float = 0.0,
) -> EvaluationOutput | None:
    """None when the dataset has no test split (nothing to evaluate on)."""
    if not len(arrays.test):
        return None
    report, idx = arrays.test_part(gate=False)
    ev = pipeline.evaluate_split(detector, report, pipeline.take(test, idx), score_method)
    figures = pipeline.write_figures(workdir, report, pipeline.take(test, idx), ev, detector, score_method)
    gate_arrays, gate_idx = arrays.test_part(gate=True)
    gate = (
        pipeline.gate_metrics(
            pipeline.evaluate_split(detector, gate_arrays, pipeline.take(test, gate_idx), score_method)
        )
        if len(gate_idx)
        else {}
    )
    m = ev.metrics
    get_run_logger().info(
        "image_auroc_max=%.4f pixel_auroc=%.4f pixel_aupro=%.4f pixel_iou=%.4f",
        m.get("image_auroc_max", float("nan")),
        m.get("pixel_auroc", float("nan")),
        m.get("pixel_aupro", float("nan")),
        m.get("pixel_iou", float("nan")),
    )
    get_run_logger().info(
        "reported on %d test images; %d more set aside for the promotion gate: %s",
        len(idx),
        len(gate_idx),
        {k: round(v, 4) for k, v in gate.items()},
    )
    return EvaluationOutput(ev, figures, gate, pipeline.evaluation_split(arrays, gate_fraction))
