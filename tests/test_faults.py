"""Faults: the tracking server dies mid-training or is unreachable at inspection
start, and the output disk fills up. Nothing is lost, nothing is half-registered, failures
name their cause.

A worker killed mid-inspection is covered by tests/test_operation.py
(test_kill_9_mid_run_then_rerun_gives_one_row_per_image: kill -9 of the CLI after >= 10 rows,
rerun, exactly one row per image and no torn line); it is not repeated here.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from anomaflow.model.operations import inspection
from anomaflow.tasks import tracking
from tests.conftest import free_port, mlflow_server_cmd, wait_http
from tests.helpers import fit_tiny_autoencoder, inspect_inbox, tiny_config

pytestmark = pytest.mark.slow
SIZE = 64


def unset_env(mp: pytest.MonkeyPatch, *keys: str) -> None:
    """Remove keys for the test and restore them afterwards (delenv alone records nothing when a
    key is absent, so a value set later by the code under test would leak)."""
    for key in keys:
        mp.setenv(key, "unset")
        mp.delenv(key)


# ---------------------------------------------------------------------------------------------
# a tracking server the test can kill and bring back on the same port and backend store


class RestartableServer:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and a local artifact store.

    It runs in its own process group: `mlflow server` starts uvicorn and a job runner as
    children, and a kill must take them all, or the port stays served."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.kills = 0
        self.starts = 0

    def start(self) -> None:
        log = open(self.home / "server.log", "a")
        self.proc = subprocess.Popen(
            mlflow_server_cmd(self.port, f"sqlite:///{self.home / 'mlflow.db'}", self.home / "artifacts"),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.home,
            start_new_session=True,
        )
        log.close()
        wait_http(f"{self.uri}/health", self.proc)
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL the whole group: no graceful shutdown, like a crashed host."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def restart_in_background(self) -> threading.Thread:
        t = threading.Thread(target=self.start, daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = RestartableServer(tmp_path_factory.mktemp("mlflow-faults"))
    srv.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", srv.uri)
        unset_env(mp, *tracking.HTTP_DEFAULTS)  # the adapter's bounds apply, not a developer's shell
        yield srv
    srv.stop()


def hostile_dataset(demo_root: Path, dest: Path) -> Path:
    """The demo set with hostile (valid UTF-8) names and a soft-edged mask: the recovered run
    must also survive those end to end (plots, MLflow tables, registry)."""
    shutil.copytree(demo_root, dest)
    cat = dest / "demo"
    good = sorted((cat / "train" / "good").glob("*.png"))
    good[0].rename(good[0].with_name("with space ü.png"))
    good[1].rename(good[1].with_name('$(touch PWNED);`id`,"q".png'))
    blob = cat / "test" / "blob" / "000.png"
    mask = cat / "ground_truth" / "blob" / "000_mask.png"
    soft = np.asarray(Image.open(mask)).astype(np.float32)
    soft = (soft * 0.6 + np.roll(soft, 1, axis=0) * 0.4).astype(np.uint8)  # anti-aliased edge values
    assert len(np.unique(soft)) > 2
    Image.fromarray(soft, "L").save(cat / "ground_truth" / "blob" / "a b ü_mask.png")
    mask.unlink()
    blob.rename(blob.with_name("a b ü.png"))
    return dest


def fault_config(root: Path, name: str):
    return tiny_config(root, image_size=SIZE, epochs=1, registered_model_name=name, experiment_name=f"faults-{name}")


def assert_registry_consistent(client: MlflowClient, name: str) -> None:
    """Every version is READY and loads from its own artifacts; every alias names such a version."""
    versions = client.search_model_versions(f"name='{name}'")
    for mv in versions:
        assert mv.status == "READY", mv
        det = tracking.load_registered_detector(name, mv.version)
        assert det.threshold is not None and det.image_size == SIZE
    known = {mv.version for mv in versions}
    for alias, version in client.get_registered_model(name).aliases.items():
        assert version in known, (alias, version)


# ---------------------------------------------------------------------------------------------
# (a) the MLflow server stops mid-training


def port_refuses(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.usefixtures("prefect_api")
def test_server_killed_in_training_and_in_registration_then_restarted(server, demo_root, tmp_path, monkeypatch):
    """Kill -9 while the model trains (restarted when the flow first needs MLflow, so that call
    meets a dead port), and again right after the model version is created but before its
    aliases are set (restarted at once). The bounded retries carry the run through: FINISHED,
    exactly one version for the run, both aliases on it, and it loads from its own artifacts."""
    import mlflow

    from anomaflow.flows.training import train_pipeline
    from anomaflow.model import pipeline

    name = "faults-recover"
    events: list[str] = []
    real_fit, real_log_run, real_register = pipeline.fit_detector, tracking.log_run, mlflow.register_model
    restarts: list[threading.Thread] = []

    def kill_then_fit(*args, **kwargs):
        server.kill()
        events.append("killed in training")
        return real_fit(*args, **kwargs)

    def log_run_on_a_dead_port(*args, **kwargs):
        if not restarts:
            events.append(f"log_run called, port refuses: {port_refuses(server.port)}")
            restarts.append(server.restart_in_background())  # takes seconds: the first attempt fails
        try:
            return real_log_run(*args, **kwargs)
        except Exception as exc:
            events.append(f"log_run attempt failed: {type(exc).__name__}")
            raise

    def register_then_kill(*args, **kwargs):
        mv = real_register(*args, **kwargs)
        if len(restarts) == 1:
            restarts[0].join()
            server.kill()
            events.append(f"killed after creating version {mv.version}")
            restarts.append(server.restart_in_background())
        return mv

    monkeypatch.setattr(pipeline, "fit_detector", kill_then_fit)
    monkeypatch.setattr(tracking, "log_run", log_run_on_a_dead_port)
    monkeypatch.setattr(mlflow, "register_model", register_then_kill)
    root = hostile_dataset(demo_root, tmp_path / "data")
    metrics = train_pipeline(fault_config(root, name))
    for t in restarts:
        t.join()

    assert events[:2] == ["killed in training", "log_run called, port refuses: True"], events
    assert f"killed after creating version {metrics['model_version']}" in events
    assert server.kills == 2 and server.starts == 3, events
    client = MlflowClient(server.uri)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    versions = client.search_model_versions(f"run_id='{run.info.run_id}'")
    assert [mv.version for mv in versions] == [metrics["model_version"]], "a retry registered a second version"
    aliases = client.get_registered_model(name).aliases
    assert aliases == {"champion": metrics["model_version"], "challenger": metrics["model_version"]}
    assert_registry_consistent(client, name)
    det = tracking.load_registered_detector(name, metrics["model_version"])
    assert det.threshold == pytest.approx(metrics["threshold"])
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


@pytest.mark.usefixtures("prefect_api")
def test_server_gone_for_good_fails_clearly_and_registers_nothing_half(server, demo_root, tmp_path, monkeypatch):
    """A champion exists; the next run's server dies for good right after its version was
    created. The flow fails within the retry bound with a message naming the server; after the
    server is back, the champion is untouched and the stray version is complete (artifacts load)
    but carries no alias, so nothing serves it. Its run cannot be marked FAILED while the server
    is down: it stays RUNNING, never FINISHED."""
    import mlflow

    from anomaflow.flows.training import train_pipeline

    name = "faults-recover"  # champion registered by the test above (trained here when run alone)
    tracking.configure()
    champion = (
        tracking.resolve_alias(name, "champion") or train_pipeline(fault_config(demo_root, name))["model_version"]
    )
    real_register = mlflow.register_model

    def register_then_die(*args, **kwargs):
        mv = real_register(*args, **kwargs)
        server.kill()
        return mv

    monkeypatch.setattr(mlflow, "register_model", register_then_die)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # keep the test short; the bound is what is tested
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable) as err:
        train_pipeline(fault_config(demo_root, name).model_copy(update={"seed": 1}))
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert f"MLflow tracking server {server.uri} did not answer while registering model '{name}'" in message, message
    assert "after 1 HTTP retries" in message
    assert elapsed < 120, f"retries were not bounded: {elapsed:.0f}s"

    server.start()
    client = MlflowClient(server.uri)
    assert client.get_registered_model(name).aliases == {"champion": champion, "challenger": champion}
    stray = [mv for mv in client.search_model_versions(f"name='{name}'") if mv.version != champion]
    assert len(stray) == 1 and stray[0].aliases == []
    assert client.get_run(stray[0].run_id).info.status == "RUNNING"
    assert_registry_consistent(client, name)


# ---------------------------------------------------------------------------------------------
# (b) tracking server unreachable at inspection start


def test_tracking_defaults_bound_mlflow_retries(monkeypatch):
    unset_env(monkeypatch, *tracking.HTTP_DEFAULTS)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    tracking.configure()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"  # an operator's setting wins


def test_unreachable_server_is_not_a_missing_alias(monkeypatch):
    """Before: any MlflowException meant "no alias", so a blip made inspection report a missing
    champion and made registration set `champion` on an unvetted version."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    tracking.configure()
    with pytest.raises(tracking.TrackingUnavailable, match="did not answer while resolving alias 'champion'"):
        tracking.resolve_alias("anomaflow-x", "champion")
    # The challenger alias went through, then the champion lookup hits the dead server:
    # registration must fail, not conclude "no champion yet" and crown version 3.
    set_calls: list[tuple[str, str, str]] = []
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", lambda self, *a: set_calls.append(a))
    with pytest.raises(tracking.TrackingUnavailable):
        tracking.set_registration_aliases("anomaflow-x", "3")
    assert set_calls == [("anomaflow-x", "challenger", "3")]


