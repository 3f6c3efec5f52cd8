"""Sharded batch inspection on a Dask cluster: the writer's guard, a failed shard, and a 2-worker
LocalCluster run that must give the same results.csv as the default in-process runner, resumed
on a standalone scheduler given by ANOMAFLOW_DASK_ADDRESS."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed import Client
from mlflow.tracking import MlflowClient
from PIL import Image

from anomaflow.model.config import AutoencoderConfig
from anomaflow.model.data.datasets import load_images, scan_mvtec
from anomaflow.model.data.preprocessing import Preprocessing
from anomaflow.model.detectors.autoencoder import AutoencoderDetector
from anomaflow.model.operations import inspection
from tests.conftest import free_port, stop_process
from tests.test_operation import make_inbox

NAME = "anomaflow-dask"
COMPARED = [f for f in inspection.FIELDS if f != "inspected_at"]


def row(sha: str, version: str = "1", path: str | None = None) -> inspection.Row:
    return inspection.Row(path or f"{sha}.png", sha, 0.5, "NORMAL", 1.0, "m", version, inspection.now_iso())


def test_append_new_drops_keys_already_written(tmp_path):
    with inspection.Ledger(tmp_path) as ledger:
        written = {("a.png", "a", "m", "1")}
        new = inspection.append_new(ledger, [row("a"), row("b"), row("b"), row("a", version="2")], written)
    assert [(r.sha256, r.model_version) for r in new] == [("b", "1"), ("a", "2")]
    assert [(r["sha256"], r["model_version"]) for r in inspection.read_results(tmp_path / "results.csv")] == [
        ("b", "1"),
        ("a", "2"),
    ]


def test_plan_skips_done_and_duplicate_content(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name, value in [("a.png", 1), ("b.png", 2), ("b_copy.png", 2), ("c.png", 3)]:
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(inbox / name)
    files = inspection.list_inbox(inbox)
    with inspection.Ledger(tmp_path / "out") as ledger:
        ledger.append([row(inspection.read_hashed(inbox / "a.png")[0], path="a.png")])
        plan = inspection.plan_pending(files, inbox, ledger, model_name="m", model_version="1")
    assert [p.name for p in plan.pending] == ["b.png", "c.png"]
    assert [c.rel for c in plan.copies] == ["b_copy.png"]  # written by the writer with b.png's verdict
    assert (plan.summary.total, plan.summary.skipped) == (4, 1)
    assert [[p.name for p in s] for s in plan.shards(1)] == [["b.png"], ["c.png"]]


class MeanBrightness:
    """A stand-in detector: score = mean brightness (fast, deterministic)."""

    image_size, score_method, pixel_threshold = 64, "mean", None
    preprocessing = Preprocessing((64, 64))

    def score_batch(self, batch):
        from anomaflow.model.detectors.base import ScoreResult
        from anomaflow.model.detectors.scoring import image_scores

        maps = batch.images.mean(axis=-1).astype(np.float32) / 255
        return ScoreResult(maps, image_scores(maps))


@pytest.mark.usefixtures("prefect_api")
def test_a_failed_shard_keeps_the_others_rows_and_a_rerun_completes(demo_root, tmp_path, monkeypatch):
    """Shards on a thread pool (same writer code as on Dask); one shard fails on every try."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from anomaflow.flows.inspection import inspect_shards
    from anomaflow.tasks import inspection as inspection_tasks
    from anomaflow.tasks.inspection import ModelRef

    inbox = make_inbox(demo_root, tmp_path / "inbox", 12)
    out = tmp_path / "out"
    monkeypatch.setattr(inspection_tasks, "_worker_detector", lambda model: MeanBrightness())
    score_items = inspection.score_items

    def failing(detector, items, *args, **kw):
        if any(i.rel == "part_0004.png" for i in items):
            raise RuntimeError("worker lost")
        return score_items(detector, items, *args, **kw)

    run = inspect_shards.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    args = (ModelRef("m", "1", "unused"), str(inbox), str(out), 0.5)
    monkeypatch.setattr(inspection, "score_items", failing)
    with pytest.raises(RuntimeError, match="1 of 4 shards failed"):
        run(*args, batch_size=2, shard_size=3)
    saved = inspection.read_results(out / "results.csv")
    assert sorted(r["path"] for r in saved) == [f"part_{i:04d}.png" for i in range(12) if i not in (3, 4, 5)]
    monkeypatch.setattr(inspection, "score_items", score_items)
    summary = run(*args, batch_size=2, shard_size=3)
    assert (summary.inspected, summary.skipped) == (3, 9)
    rows = inspection.read_results(out / "results.csv")
    assert sorted(r["path"] for r in rows) == [f"part_{i:04d}.png" for i in range(12)]
    assert (out / "results.csv").read_bytes().count(b"\n") == 13


