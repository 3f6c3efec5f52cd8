"""MLflow on a real PostgreSQL: a throwaway Postgres cluster (initdb + pg_ctl on 127.0.0.1), an
`mlflow server` on it, the training pipeline registering a model there, and batch inspection
loading that model by alias. Skips where PostgreSQL's server binaries are not installed
(`.ci/run` installs Debian's `postgresql`)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import free_port, mlflow_server_cmd, served
from tests.helpers import tiny_config
from tests.test_operation import make_inbox

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow]
NAME = "anomaflow-pg"
PG_USER = "anomaflow"


def postgres_bin() -> Path | None:
    """Folder of pg_ctl/initdb: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3].split(".")[0]))
    return Path(versions[-1]).parent if versions else None


def as_server_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` system user then."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` system user to run PostgreSQL as")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster on a free port of 127.0.0.1 with trust auth, deleted afterwards."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (pg_ctl, initdb) not found: apt-get install postgresql")
    pytest.importorskip(
        "psycopg",
        reason=(
            "MLflow's Postgres store needs psycopg (SQLAlchemy's default postgresql driver): "
            "pip install 'psycopg[binary]'"
        ),
    )
    runas = as_server_user()
    home = Path(tempfile.mkdtemp(prefix="anomaflow-pg-"))  # not under pytest's 0700 tmp: postgres must reach it
    data = home / "data"
    if runas:
        pw = pwd.getpwnam("postgres")
        os.chown(home, pw.pw_uid, pw.pw_gid)
    port = free_port()

    def pg(*args: str) -> None:
        out = subprocess.run([*runas, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"

    pg(str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
    pg(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(home / "server.log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-h 127.0.0.1 -p {port} -k {home} -c fsync=off",
        "start",
    )
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE mlflow")
        yield f"postgresql://{PG_USER}@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            [*runas, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_on_postgres(postgres, tmp_path_factory):
    """`mlflow server` with the Postgres backend store and a local artifact destination."""
    home = tmp_path_factory.mktemp("mlflow-pg")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with served(mlflow_server_cmd(port, postgres, home / "artifacts"), home, f"{uri}/health", timeout=180):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            yield uri


def query(dsn: str, sql: str, *params) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def test_train_register_and_inspect_through_mlflow_on_postgres(postgres, mlflow_on_postgres, demo_root, tmp_path):
    from anomaflow.flows.inspection import batch_inspection
    from anomaflow.flows.training import train_pipeline
    from anomaflow.model.operations import inspection

    metrics = train_pipeline(tiny_config(demo_root, experiment_name="pg-test", registered_model_name=NAME))
    version = metrics["model_version"]

    # The run, the model version and its aliases live in Postgres, not in a file store.
    assert query(postgres, "SELECT status FROM runs WHERE run_uuid = %s", metrics["mlflow_run_id"]) == [("FINISHED",)]
    aliases = dict(query(postgres, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", NAME))
    assert aliases == {"champion": int(version), "challenger": int(version)}
    assert query(
        postgres, "SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'train_loss'", metrics["mlflow_run_id"]
    ) == [(2,)]

    inbox = make_inbox(demo_root, tmp_path / "inbox", 6)
    result = batch_inspection(input_dir=str(inbox), output_dir=str(tmp_path / "out"), model_name=NAME, alias="champion")
    rows = inspection.read_results(tmp_path / "out" / "results.csv")
    assert result["model_version"] == version and len(rows) == 6
    assert {(r["model_name"], r["model_version"]) for r in rows} == {(NAME, version)}
    assert all(r["decision"] in ("NORMAL", "DEFECT") for r in rows)


def test_review_labels_on_postgres_two_reviewers_at_once(postgres):
    """The review app's label store on the real PostgreSQL: ten reviewers label one unlabelled part
    at the same moment, each having seen no label: exactly one write lands, nine get a Conflict
    naming it; the history survives a new store (a restarted server)."""
    import psycopg

    from anomaflow.tasks.labels import LabelStore
    from tests.test_review import race

    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("CREATE DATABASE review")
    url = postgres.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0] + "/review"
    assert race(LabelStore(url), "c" * 64) == ["conflict"] * 9 + ["saved"]
    history = LabelStore(url).history("c" * 64)
    assert len(history) == 1 and history[0].reviewer.startswith("reviewer")
