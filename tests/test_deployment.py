"""prefect.yaml for real: a Prefect server on 127.0.0.1, the batch-inspection deployment
deployed from prefect.yaml, a process worker, a triggered run and a complete results.csv."""

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomaflow.flows.training import train_pipeline
from anomaflow.model.operations import inspection
from tests.conftest import free_port, served, stop_process
from tests.helpers import tiny_config
from tests.test_operation import make_inbox

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAME = "anomaflow-deploy"


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-scheduler",
        "--no-ui",
    ]
    with served(cmd, home, f"{url}/health", env=env, cwd=REPO):
        yield url, env


def _prefect(args, env, **kw):
    out = subprocess.run(
        [str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=180, **kw
    )
    assert out.returncode == 0, f"prefect {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


async def _wait_flow_run(url, name_prefix, timeout=240):
    from prefect.client.orchestration import PrefectClient

    deadline = time.monotonic() + timeout
    async with PrefectClient(api=url) as client:
        while time.monotonic() < deadline:
            runs = await client.read_flow_runs()
            if runs and runs[0].state and runs[0].state.is_final():
                return runs[0]
            await asyncio.sleep(1)
    raise TimeoutError("flow run did not finish")


def test_deploy_from_prefect_yaml_and_run_with_a_process_worker(prefect_server, mlflow_server, demo_root, tmp_path):
    url, env = prefect_server
    env = {**env, "MLFLOW_TRACKING_URI": mlflow_server}
    train_pipeline(tiny_config(demo_root, registered_model_name=NAME))
    inbox = make_inbox(demo_root, tmp_path / "inbox", 10)
    out = tmp_path / "out"

    _prefect(["work-pool", "create", "anomaflow-process", "--type", "process"], env)
    deployed = _prefect(["--no-prompt", "deploy", "--name", "bottle-hourly"], env)
    assert "batch-inspection/bottle-hourly" in deployed
    worker_log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "anomaflow-process", "--type", "process"],
        env=env,
        cwd=REPO,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        _prefect(
            [
                "deployment",
                "run",
                "batch-inspection/bottle-hourly",
                "--param",
                f"input_dir={inbox}",
                "--param",
                f"output_dir={out}",
                "--param",
                f"model_name={NAME}",
            ],
            env,
        )
        run = asyncio.run(_wait_flow_run(url, "batch-inspection"))
    finally:
        stop_process(worker, timeout=60)  # a worker slow to shut down on a loaded machine is killed, not a failure
        worker_log.close()
    assert run.state.is_completed(), (tmp_path / "worker.log").read_text()[-3000:]
    rows = inspection.read_results(out / "results.csv")
    assert len(rows) == 10 and all(r["decision"] in ("NORMAL", "DEFECT") for r in rows)
    assert {r["model_name"] for r in rows} == {NAME}
