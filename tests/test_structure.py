"""The layout is the architecture: one `anomaflow` namespace over model/ tasks/ flows/ review/,
model/ free of Prefect and MLflow, the detector interface free of its families, the served model
free of Prefect and the CLI, and tasks/ free of the review app."""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DETECTORS = REPO / "model" / "detectors"
SOURCES = [
    p
    for top in ("anomaflow", "model", "tasks", "flows", "review", "tests", "benchmarks")
    for p in (REPO / top).rglob("*.py")
]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_every_import_of_our_code_goes_through_the_anomaflow_namespace():
    old = {"model", "tasks", "flows", "review"}
    bad = {f"{p.relative_to(REPO)}: {m}" for p in SOURCES for m in _imports(p) if m.split(".")[0] in old}
    assert not bad, sorted(bad)
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "anomaflow" or p.startswith("anomaflow.") for p in setuptools["packages"])


def test_model_imports_neither_prefect_nor_mlflow_and_tasks_not_the_review_app():
    for path in (REPO / "model").rglob("*.py"):
        roots = {m.split(".")[0] for m in _imports(path)}
        assert not roots & {"prefect", "mlflow", "prefect_dask"}, path
    for path in (REPO / "tasks").rglob("*.py"):
        assert not any(m.startswith("anomaflow.review") for m in _imports(path)), path


def test_the_interface_imports_no_family_and_the_families_not_the_registry():
    pkg = "anomaflow.model.detectors"
    assert not _imports(DETECTORS / "base.py") & {f"{pkg}.autoencoder", f"{pkg}.patchcore", f"{pkg}.registry"}
    for family in ("autoencoder.py", "patchcore.py", "padim.py", "fusion.py"):
        imports = _imports(DETECTORS / family)
        assert {f"{pkg}.base", f"{pkg}.features"} & imports and f"{pkg}.registry" not in imports


def test_the_served_model_loads_without_prefect_or_the_cli():
    probe = (
        "import sys, runpy; import anomaflow.tasks.serving as s; runpy.run_path(s.SERVED_MODEL_FILE); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'prefect_dask') "
        "or m.startswith('anomaflow.flows')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_registry_builds_and_names_every_family():
    from anomaflow.model.config import TrainConfig
    from anomaflow.model.detectors.registry import build_detector, families

    assert set(families()) == {"autoencoder", "patchcore", "padim", "fusion"}
    for name in families():
        assert build_detector(TrainConfig(detector=name)).family == name
