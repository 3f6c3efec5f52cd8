"""The detector interface knows no implementation: model/detector.py imports no family, the
families import the interface and never the registry, so the import graph has no cycle."""
import ast
from pathlib import Path

MODEL = Path(__file__).resolve().parents[1] / "model"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_interface_imports_no_family_and_the_families_not_the_registry():
    assert not _imports(MODEL / "detector.py") & {"model.autoencoder", "model.patchcore", "model.registry"}
    for family in ("autoencoder.py", "patchcore.py", "padim.py", "fusion.py"):
        imports = _imports(MODEL / family)
        assert {"model.detector", "model.features"} & imports and "model.registry" not in imports


def test_the_registry_builds_and_names_every_family():
    from model.config import TrainConfig
    from model.registry import build_detector, families

    assert set(families()) == {"autoencoder", "patchcore", "padim", "fusion"}
    for name in families():
        assert build_detector(TrainConfig(detector=name)).family == name
