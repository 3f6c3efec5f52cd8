"""What a newcomer sees: the CLI with Prefect's temporary server (no PREFECT_API_URL) and the
default local MLflow store prints no traceback, no ERROR line and no warning they cannot act on."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import inspect_args, train_args

pytestmark = pytest.mark.slow
BAD = re.compile(r"Traceback|\|\s*ERROR\s*\||^ERROR|Warning:|WARNING", re.M)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "anomaflow.flows.cli", *args], capture_output=True, text=True, env=env, timeout=900
    )


def test_train_and_inspect_with_the_temporary_prefect_server_print_no_error(demo_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["ANOMAFLOW_HOME"] = str(tmp_path / "home")  # the default embedded stores, fresh
    train = _cli(*train_args(demo_root, tmp_path / "train"), env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Starting temporary server" in train.stderr  # the case this test is about
    assert not BAD.search(train.stderr), BAD.search(train.stderr).group(0) + "\n" + train.stderr[-3000:]
    assert train.stdout.startswith("done in ") and "image_auroc=" in train.stdout.splitlines()[0]
    inspect = _cli(*inspect_args(demo_root / "demo" / "test", tmp_path / "inspect", "anomaflow-demo"), env=env)
    assert inspect.returncode == 0, inspect.stderr[-3000:]
    assert not BAD.search(inspect.stderr), BAD.search(inspect.stderr).group(0) + "\n" + inspect.stderr[-3000:]
