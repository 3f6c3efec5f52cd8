"""batch-inspection: resolve the model alias once, inspect the inbox, publish a summary.

The inbox is inspected in this process by default. With a Dask scheduler address (parameter
or ANOMAFLOW_DASK_ADDRESS) or dask_workers > 0 (a temporary LocalCluster), the subflow
`inspect-shards` runs on a DaskTaskRunner: shards are scored on the Dask workers, and the
subflow stays the single writer of results.csv. (A flow's task runner is fixed when it starts,
hence the subflow.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.states import Completed

from anomaflow.model.operations.drift import DriftLimits
from anomaflow.model.operations.inspection import InspectionSummary
from anomaflow.tasks.inspection import (
    ModelRef,
    check_drift,
    dask_task_runner,
    inspect_images,
    inspection_result,
    publish_inspection,
    resolve_dask_address,
    resolve_model,
    run_shards,
    start_cluster,
)


@flow(name="inspect-shards")
def inspect_shards(
    model: ModelRef,
    input_dir: str,
    output_dir: str,
    threshold: float,
    batch_size: int = 16,
    shard_size: int = 64,
    threads_per_shard: int = 1,
) -> InspectionSummary:
    """Pending images in shards on this flow's task runner; rows appended as shards finish."""
    start_cluster()
    return run_shards(model, Path(input_dir), Path(output_dir), threshold, batch_size, shard_size, threads_per_shard)


@flow(name="batch-inspection", log_prints=True)
def batch_inspection(
    input_dir: str,
    output_dir: str,
    model_name: str = "anomaflow-bottle",
    alias: str = "champion",
    threshold: float | None = None,
    batch_size: int = 16,
    dask_address: str | None = None,
    dask_workers: int = 0,
    shard_size: int = 64,
    drift_limits: DriftLimits = DriftLimits(),
    runtime: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto",
) -> dict[str, Any]:
    """Inspect every image under input_dir into output_dir/results.csv (one row per image and
    model version; reruns skip finished images). threshold overrides the model's own. dask_address
    (default $ANOMAFLOW_DASK_ADDRESS) or dask_workers > 0 (a temporary LocalCluster) score shards
    of shard_size images on Dask workers, which must see both folders at the same paths. Past
    drift_limits the run ends Completed named "Drift". runtime: torch, or the exported graph under
    onnxruntime / OpenVINO; auto: onnxruntime where the export extra is installed (sharded: torch)."""
    address = resolve_dask_address(dask_address)
    sharded = bool(address or dask_workers > 0)
    if runtime not in ("auto", "torch") and sharded:
        raise ValueError(f"runtime {runtime!r} runs in this process only; sharded (Dask) inspection scores with torch")
    model = resolve_model(model_name, alias)
    inbox, out = Path(input_dir), Path(output_dir)
    if sharded:  # absolute paths: shard workers may run in another working directory
        shards = inspect_shards.with_options(task_runner=dask_task_runner(address, dask_workers))
        summary = shards(
            model.ref(), str(inbox.resolve()), str(out.resolve()), model.threshold(threshold), batch_size, shard_size
        )
    else:
        summary = inspect_images(model, inbox, out, threshold, batch_size, runtime)
    publish_inspection(model, summary, out, threshold, inbox)
    drift = check_drift(model, summary, out, threshold, drift_limits)
    result = inspection_result(model, summary, drift)
    if drift is not None and drift.flagged:  # a flagged state in the UI; the caller still gets the result
        return Completed(name="Drift", message=drift.summary, data=result)  # type: ignore[return-value]
    return result
