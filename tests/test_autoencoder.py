import json

import numpy as np
import pytest
import torch

from anomaflow.model.config import AutoencoderConfig
from anomaflow.model.detectors.autoencoder import AutoencoderDetector, ConvAutoencoder
from anomaflow.model.detectors.registry import load_detector
from tests.helpers import spy_torch_load


def _images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    base = np.zeros((size, size, 3), np.uint8)
    base[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = (180, 120, 60)
    noise = rng.integers(0, 12, (n, size, size, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_network_shapes(size):
    net = ConvAutoencoder(size, base_channels=8, latent_channels=4)
    assert net(torch.rand(2, 3, size, size)).shape == (2, 3, size, size)


def test_bad_size_rejected():
    with pytest.raises(ValueError):
        ConvAutoencoder(96)
    with pytest.raises(ValueError):
        AutoencoderConfig(image_size=100)


def _cfg(**kw):
    base = dict(image_size=64, base_channels=8, latent_channels=8, epochs=3, batch_size=8, learning_rate=3e-3)
    base.update(kw)
    return AutoencoderConfig(**base)


def test_training_reduces_loss_and_reports_progress():
    seen = []
    det = AutoencoderDetector(_cfg(epochs=6), seed=0)
    hist = det.fit(_images(24, 64), _images(6, 64, seed=1), progress=seen.append)
    assert len(hist) == 6 and seen == hist
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert all(r["val_loss"] is not None and r["seconds"] > 0 for r in hist)


def test_training_is_seeded():
    a = AutoencoderDetector(_cfg(), seed=3)
    b = AutoencoderDetector(_cfg(), seed=3)
    x = _images(16, 64)
    ha = a.fit(x, progress=None)
    hb = b.fit(x, progress=None)
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    np.testing.assert_array_equal(a.anomaly_maps(x[:2]), b.anomaly_maps(x[:2]))


def test_anomaly_map_highlights_a_defect():
    det = AutoencoderDetector(_cfg(epochs=25, map_kind="l2"), seed=0)
    det.fit(_images(32, 64), progress=None)
    good = _images(1, 64, seed=5)
    bad = good.copy()
    bad[0, 28:36, 28:36] = (0, 255, 0)
    maps = det.anomaly_maps(np.concatenate([good, bad]))
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert maps[1, 28:36, 28:36].mean() > 3 * maps[1, :10, :10].mean()
    s = det.score(np.concatenate([good, bad])).scores
    assert s["max"][1] > s["max"][0]


def test_input_validation():
    det = AutoencoderDetector(_cfg())
    with pytest.raises(ValueError, match="shape"):
        det.anomaly_maps(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        det.anomaly_maps(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(RuntimeError, match="threshold"):
        det.decide(np.array([1.0]))


def test_save_load_roundtrip_weights_only(tmp_path, monkeypatch):
    det = AutoencoderDetector(_cfg(epochs=2), score_method="max", seed=1)
    x = _images(8, 64)
    det.fit(x, progress=None)
    det.threshold, det.pixel_threshold = 0.123, 0.05
    det.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "detector.json").read_text())
    assert meta["family"] == "autoencoder" and meta["threshold"] == 0.123 and meta["image_size"] == 64
    assert (tmp_path / "m" / "weights.pt").is_file() and not (tmp_path / "m" / "last.pt").exists()

    calls = spy_torch_load(monkeypatch)
    loaded = load_detector(tmp_path / "m")
    assert calls == [True]
    assert loaded.score_method == "max" and loaded.threshold == 0.123 and loaded.pixel_threshold == 0.05
    np.testing.assert_allclose(loaded.anomaly_maps(x[:3]), det.anomaly_maps(x[:3]), rtol=1e-5, atol=1e-7)
    assert list(loaded.decide(np.array([0.1, 0.2]))) == ["NORMAL", "DEFECT"]


def test_load_rejects_non_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved anomaflow detector"):
        load_detector(tmp_path)
    (tmp_path / "detector.json").write_text(json.dumps({"format_version": 1, "family": "nope"}))
    with pytest.raises(ValueError, match="unknown detector family"):
        load_detector(tmp_path)


def test_a_version_1_file_is_read_through_the_one_migration(tmp_path):
    """Files written before frames, the aspect policy and drift references load as they were
    meant: a square frame with images squashed into it, no reference; unknown versions fail."""
    det = AutoencoderDetector(_cfg(epochs=1))
    x = _images(8, 64)
    det.fit(x)
    det.calibrate(threshold=0.2, pixel_threshold=0.05)
    det.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "detector.json").read_text())
    assert meta["format_version"] == 2 and meta["frame"] == [64, 64] and meta["keep_aspect"] is True
    old = {k: v for k, v in meta.items() if k not in ("frame", "keep_aspect", "reference")}
    (tmp_path / "m" / "detector.json").write_text(json.dumps({**old, "format_version": 1}))
    loaded = load_detector(tmp_path / "m")
    assert loaded.frame == (64, 64) and loaded.keep_aspect is False and loaded.reference is None
    assert loaded.threshold == 0.2 and loaded.preprocessing.keep_aspect is False
    np.testing.assert_allclose(loaded.anomaly_maps(x[:2]), det.anomaly_maps(x[:2]), rtol=1e-5, atol=1e-7)
    (tmp_path / "m" / "detector.json").write_text(json.dumps({**meta, "format_version": 7}))
    with pytest.raises(ValueError, match="unsupported format_version 7"):
        load_detector(tmp_path / "m")


def test_held_out_normals_are_monitored_but_choose_nothing():
    """The held-out images calibrate the thresholds, so they must not also pick the epoch."""
    x, holdout = _images(8, 64), _images(4, 64, seed=5)
    with_holdout = AutoencoderDetector(_cfg(epochs=3), seed=2)
    history = with_holdout.fit(x, holdout, progress=None)
    without = AutoencoderDetector(_cfg(epochs=3), seed=2)
    without.fit(x, progress=None)
    assert all(h["val_loss"] is not None for h in history) and len(history) == 3
    for (name, a), b in zip(with_holdout.net.state_dict().items(), without.net.state_dict().values()):
        assert torch.equal(a, b), name