@pytest.fixture(scope="module")
def registered(mlflow_server, demo_root):
    """A tiny detector registered in a real MLflow server; the threshold splits the inbox so
    both decisions (and heat maps) occur."""
    from anomaflow.tasks import tracking

    ds = scan_mvtec(demo_root, "demo")
    det = AutoencoderDetector(
        AutoencoderConfig(image_size=64, base_channels=8, latent_channels=8, epochs=2, batch_size=8)
    )
    det.fit(load_images(ds.train, 64), progress=None)
    scores = det.score(load_images(ds.test, 64)).scores[det.score_method]
    det.threshold, det.pixel_threshold = float(np.median(scores)), float(np.median(scores))
    tracking.configure()
    run_id = MlflowClient().create_run(tracking.ensure_experiment("dask-test")).info.run_id
    version, _ = tracking.register(tracking.log_model(run_id, det), NAME, run_id)
    return version


@pytest.fixture()
def standalone_dask(tmp_path):
    """`dask scheduler` + one `dask worker` as separate processes, like the compose services."""
    address = f"tcp://127.0.0.1:{free_port()}"
    bindir = Path(sys.executable).parent
    log = open(tmp_path / "dask.log", "w")
    procs = [
        subprocess.Popen(
            [
                str(bindir / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                address.rsplit(":", 1)[1],
                "--no-dashboard",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    ]
    procs.append(
        subprocess.Popen(
            [
                str(bindir / "dask"),
                "worker",
                address,
                "--nthreads",
                "1",
                "--no-dashboard",
                "--preload",
                "anomaflow.tasks.inspection",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    )
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            stop_process(proc, timeout=30)
        log.close()


def results_by_path(out: Path) -> dict[str, tuple]:
    rows = inspection.read_results(out / "results.csv")
    assert len(rows) == len({r["path"] for r in rows}), "a path appears twice"
    return {r["path"]: tuple(r[f] for f in COMPARED) for r in rows}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_dask_runs_match_the_in_process_run_and_resume(registered, demo_root, tmp_path, standalone_dask, monkeypatch):
    from anomaflow.flows.inspection import batch_inspection

    inbox = make_inbox(demo_root, tmp_path / "inbox", 30)
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "same_as_0.png").write_bytes((inbox / "part_0000.png").read_bytes())

    # One torch thread here as in each Dask worker: with 2 threads float32 sums round differently
    # (scores then differ in the 8th digit), which would hide what this test checks: sharding.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # torch, as the shards score: the exported runtimes agree to 1e-5 (tests/test_export.py), not to 8 digits
        local = batch_inspection(
            input_dir=str(inbox), output_dir=str(tmp_path / "local"), model_name=NAME, batch_size=4, runtime="torch"
        )
    finally:
        torch.set_num_threads(threads)
    dask = batch_inspection(
        input_dir=str(inbox),
        output_dir=str(tmp_path / "dask"),
        model_name=NAME,
        batch_size=4,
        dask_workers=2,
        shard_size=4,
    )

    expected, got = results_by_path(tmp_path / "local"), results_by_path(tmp_path / "dask")
    assert len(expected) == 32  # 30 images + broken + the duplicate, which copies part_0000's verdict
    assert expected["sub/same_as_0.png"][COMPARED.index("duplicate_of")] == "part_0000.png"
    assert got == expected  # same rows, same scores (as written, 8 digits), same decisions
    assert {k: dask[k] for k in ("NORMAL", "DEFECT", "ERROR", "inspected", "duplicates")} == {
        k: local[k] for k in ("NORMAL", "DEFECT", "ERROR", "inspected", "duplicates")
    }
    assert (dask["inspected"], dask["duplicates"]) == (31, 1)  # the duplicate content is scored once
    assert dask["DEFECT"] > 0 and dask["NORMAL"] > 0 and dask["ERROR"] == 1
    defects = sorted(p.name for p in (tmp_path / "dask" / "defects").iterdir())
    assert defects == sorted(p.name for p in (tmp_path / "local" / "defects").iterdir())
    defect_contents = {
        r["sha256"] for r in inspection.read_results(tmp_path / "dask" / "results.csv") if r["decision"] == "DEFECT"
    }
    assert len(defects) == 2 * len(defect_contents)  # one heat map and overlay per content
    raw = (tmp_path / "dask" / "results.csv").read_bytes()
    assert raw.count(b"\n") == 33 and raw.endswith(b"\n")  # header + 32 whole lines

    # Resumable, on a standalone scheduler named by the environment: only 5 new images are inspected.
    make_inbox(demo_root, tmp_path / "more", 35)
    for p in sorted((tmp_path / "more").iterdir())[30:]:
        p.rename(inbox / p.name.replace("part_", "new_"))
    monkeypatch.setenv("ANOMAFLOW_DASK_ADDRESS", standalone_dask)
    more = batch_inspection(input_dir=str(inbox), output_dir=str(tmp_path / "dask"), model_name=NAME, shard_size=2)
    assert more["inspected"] == 5 and more["skipped"] == 32
    assert len(results_by_path(tmp_path / "dask")) == 37
    with Client(standalone_dask) as client:  # the 3 shards (2 + 2 + 1 images) ran on that scheduler's worker
        finished = client.run_on_scheduler(
            lambda dask_scheduler: sum(tp.state_counts.get("memory", 0) for tp in dask_scheduler.task_prefixes.values())
        )
    assert finished == 3
