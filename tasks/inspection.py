"""Batch inspection tasks: resolve the model once, inspect the inbox (in this process, or in
shards on a Dask cluster), publish the summary."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed

from anomaflow.model.detectors.base import Detector
from anomaflow.model.files import write_json_atomic
from anomaflow.model.operations import inspection
from anomaflow.model.operations.export import missing_libraries
from anomaflow.tasks import tracking
from anomaflow.tasks.registration import TRACKING_RETRIES
from anomaflow.tasks.reporting import artifact_key

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner

    from anomaflow.model.operations.drift import DriftLimits, DriftReport


DASK_ADDRESS_ENV = "ANOMAFLOW_DASK_ADDRESS"


@dataclass(frozen=True)
class ModelRef:
    """What a shard worker needs to load the run's model itself: no weights travel with tasks."""

    name: str
    version: str
    tracking_uri: str


@dataclass
class ResolvedModel:
    name: str
    alias: str
    version: str
    detector: Detector
    tracking_uri: str

    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version, self.tracking_uri)

    def threshold(self, override: float | None) -> float:
        return float(override) if override is not None else float(self.detector.threshold)


@task(name="resolve_model", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def resolve_model(model_name: str, alias: str) -> ResolvedModel:
    """Alias -> one exact version, resolved once per run so the whole run uses one model."""
    uri = tracking.configure()
    version = tracking.resolve_alias(model_name, alias)
    if version is None:
        raise LookupError(f"registered model {model_name!r} has no alias {alias!r} at {tracking.tracking_uri()}")
    detector = tracking.load_registered_detector(model_name, version)
    get_run_logger().info(
        "using %s version %s (alias %s), threshold %.6g", model_name, version, alias, detector.threshold
    )
    return ResolvedModel(model_name, alias, version, detector, uri)


RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")


def pick_runtime(runtime: str) -> str:
    """auto: onnxruntime when the export extra is installed (2.1x torch's images/s on the model call
    for PatchCore on Bottle, the same decisions and scores within 1e-5 of their scale, 1e-4 for the
    autoencoder: benchmarks/inspection_speed.py, tests/test_export.py), else torch."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    if runtime == "auto":
        return "torch" if missing_libraries("onnxruntime") else "onnxruntime"
    missing = [] if runtime == "torch" else missing_libraries(runtime)
    if missing:
        raise ValueError(f"runtime {runtime!r} needs {', '.join(missing)}: pip install 'anomaflow[export]'")
    return runtime


def scorer_for(model: ResolvedModel, runtime: str):
    """What scores the images: the torch detector, or its exported graph (made once per version into
    ANOMAFLOW_HOME/exports, tests/test_export.py holds it to the torch scores) under onnxruntime / OpenVINO."""
    asked, runtime = runtime, pick_runtime(runtime)
    if runtime == "torch":
        return model.detector
    if asked == "auto" and type(model.detector).map_tensor is Detector.map_tensor:
        get_run_logger().info("scoring with torch: %s models have no exported graph", model.detector.family)
        return model.detector
    import torch

    from anomaflow.model.operations.export import cached_export
    from anomaflow.model.operations.runtime import ExportedDetector
    from anomaflow.model.pipeline import default_home

    fmt = "openvino" if runtime == "openvino" else "onnx"
    t0 = time.perf_counter()
    folder = cached_export(model.detector, default_home() / "exports", fmt, model.name, model.version)
    scorer = ExportedDetector(folder, runtime, threads=torch.get_num_threads())
    get_run_logger().info("scoring with %s on %s (ready in %.1fs)", runtime, folder, time.perf_counter() - t0)
    return scorer


@task(name="inspect_images", cache_policy=NO_CACHE)
def inspect_images(
    model: ResolvedModel,
    input_dir: Path,
    output_dir: Path,
    threshold: float | None,
    batch_size: int,
    runtime: str = "auto",
) -> inspection.InspectionSummary:
    log = get_run_logger()
    files = inspection.list_inbox(input_dir)
    thr = model.threshold(threshold)
    log.info(
        "%d images in %s; threshold %.6g%s", len(files), input_dir, thr, " (override)" if threshold is not None else ""
    )
    scorer = scorer_for(model, runtime)
    step = max(1, len(files) // 10)

    def progress(done: int, total: int) -> None:
        if done % step < batch_size or done == total:
            log.info("inspected %d/%d", done, total)

    with inspection.Ledger(output_dir) as ledger:
        return inspection.inspect_files(
            scorer,
            files,
            input_dir,
            ledger,
            model_name=model.name,
            model_version=model.version,
            threshold=thr,
            batch_size=batch_size,
            progress=progress,
        )


# -- sharded inspection (Dask) ----------------------------------------------------------------
def dask_task_runner(address: str | None, n_workers: int) -> "DaskTaskRunner":
    """A DaskTaskRunner on an existing scheduler (address), else on a temporary LocalCluster of
    n_workers single-threaded processes (torch gets one core per worker, no oversubscription)
    that import this module while the cluster starts: torch, MLflow and Prefect take seconds
    to import, which the first shard on each worker would otherwise pay."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "preload": [__name__],
        }
    )


