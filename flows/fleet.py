"""Fleet flows: train, retrain or inspect every product of a root in one flow run.

Each product runs its own flow (train-pipeline, scheduled-retraining, batch-inspection) as a
subflow inside one task of `fleet-products`; those tasks run one at a time in this process, or
`concurrency` at a time in local worker processes, or on a Dask cluster (dask_address), the
latter two through the DaskTaskRunner inspection uses. A product that fails is one failed task:
the others finish, the table says which failed and why, and the fleet run ends Failed. Prefect
maps tasks, not flows, hence one task per product.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from anomaflow.model.config import TrainConfig
from anomaflow.model.evaluation.promotion import GATE_BARS
from anomaflow.tasks import tracking
from anomaflow.tasks.fleet import (
    FleetPlan,
    ProductOutcome,
    finish_fleet_run,
    fleet_categories,
    inbox_products,
    plan_fleet,
    product_config,
    publish_fleet,
    start_fleet_run,
    summary_rows,
)
from anomaflow.tasks.inspection import dask_task_runner, resolve_dask_address, start_cluster

Job = Literal["train", "retrain", "inspect"]


def _product_flow(job: Job):
    """The per-product flow of a job, imported where the task runs (a Dask worker too)."""
    if job == "train":
        from anomaflow.flows.training import train_pipeline

        return train_pipeline
    if job == "retrain":
        from anomaflow.flows.retraining import scheduled_retraining

        return scheduled_retraining
    from anomaflow.flows.inspection import batch_inspection

    return batch_inspection


@task(name="product", task_run_name="{job}-{product}", cache_policy=NO_CACHE)
def run_product(job: Job, product: str, kwargs: dict[str, Any], tracking_uri: str) -> dict[str, Any]:
    """One product's flow, as a subflow of this task (on a Dask worker: against the same MLflow)."""
    tracking.configure(tracking_uri)
    return _product_flow(job)(**kwargs)


@flow(name="fleet-products")
def fleet_products(job: Job, products: dict[str, dict[str, Any]], tracking_uri: str) -> list[ProductOutcome]:
    """Every product's flow on this flow's task runner; a failure is recorded, never raised."""
    start_cluster()
    futures = {p: run_product.submit(job, p, kw, tracking_uri) for p, kw in products.items()}
    outcomes = []
    for product, future in futures.items():
        value = future.result(raise_on_failure=False)
        if isinstance(value, BaseException):  # the table gets the first two lines; the log has it all
            first = " ".join(line.strip() for line in str(value).splitlines()[:2])
            outcomes.append(ProductOutcome(product, "failed", error=f"{type(value).__name__}: {first}"[:300]))
        else:
            outcomes.append(ProductOutcome(product, "ok", result=dict(value)))
    return outcomes


def _run_fleet(job: Job, plan: FleetPlan, products: dict[str, dict[str, Any]]) -> list[ProductOutcome]:
    """One product at a time runs in this process. Several at once run in as many single-threaded
    Dask worker processes (a temporary LocalCluster): torch's thread count and its and numpy's
    global random state are per process, so products side by side neither reseed each other nor
    share one thread pool, and each gives the numbers it gives alone."""
    if plan.dask_address:
        runner = dask_task_runner(plan.dask_address, 0)
    elif plan.concurrency > 1:
        runner = dask_task_runner(None, plan.concurrency)
    else:
        runner = ThreadPoolTaskRunner(max_workers=1)
    print(f"fleet {job}: {plan.describe()}")
    return fleet_products.with_options(task_runner=runner)(job, products, tracking.tracking_uri())


