"""Operation end to end: batch inspection against a model registered in a real MLflow server,
kill -9 and rerun, two concurrent runs, the CLI, and the retraining promotion gate."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from anomaflow.flows.inspection import batch_inspection
from anomaflow.flows.retraining import scheduled_retraining
from anomaflow.flows.training import train_pipeline
from anomaflow.model.config import TrainConfig
from anomaflow.model.operations import inspection
from tests.helpers import inspect_args, tiny_config

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]
NAME = "anomaflow-ops"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ops_config(root, **kw) -> TrainConfig:
    return tiny_config(root, image_size=128, registered_model_name=NAME, **kw)


@pytest.fixture(scope="module")
def registered(mlflow_server, demo_root):
    return train_pipeline(ops_config(demo_root))


def make_inbox(demo_root, path, n):
    """n distinct images (one pixel stamped with the index) from the demo test images."""
    path.mkdir(parents=True)
    sources = [np.array(Image.open(p).convert("RGB")) for p in sorted((demo_root / "demo" / "test").rglob("*.png"))]
    for i in range(n):
        img = sources[i % len(sources)].copy()
        img[0, 0] = (i % 256, i // 256, 7)
        Image.fromarray(img).save(path / f"part_{i:04d}.png", compress_level=1)
    return path


def test_batch_inspection_end_to_end(registered, demo_root, tmp_path):
    inbox = make_inbox(demo_root, tmp_path / "inbox", 12)
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    result = batch_inspection(input_dir=str(inbox), output_dir=str(out), model_name=NAME)
    rows = inspection.read_results(out / "results.csv")
    assert len(rows) == 13 and result["model_version"] == registered["model_version"]
    assert {r["model_version"] for r in rows} == {registered["model_version"]}
    assert result["ERROR"] == 1 and result["NORMAL"] + result["DEFECT"] == 12
    threshold = float(registered["threshold"])
    for r in rows:
        if r["decision"] != "ERROR":
            assert float(r["threshold"]) == pytest.approx(threshold, rel=1e-6)
            assert (float(r["score"]) > threshold) == (r["decision"] == "DEFECT")
    defects = [r for r in rows if r["decision"] == "DEFECT"]
    for r in defects:
        assert all(p.is_file() for p in inspection.defect_figure_paths(out, r["sha256"]))
    again = batch_inspection(input_dir=str(inbox), output_dir=str(out), model_name=NAME)
    assert again["inspected"] == 0 and again["skipped"] == 13
    # A threshold override is applied and recorded (a fresh output folder).
    over = batch_inspection(input_dir=str(inbox), output_dir=str(tmp_path / "out2"), model_name=NAME, threshold=1e9)
    assert over["DEFECT"] == 0
    assert {
        r["threshold"] for r in inspection.read_results(tmp_path / "out2" / "results.csv") if r["decision"] != "ERROR"
    } == {"1e+09"}


def test_unknown_alias_fails_clearly_and_writes_nothing(registered, tmp_path):
    from prefect.exceptions import PrefectException  # noqa: F401

    with pytest.raises(LookupError, match="no alias 'nope'"):
        batch_inspection(input_dir=str(tmp_path), output_dir=str(tmp_path / "out"), model_name=NAME, alias="nope")
    assert not (tmp_path / "out").exists()


def _cli(inbox, out, extra_env=None):
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "anomaflow.flows.cli",
            *inspect_args(inbox, out, NAME, "--batch-size", "2"),
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_kill_9_mid_run_then_rerun_gives_one_row_per_image(registered, demo_root, tmp_path):
    n = 400
    inbox = make_inbox(demo_root, tmp_path / "inbox", n)
    out = tmp_path / "out"
    proc = _cli(inbox, out)
    csv_path = out / "results.csv"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if csv_path.exists() and csv_path.read_bytes().count(b"\n") >= 11:  # header + 10 rows
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = inspection.read_results(csv_path)
    assert 10 <= len(before) < n, f"kill landed after {len(before)} rows: the run was not interrupted mid-way"
    rerun = _cli(inbox, out)
    log, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, log
    rows = inspection.read_results(csv_path)
    assert len(rows) == n, f"{len(rows)} rows for {n} images"
    assert sorted(r["path"] for r in rows) == sorted(p.name for p in inbox.iterdir())
    assert csv_path.read_bytes().count(b"\n") == n + 1  # no torn or blank lines


def test_two_concurrent_runs_do_not_inspect_the_same_image(registered, demo_root, tmp_path):
    n = 60
    inbox = make_inbox(demo_root, tmp_path / "inbox", n)
    out = tmp_path / "out"
    a, b = _cli(inbox, out), _cli(inbox, out)
    logs = [p.communicate(timeout=300)[0] for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, logs
    rows = inspection.read_results(out / "results.csv")
    assert len(rows) == n and len({r["sha256"] for r in rows}) == n
    assert any("skipped 60 already inspected" in log for log in logs)  # the second waited, then had nothing to do


def test_promotion_gate_both_ways(registered, demo_root, mlflow_server):
    client = MlflowClient(mlflow_server)
    champion = client.get_model_version_by_alias(NAME, "champion").version
    # A challenger that must beat the champion by more than it can (tolerance -1): rejected.
    worse = scheduled_retraining(ops_config(demo_root, seed=3), tolerance=-1.0, min_bars={})
    assert not worse["promoted"]
    assert client.get_model_version_by_alias(NAME, "champion").version == champion
    assert client.get_model_version_by_alias(NAME, "challenger").version == worse["challenger_version"]
    tags = client.get_model_version(NAME, worse["challenger_version"]).tags
    assert (
        tags["anomaflow.promotion.decision"] == "rejected" and tags["anomaflow.promotion.champion_version"] == champion
    )
    # One that passes (tolerance +1 accepts any score): promoted, scores recorded on its run.
    better = scheduled_retraining(ops_config(demo_root, seed=4), tolerance=1.0, min_bars={"image_auroc": 0.0})
    assert better["promoted"]
    assert client.get_model_version_by_alias(NAME, "champion").version == better["challenger_version"]
    run_id = client.get_model_version(NAME, better["challenger_version"]).run_id
    run_tags = client.get_run(run_id).data.tags
    assert run_tags["anomaflow.promotion.decision"] == "promoted"
    assert (
        float(run_tags["anomaflow.promotion.champion_score"]) >= 0.0
        and float(run_tags["anomaflow.promotion.challenger_score"]) >= 0.0
    )
    # Judged on the decision score, on the gate part of the test split, not on the reported numbers.
    run_metrics = client.get_run(run_id).data.metrics
    assert run_tags["anomaflow.promotion.primary_metric"] == "image_auroc" == better["decision"]["primary_metric"]
    assert float(run_tags["anomaflow.promotion.challenger_score"]) == pytest.approx(run_metrics["gate_image_auroc"])
    assert (
        "gate part" in run_tags["anomaflow.promotion.evaluation_split"]
        and "promotion gate on" in run_tags["anomaflow.evaluation_split"]
    )
    # A bar the challenger cannot meet: rejected even though it is "better".
    barred = scheduled_retraining(ops_config(demo_root, seed=5), tolerance=1.0, min_bars={"pixel_auroc": 1.01})
    assert not barred["promoted"] and "minimum bars" in barred["decision"]["reason"]


def test_drift_is_reported_and_a_brightened_batch_is_flagged(registered, demo_root, tmp_path):
    """A batch like the training data reports no drift; the same parts 60 grey levels brighter are
    flagged: drift.json says why, the flow run ends in a state named Drift, and the drift_*
    metrics are in MLflow (the `<model>-inspection` experiment)."""
    import json

    from prefect.client.orchestration import get_client  # noqa: F401 - the harness API is up

    good = sorted((demo_root / "demo" / "train" / "good").glob("*.png"))
    same, bright = tmp_path / "same", tmp_path / "bright"
    for folder, shift in ((same, 0), (bright, 60)):
        folder.mkdir()
        for i, p in enumerate(good):
            img = np.array(Image.open(p).convert("RGB")).astype(np.int16) + shift
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"p{i:03d}.png")
    quiet = batch_inspection(input_dir=str(same), output_dir=str(tmp_path / "o1"), model_name=NAME)
    assert quiet["drift_flagged"] is False, quiet["drift"]
    state = batch_inspection(input_dir=str(bright), output_dir=str(tmp_path / "o2"), model_name=NAME, return_state=True)
    assert state.name == "Drift" and "brightness moved" in state.message
    result = state.result()
    assert result["drift_flagged"] is True
    report = json.loads((tmp_path / "o2" / "drift.json").read_text())[-1]
    champion = MlflowClient().get_model_version_by_alias(NAME, "champion").version  # earlier tests may have promoted
    assert report["flagged"] and report["brightness_shift"] > 2 and report["model_version"] == champion
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name(f"{NAME}-inspection").experiment_id])
    assert any(r.data.metrics.get("drift_flagged") == 1.0 for r in runs)


def _inspect_and_review(test_split, tmp_path):
    """The parts of a test split inspected by the champion and every verdict reviewed by its true label."""
    from anomaflow.tasks.labels import LabelStore

    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    truth = {}
    for p in sorted(test_split.rglob("*.png")):
        name = f"{p.parent.name}_{p.name}"
        (inbox / name).write_bytes(p.read_bytes())
        truth[name] = p.parent.name != "good"
    batch_inspection(input_dir=str(inbox), output_dir=str(out), model_name=NAME)
    store = LabelStore(f"sqlite:///{out / 'review.sqlite'}")
    for r in inspection.read_results(out / "results.csv"):
        defect, flagged = truth[r["path"]], r["decision"] == "DEFECT"
        store.add(r["sha256"], r["model_version"], ("defect" if flagged else "missed") if defect else "good", "qa")
    return inbox, out, truth


def test_reviewed_labels_recalibrate_the_threshold_through_the_gate(registered, demo_root, tmp_path):
    """Inspect the demo test parts, review every verdict by its true label (one reviewer per
    part, as in the browser), then recalibrate for recall 1.0: field metrics go to MLflow, and the
    proposal is registered as a new version with the same weights, a new threshold and lineage
    tags; champion moves only if the gate passes."""
    from anomaflow.flows.recalibration import recalibrate

    _, out, truth = _inspect_and_review(demo_root / "demo" / "test", tmp_path)
    client = MlflowClient()
    champion_before = client.get_model_version_by_alias(NAME, "champion").version
    result = recalibrate(results_dirs=[str(out)], model_name=NAME, target_recall=1.0, apply=True, min_reviewed=3)
    field, proposal = result["field"], result["proposal"]
    assert result["reviewed_defects"] == sum(truth.values()) and result["reviewed_good"] == len(truth) - sum(
        truth.values()
    )
    assert proposal["recall"] == 1.0 and proposal["threshold"] <= field["threshold"]
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["field_recall"] == pytest.approx(field["recall"])
    assert ("field_precision" in run.data.metrics) == (
        field["tp"] + field["fp"] > 0
    )  # NaN (nothing flagged) is not logged
    new = client.get_model_version(NAME, result["new_version"])
    assert (
        new.tags["anomaflow.recalibrated_from"] == result["model_version"]
        and "target recall 1.0" in new.tags["anomaflow.threshold_source"]
    )
    from anomaflow.tasks.tracking import load_registered_detector

    assert load_registered_detector(NAME, result["new_version"]).threshold == pytest.approx(proposal["threshold"])
    champion_after = client.get_model_version_by_alias(NAME, "champion").version
    assert champion_after == (result["new_version"] if result["promoted"] else champion_before)
    assert new.tags["anomaflow.promotion.decision"] == ("promoted" if result["promoted"] else "rejected")


def test_retraining_adds_reviewed_false_alarms_to_a_curated_copy(registered, demo_root, tmp_path):
    """Parts reviewed as good after a DEFECT verdict join train/good of a curated copy with
    provenance; the challenger trains on it, its fingerprint differs and its run says why. The
    user's dataset is not touched."""
    import json

    from anomaflow.tasks.labels import LabelStore

    data_root = tmp_path / "data"
    import shutil

    shutil.copytree(demo_root, data_root)
    before = sorted(p.name for p in (data_root / "demo" / "train" / "good").iterdir())
    inbox = make_inbox(demo_root, tmp_path / "inbox", 12)
    out = tmp_path / "out"
    batch_inspection(input_dir=str(inbox), output_dir=str(out), model_name=NAME, threshold=-1.0)  # everything a DEFECT
    rows = inspection.read_results(out / "results.csv")
    store = LabelStore(f"sqlite:///{out / 'review.sqlite'}")
    for r in rows[:3]:
        store.add(r["sha256"], r["model_version"], "good", "qa", note="false alarm")
    store.add(rows[3]["sha256"], rows[3]["model_version"], "defect", "qa")
    result = scheduled_retraining(ops_config(data_root), review_results=[str(out)])
    curated = tmp_path / "data-curated" / "demo"
    info = json.loads((curated / "curation.json").read_text())
    assert sorted(a["sha256"] for a in info["added"]) == sorted(r["sha256"] for r in rows[:3])
    assert all(a["reviewer"] == "qa" and a["note"] == "false alarm" for a in info["added"])
    assert len(list((curated / "train" / "good").iterdir())) == len(before) + 3
    assert (
        sorted(p.name for p in (data_root / "demo" / "train" / "good").iterdir()) == before
    )  # the original is untouched
    run = MlflowClient().get_run(MlflowClient().get_model_version(NAME, result["challenger_version"]).run_id)
    assert run.data.tags["anomaflow.curation"].startswith("3 part(s) reviewed as good")
    assert (
        run.data.tags["anomaflow.data_fingerprint"]
        != MlflowClient().get_run(registered["mlflow_run_id"]).data.tags["anomaflow.data_fingerprint"]
    )


