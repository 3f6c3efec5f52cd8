"""Tasks of the fleet flows: which products a root holds, how many run at once, the fleet's record.

A fleet is every MVTec-layout category under one data root (or one inbox folder per product).
Each product runs its usual flow (train-pipeline, scheduled-retraining, batch-inspection) as a
subflow inside one mapped task, so a failing product is one failed task and the others go on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from anomaflow.model.config import FLEET, TrainConfig
from anomaflow.model.data import datasets as data
from anomaflow.model.files import write_json_atomic
from anomaflow.model.operations.inspection import list_inbox
from anomaflow.model.operations.results import FLEET_SUMMARY
from anomaflow.tasks import tracking
from anomaflow.tasks.registration import TRACKING_RETRIES
from anomaflow.tasks.reporting import artifact_key

SUMMARY_FILE = FLEET_SUMMARY


@dataclass(frozen=True)
class FleetPlan:
    """How a fleet runs: products at once and torch threads per product (their product fits the cores)."""

    products: list[str]
    concurrency: int
    threads_per_product: int
    dask_address: str | None = None

    def describe(self) -> str:
        if self.dask_address:
            where = f"on Dask {self.dask_address}"
        else:
            where = "in this process" if self.concurrency == 1 else f"in {self.concurrency} worker processes"
        return (
            f"{len(self.products)} product(s) {', '.join(self.products)}: {self.concurrency} at a time, "
            f"{self.threads_per_product} torch thread(s) each, {where}"
        )


@dataclass
class ProductOutcome:
    """One product's row of the fleet summary; status "ok" or "failed" (with the error)."""

    product: str
    status: str
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def fleet_categories(data_root: str | None) -> list[str]:
    """The MVTec-layout categories (folders with train/good) of data_root, sorted; a clear error
    when there is no root or it holds none."""
    if not data_root:
        raise ValueError(f"category {FLEET!r} trains every category of a data root: give --data ROOT")
    found = sorted(data.mvtec_categories(Path(data_root).expanduser()))
    if not found:
        raise data.DataError(Path(data_root), "no MVTec-layout categories here (folders holding train/good)")
    return found


def inbox_products(input_dir: str | Path) -> list[str]:
    """The product folders of a fleet inbox (INBOX/<category>/ holding images), sorted."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such inbox folder")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and list_inbox(d))
    if not found:
        raise FileNotFoundError(f"{root}: no product folders with images (expected {root}/<category>/*.png)")
    return found


def plan_fleet(
    products: list[str], num_threads: int | None, concurrency: int | None, dask_address: str | None
) -> FleetPlan:
    """Products at once: `concurrency`, else as many as the cores hold at num_threads each (one
    when a product takes all cores). Threads per product: num_threads, else the cores shared out;
    two trainings that each take every core run slower together than one after the other."""
    cores = os.cpu_count() or 1
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    at_once = concurrency or max(1, cores // (num_threads or cores))
    at_once = min(at_once, len(products))
    threads = num_threads or max(1, cores // at_once)
    return FleetPlan(products, at_once, threads, dask_address)


def product_config(config: TrainConfig, category: str, experiment: str | None, threads: int) -> TrainConfig:
    """One product's config: its category, its own registered model (anomaflow-<category>), the
    fleet's experiment (MLflow nests child runs only within their parent's experiment)."""
    if config.registered_model_name:
        raise ValueError(
            "a fleet registers one model per product (anomaflow-<category>): do not set registered_model_name"
        )
    update: dict[str, Any] = {"category": category, "num_threads": threads}
    if experiment:
        update["experiment_name"] = experiment
    return config.model_copy(update=update)


def summary_rows(outcomes: list[ProductOutcome], detector: str = "") -> list[dict[str, Any]]:
    """The fleet table: product, status, detector (auto's choice, else `detector`), image / pixel
    AUROC, recall / FPR on the test split, version, promoted (champion now), error."""

    def num(r: dict[str, Any], key: str) -> float | None:
        v = r.get(key)
        return round(float(v), 4) if isinstance(v, (int, float)) and v == v else None

    rows = []
    for o in outcomes:
        r = o.result
        promoted = r.get("promoted")
        if promoted is None and "model_aliases" in r:
            promoted = tracking.CHAMPION in r["model_aliases"]
        rows.append(
            {
                "product": o.product,
                "status": o.status,
                "detector": r.get("auto_choice") or (detector if o.status == "ok" else ""),
                "image_auroc": num(r, "image_auroc"),
                "pixel_auroc": num(r, "pixel_auroc"),
                "recall": num(r, "recall"),
                "fpr": num(r, "false_positive_rate"),
                "version": str(r.get("model_version") or r.get("challenger_version") or ""),
                "promoted": promoted,
                "error": o.error,
            }
        )
    return rows


@task(name="start_fleet_run", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def start_fleet_run(experiment: str, run_name: str, plan: FleetPlan, params: dict[str, Any]) -> str:
    """The MLflow parent run of a fleet: each product's training run is its child."""
    tracking.configure()
    with tracking.unreachable_as_error("opening the fleet run"):
        run_id = tracking.start_run(
            experiment,
            run_name,
            {"anomaflow.fleet.products": ",".join(plan.products)},
            {**params, "products": len(plan.products), "concurrency": plan.concurrency},
        )
    get_run_logger().info("MLflow fleet run %s (%s) in experiment %s", run_name, run_id, experiment)
    return run_id


@task(name="finish_fleet_run", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def finish_fleet_run(run_id: str, rows: list[dict[str, Any]]) -> None:
    """Per-product headline metrics and the summary table on the parent run; FAILED when any
    product failed, so the runs table shows it."""
    failed = [r["product"] for r in rows if r["status"] != "ok"]
    metrics = {
        f"{r['product']}_{k}": r[k]
        for r in rows
        for k in ("image_auroc", "pixel_auroc", "recall", "fpr")
        if r[k] is not None
    }
    metrics.update(products_ok=float(len(rows) - len(failed)), products_failed=float(len(failed)))
    record = tracking.RunRecord(
        experiment="",
        run_name="",
        params={},
        metrics=metrics,
        history=[],
        tags={"anomaflow.fleet.failed": ",".join(failed) or "none"},
        tables={"fleet_summary": rows},
    )
    tracking.log_run(record, run_id=run_id)
    tracking.finish_run(run_id, "FAILED" if failed else "FINISHED")


@task(name="publish_fleet", cache_policy=NO_CACHE)
def publish_fleet(job: str, rows: list[dict[str, Any]], output_dir: str | None) -> None:
    """The summary table as one Prefect artifact (and output_dir/fleet.json), and one line per product."""
    log = get_run_logger()
    for r in rows:
        if r["status"] == "ok":
            log.info(
                "%s: %s image AUROC %s, pixel AUROC %s, recall %s at FPR %s, version %s, promoted %s",
                r["product"],
                r["detector"] or job,
                r["image_auroc"],
                r["pixel_auroc"],
                r["recall"],
                r["fpr"],
                r["version"] or "-",
                r["promoted"],
            )
        else:
            log.error("%s: FAILED: %s", r["product"], r["error"])
    create_table_artifact(rows, key=artifact_key("fleet", job), description=f"fleet {job}: one row per product")
    if output_dir:
        write_json_atomic({"job": job, "products": rows}, Path(output_dir) / SUMMARY_FILE)
