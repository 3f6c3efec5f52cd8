"""Benchmark scripts on tiny generated data: what they save and store must be usable as is."""
import importlib.util
import json
from pathlib import Path

import pytest

from model.detector import load_detector

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_saves_calibrated_models(demo_root, tmp_path):
    quality = load_script("quality")
    out = tmp_path / "models"
    rc = quality.main(["--data", str(demo_root), "--category", "demo", "--configs", "default", "--seeds", "0",
                       "--epochs", "1", "--threads", "2", "--map-sigmas", "4", "--cache-dir", str(tmp_path / "cache"),
                       "--json", str(tmp_path / "q.json"), "--save-models", str(out)])
    assert rc == 0
    meta = json.loads((out / "default-seed0" / "detector.json").read_text())
    run = json.loads((tmp_path / "q.json").read_text())["default"][0]
    assert meta["threshold"] is not None and meta["pixel_threshold"] is not None
    # The saved model is the configuration as defined (own map sigma), with the thresholds its row reports.
    assert meta["threshold"] == pytest.approx(run["threshold"]) and meta["pixel_threshold"] == pytest.approx(run["pixel_threshold"])
    det = load_detector(out / "default-seed0")
    assert det.config.map_sigma == 2.0 and det.threshold == pytest.approx(run["threshold"])
