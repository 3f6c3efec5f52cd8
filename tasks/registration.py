"""Prefect tasks over the MLflow adapter (tasks.tracking), retried with backoff: the tracking
server may blip, and registration is idempotent per run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from anomaflow.model.detectors.base import Detector
from anomaflow.tasks import tracking

TRACKING_RETRIES = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.2)


@dataclass
class Registration:
    run_id: str
    experiment_id: str
    model_uri: str
    model_name: str
    version: str
    aliases: list[str]
    ui_url: str | None


@task(name="log_run", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def log_run_task(record: tracking.RunRecord, finish: bool = False, run_id: str | None = None) -> str:
    """Log the run; finish=False leaves it RUNNING until the model is registered."""
    with tracking.unreachable_as_error("logging the training run"):
        run_id = tracking.log_run(record, finish, run_id)
    get_run_logger().info("MLflow run %s in experiment %s (%s)", run_id, record.experiment, mlflow.get_tracking_uri())
    return run_id


@task(name="start_run", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def start_run_task(
    experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any], dataset: tuple[str, str, Path]
) -> str:
    """Open the training run (RUNNING) with its params and its dataset input."""
    tracking.configure()
    with tracking.unreachable_as_error("opening the training run"):
        run_id = tracking.start_run(experiment, run_name, tags, params)
        tracking.log_dataset(run_id, *dataset)
    get_run_logger().info("MLflow run %s (%s) is open in experiment %s", run_name, run_id, experiment)
    return run_id


@task(name="register_model", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def register_model_task(
    run_id: str, detector: Detector, name: str, example_image: Path | None, first_champion: bool = True
) -> Registration:
    """Log the pyfunc model into the run and register it; the run is FINISHED only after this.

    A version is created only after its artifacts are fully logged, and aliases only after the
    version exists, so an alias never points at a half-uploaded model. A retry after a failure
    past registration reuses that version instead of registering a second one."""
    tracking.configure()
    with tracking.unreachable_as_error(f"registering model {name!r}"):
        version = tracking.version_of_run(name, run_id)
        if version is None:
            model_uri = tracking.log_model(run_id, detector, example_image)
            version, aliases = tracking.register(model_uri, name, run_id, first_champion)
        else:
            model_uri = f"models:/{name}/{version}"
            aliases = tracking.set_registration_aliases(name, version, first_champion)
            get_run_logger().info("reusing %s version %s registered by an earlier attempt", name, version)
        tracking.finish_run(run_id)
        exp_id = tracking.run_experiment_id(run_id)
    get_run_logger().info("registered %s version %s with aliases %s", name, version, aliases)
    return Registration(run_id, exp_id, model_uri, name, version, aliases, tracking.ui_url(run_id, exp_id))
