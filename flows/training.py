"""train-pipeline: validate -> train -> score -> calibrate -> evaluate -> log -> register."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from anomaflow.model.config import TrainConfig
from anomaflow.model.evaluation.feedback import ReviewCalibration
from anomaflow.tasks import tracking
from anomaflow.tasks.calibration import calibrate_threshold
from anomaflow.tasks.evaluation import evaluate
from anomaflow.tasks.registration import log_run_task, register_model_task, start_run_task
from anomaflow.tasks.reporting import publish_summary
from anomaflow.tasks.run_record import TrainingOutcome, run_tags
from anomaflow.tasks.scoring import score_images
from anomaflow.tasks.training import fit_detector, load_images, screen_training_set
from anomaflow.tasks.validation import validate_dataset


def _run_name() -> str:
    cfg = flow_run.parameters.get("config")
    category = cfg.get("category") if isinstance(cfg, dict) else getattr(cfg, "category", None)
    return f"{category or 'bottle'}-{flow_run.scheduled_start_time.strftime('%Y%m%d-%H%M%S')}"


@flow(name="train-pipeline", flow_run_name=_run_name, log_prints=True)
def train_pipeline(
    config: TrainConfig = TrainConfig(),
    output_dir: str | None = None,
    register_model: bool = True,
    first_champion: bool = True,
    parent_run_id: str | None = None,
    reviewed: ReviewCalibration | None = None,
) -> dict[str, Any]:
    """Train, calibrate and evaluate one detector; log it to MLflow and register it. output_dir: also
    write metrics.json, figures and the model there (the CLI's --output). register_model=False logs
    the run without a model version; first_champion=False leaves `champion` to a promotion gate;
    parent_run_id: the MLflow run this one is a child of (a fleet run: one child per product);
    reviewed: reviewed parts the threshold also follows (a retraining with reviews: see
    model.evaluation.feedback.calibrate_with_reviews), applied before the model is logged."""
    with tempfile.TemporaryDirectory(prefix="anomaflow-") as tmp:
        work = Path(output_dir) if output_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        validated = validate_dataset(config, work)
        tags, dataset_input = run_tags(config, validated.dataset, str(flow_run.id), parent_run_id)
        params = config.params() if config.detector != "auto" else {}
        run_id = start_run_task(config.experiment, config.mlflow_run_name, tags, params, dataset_input)
        try:
            arrays = load_images(validated.dataset, config)
            arrays, screened = screen_training_set(config, arrays) if config.screen_training_set else (arrays, None)
            fitted = fit_detector(config, arrays, validated.dataset, screened, run_id)
            config, arrays, trained = fitted.config, fitted.arrays, fitted.trained
            holdout, _ = score_images(trained.detector, arrays.holdout, "held-out normal", arrays.holdout_valid)
            thresholds = calibrate_threshold(
                trained.detector, config, holdout, fitted.synthetic.defect_scores, arrays, reviewed
            )
            test, rate = score_images(trained.detector, arrays.test, "test", arrays.test_valid)
            evaluated = evaluate(trained.detector, arrays, test, config.score_method, work, config.gate_fraction)
            outcome = TrainingOutcome(validated, screened, fitted, thresholds, rate, evaluated, tags)
            record = outcome.write(work)
            log_run_task(record, finish=not register_model, run_id=run_id)
            example = arrays.fit_samples[0].path if arrays.fit_samples else None
            registration = (
                register_model_task(run_id, trained.detector, config.model_name, example, first_champion)
                if register_model
                else None
            )
        except BaseException:
            tracking.mark_failed_quietly(run_id)  # not left RUNNING forever when the server is back
            raise
        metrics = outcome.result(record, run_id, registration)
        publish_summary(validated.dataset.category, metrics, evaluated, registration, work if output_dir else None)
        return metrics
