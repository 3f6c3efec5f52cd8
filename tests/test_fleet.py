"""The fleet flows against a real MLflow server and Prefect API: two generated products, one of
them deliberately broken (every training image corrupt), trained in one flow run; the good one is
trained, registered and nested under the fleet's parent run, the broken one fails alone and the
summary says why. Then the fleet inbox is inspected with each product's own champion, and the
fleet is retrained with each product's reviews."""

from __future__ import annotations

import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from anomaflow.flows.fleet import fleet_inspection, fleet_retraining, fleet_training
from anomaflow.model.operations import inspection
from anomaflow.model.operations.results import default_label_db
from anomaflow.tasks.fleet import SUMMARY_FILE, fleet_categories, inbox_products, plan_fleet
from anomaflow.tasks.labels import LabelStore
from tests.helpers import tiny_config

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]


@pytest.fixture(scope="module")
def fleet_root(demo_root, tmp_path_factory):
    """Products `capsule` (the demo data) and `broken` (its train/good images are not images)."""
    root = tmp_path_factory.mktemp("fleet")
    shutil.copytree(demo_root / "demo", root / "capsule")
    shutil.copytree(demo_root / "demo", root / "broken")
    for p in (root / "broken" / "train" / "good").iterdir():
        p.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (root / "notes").mkdir()  # a folder without train/good is not a product
    return root


def test_plan_respects_the_cores_and_names_the_products(fleet_root, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert fleet_categories(str(fleet_root)) == ["broken", "capsule"]
    assert plan_fleet(["a", "b", "c"], None, None, None).concurrency == 1  # each takes every core
    two = plan_fleet(["a", "b", "c"], 4, None, None)
    assert (two.concurrency, two.threads_per_product) == (2, 4)
    shared = plan_fleet(["a", "b"], None, 4, None)  # more at once than products: capped, cores shared
    assert (shared.concurrency, shared.threads_per_product) == (2, 4)
    with pytest.raises(ValueError, match="--data ROOT"):
        fleet_categories(None)
    with pytest.raises(ValueError, match="at least 1"):
        plan_fleet(["a"], None, 0, None)


def test_fleet_trains_each_product_and_one_failure_stops_no_other(mlflow_server, fleet_root, line_parts, tmp_path):
    config = tiny_config(fleet_root, experiment_name="fleet-test").model_copy(update={"num_threads": 1})
    state = fleet_training(config, output_dir=str(tmp_path / "out"), concurrency=2, return_state=True)
    assert state.is_failed() and "broken" in state.message
    result = state.result(raise_on_failure=False)
    rows = {r["product"]: r for r in result["products"]}
    assert rows["capsule"]["status"] == "ok" and rows["broken"]["status"] == "failed"
    assert "DatasetInvalid" in rows["broken"]["error"] and "not a readable image" in rows["broken"]["error"]
    ok = rows["capsule"]
    assert ok["version"] == "1" and ok["promoted"] is True and 0.0 <= ok["image_auroc"] <= 1.0
    assert ok["detector"] == "autoencoder" and ok["recall"] is not None and ok["fpr"] is not None
    assert json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())["products"] == result["products"]
    assert (tmp_path / "out" / "capsule" / "metrics.json").is_file()

    client = MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.info.status == "FAILED" and parent.data.tags["anomaflow.fleet.failed"] == "broken"
    assert parent.data.metrics["products_ok"] == 1 and parent.data.metrics["products_failed"] == 1
    assert parent.data.metrics["capsule_image_auroc"] == pytest.approx(ok["image_auroc"], abs=1e-4)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_category = {c.data.tags["anomaflow.category"]: c for c in children}
    assert set(by_category) == {"capsule"}  # the broken product failed in validation, before its run
    version = client.get_model_version("anomaflow-capsule", "1")
    assert version.run_id == by_category["capsule"].info.run_id
    assert client.get_model_version_by_alias("anomaflow-capsule", "champion").version == "1"

    inbox = tmp_path / "inbox"
    (inbox / "capsule").mkdir(parents=True)
    for p in sorted((fleet_root / "capsule" / "test").rglob("*.png"))[:5]:
        shutil.copy(p, inbox / "capsule" / f"{p.parent.name}_{p.name}")  # test images of the dataset
    for p in sorted(line_parts.rglob("*.png"))[:5]:
        shutil.copy(p, inbox / "capsule" / f"line_{p.parent.name}_{p.name}")  # new parts
    (inbox / "broken").mkdir()
    shutil.copy(next((fleet_root / "capsule" / "test" / "good").iterdir()), inbox / "broken" / "a.png")
    assert inbox_products(inbox) == ["broken", "capsule"]
    state = fleet_inspection(str(inbox), str(tmp_path / "inspected"), return_state=True)
    assert state.is_failed()  # anomaflow-broken was never registered
    rows = {r["product"]: r for r in state.result(raise_on_failure=False)["products"]}
    assert rows["capsule"]["status"] == "ok" and rows["capsule"]["NORMAL"] + rows["capsule"]["DEFECT"] == 10
    assert "anomaflow-broken" in rows["broken"]["error"]
    assert len(inspection.read_results(tmp_path / "inspected" / "capsule" / "results.csv")) == 10

    # The weekly fleet retraining: each product against its own champion, with its own reviews
    # (REVIEW_ROOT/<category>/ as the fleet inspection wrote them); the broken product fails alone.
    inspected = tmp_path / "inspected"
    db = default_label_db([inspected / "capsule", inspected / "broken"])  # `anomaflow review --results inspected/*`
    assert db == f"sqlite:///{inspected.resolve() / 'review.sqlite'}"  # the fleet's one label database
    store = LabelStore(db)
    for r in inspection.read_results(inspected / "capsule" / "results.csv"):
        defect = "good_" not in r["path"]
        store.add(
            r["sha256"],
            r["model_version"],
            ("defect" if r["decision"] == "DEFECT" else "missed") if defect else "good",
            "qa",
        )
    state = fleet_retraining(
        config,
        min_bars={},
        review_root=str(inspected),
        curated_root=str(tmp_path / "curated"),
        concurrency=2,
        return_state=True,
    )
    assert state.is_failed() and "broken" in state.message
    result = state.result(raise_on_failure=False)
    rows = {r["product"]: r for r in result["products"]}
    assert rows["broken"]["status"] == "failed" and rows["capsule"]["status"] == "ok"
    assert rows["capsule"]["version"] == "2" and isinstance(rows["capsule"]["promoted"], bool)
    assert 0.0 <= rows["capsule"]["image_auroc"] <= 1.0
    assert result["results"]["capsule"]["champion_version_before"] == "1"
    challenger = client.get_run(client.get_model_version("anomaflow-capsule", "2").run_id)
    # The product's own reviews calibrated it: the 5 new parts (all defects), not the 5 test images.
    assert challenger.data.metrics["reviewed_defects"] == 5 and challenger.data.metrics["reviewed_good"] == 0
    assert (tmp_path / "curated" / "capsule" / "curation.json").is_file()  # the product's curated copy


