"""batch-inspection: resolve the model alias once, inspect the inbox, publish a summary."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from tasks.inspection import inspect_images, publish_inspection, resolve_model


@flow(name="batch-inspection", log_prints=True)
def batch_inspection(
    input_dir: str,
    output_dir: str,
    model_name: str = "anomaflow-bottle",
    alias: str = "champion",
    threshold: float | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Inspect every image under input_dir into output_dir/results.csv (one row per image and
    model version; reruns skip finished images). threshold overrides the model's own."""
    model = resolve_model(model_name, alias)
    summary = inspect_images(model, Path(input_dir), Path(output_dir), threshold, batch_size)
    publish_inspection(model, summary, Path(output_dir), threshold)
    return {"model_version": model.version, **summary.counts(), "inspected": summary.inspected,
            "skipped": summary.skipped, "images_per_second": summary.images_per_second}
