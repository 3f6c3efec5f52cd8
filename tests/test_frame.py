"""The model frame keeps each image's aspect ratio: geometry, scoring and metrics ignore padding."""

from __future__ import annotations

import numpy as np
import pytest

from anomaflow.model.data.frame import Box, fit_box, model_frame, to_image_frame, valid_mask
from anomaflow.model.detectors.scoring import image_scores
from anomaflow.model.evaluation import metrics


def test_frame_follows_the_training_images_median_aspect_ratio():
    assert model_frame([(900, 900)] * 5, 256) == (256, 256)
    assert model_frame([(500, 1250)] * 5, 256) == (640, 256)  # tall crack images: 2.5:1, no squashing
    assert model_frame([(1250, 500)] * 5, 256) == (256, 640)
    assert model_frame([(768, 576)] * 3, 256) == (256, 352)  # 4:3 -> 341 rounded to a multiple of 32
    assert model_frame([(100, 100), (200, 100), (250, 100)], 128) == (128, 256)  # the median, 2:1
    assert model_frame([(5000, 100)], 64) == (64, 256)  # capped at 4:1
    assert model_frame([(500, 1250)], 256, keep_aspect=False) == (256, 256)
    assert model_frame([(1250, 500)], 512) == (512, 1280)  # a multiple of 64 = the autoencoder's stride at 512


def test_an_image_keeps_its_aspect_ratio_inside_the_frame():
    assert fit_box((500, 1250), (640, 256)) == Box(0, 0, 640, 256)  # same ratio: fills
    assert fit_box((505, 1250), (640, 256)) == Box(0, 0, 640, 256)  # within 2 %: fills, no 1-px stripe
    assert fit_box((100, 100), (128, 256)) == Box(0, 64, 128, 128)  # square in a wide frame: centred
    assert fit_box((300, 100), (128, 256)) == Box(21, 0, 85, 256)  # wider than the frame: rows padded


def test_a_map_goes_back_to_the_images_own_frame():
    frame = (128, 256)
    box = fit_box((100, 100), frame)
    m = np.zeros(frame, np.float32)
    m[box.top : box.top + box.height, box.left : box.left + box.width] = 1.0
    m[:, : box.left] = 9.0  # padding
    own = to_image_frame(m, box, (100, 100))
    assert own.shape == (100, 100) and np.allclose(own, 1.0)
    assert to_image_frame(m, box, (50, 60)).shape == (60, 50)


def test_padding_changes_no_image_score_and_no_pixel_metric():
    rng = np.random.default_rng(0)
    frame = (32, 64)
    boxes = [fit_box((32, 32), frame), fit_box((64, 32), frame), fit_box((32, 32), frame)]
    valid = valid_mask(boxes, frame)
    assert valid is not None and valid[0].sum() == 32 * 32 and valid[1].all()
    maps = rng.random((3, *frame)).astype(np.float32)
    masks = np.zeros((3, *frame), bool)
    masks[0, 10:14, 20:24] = True
    masks[1, 5:9, 40:50] = True
    loud = maps.copy()
    loud[~valid] = 100.0  # whatever the model says about padding
    quiet = maps.copy()
    quiet[~valid] = -100.0
    for name in ("mean", "max", "smoothed_max"):
        np.testing.assert_allclose(
            image_scores(loud, 2.0, valid)[name], image_scores(quiet, 2.0, valid)[name], rtol=1e-6
        )
    assert metrics.pixel_auroc(masks, loud, valid) == pytest.approx(metrics.pixel_auroc(masks, quiet, valid))
    assert metrics.pixel_aupro(masks, loud, 0.3, valid) == pytest.approx(metrics.pixel_aupro(masks, quiet, 0.3, valid))
    assert metrics.good_image_false_positive_rate(masks, loud, 0.5, valid) == pytest.approx(
        metrics.good_image_false_positive_rate(masks, quiet, 0.5, valid)
    )
    np.testing.assert_allclose(
        metrics.pixel_iou_per_image(masks, loud, 0.5, valid), metrics.pixel_iou_per_image(masks, quiet, 0.5, valid)
    )
    # Without `valid` the padding would count: the metrics can tell the difference.
    assert metrics.pixel_auroc(masks, loud) != pytest.approx(metrics.pixel_auroc(masks, quiet))


def test_the_frame_policy_is_saved_with_the_model():
    from anomaflow.model.config import TrainConfig
    from anomaflow.model.pipeline import build_detector

    det = build_detector(TrainConfig(detector="autoencoder", keep_aspect=False))
    det.set_frame(np.zeros((2, 128, 128, 3), np.uint8))
    meta = det.metadata()
    assert meta["keep_aspect"] is False and meta["frame"] == [128, 128]
    det = build_detector(TrainConfig(detector="autoencoder"))
    det.set_frame(np.zeros((2, 128, 320, 3), np.uint8))
    assert det.metadata()["frame"] == [128, 320] and det.metadata()["keep_aspect"] is True
    with pytest.raises(ValueError, match="short side 128"):
        det.set_frame(np.zeros((2, 96, 320, 3), np.uint8))
