"""`anomaflow export`: a registered model version -> an ONNX / OpenVINO folder, logged back to it.

Not a Prefect task: one short call a person makes, with nothing to retry or schedule; it goes
through the MLflow adapter (tasks.tracking) and model.export like everything else."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from anomaflow.model.operations.export import export_detector
from anomaflow.tasks import tracking


def export_registered(ref: str, fmt: str, output: Path, log_to_registry: bool = True) -> dict[str, Any]:
    """Export NAME[@alias|/version] to `output`; returns what was exported and where it was logged."""
    tracking.configure()
    name, version = tracking.resolve_model_ref(ref)
    detector = tracking.load_registered_detector(name, version)
    t0 = time.perf_counter()
    export_detector(
        detector,
        output,
        fmt,
        model_name=name,
        model_version=version,
        operating_point=tracking.operating_point(name, version),
    )
    seconds = time.perf_counter() - t0
    uri = tracking.log_export(name, version, output, fmt) if log_to_registry else None
    return {
        "model_name": name,
        "model_version": version,
        "format": fmt,
        "output": str(output),
        "seconds": seconds,
        "logged_to": uri,
        "family": detector.family,
        "threshold": detector.threshold,
    }
