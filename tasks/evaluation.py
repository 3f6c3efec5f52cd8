"""Image- and pixel-level evaluation on the test split, with figures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from model import pipeline
from model.detector import Detector, ScoreResult
from model.evaluation import Evaluation


@dataclass
class EvaluationOutput:
    evaluation: Evaluation
    figures: dict[str, Path]


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(detector: Detector, arrays: pipeline.Arrays, test: ScoreResult, score_method: str, workdir: Path) -> EvaluationOutput:
    ev = pipeline.evaluate_split(detector, arrays, test, score_method)
    figures = pipeline.write_figures(workdir, arrays, test, ev, detector, score_method)
    m = ev.metrics
    get_run_logger().info(
        "image_auroc_max=%.4f pixel_auroc=%.4f pixel_aupro=%.4f pixel_iou=%.4f",
        m.get("image_auroc_max", float("nan")), m.get("pixel_auroc", float("nan")),
        m.get("pixel_aupro", float("nan")), m.get("pixel_iou", float("nan")),
    )
    return EvaluationOutput(ev, figures)
