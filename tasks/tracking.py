"""The one module that talks to MLflow: runs, params, metrics, figures, tables, model logging
and registry aliases (the served pyfunc is tasks.serving, the Prefect tasks over this adapter
tasks.registration).

Switching tracking servers is an environment variable (MLFLOW_TRACKING_URI); without it a
local SQLite store `mlflow.db` with artifacts in `mlartifacts/` beside it is used.

Failure policy: MLflow's HTTP client retries are bounded here (`HTTP_DEFAULTS`, only where
the environment does not set them) and the Prefect tasks (tasks.registration) retry with backoff on top, so
a server that is down fails a run in about a minute, not after hours of nested retries. A
server that cannot be reached raises `TrackingUnavailable` naming the server and the step.
Registration is idempotent per run (a retry reuses the version it already created), so a
retried task never leaves a second, alias-less version behind.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import pandas as pd
import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from anomaflow.model.detectors.base import Detector
from anomaflow.model.detectors.registry import load_detector
from anomaflow.tasks.provenance import anomaflow_version
from anomaflow.tasks.serving import SERVED_MODEL_FILE, SIGNATURE

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_ARTIFACT = "model"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


# MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) retry one request for
# ~4 minutes, and Prefect retries the task 3 more times: with these, a refused connection fails
# one call in ~6 s (waits 0, 2, 4 s) and a task in ~40 s; a hung server in at most ~2 min a call.
HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# Error codes with which the registry answers "no such model / alias" (anything else is a fault).
_NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer (refused, timed out, or 5xx after MLflow's retries)."""


# -- where to track ------------------------------------------------------------------------
def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set; else a SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def bound_http_retries() -> None:
    """Set MLflow's HTTP retry/timeout variables to `HTTP_DEFAULTS` unless already set (MLflow
    reads them on every request, so this takes effect at once)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def configure(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default: `tracking_uri()`) for tracking and the registry, with
    bounded HTTP retries; every process that talks to MLflow (Dask workers too) calls this."""
    bound_http_retries()
    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _is_unreachable(exc: BaseException) -> bool:
    """True for transport failures; False when the server answered with an API error."""
    if isinstance(exc, requests.exceptions.RequestException):
        return True
    if isinstance(exc, RestException):
        return False
    return isinstance(exc, MlflowException) and str(exc.message).startswith("API request to")


@contextmanager
def unreachable_as_error(step: str) -> Iterator[None]:
    """Turn a transport failure during `step` into TrackingUnavailable naming the server."""
    try:
        yield
    except (MlflowException, requests.exceptions.RequestException) as exc:
        if not _is_unreachable(exc):
            raise
        retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
        raise TrackingUnavailable(
            f"MLflow tracking server {mlflow.get_tracking_uri()} did not answer while {step} "
            f"(after {retries} HTTP retries): {exc}"
        ) from exc


def _is_local_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


# MLflow 3's UI opens an experiment in its GenAI view (traces) unless told it holds model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(name: str) -> str:
    """Experiment id for name, created on first use (local SQLite: artifacts beside the db),
    tagged so the UI opens it on its runs (Model training), not on traces."""
    uri = configure()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if not all(exp.tags.get(k) for k in EXPERIMENT_KIND):  # made before the tag, or by hand
            for k, v in EXPERIMENT_KIND.items():
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    location = None
    if _is_local_sqlite(uri):
        db = Path(uri[len("sqlite:///") :])
        location = (db.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:
        # Created concurrently by another run: use that one.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def ui_url(run_id: str, experiment_id: str) -> str | None:
    uri = mlflow.get_tracking_uri()
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return None


# -- one training run ----------------------------------------------------------------------
@dataclass
class RunRecord:
    """Everything a training run logs; built by the flow, written by `log_run`."""

    experiment: str
    run_name: str
    params: dict[str, Any]
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    tags: dict[str, str]
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    checkpoints: dict[str, Path] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def start_run(experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any] | None = None) -> str:
    """Open the run when the work starts, so the UI shows it RUNNING, with live metrics and a true
    duration; log_run fills it at the end and the flow finishes it (or marks it FAILED)."""
    client = MlflowClient()
    run_id = client.create_run(ensure_experiment(experiment), run_name=run_name, tags=tags).info.run_id
    for key, value in (params or {}).items():
        client.log_param(run_id, key, "None" if value is None else value)
    return run_id


def epoch_metrics(rec: dict[str, Any]) -> list[Metric]:
    """The per-epoch metrics of one history record (train_loss, val_loss, epoch_seconds) at its epoch."""
    ts = int(rec.get("timestamp_ms") or time.time() * 1000)
    step = int(rec.get("epoch", 0))
    return [
        Metric({"seconds": "epoch_seconds"}.get(k, k), float(rec[k]), ts, step)
        for k in ("train_loss", "val_loss", "seconds")
        if rec.get(k) is not None
    ]


def log_epoch(run_id: str, rec: dict[str, Any]) -> None:
    """One epoch's metrics as it ends (the curves grow in the UI while training runs)."""
    metrics = epoch_metrics(rec)
    if metrics:
        MlflowClient().log_batch(run_id, metrics=metrics)


