"""The training flow against a real MLflow tracking server over HTTP, then the registry."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from anomaflow.flows.training import train_pipeline
from tests.helpers import DEMO_DEFECT_IOU, EVAL_METRICS, tiny_config

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]
NAME = "anomaflow-it"


def load_table(run_id: str, path: str) -> pd.DataFrame:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    with open(local) as fh:
        doc = json.load(fh)
    return pd.DataFrame(doc["data"], columns=doc["columns"])


@pytest.fixture(scope="module")
def two_runs(mlflow_server, demo_root):
    first = train_pipeline(tiny_config(demo_root, registered_model_name=NAME))
    second = train_pipeline(tiny_config(demo_root, registered_model_name=NAME, seed=1))
    return first, second


def test_run_logged_with_params_metrics_artifacts_tags(two_runs, mlflow_server):
    first, _ = two_runs
    client = MlflowClient(mlflow_server)
    run = client.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "anomaflow-demo"
    p = run.data.params
    assert (
        p["category"] == "demo"
        and p["autoencoder.epochs"] == "2"
        and p["seed"] == "0"
        and p["threshold_method"] == "tail"
    )
    m = run.data.metrics
    for key in (*EVAL_METRICS, *DEMO_DEFECT_IOU, "f1", "threshold", "train_seconds"):
        assert key in m, key
    assert m["image_auroc_max"] == pytest.approx(first["image_auroc_max"])
    assert [x.step for x in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
    files = {f.path for d in ("figures", "tables", "checkpoints") for f in client.list_artifacts(run.info.run_id, d)}
    for f in (
        "figures/roc.png",
        "figures/score_histogram.png",
        "figures/heatmaps.png",
        "figures/dataset_samples.png",
        "tables/iou_per_defect.json",
        "tables/per_image_scores.json",
        "checkpoints/weights.pt",
    ):
        assert f in files, f
    iou = load_table(run.info.run_id, "tables/iou_per_defect.json")
    assert set(iou["defect"]) == {"blob", "crack", "scratch", "overall"}
    t = run.data.tags
    assert (
        len(t["anomaflow.data_fingerprint"]) == 64 and t["anomaflow.version"] == "0.1.0" and t["anomaflow.git_commit"]
    )


def test_registry_aliases(two_runs, mlflow_server):
    first, second = two_runs
    client = MlflowClient(mlflow_server)
    assert (first["model_version"], second["model_version"]) == ("1", "2")
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"  # the first stays champion
    assert client.get_model_version_by_alias(NAME, "challenger").version == "2"
    assert client.get_model_version(NAME, "1").run_id == first["mlflow_run_id"]


def test_model_by_alias_reproduces_flow_scores(two_runs, mlflow_server, demo_root):
    first, _ = two_runs
    run_id = first["mlflow_run_id"]
    per_image = load_table(run_id, "tables/per_image_scores.json")
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    paths = list(per_image["path"])
    out = model.predict(pd.DataFrame({"image": [open(p, "rb").read() for p in paths]}))
    method = MlflowClient().get_run(run_id).data.params["score_method"]
    np.testing.assert_allclose(out["score"].to_numpy(), per_image[f"score_{method}"].to_numpy(), rtol=1e-5, atol=1e-7)
    assert list(out["decision"]) == list(per_image["decision"])
    assert (out["threshold"] == first["threshold"]).all()
    with_maps = model.predict(pd.DataFrame({"path": paths[:2]}), params={"return_maps": True})
    assert np.asarray(with_maps["anomaly_map"].iloc[0]).shape == (64, 64)


def test_rest_serving_of_the_champion_answers_for_a_good_and_a_defective_image(
    two_runs, mlflow_server, demo_root, tmp_path
):
    """The README's serving command, for real: `mlflow models serve` on 127.0.0.1 (the venv's bin
    on PATH, as it runs uvicorn by name), then /invocations with base64 PNGs in dataframe_split."""
    import base64
    import os
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from tests.conftest import free_port, wait_http

    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": mlflow_server,
    }
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{NAME}@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
        good = sorted((demo_root / "demo" / "test" / "good").glob("*.png"))[0]
        bad = sorted((demo_root / "demo" / "test" / "blob").glob("*.png"))[0]
        body = {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(p.read_bytes()).decode()] for p in (good, bad)],
            }
        }
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            out = json.loads(r.read())["predictions"]
        print("served:", out)
        assert [set(p) >= {"score", "decision", "threshold"} for p in out] == [True, True]
        assert {p["decision"] for p in out} <= {"NORMAL", "DEFECT"}
        local = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(
            pd.DataFrame({"image": [p.read_bytes() for p in (good, bad)]})
        )
        assert [p["score"] for p in out] == pytest.approx(
            local["score"].tolist(), rel=1e-6
        )  # what the model computes in-process
        assert [p["decision"] for p in out] == local["decision"].tolist()
        first, _ = two_runs
        assert out[0]["threshold"] == pytest.approx(first["threshold"])  # the champion (version 1) answered
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_runs_are_named_last_as_long_as_training_and_carry_their_dataset(two_runs, mlflow_server, demo_root):
    """Run names tell runs apart (category, family, seed); the run is opened before training, so
    its duration covers the training; the data is an MLflow dataset input (name, digest = the
    data fingerprint, source); the epoch curve was logged while training ran."""
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("anomaflow-demo")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens it on its runs
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    first, second = two_runs
    assert {"demo-autoencoder-seed0", "demo-autoencoder-seed1"} <= set(runs)
    for metrics, name in ((first, "demo-autoencoder-seed0"), (second, "demo-autoencoder-seed1")):
        run = runs[name]
        assert run.info.run_id == metrics["mlflow_run_id"] and run.info.status == "FINISHED"
        assert (run.info.end_time - run.info.start_time) / 1000 >= metrics["train_seconds"]
        (inp,) = run.inputs.dataset_inputs
        assert inp.dataset.name == "demo" and run.data.tags["anomaflow.data_fingerprint"].startswith(inp.dataset.digest)
        assert json.loads(inp.dataset.source)["uri"].endswith("demo") and inp.tags[0].value == "training"
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert min(m.timestamp for m in history) < run.info.end_time - 1000 * (
            metrics["train_seconds"] > 1
        )  # logged as it trained


def test_a_failed_training_leaves_a_failed_run(mlflow_server, demo_root, tmp_path):
    from anomaflow.model.config import PatchCoreConfig, TrainConfig

    config = TrainConfig(
        data_root=str(demo_root),
        category="demo",
        detector="patchcore",
        run_name="meant-to-fail",
        patchcore=PatchCoreConfig(image_size=64, weights_path=str(tmp_path / "missing.pth")),
        registered_model_name=NAME,
    )
    with pytest.raises(Exception, match="missing.pth"):
        train_pipeline(config, register_model=False)
    client = MlflowClient(mlflow_server)
    runs = client.search_runs(
        [client.get_experiment_by_name("anomaflow-demo").experiment_id], "attributes.run_name = 'meant-to-fail'"
    )
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.params["patchcore.weights_path"].endswith("missing.pth") and runs[0].inputs.dataset_inputs
