"""Shared fixtures: a tiny generated demo dataset and the real data location."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "mvtec_ad"

# Keep torch from oversubscribing the 2 cores when pytest and helpers run side by side.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-layout demo set (64 px) shared by end-to-end tests."""
    from model.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo-data")
    make_demo_dataset(root, "demo", seed=0, image_size=64, n_train=20, n_test_good=4, n_test_per_defect=3)
    return root


@pytest.fixture()
def anomaflow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("ANOMAFLOW_HOME", str(home))
    return home


def real_data_or_skip() -> Path:
    if not (SHARED_DATA / "bottle").is_dir():
        pytest.skip(f"real MVTec AD Bottle not found at {SHARED_DATA / 'bottle'} (it lives in ../shared beside the repo)")
    return SHARED_DATA