def log_dataset(run_id: str, name: str, digest: str, source: Path) -> None:
    """The training data as an MLflow dataset input (name, digest = the data fingerprint, source):
    fills the runs table's Dataset column and the lineage."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = MetaDataset(resolve_dataset_source(str(source)), name=name, digest=digest[:36])
    MlflowClient().log_inputs(
        run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])]
    )


def log_run(record: RunRecord, finish: bool = False, run_id: str | None = None) -> str:
    """Log params, per-epoch and final metrics, figures, tables, checkpoints and tags into
    `run_id` (opened by start_run) or a new run; returns the run id. record.history holds the
    epochs not logged live. A failure marks the run FAILED."""
    client = MlflowClient()
    live = run_id is not None
    if run_id is None:
        run_id = client.create_run(
            ensure_experiment(record.experiment), run_name=record.run_name, tags=record.tags
        ).info.run_id
    try:
        logged = client.get_run(run_id).data.params if live else {}
        for key, value in record.params.items():
            if key not in logged:  # params are immutable: the ones logged at the start stay
                client.log_param(run_id, key, "None" if value is None else value)
        for key, value in record.tags.items() if live else ():
            client.set_tag(run_id, key, value)
        history = [m for rec in record.history for m in epoch_metrics(rec)]  # the epochs not logged live
        for i in range(0, len(history), 500):
            client.log_batch(run_id, metrics=history[i : i + 500])
        now = int(time.time() * 1000)
        finals = [Metric(k, float(v), now, 0) for k, v in record.metrics.items() if _finite(v)]
        for i in range(0, len(finals), 500):
            client.log_batch(run_id, metrics=finals[i : i + 500])
        for path in record.figures.values():
            client.log_artifact(run_id, str(path), "figures")
        for path in record.checkpoints.values():
            client.log_artifact(run_id, str(path), "checkpoints")
        for path in record.files.values():
            client.log_artifact(run_id, str(path))
        for name, rows in record.tables.items():
            if rows:
                client.log_table(run_id, pd.DataFrame(rows), f"tables/{name}.json")
    except BaseException:
        mark_failed_quietly(run_id)  # quietly: a dead server must not mask the original error
        raise
    if finish:
        client.set_terminated(run_id, status="FINISHED")
    return run_id


def _finite(v: Any) -> bool:
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    MlflowClient().set_terminated(run_id, status=status)


def mark_failed_quietly(run_id: str) -> bool:
    """Best-effort FAILED status for a run whose logging or registration failed (the server may
    be down: then the run stays RUNNING and the flow's own error says why). True when marked."""
    try:
        finish_run(run_id, "FAILED")
        return True
    except Exception as exc:
        warnings.warn(f"could not mark MLflow run {run_id} FAILED: {exc}", RuntimeWarning, stacklevel=2)
        return False


def run_experiment_id(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.experiment_id


def _pyfunc_spec(det_dir: Path, example_image: Path | None) -> dict[str, Any]:
    """What makes the served model: the same for a logged model and a saved folder."""
    example = pd.DataFrame({"image": [example_image.read_bytes()]}) if example_image is not None else None
    return {
        "python_model": SERVED_MODEL_FILE,
        "artifacts": {"detector": str(det_dir)},
        "signature": SIGNATURE,
        "input_example": example,
        "pip_requirements": [f"anomaflow=={anomaflow_version()}"],
    }


@contextmanager
def _quiet_type_hints() -> Iterator[None]:
    with warnings.catch_warnings():  # MLflow nags about predict() type hints; our signature is explicit instead
        warnings.filterwarnings("ignore", message=".*type hint.*")
        yield


def log_model(run_id: str, detector: Detector, example_image: Path | None = None) -> str:
    """Log the detector as a pyfunc model under the run; returns its model URI."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = _pyfunc_spec(detector.save(Path(tmp) / "detector"), example_image)
        with mlflow.start_run(run_id=run_id), _quiet_type_hints():
            info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, **spec)
            # Leaving start_run() would mark the run FINISHED before its model is registered; it stays
            # RUNNING until register_model_task finishes it (or the flow marks it FAILED).
            mlflow.end_run(status="RUNNING")
    return info.model_uri


def save_served_model(detector: Detector, path: Path, example_image: Path | None = None) -> Path:
    """The served model (what `mlflow models serve` loads) written to a folder, no tracking server."""
    with tempfile.TemporaryDirectory() as tmp, _quiet_type_hints():
        mlflow.pyfunc.save_model(str(path), **_pyfunc_spec(detector.save(Path(tmp) / "detector"), example_image))
    return path


def register(model_uri: str, name: str, run_id: str, first_champion: bool = True) -> tuple[str, list[str]]:
    """Register a version; alias `challenger` always, `champion` when the name has none yet
    (unless first_champion=False: then only a promotion gate sets champion)."""
    mv = mlflow.register_model(model_uri, name, tags={"run_id": run_id})
    return str(mv.version), set_registration_aliases(name, str(mv.version), first_champion)


def set_registration_aliases(name: str, version: str, first_champion: bool = True) -> list[str]:
    """Aliases of a newly registered version; safe to repeat (a retried registration)."""
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, version)
    aliases = [CHALLENGER]
    champion = resolve_alias(name, CHAMPION)  # raises when the server fails: never steal champion on a blip
    if first_champion and champion is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        champion = version
    if champion == version:
        aliases.append(CHAMPION)
    return aliases


def version_of_run(name: str, run_id: str) -> str | None:
    """The READY version of `name` registered from `run_id` by an earlier attempt, if any."""
    versions = MlflowClient().search_model_versions(f"run_id='{run_id}'")
    ready = [mv for mv in versions if mv.name == name and str(mv.status) == "READY"]
    return str(min(int(mv.version) for mv in ready)) if ready else None


def set_alias(name: str, alias: str, version: str) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def tag_run(run_id: str, tags: dict[str, Any]) -> None:
    client = MlflowClient()
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))


def tag_version(name: str, version: str, tags: dict[str, Any]) -> None:
    client = MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v))


def version_tags(name: str, version: str) -> dict[str, str]:
    """The tags of one registered model version."""
    with unreachable_as_error(f"reading the tags of model {name!r} version {version}"):
        return dict(MlflowClient().get_model_version(name, version).tags)


def resolve_alias(name: str, alias: str) -> str | None:
    """Version behind an alias, or None when the alias (or the model) does not exist."""
    try:
        with unreachable_as_error(f"resolving alias {alias!r} of model {name!r}"):
            return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in _NOT_FOUND_CODES:
            return None
        raise  # a failing server is not "no alias" (an unreachable one raised TrackingUnavailable)


def load_registered_detector(name: str, version: str) -> Detector:
    """Download one exact model version and load its detector (no pyfunc overhead).

    Reads only data from the registry (detector.json and tensors via torch weights_only), never
    runs the model's stored Python code, unlike mlflow.pyfunc.load_model."""
    with unreachable_as_error(f"downloading model {name!r} version {version}"):
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}")
    return load_detector(Path(local) / "artifacts" / "detector")


def parse_model_ref(ref: str, default_alias: str = CHAMPION) -> tuple[str, str | None, str | None]:
    """ "NAME", "NAME@alias" or "NAME/version" -> (name, alias, version); a bare name means its champion."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, alias, None
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        if not version.isdigit():
            raise ValueError(f"model {ref!r}: the part after '/' must be a version number (or use NAME@alias)")
        return name, None, version
    return ref, default_alias, None


def resolve_model_ref(ref: str) -> tuple[str, str]:
    """(name, exact version) of a NAME[@alias|/version] reference; LookupError naming what is missing."""
    name, alias, version = parse_model_ref(ref)
    if version is None:
        assert alias is not None
        version = resolve_alias(name, alias)
        if version is None:
            raise LookupError(f"registered model {name!r} has no alias {alias!r} at {tracking_uri()}")
    else:
        try:
            with unreachable_as_error(f"looking up model {name!r} version {version}"):
                MlflowClient().get_model_version(name, version)
        except MlflowException as exc:
            if exc.error_code in _NOT_FOUND_CODES:
                raise LookupError(f"registered model {name!r} has no version {version} at {tracking_uri()}") from exc
            raise
    return name, version


# What calibration logged beside the threshold: the operating point an export carries.
OPERATING_METRICS = (
    "threshold",
    "pixel_threshold",
    "target_fpr",
    "target_recall",
    "threshold_percentile",
    "heldout_fpr",
    "heldout_fpr_low",
    "heldout_fpr_high",
    "heldout_normals",
    "tail_fpr_estimate",
    "syn_recall_estimate",
)


def operating_point(name: str, version: str) -> dict[str, Any]:
    """The calibration metrics and threshold method of the run a version was registered from."""
    with unreachable_as_error(f"reading the run of model {name!r} version {version}"):
        client = MlflowClient()
        run = client.get_run(client.get_model_version(name, version).run_id)
    point: dict[str, Any] = {k: run.data.metrics[k] for k in OPERATING_METRICS if k in run.data.metrics}
    for key in ("threshold_method", "score_method"):
        if key in run.data.params:
            point[key] = run.data.params[key]
    return point


def log_export(name: str, version: str, directory: Path, fmt: str) -> str:
    """Log an export folder to the run of the version (artifacts `export/<fmt>`) and tag the version
    `anomaflow.export.<fmt>` with the artifact URI, so the registry says where its edge graph is."""
    with unreachable_as_error(f"logging the {fmt} export of model {name!r} version {version}"):
        client = MlflowClient()
        run_id = client.get_model_version(name, version).run_id
        client.log_artifacts(run_id, str(directory), artifact_path=f"export/{fmt}")
        uri = f"runs:/{run_id}/export/{fmt}"
        client.set_model_version_tag(name, version, f"anomaflow.export.{fmt}", uri)
    return uri
