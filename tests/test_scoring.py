import numpy as np
import pytest
import torch

from anomaflow.model.detectors.scoring import gaussian_blur, image_scores, residual_map, smooth_maps, ssim_map


def test_gaussian_blur_preserves_mass_and_constant():
    x = torch.zeros(1, 1, 33, 33)
    x[0, 0, 16, 16] = 1.0
    y = gaussian_blur(x, 2.0)
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(y[0, 0, 16, 16]) < 0.1
    c = torch.full((2, 3, 20, 20), 0.7)
    assert torch.allclose(gaussian_blur(c, 1.5), c, atol=1e-6)
    assert torch.equal(gaussian_blur(x, 0.0), x)


def test_ssim_identical_is_one_and_noise_is_lower():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(ssim_map(x, x), torch.ones(2, 32, 32), atol=1e-5)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert float(ssim_map(x, noisy).mean()) < 0.8


@pytest.mark.parametrize("kind", ["l2", "l1", "ssim", "l2_ssim"])
def test_residual_map_localises_a_changed_patch(kind):
    x = torch.full((1, 3, 32, 32), 0.5)
    recon = x.clone()
    recon[:, :, 10:14, 20:24] = 0.0
    m = residual_map(x, recon, kind)
    assert m.shape == (1, 32, 32)
    assert float(m[0, 11, 21]) > 0
    assert float(m[0, 0, 0]) == pytest.approx(0.0, abs=1e-6)
    assert float(m[0, 10:14, 20:24].mean()) > float(m[0, :8, :8].mean())


def test_residual_map_l2_values():
    x = torch.zeros(1, 3, 4, 4)
    r = torch.zeros(1, 3, 4, 4)
    r[0, 0, 1, 1] = 0.6  # squared error 0.36 in one channel, mean over 3 channels
    assert float(residual_map(x, r, "l2")[0, 1, 1]) == pytest.approx(0.12)
    with pytest.raises(ValueError, match="unknown map kind"):
        residual_map(x, r, "nope")


def test_image_scores_mean_max_smoothed():
    maps = np.zeros((2, 16, 16), np.float32)
    maps[0, 3, 3] = 1.0  # a single hot pixel
    maps[1, 4:12, 4:12] = 0.5  # a broad region
    s = image_scores(maps, smooth_sigma=2.0)
    assert s["mean"][0] == pytest.approx(1 / 256)
    assert s["max"][0] == 1.0 and s["max"][1] == 0.5
    # Smoothing suppresses an isolated pixel more than a region: the ranking flips.
    assert s["smoothed_max"][1] > s["smoothed_max"][0]
    assert smooth_maps(maps, 0).dtype == np.float32


def test_top_mean_pools_the_highest_share_of_each_images_own_pixels():
    from anomaflow.model.detectors.scoring import image_scores, top_mean

    maps = np.zeros((2, 40, 50), np.float32)
    maps[0, :2, :] = 10.0  # 100 of 2,000 pixels: the top 0.1 % (2 pixels) are all 10
    maps[1, 0, 0] = 8.0  # one hot pixel: the top 2 average it with a 0
    assert top_mean(np.arange(10.0)) == 9.0  # at least one value
    s = image_scores(maps, 1.0)["top_mean"]
    np.testing.assert_allclose(s, [10.0, 4.0])
    valid = np.ones_like(maps, bool)
    valid[:, :2, :] = False  # padding where image 0's high values lie: left out
    assert image_scores(maps, 1.0, valid)["top_mean"][0] == 0.0
