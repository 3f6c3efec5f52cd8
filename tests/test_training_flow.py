"""The train-pipeline flow under a real Prefect API (test harness) and a local MLflow store."""

import asyncio

import pytest
from mlflow.tracking import MlflowClient

from anomaflow.flows.training import train_pipeline
from anomaflow.model.data.datasets import DataError
from tests.helpers import EVAL_METRICS, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_api")


async def _read_artifacts(keys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)), sort=ArtifactSort.CREATED_DESC
        )
    latest = {}
    for a in arts:  # newest first: keep the latest version of each key
        latest.setdefault(a.key, a)
    return list(latest.values())


async def _latest_flow_run_name():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
        return runs[0].name


def test_flow_runs_end_to_end(demo_root, mlflow_sqlite, tmp_path):
    metrics = train_pipeline(
        tiny_config(demo_root, experiment_name="flow-test", registered_model_name="flow-test-model"),
        output_dir=str(tmp_path / "out"),
    )
    for key in (*EVAL_METRICS, "f1", "threshold", "mlflow_run_id", "model_version"):
        assert key in metrics
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert (tmp_path / "out" / "dataset_samples.png").stat().st_size > 1000

    arts = asyncio.run(_read_artifacts(["train-summary-demo", "iou-per-defect-demo"]))
    kinds = {a.key: a.type for a in arts}
    assert kinds.get("train-summary-demo") == "markdown" and kinds.get("iou-per-defect-demo") == "table"
    summary = next(a for a in arts if a.key == "train-summary-demo")
    assert metrics["mlflow_run_id"] in summary.data and "pixel_aupro" in summary.data
    assert asyncio.run(_latest_flow_run_name()).startswith("demo-")

    run = MlflowClient().get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["autoencoder.epochs"] == "2"
    assert not [k for k in run.data.params if k.startswith("patchcore.")]  # only the trained family's settings
    assert len(MlflowClient().get_metric_history(run.info.run_id, "train_loss")) == 2


def test_flow_stops_on_broken_dataset_before_training(demo_root, mlflow_sqlite, tmp_path):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(demo_root, root)
    (root / "demo" / "test" / "blob" / "000.png").write_bytes(b"")
    with pytest.raises(DataError, match="000.png: empty file"):
        train_pipeline(tiny_config(root, experiment_name="flow-broken"))
    assert MlflowClient().get_experiment_by_name("flow-broken") is None  # nothing logged
