"""Shared fixtures: a tiny generated demo dataset and the real data location."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "mvtec_ad"

# Keep torch from oversubscribing the 2 cores when pytest and helpers run side by side.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-layout demo set (64 px) shared by end-to-end tests."""
    from anomaflow.model.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo-data")
    make_demo_dataset(root, "demo", seed=0, image_size=64, n_train=20, n_test_good=4, n_test_per_defect=3)
    return root


@pytest.fixture(scope="session")
def line_parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New parts from the demo product's line: its test split made with another seed, so no file
    is in demo_root's dataset (retraining leaves reviewed parts that are out of calibration)."""
    from anomaflow.model.data.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("line-parts")
    make_demo_dataset(root, "demo", seed=7, image_size=64, n_train=20, n_test_good=12, n_test_per_defect=3)
    return root / "demo" / "test"


@pytest.fixture()
def anomaflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("ANOMAFLOW_HOME", str(home))
    return home


def real_data_or_skip() -> Path:
    if not (SHARED_DATA / "bottle").is_dir():
        pytest.skip(
            f"real MVTec AD Bottle not found at {SHARED_DATA / 'bottle'} (it lives in ../shared beside the repo)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_api():
    """A real temporary Prefect API (SQLite-backed server) for flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def mlflow_sqlite(tmp_path_factory: pytest.TempPathFactory):
    """A session-wide local SQLite MLflow store (creating one costs seconds) outside the repo."""
    home = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(home)  # the default artifact folder lands beside the db, not in the repo
        yield uri


@pytest.fixture(autouse=True)
def _prefect_console_follows_capture():
    """Prefect's console handler keeps the sys.stderr it saw first; pytest swaps (and closes)
    capture streams per test. Point the handlers at the current stream before each test."""
    import logging
    import sys

    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import PrefectConsoleHandler

        loggers = [logging.getLogger()] + [
            lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)
        ]
        for lg in loggers:
            for h in lg.handlers:
                if isinstance(h, PrefectConsoleHandler):
                    h.stream = sys.stderr  # not setStream(): it flushes the closed old stream
                    h.console.file = sys.stderr
    yield


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout: float = 120.0) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_process(proc, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def served(
    cmd: list[str],
    home: Path,
    health_url: str,
    *,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> Iterator:
    """Run a server process (output in home/server.log) until health_url answers 200; yield it and
    stop it on exit. A server that exits or never answers fails with the tail of its log."""
    import subprocess

    log = open(home / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd or home, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_http(health_url, proc, timeout=timeout)
        except (RuntimeError, TimeoutError) as exc:
            log.flush()
            raise RuntimeError(f"{exc}; server log:\n{(home / 'server.log').read_text()[-3000:]}") from None
        yield proc
    finally:
        stop_process(proc)
        log.close()


def mlflow_server_cmd(port: int, backend_store_uri: str, artifacts: Path) -> list[str]:
    import sys

    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts),
    ]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on 127.0.0.1 (free port, SQLite backend, temporary artifact store)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with served(mlflow_server_cmd(port, f"sqlite:///{home / 'mlflow.db'}", home / "artifacts"), home, f"{uri}/health"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            yield uri


@pytest.fixture(autouse=True)
def _mlflow_uri_isolation():
    """mlflow.set_tracking_uri/set_registry_uri keep process-wide globals (and export env vars),
    and tracking.configure() sets MLFLOW_HTTP_* retry settings, all of which outlive a test and its
    tracking server: clear the globals and restore every MLFLOW_* variable after every test."""
    import sys

    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}  # URIs and HTTP retry settings
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None
    for k in [k for k in os.environ if k.startswith("MLFLOW_") and k not in saved]:
        del os.environ[k]
    os.environ.update(saved)
