"""Batch inspection tasks: resolve the model once, inspect the inbox, publish the summary."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from model import inspection
from model.detector import Detector
from tasks import tracking
from tasks.reporting import artifact_key


@dataclass
class ResolvedModel:
    name: str
    alias: str
    version: str
    detector: Detector


@task(name="resolve_model", cache_policy=NO_CACHE, **tracking.TRACKING_RETRIES)
def resolve_model(model_name: str, alias: str) -> ResolvedModel:
    """Alias -> one exact version, resolved once per run so the whole run uses one model."""
    tracking.configure()
    version = tracking.resolve_alias(model_name, alias)
    if version is None:
        raise LookupError(f"registered model {model_name!r} has no alias {alias!r} at {tracking.tracking_uri()}")
    detector = tracking.load_registered_detector(model_name, version)
    get_run_logger().info("using %s version %s (alias %s), threshold %.6g", model_name, version, alias, detector.threshold)
    return ResolvedModel(model_name, alias, version, detector)


@task(name="inspect_images", cache_policy=NO_CACHE)
def inspect_images(model: ResolvedModel, input_dir: Path, output_dir: Path, threshold: float | None, batch_size: int) -> inspection.InspectionSummary:
    log = get_run_logger()
    files = inspection.list_inbox(input_dir)
    thr = float(threshold) if threshold is not None else float(model.detector.threshold)
    log.info("%d images in %s; threshold %.6g%s", len(files), input_dir, thr, " (override)" if threshold is not None else "")
    step = max(1, len(files) // 10)

    def progress(done: int, total: int) -> None:
        if done % step < batch_size or done == total:
            log.info("inspected %d/%d", done, total)

    with inspection.Ledger(output_dir) as ledger:
        return inspection.inspect_files(
            model.detector, files, input_dir, ledger, model_name=model.name, model_version=model.version,
            threshold=thr, batch_size=batch_size, progress=progress,
        )


@task(name="publish_inspection", cache_policy=NO_CACHE)
def publish_inspection(model: ResolvedModel, summary: inspection.InspectionSummary, output_dir: Path, threshold: float | None) -> None:
    rows = [{"decision": k, "count": v} for k, v in summary.counts().items()]
    key = artifact_key("inspection", model.name)
    create_table_artifact(rows, key=key + "-counts", description="images per decision in this run")
    md = "\n".join([
        f"# Batch inspection with {model.name} v{model.version} ({model.alias})",
        "",
        f"- images in inbox: {summary.total}; inspected now: {summary.inspected}; already done: {summary.skipped}; duplicate content: {summary.duplicates}",
        f"- NORMAL {summary.normal}, DEFECT {summary.defect}, ERROR {summary.error}",
        f"- threshold: {threshold if threshold is not None else model.detector.threshold:.6g}" + (" (override)" if threshold is not None else ""),
        f"- throughput: {summary.images_per_second:.1f} images/s over {summary.seconds:.1f}s",
        f"- results: `{Path(output_dir) / inspection.RESULTS_FILE}`",
    ])
    create_markdown_artifact(md, key=key + "-summary", description="batch inspection summary")