def resolve_dask_address(explicit: str | None) -> str | None:
    """The scheduler to use: the flow parameter, else $ANOMAFLOW_DASK_ADDRESS (empty: none)."""
    return explicit or os.environ.get(DASK_ADDRESS_ENV) or None


def start_cluster() -> None:
    """Start the LocalCluster, or connect to the scheduler, now rather than on the first
    submit: a wrong address fails before the inbox is read, and start-up is not inspection time."""
    runner = FlowRunContext.get().task_runner
    if hasattr(runner, "client"):  # a DaskTaskRunner creates its client lazily
        t0 = time.perf_counter()
        workers = runner.client.nthreads()
        get_run_logger().info(
            "Dask scheduler %s ready in %.1fs: %d workers, %d threads",
            runner.client.scheduler.address,
            time.perf_counter() - t0,
            len(workers),
            sum(workers.values()),
        )


@functools.lru_cache(maxsize=4)
def _worker_detector(model: ModelRef) -> Detector:
    """Each worker process downloads and loads the exact model version once (from the flow's
    tracking server, with the same bounded retries as the flow)."""
    tracking.configure(model.tracking_uri)
    return tracking.load_registered_detector(model.name, model.version)


@task(name="inspect_shard", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def inspect_shard(
    model: ModelRef,
    files: list[str],
    input_dir: str,
    output_dir: str,
    threshold: float,
    batch_size: int,
    threads: int = 1,
) -> list[inspection.Row]:
    """Score one shard where the task runner puts it; heat maps are written here, rows go back to
    the flow, the single writer of results.csv. Rerunning a shard is harmless."""
    import torch

    torch.set_num_threads(threads)
    buffer = inspection.RowBuffer(output_dir)
    inspection.inspect_files(
        _worker_detector(model),
        [Path(f) for f in files],
        Path(input_dir),
        buffer,
        model_name=model.name,
        model_version=model.version,
        threshold=threshold,
        batch_size=batch_size,
    )
    return buffer.rows


def run_shards(
    model: ModelRef, input_dir: Path, output_dir: Path, threshold: float, batch_size: int, shard_size: int, threads: int
) -> inspection.InspectionSummary:
    """Hold the output folder's lock, plan once, submit one task per shard to the flow's task
    runner and append each shard's rows as it finishes. Failed shards fail the run after the
    others' rows are saved: a rerun inspects only what is missing."""
    log = get_run_logger()
    t0 = time.perf_counter()
    files = inspection.list_inbox(input_dir)
    with inspection.Ledger(output_dir) as ledger:
        plan = inspection.plan_pending(files, input_dir, ledger, model_name=model.name, model_version=model.version)
        summary = plan.summary
        shards = plan.shards(shard_size)
        log.info(
            "%d images in %s: %d to inspect in %d shards, %d already done, %d duplicate content",
            len(files),
            input_dir,
            len(plan.pending),
            len(shards),
            summary.skipped,
            len(plan.copies),
        )
        written = {(path, sha, model.name, model.version) for path, sha in plan.known.done}
        futures = [
            inspect_shard.submit(
                model, [str(f) for f in shard], str(input_dir), str(output_dir), threshold, batch_size, threads
            )
            for shard in shards
        ]
        failures: list[BaseException] = []
        for future in as_completed(futures):
            try:
                rows = future.result()
            except Exception as exc:  # keep collecting: finished shards' rows are saved
                failures.append(exc)
                continue
            new = inspection.append_new(ledger, rows, written)
            plan.known.record(new)
            summary.add(new)
            log.info("inspected %d/%d", summary.inspected, len(plan.pending))
        # Duplicates copy their original's verdict; those of a failed shard wait for the rerun.
        copied, waiting = inspection.copy_rows(plan.copies, plan.known)
        summary.add(inspection.append_new(ledger, copied, written))
        if waiting:
            log.warning("%d duplicate(s) of content in failed shards get their rows on the rerun", len(waiting))
    summary.seconds = time.perf_counter() - t0
    if failures:
        raise RuntimeError(
            f"{len(failures)} of {len(futures)} shards failed; the other shards' rows are in results.csv"
        ) from failures[0]
    return summary


@task(name="publish_inspection", cache_policy=NO_CACHE)
def publish_inspection(
    model: ResolvedModel,
    summary: inspection.InspectionSummary,
    output_dir: Path,
    threshold: float | None,
    input_dir: Path | None = None,
) -> None:
    if input_dir is not None:  # where the rows' relative paths point (curation of reviewed parts reads the originals)
        inspection.record_input(output_dir, input_dir)
    rows = [{"decision": k, "count": v} for k, v in summary.counts().items()]
    key = artifact_key("inspection", model.name)
    create_table_artifact(rows, key=key + "-counts", description="images per decision in this run")
    md = "\n".join(
        [
            f"# Batch inspection with {model.name} v{model.version} ({model.alias})",
            "",
            f"- images in inbox: {summary.total}; scored now: {summary.inspected}; "
            f"duplicate content (verdict copied): {summary.duplicates}; already done: {summary.skipped}",
            f"- NORMAL {summary.normal}, DEFECT {summary.defect}, ERROR {summary.error}",
            f"- threshold: {threshold if threshold is not None else model.detector.threshold:.6g}"
            + (" (override)" if threshold is not None else ""),
            f"- throughput: {summary.images_per_second:.1f} images/s over {summary.seconds:.1f}s",
            f"- results: `{Path(output_dir) / inspection.RESULTS_FILE}`",
        ]
    )
    create_markdown_artifact(md, key=key + "-summary", description="batch inspection summary")


DRIFT_FILE = "drift.json"


@task(name="check_drift", cache_policy=NO_CACHE)
def check_drift(
    model: ResolvedModel,
    summary: inspection.InspectionSummary,
    output_dir: Path,
    threshold: float | None,
    limits: "DriftLimits | None" = None,
) -> "DriftReport | None":
    """Compare this run's scored images with the model's calibration reference (model.drift):
    appended to OUTPUT/drift.json (what the review app shows), logged to MLflow as drift_* metrics
    of a run in the `<model>-inspection` experiment, and published as a Prefect artifact."""
    import json

    from anomaflow.model.operations.drift import DriftLimits, compare

    log = get_run_logger()
    ref = model.detector.reference
    if not ref:
        log.info(
            "no drift report: %s v%s was trained before models carried a calibration reference",
            model.name,
            model.version,
        )
        return None
    if not summary.scores:
        return None
    report = compare(
        ref,
        summary.scores,
        summary.brightness,
        summary.sizes,
        summary.modes,
        model.threshold(threshold),
        limits or DriftLimits(),
    )
    entry = {"model_name": model.name, "model_version": model.version, "at": inspection.now_iso(), **report.to_dict()}
    path = output_dir / DRIFT_FILE
    history = json.loads(path.read_text()) if path.is_file() else []
    write_json_atomic([*history, entry], path)
    (log.warning if report.flagged else log.info)("drift: %s", report.summary)
    create_markdown_artifact(
        f"# Drift of this inspection batch\n\n{report.summary}\n\nLimits: {limits or DriftLimits()}",
        key=artifact_key("drift", model.name),
        description="drift against the calibration reference",
    )
    try:
        record = tracking.RunRecord(
            experiment=f"{model.name}-inspection",
            run_name=f"inspection v{model.version} {entry['at'][:19]}",
            params={"model_name": model.name, "model_version": model.version, "threshold": model.threshold(threshold)},
            metrics={**report.metrics(), "images": float(summary.inspected), "defects": float(summary.defect)},
            history=[],
            tags={
                "anomaflow.drift": report.summary,
                "anomaflow.model_version": model.version,
                "anomaflow.output": str(output_dir),
            },
            files={"drift": path},
        )
        tracking.log_run(record, finish=True)
    except Exception as exc:
        log.warning("drift metrics not logged to MLflow: %s", exc)
    return report


def inspection_result(model: ModelRef, summary: inspection.InspectionSummary, drift: Any | None) -> dict[str, Any]:
    """What batch-inspection returns: counts, speed and the drift verdict of the batch."""
    result = {
        "model_version": model.version,
        **summary.counts(),
        "inspected": summary.inspected,
        "duplicates": summary.duplicates,
        "skipped": summary.skipped,
        "images_per_second": summary.images_per_second,
    }
    if drift is not None:
        result.update(drift=drift.summary, drift_flagged=drift.flagged)
    return result