def _ended(job: str, outcomes: list[ProductOutcome], rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The fleet's result; a Failed state (carrying the same result) when any product failed."""
    failed = [o.product for o in outcomes if o.status != "ok"]
    result = {"products": rows, "failed": failed, "results": {o.product: o.result for o in outcomes}, **extra}
    if failed:
        return Failed(message=f"fleet {job}: {len(failed)} of {len(outcomes)} failed: {', '.join(failed)}", data=result)  # type: ignore[return-value]
    return result


@flow(name="fleet-training", log_prints=True)
def fleet_training(
    config: TrainConfig = TrainConfig(),
    categories: list[str] | None = None,
    output_dir: str | None = None,
    register_model: bool = True,
    concurrency: int | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Train every category of config.data_root (or `categories`) as one child MLflow run each
    under a parent run (experiment config.experiment_name, default anomaflow-fleet), each product
    registered as anomaflow-<category>. output_dir: OUTPUT/<category>/ per product and
    OUTPUT/fleet.json. concurrency: products at once (default: as many as the cores hold at
    config.num_threads each); dask_address (or $ANOMAFLOW_DASK_ADDRESS): on that Dask cluster."""
    plan = plan_fleet(
        categories or fleet_categories(config.data_root),
        config.num_threads,
        concurrency,
        resolve_dask_address(dask_address),
    )
    experiment = config.experiment_name or "anomaflow-fleet"
    configs = {c: product_config(config, c, experiment, plan.threads_per_product) for c in plan.products}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    parent = start_fleet_run(experiment, f"fleet-{config.detector}-{stamp}", plan, config.params())
    products = {
        c: {
            "config": configs[c],
            "output_dir": str(Path(output_dir) / c) if output_dir else None,
            "register_model": register_model,
            "parent_run_id": parent,
        }
        for c in plan.products
    }
    try:
        outcomes = _run_fleet("train", plan, products)
        rows = summary_rows(outcomes, config.detector)
        publish_fleet("training", rows, output_dir)  # the table first: it stands even if MLflow fails now
    except BaseException:
        tracking.mark_failed_quietly(parent)
        raise
    finish_fleet_run(parent, rows)
    return _ended("training", outcomes, rows, mlflow_run_id=parent)


@flow(name="fleet-retraining", log_prints=True)
def fleet_retraining(
    config: TrainConfig = TrainConfig(),
    categories: list[str] | None = None,
    primary_metric: str = "image_auroc",
    min_bars: dict[str, float] = GATE_BARS,
    tolerance: float = 0.0,
    review_root: str | None = None,
    review_db: str | None = None,
    curated_root: str | None = None,
    concurrency: int | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """scheduled-retraining for every category of config.data_root: each product's challenger
    against its own champion through its own gate. review_root: reviewed inspection folders per
    product (REVIEW_ROOT/<category>/, as fleet-inspection writes them); review_db: their label
    database (default: REVIEW_ROOT/review.sqlite, where `anomaflow review --results REVIEW_ROOT/*`
    keeps the labels of a fleet inspection); curated_root: where each product's curated copy
    goes (CURATED_ROOT/<category>/, default <data_root>-curated)."""
    plan = plan_fleet(
        categories or fleet_categories(config.data_root),
        config.num_threads,
        concurrency,
        resolve_dask_address(dask_address),
    )
    products = {}
    for c in plan.products:
        reviewed = Path(review_root) / c if review_root else None
        products[c] = {
            "config": product_config(config, c, None, plan.threads_per_product),
            "primary_metric": primary_metric,
            "min_bars": dict(min_bars),
            "tolerance": tolerance,
            "review_results": [str(reviewed)] if reviewed is not None and reviewed.is_dir() else None,
            "review_db": review_db,
            "curated_root": curated_root,
        }
    outcomes = _run_fleet("retrain", plan, products)
    rows = summary_rows(outcomes, config.detector)
    publish_fleet("retraining", rows, None)
    return _ended("retraining", outcomes, rows)


@flow(name="fleet-inspection", log_prints=True)
def fleet_inspection(
    input_dir: str,
    output_dir: str,
    alias: str = "champion",
    batch_size: int = 16,
    concurrency: int | None = 1,
    model_prefix: str = "anomaflow-",
) -> dict[str, Any]:
    """batch-inspection of every product inbox: INBOX/<category>/ with model <model_prefix><category>
    into OUTPUT/<category>/ (what `anomaflow review --results OUTPUT/*` shows per product).
    concurrency: products at once (default 1: one inspection already keeps the cores busy)."""
    plan = plan_fleet(inbox_products(input_dir), None, concurrency, None)
    products = {
        c: {
            "input_dir": str(Path(input_dir) / c),
            "output_dir": str(Path(output_dir) / c),
            "model_name": f"{model_prefix}{c}",
            "alias": alias,
            "batch_size": batch_size,
        }
        for c in plan.products
    }
    outcomes = _run_fleet("inspect", plan, products)
    rows = summary_rows(outcomes)
    for row, o in zip(rows, outcomes):
        row.update({k: o.result.get(k) for k in ("NORMAL", "DEFECT", "ERROR")})
    publish_fleet("inspection", rows, output_dir)
    return _ended("inspection", outcomes, rows)
