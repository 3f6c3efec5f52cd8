"""PaDiM family: Ledoit-Wolf covariances, the positional prior, small training sets, persistence."""

import json

import numpy as np
import pytest
import torch

from anomaflow.model.config import PadimConfig, TrainConfig
from anomaflow.model.detectors.padim import PadimDetector, ledoit_wolf
from anomaflow.model.detectors.registry import load_detector
from tests.helpers import spy_torch_load

SIZE = 64


def test_ledoit_wolf_matches_scikit_learn():
    from sklearn.covariance import ledoit_wolf as sk_ledoit_wolf

    rng = np.random.default_rng(0)
    for n, d in [(31, 64), (200, 16), (5, 40)]:  # fewer samples than dims: the case shrinkage is for
        x = rng.normal(size=(3, n, d)) @ rng.normal(size=(d, d))
        x -= x.mean(axis=1, keepdims=True)
        cov, shrink = ledoit_wolf(torch.from_numpy(x))
        for p in range(3):
            want, want_shrink = sk_ledoit_wolf(x[p], assume_centered=True)
            np.testing.assert_allclose(cov[p].numpy(), want, rtol=1e-10, atol=1e-12)
            assert abs(float(shrink[p]) - want_shrink) < 1e-10


def _parts(n: int, seed: int) -> np.ndarray:
    """Aligned parts: a bright square on the left half, dark on the right, mild noise."""
    rng = np.random.default_rng(seed)
    img = np.full((n, SIZE, SIZE, 3), 60, np.float32)
    img[:, 16:48, 8:28] = 200
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _cfg(**kw) -> PadimConfig:
    return PadimConfig(image_size=SIZE, batch_size=8, **kw)


@pytest.fixture(scope="module")
def fitted():
    det = PadimDetector(_cfg(), seed=0)
    seen = []
    det.fit(_parts(24, 0), progress=seen.append)
    return det, seen


def test_fit_reports_and_keeps_one_gaussian_per_position(fitted):
    det, seen = fitted
    h, w, d = det.mean.shape
    assert (h, w) == (SIZE // 4, SIZE // 4) and d == det.feature_dim == 24 + 40  # Lite0 stage2 + stage3 channels
    assert det.precision.shape == (h * w, d, d)
    assert [r.get("phase") for r in seen] == ["features", None] and 0 < seen[-1]["mean_shrinkage"] <= 1
    sym = det.precision - det.precision.transpose(1, 2)
    assert float(sym.abs().max()) < 1e-3 * float(det.precision.abs().max())


def test_the_positional_prior_flags_a_normal_texture_in_the_wrong_place(fitted):
    """The bright block moved to where only dark background is normal: every patch of it exists
    somewhere in the training set (a nearest-neighbour bank has it), but not at that position."""
    det, _ = fitted
    good = _parts(4, 1)
    moved = good.copy()
    moved[:, 16:48, 36:56] = moved[:, 16:48, 8:28]
    moved[:, 16:48, 8:28] = 60
    scores = det.score(np.concatenate([good, moved])).scores["max"]
    assert scores[4:].min() > 1.5 * scores[:4].max()
    maps = det.anomaly_maps(np.concatenate([good[:1], moved[:1]]))
    assert maps[1][16:48, 36:56].mean() > 2 * maps[0][16:48, 36:56].mean()  # the map points at the moved block


def test_two_images_give_finite_scores_thanks_to_shrinkage():
    det = PadimDetector(_cfg(), seed=0)
    det.fit(_parts(2, 0), progress=None)
    out = det.score(_parts(3, 5))
    assert np.isfinite(out.maps).all() and np.isfinite(out.scores["max"]).all()
    with pytest.raises(ValueError, match="at least 2"):
        PadimDetector(_cfg()).fit(_parts(1, 0), progress=None)


def test_unfitted_and_wrong_shape_inputs_are_clear_errors(fitted):
    det, _ = fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        PadimDetector(_cfg()).anomaly_maps(np.zeros((1, SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        det.anomaly_maps(np.zeros((1, 32, 32, 3), np.uint8))
    assert det.anomaly_maps(np.zeros((0, SIZE, SIZE, 3), np.uint8)).shape == (0, SIZE, SIZE)


def test_save_load_gives_the_same_maps_and_loads_weights_only(fitted, tmp_path, monkeypatch):
    det, _ = fitted
    det.threshold, det.pixel_threshold = 3.0, 2.0
    det.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "detector.json").read_text())
    assert meta["family"] == "padim" and meta["config"]["padim"]["layers"] == ["stage2", "stage3"]
    calls = spy_torch_load(monkeypatch)
    loaded = load_detector(tmp_path / "m")
    assert isinstance(loaded, PadimDetector) and calls and all(c is True for c in calls)
    assert (loaded.threshold, loaded.pixel_threshold) == (3.0, 2.0)
    x = _parts(3, 7)
    np.testing.assert_allclose(loaded.anomaly_maps(x), det.anomaly_maps(x), rtol=1e-5, atol=1e-5)


def test_a_truncated_gaussians_file_is_refused(fitted, tmp_path):
    det, _ = fitted
    det.save(tmp_path / "m")
    torch.save({"mean": torch.zeros(2, 2, 3)}, tmp_path / "m" / "gaussians.pt")
    with pytest.raises(ValueError, match="mean .* and precision"):
        load_detector(tmp_path / "m")


def test_train_config_for_padim_logs_only_its_own_settings():
    cfg = TrainConfig(detector="padim", padim=PadimConfig(image_size=128))
    params = cfg.params()
    assert params["padim.image_size"] == 128 and not any(k.startswith(("patchcore.", "autoencoder.")) for k in params)
    assert cfg.score_method == "top_mean" and cfg.image_size == 128
