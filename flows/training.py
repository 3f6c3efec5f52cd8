"""train-pipeline: validate -> train -> score -> calibrate -> evaluate -> log -> register."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from model.config import TrainConfig
from model.pipeline import write_json
from tasks.calibration import calibrate_threshold
from tasks.evaluation import evaluate
from tasks.reporting import publish_summary
from tasks.scoring import score_images
from tasks import tracking
from tasks.training import TrainedModel, check_on_synthetic_defects, choose_detector, load_images, screen_training_set, train_model
from tasks.validation import validate_dataset


def _run_name() -> str:
    cfg = flow_run.parameters.get("config")
    category = cfg.get("category") if isinstance(cfg, dict) else getattr(cfg, "category", None)
    return f"{category or 'bottle'}-{flow_run.scheduled_start_time.strftime('%Y%m%d-%H%M%S')}"


@flow(name="train-pipeline", flow_run_name=_run_name, log_prints=True)
def train_pipeline(
    config: TrainConfig = TrainConfig(), output_dir: str | None = None, register_model: bool = True, first_champion: bool = True
) -> dict[str, Any]:
    """Train, calibrate and evaluate one detector; log it to MLflow and register it.

    output_dir: also write metrics.json, figures and the model there (the CLI's --output).
    register_model: False logs the run but registers no model version (e.g. experiments).
    first_champion: False leaves `champion` to a promotion gate even when none exists yet.
    """
    with tempfile.TemporaryDirectory(prefix="anomaflow-") as tmp:
        work = Path(output_dir) if output_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)

        validated = validate_dataset(config, work)
        ds = validated.dataset
        fingerprint = tracking.data_fingerprint([*ds.train, *ds.test], ds.root)
        base_tags = {
            "anomaflow.git_commit": tracking.git_commit(),
            "anomaflow.data_fingerprint": fingerprint,
            "anomaflow.version": tracking.anomaflow_version(),
            "anomaflow.detector": config.detector,
            "anomaflow.category": ds.category,
            "prefect.flow_run_id": str(flow_run.id),
        }
        # Open now: the run is RUNNING while it trains, epochs appear as they end, the duration is
        # true; any failure from here marks it FAILED (a process killed outright leaves it RUNNING).
        run_id = tracking.start_run_task(config.experiment, config.mlflow_run_name, base_tags,
                                         config.params() if config.detector != "auto" else {}, (ds.category, fingerprint, ds.root / ds.category))
        try:
            arrays = load_images(validated.dataset, config)
            arrays, screened = screen_training_set(config, arrays) if config.screen_training_set else (arrays, None)
            selection, arrays = choose_detector(config, arrays, validated.dataset, screened) if config.detector == "auto" else (None, arrays)
            if selection is not None:  # from here on the run is the chosen candidate's, already fitted
                config = selection.config
                trained = TrainedModel(selection.detector, selection.history, selection.fit_seconds)
            else:
                trained = train_model(config, arrays, run_id)
            if selection is not None:  # the chosen candidate was checked on synthetic defects while choosing
                synthetic, warning = selection.synthetic, selection.warning
            else:
                synthetic, warning = check_on_synthetic_defects(trained.detector, config, arrays)
            holdout, _ = score_images(trained.detector, arrays.holdout, "held-out normal", arrays.holdout_valid)
            thresholds = calibrate_threshold(trained.detector, config, holdout, synthetic.defect_scores, arrays)
            test, rate = score_images(trained.detector, arrays.test, "test", arrays.test_valid)
            evaluated = evaluate(trained.detector, arrays, test, config.score_method, work, config.gate_fraction) if len(arrays.test) else None

            metrics: dict[str, Any] = {**evaluated.evaluation.metrics, **evaluated.gate} if evaluated else {}
            if evaluated and evaluated.evaluation.pixel_note:
                metrics["pixel_metrics_note"] = evaluated.evaluation.pixel_note  # why pixel metrics are absent or partial
            metrics.update(thresholds, train_seconds=trained.train_seconds, inference_images_per_second=rate)
            metrics.update(synthetic.metrics)
            if selection is not None:
                metrics.update(selection.metrics())
                metrics["auto_choice"] = selection.chosen
                write_json({"chosen": selection.chosen, "candidates": selection.rows}, work / "selection.json")
            if warning:
                metrics["warning"] = warning
            if screened is not None:
                metrics.update(train_suspects=len(screened.suspects), train_excluded=len(screened.excluded))
            model_dir = trained.detector.save(work / "model")
            write_json(trained.history, work / "history.json")
            write_json(config.model_dump(mode="json"), work / "config.json")
            split_file = {"evaluation_split": write_json(evaluated.split, work / "evaluation_split.json")} if evaluated else {}
            record = tracking.RunRecord(
                experiment=config.experiment,
                run_name=config.mlflow_run_name,
                params=config.params(),
                metrics=metrics,
                history=trained.unlogged_history(),
                tags={
                    **base_tags,
                    "anomaflow.detector": config.detector,
                    "anomaflow.frame": trained.detector.preprocessing.describe(),
                    "anomaflow.evaluation_split": (f"reported on {len(evaluated.split['report'])} test images; promotion gate on "
                                                   f"{len(evaluated.split['gate'])} others (seeded partition, gate_fraction {config.gate_fraction})")
                    if evaluated else "no test split",
                    "anomaflow.pixel_metrics": (evaluated.evaluation.pixel_note or "all defect types have masks") if evaluated else "no test split",
                    **({"anomaflow.auto_choice": f"{selection.chosen} of {', '.join(r['name'] for r in selection.rows)}"} if selection else {}),
                    **({"anomaflow.warning": warning} if warning else {}),
                    **({"anomaflow.curation": validated.curation} if validated.curation else {}),
                    **({"anomaflow.train_suspects": screened.summary()[:5000]} if screened else {}),
                },
                figures={**(evaluated.figures if evaluated else {}), "dataset_samples": validated.sample_grid},
                tables={
                    "iou_per_defect": evaluated.evaluation.iou_table if evaluated else [],
                    "per_image_scores": evaluated.evaluation.per_image if evaluated else [],
                },
                checkpoints={"final": p for p in [model_dir / "weights.pt"] if p.exists()},
                files={"validation": write_json({**validated.report.to_dict(), "training_screen": screened.to_dict() if screened else None},
                                                work / "validation.json"), "history": work / "history.json",
                       "config": work / "config.json", **split_file,
                       **({"selection": work / "selection.json"} if selection else {})},
            )
            tracking.log_run_task(record, finish=not register_model, run_id=run_id)
            example = (arrays.fit_samples[0].path if arrays.fit_samples else None)
            registration = tracking.register_model_task(run_id, trained.detector, config.model_name, example, first_champion) if register_model else None
            metrics["mlflow_run_id"] = run_id
            if registration is not None:
                metrics["model_version"] = registration.version
        except BaseException:
            tracking.mark_failed_quietly(run_id)  # not left RUNNING forever when the server is back
            raise
        publish_summary(validated.dataset.category, metrics, evaluated.evaluation.iou_table if evaluated else [], registration, work if output_dir else None)
        return metrics