def test_a_recalibrated_threshold_survives_the_next_promotion(registered, demo_root, line_parts, tmp_path):
    """Recalibrate the champion for field recall 1.0 on reviewed parts, then retrain with those
    reviews: the challenger's registered threshold also catches every reviewed defect (as the
    challenger scores them), its FPR estimate is not below its field FPR on the reviewed good
    parts, and the gate compared field precision/recall of both on the same parts."""
    from anomaflow.flows.recalibration import recalibrate

    inbox, out, truth = _inspect_and_review(line_parts, tmp_path)  # new parts, none in the dataset
    client = MlflowClient()
    rec = recalibrate(results_dirs=[str(out)], model_name=NAME, target_recall=1.0, apply=True, min_reviewed=3)
    if not rec["promoted"]:  # the recalibration gate may refuse (lower field F1): make it champion by hand
        client.set_registered_model_alias(NAME, "champion", rec["new_version"])
    champion = rec["new_version"]
    result = scheduled_retraining(
        ops_config(demo_root, seed=6),
        min_bars={},
        review_results=[str(out)],
        curated_root=str(tmp_path / "curated"),
        min_reviewed=3,
    )
    assert result["champion_version_before"] == champion
    version = client.get_model_version(NAME, result["challenger_version"])
    metrics = client.get_run(version.run_id).data.metrics
    assert metrics["reviewed_defects"] == sum(truth.values()) and metrics["field_recall_reviewed"] == 1.0
    assert metrics["threshold"] <= metrics["threshold_heldout"]
    assert metrics["fpr_estimate_with_reviews"] >= max(metrics["field_fpr_reviewed"], metrics["heldout_fpr"])
    assert version.tags["anomaflow.threshold_source"].startswith(
        ("reviewed labels", "held-out normals (its field recall already reaches")
    )
    # The registered challenger, inspecting the same parts, flags every defect.
    again = tmp_path / "again"
    batch_inspection(input_dir=str(inbox), output_dir=str(again), model_name=NAME, alias="challenger")
    rows = inspection.read_results(again / "results.csv")
    assert {r["model_version"] for r in rows} == {result["challenger_version"]}
    assert all(r["decision"] == "DEFECT" for r in rows if truth[r["path"]])
    field = result["decision"]["field_metrics"]
    assert field["challenger_field_recall"] == 1.0 and 0.0 <= field["champion_field_recall"] <= 1.0
    assert field["challenger_field_precision"] == pytest.approx(metrics["field_precision_reviewed"])
    assert version.tags["anomaflow.promotion.champion_field_precision"] == f"{field['champion_field_precision']:.4f}"
    if not result["promoted"]:
        assert "field precision" in result["decision"]["reason"] or "< champion" in result["decision"]["reason"]
