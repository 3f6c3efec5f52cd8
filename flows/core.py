"""Plain-Python composition of the core steps (no Prefect, no MLflow)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from model import data, pipeline
from model.config import TrainConfig, flatten_params


def run_core(config: TrainConfig, output: Path) -> dict[str, Any]:
    threads = pipeline.configure_threads(config.num_threads)
    root, category = pipeline.resolve_data_root(config)
    ds = pipeline.load_dataset(root, category)
    report = data.validate_dataset(ds)
    print(report.summary())
    report.raise_for_problems()
    arrays = pipeline.load_arrays(ds, config)
    det, history, train_seconds = pipeline.fit_detector(config, arrays)
    holdout_result = det.score(arrays.holdout)
    thresholds = pipeline.calibrate_detector(det, config, holdout_result)
    t0 = time.perf_counter()
    test_result = det.score(arrays.test)
    infer_seconds = time.perf_counter() - t0
    ev = pipeline.evaluate_split(det, arrays, test_result, config.score_method) if len(arrays.test) else None
    metrics: dict[str, Any] = dict(ev.metrics) if ev else {}
    metrics.update(thresholds)
    metrics["train_seconds"] = train_seconds
    metrics["inference_images_per_second"] = len(arrays.test) / infer_seconds if len(arrays.test) and infer_seconds > 0 else float("nan")
    output.mkdir(parents=True, exist_ok=True)
    det.save(output / "model")
    if ev:
        pipeline.write_figures(output, arrays, test_result, ev, det, config.score_method)
    pipeline.write_json(history, output / "history.json")
    pipeline.write_json(ev.per_image if ev else [], output / "per_image.json")
    pipeline.write_json({"params": flatten_params(config), "torch_threads": threads, "data_root": str(root), "category": category}, output / "run.json")
    pipeline.write_json(metrics, output / "metrics.json")
    return metrics