@pytest.mark.usefixtures("prefect_api")
def test_inspection_with_unreachable_server_fails_before_writing(tmp_path, monkeypatch):
    from anomaflow.flows.inspection import batch_inspection

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    Image.new("RGB", (8, 8)).save(inbox / "a.png")
    out = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingUnavailable) as err:
        batch_inspection(input_dir=str(inbox), output_dir=str(out), model_name="anomaflow-x")
    assert (
        f"MLflow tracking server {uri} did not answer while resolving alias 'champion' of model 'anomaflow-x'"
        in str(err.value)
    )
    assert time.monotonic() - t0 < 60
    assert not out.exists()  # no results.csv, no lock file, no folder


# ---------------------------------------------------------------------------------------------
# (d) disk full on the output folder


@pytest.fixture()
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A 4 MiB tmpfs as the output folder when this process may mount one (root with
    CAP_SYS_ADMIN); otherwise the same folder on the normal disk with os.write failing with
    ENOSPC once a byte budget is spent (what a full file system does to an append)."""
    out = tmp_path / "out"
    out.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(out)], capture_output=True, text=True
        ).returncode
        == 0
        if shutil.which("mount")
        else False
    )
    state = {"full": False, "mode": "tmpfs" if mounted else "simulated"}
    filler = out / "filler.bin"

    def fill() -> None:
        if mounted:
            with open(filler, "wb", buffering=0) as fh:  # unbuffered: close() has nothing left to fail on
                try:
                    while fh.write(b"\0" * 4096):
                        pass
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        else:
            state["full"] = True

    def free() -> None:
        filler.unlink(missing_ok=True)
        state["full"] = False

    if not mounted:
        real_write = os.write
        budget = {"left": 600}

        def write(fd: int, data) -> int:
            if state["full"] and os.readlink(f"/proc/self/fd/{fd}").startswith(str(out)):
                if budget["left"] <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                n = real_write(fd, bytes(data)[: budget["left"]])
                budget["left"] -= n
                return n
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write)
    yield out, fill, free, state["mode"]
    if mounted:
        subprocess.run(["umount", "-l", str(out)], check=False)


def _inbox(demo_root: Path, path: Path, start: int, n: int) -> None:
    from tests.test_operation import make_inbox

    tmp = path.parent / f".stage-{start}"
    make_inbox(demo_root, tmp, start + n)
    path.mkdir(exist_ok=True)
    for p in sorted(tmp.iterdir())[start:]:
        p.rename(path / p.name)
    shutil.rmtree(tmp)


def _run(detector, inbox: Path, out: Path, threshold: float) -> inspection.InspectionSummary:
    return inspect_inbox(detector, inbox, out, threshold=threshold, batch_size=8)


def _fill_then_fail(detector, demo_root: Path, inbox: Path, out: Path, fill, threshold: float) -> tuple[bytes, OSError]:
    """6 images inspected on a healthy disk, then 40 more on a full one: (results before, error)."""
    _inbox(demo_root, inbox, 0, 6)
    _run(detector, inbox, out, threshold)
    before = (out / "results.csv").read_bytes()
    assert before.count(b"\n") == 7
    _inbox(demo_root, inbox, 6, 40)
    fill()
    with pytest.raises(OSError) as err:
        _run(detector, inbox, out, threshold)
    return before, err.value


@pytest.mark.parametrize("figures", [False, True], ids=["ledger-append-fails", "heatmap-write-fails"])
def test_disk_full_fails_and_keeps_written_rows(small_disk, detector, demo_root, tmp_path, figures):
    """The run stops with ENOSPC; rows written before are byte-for-byte intact (a row torn by
    the partial write does not count and is cut on the next run); once space is freed, the rerun
    completes with one whole line per image and every DEFECT has its figures."""
    out, fill, free, mode = small_disk
    if figures and mode == "simulated":
        pytest.skip("heat maps are written by PIL, not os.write: needs a real small file system (tmpfs mount refused)")
    inbox = tmp_path / "inbox"
    threshold = 0.0 if figures else 1e9  # all DEFECT (figures for every image) or all NORMAL (rows only)
    before, error = _fill_then_fail(detector, demo_root, inbox, out, fill, threshold)
    assert error.errno == errno.ENOSPC, error
    assert (out / "results.csv").read_bytes().startswith(before), "rows written before the disk filled up changed"
    rows = inspection.read_results(out / "results.csv")
    assert 6 <= len(rows) < 46 and all(r["decision"] in {"NORMAL", "DEFECT"} for r in rows)

    free()
    _run(detector, inbox, out, threshold)
    rows = inspection.read_results(out / "results.csv")
    assert sorted(r["path"] for r in rows) == sorted(p.name for p in inbox.iterdir())
    assert (out / "results.csv").read_bytes().count(b"\n") == 47  # header + one whole line per image
    if figures:
        for r in rows:
            assert all(p.is_file() and p.stat().st_size > 0 for p in inspection.defect_figure_paths(out, r["sha256"]))
        assert not [
            p.name for p in (out / "defects").iterdir() if p.name.endswith(".tmp")
        ]  # rerun replaced the partial one


def test_disk_full_error_names_the_results_file(small_disk, detector, demo_root, tmp_path):
    out, fill, _, _ = small_disk
    _, error = _fill_then_fail(detector, demo_root, tmp_path / "inbox", out, fill, 1e9)
    # Every scored part also gets review copies (views/), so the write that fails first is the
    # ledger's or a review copy's: either way the message names the file in the output folder.
    named = re.search(r"'([^']+)'", str(error))
    assert (
        error.errno == errno.ENOSPC
        and named
        and (named.group(1) == str(out / "results.csv") or named.group(1).startswith(str(out / "views") + "/"))
    )


@pytest.fixture(scope="module")
def detector(demo_root):
    det = fit_tiny_autoencoder(demo_root, SIZE)
    det.threshold, det.pixel_threshold = 0.0, 0.05
    return det
