"""docker/compose.yaml and docker/Dockerfile checked without a Docker engine: every service,
port, volume and variable the code and prefect.yaml expect is defined, and the image installs
the torch pins of pyproject.toml."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
LONG_RUNNING = {
    "postgres",
    "minio",
    "mlflow",
    "prefect-server",
    "prefect-worker",
    "dask-scheduler",
    "dask-worker",
    "review",
}


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {k.strip(): v.strip() for k, v in pairs}


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ rules, applied recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        if op and "?" in op:
            raise AssertionError(f"${{{name}}} is required ({arg}) but not set in .env.example")
        return arg or ""

    return VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, env_example())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def command(svc: dict) -> list[str]:
    cmd = svc.get("command", [])
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def container_ports(svc: dict) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in svc.get("ports", [])}


def mounts(svc: dict) -> dict[str, str]:
    """container path -> source (named volume or host path)."""
    out = {}
    for v in svc.get("volumes", []):
        source, target = v.split(":")[:2]
        out[target] = source
    return out


def http_target(url: str) -> tuple[str, int]:
    u = urlparse(url)
    return u.hostname, u.port


def prefect_deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def test_every_variable_has_a_value_in_env_example(raw):
    text = (DOCKER / "compose.yaml").read_text().replace("$$", "")
    env = env_example()
    for name, op, _ in VAR.findall(text):
        assert name in env or (op and "-" in op), f"${{{name}}} has no default and is not in .env.example"
    assert all(v.startswith("change-me") for k, v in env.items() if "PASSWORD" in k), (
        "example passwords must be placeholders"
    )


def test_services_health_checks_and_named_volumes(compose, services):
    assert LONG_RUNNING | {"minio-init"} == set(services)
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no health check"
    declared = set(compose["volumes"])
    used = {src for svc in services.values() for src in mounts(svc).values() if not src.startswith((".", "/"))}
    assert used == declared, f"used {used} vs declared {declared}"
    assert mounts(services["postgres"])["/var/lib/postgresql/data"] == "postgres-data"
    assert mounts(services["minio"])["/data"] == "minio-data"
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], (
                    f"{name} waits for {dep} to be healthy, but it has no health check"
                )


def test_ports(services):
    assert container_ports(services["mlflow"]) == {5000}
    assert container_ports(services["prefect-server"]) == {4200}
    assert container_ports(services["minio"]) == {9000, 9001}
    assert container_ports(services["dask-scheduler"]) == {8786, 8787}
    assert flag(command(services["mlflow"]), "--port") == "5000"
    assert flag(command(services["prefect-server"]), "--port") == "4200"
    assert flag(command(services["dask-scheduler"]), "--port") == "8786"


def test_mlflow_uses_postgres_and_the_minio_bucket(services):
    mlflow = services["mlflow"]
    env = mlflow["environment"]
    store = urlparse(env["MLFLOW_BACKEND_STORE_URI"])
    pg = services["postgres"]["environment"]
    assert (store.scheme, store.hostname, store.port, store.path) == ("postgresql", "postgres", 5432, "/mlflow")
    assert (store.username, store.password, pg["POSTGRES_DB"]) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        "mlflow",
    )
    cmd = command(mlflow)
    assert cmd[:2] == ["mlflow", "server"] and "--backend-store-uri" not in cmd  # read from MLFLOW_BACKEND_STORE_URI
    bucket = urlparse(flag(cmd, "--artifacts-destination"))
    assert bucket.scheme == "s3"
    init = services["minio-init"]
    assert 'mc mb --ignore-existing "local/$MLFLOW_BUCKET"' in " ".join(command(init))
    assert init["environment"]["MLFLOW_BUCKET"] == bucket.hostname
    assert http_target(env["MLFLOW_S3_ENDPOINT_URL"]) == ("minio", 9000)
    minio = services["minio"]["environment"]
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert mlflow["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
    }


def test_prefect_server_uses_postgres(compose, services):
    url = urlparse(services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert (url.scheme, url.hostname, url.port, url.path) == ("postgresql+asyncpg", "postgres", 5432, "/prefect")
    init_sql = compose["configs"]["create-prefect-database"]["content"]
    assert "CREATE DATABASE prefect" in init_sql
    assert any(
        c["source"] == "create-prefect-database" and c["target"].startswith("/docker-entrypoint-initdb.d/")
        for c in services["postgres"]["configs"]
    )


def test_clients_reach_the_servers_by_service_name_and_port(services):
    from anomaflow.tasks.inspection import DASK_ADDRESS_ENV, inspect_shard

    mlflow_allowed = services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for name in ("prefect-worker", "dask-worker"):
        env = services[name]["environment"]
        host, port = http_target(env["MLFLOW_TRACKING_URI"])
        assert host in services and port in container_ports(services[host])
        assert f"{host}:{port}" in mlflow_allowed, "MLflow would refuse the Host header its clients send"
        host, port = http_target(env["PREFECT_API_URL"])
        assert (host, port) == ("prefect-server", 4200) and env["PREFECT_API_URL"].endswith("/api")
    address = services["prefect-worker"]["environment"][DASK_ADDRESS_ENV]
    assert http_target(address) == ("dask-scheduler", 8786)
    assert command(services["dask-worker"])[:3] == ["dask", "worker", address]
    assert flag(command(services["dask-worker"]), "--nthreads") == "1"
    assert (
        flag(command(services["dask-worker"]), "--preload") == inspect_shard.fn.__module__
    )  # warm: imports done at start


def test_worker_serves_the_pool_of_prefect_yaml_with_its_paths_mounted(services):
    worker, dask_worker = services["prefect-worker"], services["dask-worker"]
    pools = {d["work_pool"]["name"] for d in prefect_deployments()}
    assert pools == {flag(command(worker), "--pool")} and flag(command(worker), "--type") == "process"
    workdir = PurePosixPath(re.findall(r"^WORKDIR\s+(\S+)", (DOCKER / "Dockerfile").read_text(), re.M)[-1])
    mounted = mounts(worker)
    for d in prefect_deployments():
        params = d["parameters"]
        paths = [params[k] for k in ("input_dir", "output_dir") if k in params]
        if "config" in params:
            paths.append(params["config"]["data_root"])
        for p in paths:
            full = PurePosixPath(os.path.normpath(workdir / p))
            assert any(full.is_relative_to(t) for t in mounted), (
                f"{d['name']}: {p} ({full}) is not on a volume of the worker"
            )
    # Shards read the inbox and write heat maps at the paths the flow hands them.
    for p in ("input_dir", "output_dir"):
        param = next(d["parameters"][p] for d in prefect_deployments() if p in d["parameters"])
        full = PurePosixPath(os.path.normpath(workdir / param))
        target = next(t for t in mounted if full.is_relative_to(t))
        assert mounts(dask_worker).get(target) == mounted[target], (
            f"dask-worker does not mount {target} like the worker"
        )


def test_python_services_run_the_anomaflow_image(services):
    image = services["mlflow"]["image"]
    for name in ("mlflow", "prefect-server", "prefect-worker", "dask-scheduler", "dask-worker"):
        svc = services[name]
        assert (
            svc["image"] == image
            and (DOCKER / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
        )  # dockerfile is relative to the context


def test_dockerfile_pins_match_pyproject_and_runs_as_non_root():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = pyproject["project"]["dependencies"]
    pins = dict(m.groups() for d in deps if (m := re.fullmatch(r"(torch|torchvision)==(\S+)", d)))
    text = (DOCKER / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    assert {"torch": args["TORCH_VERSION"], "torchvision": args["TORCHVISION_VERSION"]} == pins
    assert '"torch==${TORCH_VERSION}"' in text and '"torchvision==${TORCHVISION_VERSION}"' in text
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    base = re.search(r"^FROM\s+python:(\d+\.\d+)", text, re.M).group(1)
    assert pyproject["project"]["requires-python"] == f">={base},<3.{int(base.split('.')[1]) + 1}"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    copied = {src for line in re.findall(r"^COPY\s+(.+)$", text, re.M) for src in line.split()[:-1]}
    sources = set(pyproject["tool"]["setuptools"]["package-dir"].values())  # every folder of the namespace
    assert copied == {"pyproject.toml", "README.md", "prefect.yaml", *sources}, f"COPY {copied}, packages {sources}"
    extras = re.search(r'pip install "\.\[([\w,]+)\]"', text)
    assert extras and {"service", "export"} <= set(
        extras.group(1).split(",")
    )  # the MLflow server's drivers; inspection's runtime
    service = " ".join(pyproject["project"]["optional-dependencies"]["service"])
    assert "psycopg" in service and "boto3" in service  # postgresql:// store and s3:// artifacts
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "**" in ignore, "the build context must exclude everything not copied"
    assert all(f"!{s}/**" in ignore for s in sources), "every copied package folder must be in the build context"


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_accepts_the_file():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed (only the docker client)")
    out = subprocess.run(
        [
            "docker",
            "compose",
            "-f",
            str(DOCKER / "compose.yaml"),
            "--env-file",
            str(DOCKER / ".env.example"),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