def test_fleet_runs_on_a_dask_cluster_given_its_address(mlflow_server, fleet_root, tmp_path):
    """--dask ADDRESS: the product tasks run on that scheduler's workers (here an in-process
    LocalCluster, whose workers see this test's Prefect API and MLflow server)."""
    from distributed import LocalCluster

    config = tiny_config(fleet_root, experiment_name="fleet-dask", registered_model_name=None).model_copy(
        update={"num_threads": 1}
    )
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        result = fleet_training(
            config, categories=["capsule"], register_model=False, dask_address=cluster.scheduler_address
        )
    (row,) = result["products"]
    assert row["product"] == "capsule" and row["status"] == "ok" and row["version"] == ""
    run = MlflowClient().get_run(result["results"]["capsule"]["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == result["mlflow_run_id"]


def test_every_deployment_of_prefect_yaml_loads_and_its_parameters_fit_its_flow():
    """Each entrypoint imports and its parameters validate against the flow's signature (the
    fleet deployments included), without a server."""
    from pathlib import Path

    import yaml
    from prefect.flows import load_flow_from_entrypoint

    repo = Path(__file__).resolve().parents[1]
    deployments = yaml.safe_load((repo / "prefect.yaml").read_text())["deployments"]
    assert {"fleet-manual", "fleet-weekly", "fleet-hourly"} <= {d["name"] for d in deployments}
    for d in deployments:
        flow = load_flow_from_entrypoint(str(repo / d["entrypoint"]))
        validated = flow.validate_parameters(d["parameters"])
        if "config" in validated:
            assert validated["config"].data_root == d["parameters"]["config"]["data_root"]
