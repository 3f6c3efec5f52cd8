"""Fusion: member maps standardised on held-out normals, averaged; one saved folder; built from config."""

import json

import numpy as np
import pytest

from anomaflow.model.config import PadimConfig, PatchCoreConfig, TrainConfig
from anomaflow.model.detectors.fusion import FusionDetector
from anomaflow.model.detectors.padim import PadimDetector
from anomaflow.model.detectors.patchcore import PatchCoreDetector
from anomaflow.model.detectors.registry import build_detector, load_detector
from tests.test_padim import SIZE, _parts


def _members() -> list:
    return [
        PatchCoreDetector(PatchCoreConfig(image_size=SIZE, coreset_min_size=64), seed=0),
        PadimDetector(PadimConfig(image_size=SIZE, batch_size=8), seed=0),
    ]


@pytest.fixture(scope="module")
def fused():
    det = FusionDetector(members=_members())
    det.fit(_parts(20, 0), _parts(6, 1), progress=None)
    return det


def test_members_are_standardised_on_the_held_out_normals(fused):
    held = _parts(6, 1)
    for m, (mu, sd) in zip(fused.members, fused.stats):
        z = (m.anomaly_maps(held).astype(np.float64) - mu) / sd
        assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-6
    # the fused map of the held-out normals averages two unit-variance maps: centred on 0
    assert abs(float(fused.anomaly_maps(held).mean())) < 1e-5


def test_the_fused_map_is_the_mean_of_the_standardised_member_maps(fused):
    x = _parts(3, 9)
    x[:, 20:30, 40:50] = 255  # a bright spot where the background is dark
    want = np.mean([(m.anomaly_maps(x) - mu) / sd for m, (mu, sd) in zip(fused.members, fused.stats)], axis=0)
    np.testing.assert_allclose(fused.anomaly_maps(x), want, rtol=1e-5, atol=1e-5)
    good = fused.score(_parts(3, 8)).scores["max"]
    assert fused.score(x).scores["max"].min() > good.max()


def test_fitted_members_fuse_without_a_refit_and_must_share_a_frame(fused):
    again = FusionDetector.of_fitted(fused.members, _parts(6, 1))
    x = _parts(2, 4)
    np.testing.assert_allclose(again.anomaly_maps(x), fused.anomaly_maps(x), rtol=1e-6, atol=1e-6)
    other = PadimDetector(PadimConfig(image_size=SIZE))
    other.fit(np.concatenate([_parts(4, 0), _parts(4, 0)], axis=2)[:, :, : SIZE * 2], progress=None)  # a 64x128 frame
    with pytest.raises(ValueError, match="share one preprocessing"):
        FusionDetector.of_fitted([fused.members[0], other], _parts(6, 1))


def test_save_load_keeps_every_member_and_gives_the_same_maps(fused, tmp_path):
    fused.threshold = 2.5
    fused.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "detector.json").read_text())
    assert meta["family"] == "fusion" and meta["config"]["members"] == ["patchcore", "padim"]
    loaded = load_detector(tmp_path / "m")
    assert isinstance(loaded, FusionDetector) and [m.family for m in loaded.members] == ["patchcore", "padim"]
    assert loaded.threshold == 2.5 and loaded.frame == fused.frame
    x = _parts(3, 5)
    np.testing.assert_allclose(loaded.anomaly_maps(x), fused.anomaly_maps(x), rtol=1e-5, atol=1e-5)
    (tmp_path / "m" / "member_1" / "detector.json").unlink()
    with pytest.raises(ValueError, match="member 1 \\(padim\\) is missing"):
        load_detector(tmp_path / "m")


def test_a_fusion_run_is_built_from_its_members_sections():
    cfg = TrainConfig(detector="fusion", patchcore=PatchCoreConfig(image_size=128), padim=PadimConfig(image_size=128))
    det = build_detector(cfg)
    assert [m.family for m in det.members] == ["patchcore", "padim"] and det.image_size == 128 and cfg.image_size == 128
    params = cfg.params()
    assert (
        "patchcore.layers" in params
        and "padim.layers" in params
        and not any(k.startswith("autoencoder.") for k in params)
    )
    with pytest.raises(ValueError, match="one image_size"):
        TrainConfig(detector="fusion", patchcore=PatchCoreConfig(image_size=128))
    with pytest.raises(RuntimeError, match="not fitted"):
        det.anomaly_maps(np.zeros((1, 128, 128, 3), np.uint8))
