"""What one training run leaves behind: its tags, metrics, files and the MLflow record built from
them, kept out of the flow so the flow reads as the pipeline diagram."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anomaflow.model.config import TrainConfig
from anomaflow.model.data import datasets as data
from anomaflow.model.data.screen import Screen
from anomaflow.model.evaluation.selection import Selection
from anomaflow.model.pipeline import write_json
from anomaflow.tasks import provenance, tracking
from anomaflow.tasks.evaluation import EvaluationOutput
from anomaflow.tasks.registration import Registration
from anomaflow.tasks.training import Fitted, TrainedModel
from anomaflow.tasks.validation import ValidatedData


def run_tags(
    config: TrainConfig, ds: data.Dataset, flow_run_id: str, parent_run_id: str | None = None
) -> tuple[dict[str, str], tuple[str, str, Path]]:
    """(provenance tags of the run, its MLflow dataset input: name, digest, source); a parent run
    id nests the run under it in the MLflow UI."""
    fingerprint = provenance.data_fingerprint([*ds.train, *ds.test], ds.root)
    tags = {
        "anomaflow.git_commit": provenance.git_commit(),
        "anomaflow.data_fingerprint": fingerprint,
        "anomaflow.version": provenance.anomaflow_version(),
        "anomaflow.detector": config.detector,
        "anomaflow.category": ds.category,
        "prefect.flow_run_id": flow_run_id,
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags, (ds.category, fingerprint, ds.root / ds.category)


@dataclass
class TrainingOutcome:
    """Everything a finished training run produced, in the order the flow produced it."""

    validated: ValidatedData
    screened: Screen | None
    fitted: Fitted
    thresholds: dict[str, Any]
    images_per_second: float
    evaluated: EvaluationOutput | None
    tags: dict[str, str]

    @property
    def config(self) -> TrainConfig:  # with auto, the chosen candidate's
        return self.fitted.config

    @property
    def trained(self) -> TrainedModel:
        return self.fitted.trained

    @property
    def selection(self) -> Selection | None:
        return self.fitted.selection

    @property
    def warning(self) -> str:
        return self.fitted.warning

    def metrics(self) -> dict[str, Any]:
        ev = self.evaluated
        metrics: dict[str, Any] = {**ev.evaluation.metrics, **ev.gate} if ev else {}
        if ev and ev.evaluation.pixel_note:
            metrics["pixel_metrics_note"] = ev.evaluation.pixel_note  # why pixel metrics are absent or partial
        metrics.update(
            self.thresholds,
            train_seconds=self.trained.train_seconds,
            inference_images_per_second=self.images_per_second,
        )
        metrics.update(self.fitted.synthetic.metrics)
        if self.selection is not None:
            metrics.update(self.selection.metrics())
            metrics["auto_choice"] = self.selection.chosen
        if self.warning:
            metrics["warning"] = self.warning
        if self.screened is not None:
            metrics.update(train_suspects=len(self.screened.suspects), train_excluded=len(self.screened.excluded))
        return metrics

    def record_tags(self) -> dict[str, str]:
        ev, sel, screened, config = self.evaluated, self.selection, self.screened, self.config
        split = (
            f"reported on {len(ev.split['report'])} test images; promotion gate on {len(ev.split['gate'])} others "
            f"(seeded partition, gate_fraction {config.gate_fraction})"
            if ev
            else "no test split"
        )
        tags = {
            **self.tags,
            "anomaflow.detector": config.detector,
            "anomaflow.frame": self.trained.detector.preprocessing.describe(),
            "anomaflow.evaluation_split": split,
            "anomaflow.pixel_metrics": (ev.evaluation.pixel_note or "all defect types have masks")
            if ev
            else "no test split",
        }
        if sel:
            tags["anomaflow.auto_choice"] = f"{sel.chosen} of {', '.join(r['name'] for r in sel.rows)}"
        if self.warning:
            tags["anomaflow.warning"] = self.warning
        if self.validated.curation:
            tags["anomaflow.curation"] = self.validated.curation
        if self.thresholds.get("threshold_source"):
            tags["anomaflow.threshold_source"] = str(self.thresholds["threshold_source"])
        if screened:
            tags["anomaflow.train_suspects"] = screened.summary()[:5000]
        return tags

    def result(self, record: tracking.RunRecord, run_id: str, registration: Registration | None) -> dict[str, Any]:
        """What the flow returns (and metrics.json holds): the logged metrics, the run and the version."""
        out = {**record.metrics, "mlflow_run_id": run_id}
        if registration is not None:
            out["model_version"] = registration.version
            out["model_aliases"] = list(registration.aliases)
        return out

    def write(self, work: Path) -> tracking.RunRecord:
        """Save the model and the run's JSON files into `work`; the MLflow record that logs them."""
        ev, sel, screened, config = self.evaluated, self.selection, self.screened, self.config
        metrics = self.metrics()
        files: dict[str, Path] = {}
        if sel is not None:
            files["selection"] = write_json({"chosen": sel.chosen, "candidates": sel.rows}, work / "selection.json")
        model_dir = self.trained.detector.save(work / "model")
        files["history"] = write_json(self.trained.history, work / "history.json")
        files["config"] = write_json(config.model_dump(mode="json"), work / "config.json")
        if ev:
            files["evaluation_split"] = write_json(ev.split, work / "evaluation_split.json")
        screen = screened.to_dict() if screened else None
        files["validation"] = write_json(
            {**self.validated.report.to_dict(), "training_screen": screen}, work / "validation.json"
        )
        weights = model_dir / "weights.pt"
        return tracking.RunRecord(
            experiment=config.experiment,
            run_name=config.mlflow_run_name,
            params=config.params(),
            metrics=metrics,
            history=self.trained.unlogged_history(),
            tags=self.record_tags(),
            figures={**(ev.figures if ev else {}), "dataset_samples": self.validated.sample_grid},
            tables={
                "iou_per_defect": ev.evaluation.iou_table if ev else [],
                "per_image_scores": ev.evaluation.per_image if ev else [],
            },
            checkpoints={"final": weights} if weights.exists() else {},
            files=files,
        )
