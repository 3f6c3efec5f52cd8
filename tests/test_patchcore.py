"""PatchCore detector: coreset, nearest-neighbour search, maps on demo data, persistence, pipeline."""

import json

import numpy as np
import pytest
import torch

from anomaflow.model.config import PatchCoreConfig, TrainConfig
from anomaflow.model.detectors.patchcore import (
    PatchCoreDetector,
    aggregate,
    coverage_radius,
    greedy_coreset,
    nearest_distances,
    random_projection,
)
from anomaflow.model.detectors.registry import load_detector
from tests.helpers import spy_torch_load


def _clustered(n_clusters=12, per=150, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 10
    sizes = torch.randint(per // 4, per * 2, (n_clusters,), generator=g)  # unequal clusters
    pts = [c + torch.randn(int(s), dim, generator=g) * 0.5 for c, s in zip(centres, sizes)]
    return torch.cat(pts)


def _naive_greedy(z, k, first):
    """Textbook k-center greedy: one full distance pass per pick."""
    min_d = ((z - z[first]) ** 2).sum(1)
    sel = [first]
    for _ in range(k - 1):
        j = int(torch.argmax(min_d))
        sel.append(j)
        min_d = torch.minimum(min_d, ((z - z[j]) ** 2).sum(1))
    return sel


# -- coreset ---------------------------------------------------------------------------------
def test_coreset_is_a_deterministic_subset():
    x = _clustered()
    a = greedy_coreset(x, 50, projection_dim=8, seed=3)
    b = greedy_coreset(x, 50, projection_dim=8, seed=3)
    assert torch.equal(a, b)
    assert len(a) == 50 and len(set(a.tolist())) == 50
    assert a.min() >= 0 and a.max() < len(x)
    assert not torch.equal(a, greedy_coreset(x, 50, projection_dim=8, seed=4))
    assert torch.equal(greedy_coreset(x, len(x) + 5), torch.arange(len(x)))


@pytest.mark.parametrize("pool,max_batch", [(16, 4), (64, 32), (4096, 512)])
def test_batched_coreset_equals_textbook_greedy(pool, max_batch):
    """The pool/batch shortcut changes the cost, not the picks."""
    x = torch.randn(1500, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast = greedy_coreset(x, 120, projection_dim=0, seed=5, pool=pool, max_batch=max_batch).tolist()
    assert fast == _naive_greedy(x, 120, fast[0])


def test_greedy_coverage_beats_a_random_subset():
    x = _clustered()
    k = 24
    greedy = greedy_coreset(x, k, projection_dim=0, seed=0)
    g = torch.Generator().manual_seed(0)
    random_radii = [coverage_radius(x, torch.randperm(len(x), generator=g)[:k]) for _ in range(5)]
    # every cluster is covered: the greedy radius is about a cluster's spread, while a random
    # subset misses a small cluster and leaves a radius of about the distance between clusters
    assert coverage_radius(x, greedy) < 0.25 * min(random_radii)


def test_coreset_stops_on_duplicates():
    x = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    idx = greedy_coreset(x, 4, projection_dim=0)
    assert len(idx) == 2 and set(x[idx].sum(1).tolist()) == {0.0, 2.0}


def test_random_projection_roughly_keeps_distances():
    x = torch.randn(200, 512, generator=torch.Generator().manual_seed(0))
    z = random_projection(x, 128, seed=0)
    assert z.shape == (200, 128)
    ratio = torch.pdist(z) / torch.pdist(x)
    assert 0.8 < float(ratio.mean()) < 1.2 and float(ratio.std()) < 0.15
    assert random_projection(x, 0).shape == x.shape and random_projection(x, 1024).shape == x.shape


# -- nearest neighbours ----------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3])
def test_chunked_nearest_distances_equal_brute_force(k):
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(333, 20, generator=g), torch.randn(517, 20, generator=g)
    got = nearest_distances(q, bank, k, query_chunk=64, bank_chunk=100)
    ref = torch.cdist(q.double(), bank.double()).topk(k, dim=1, largest=False).values.mean(1)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)
    assert torch.allclose(
        nearest_distances(bank[:7], bank, 1), torch.zeros(7), atol=2e-3
    )  # a bank point is its own neighbour


def test_aggregate_puts_stages_on_one_grid():
    f1, f2 = torch.rand(2, 4, 8, 8), torch.rand(2, 6, 4, 4)
    out = aggregate([f1, f2], pool_size=3)
    assert out.shape == (2, 8, 8, 10)
    torch.testing.assert_close(out[0, 3, 3, :4], f1[0, :, 2:5, 2:5].mean(dim=(1, 2)))
    assert aggregate([f1, f2], pool_size=3, feature_dim=5).shape == (2, 8, 8, 5)


# -- the detector on demo data ---------------------------------------------------------------
SIZE = 96


@pytest.fixture(scope="module")
def demo_images():
    from anomaflow.model.data.demo import render_part

    rng = np.random.default_rng(0)
    train = np.stack([render_part(rng, SIZE) for _ in range(12)])
    good = np.stack([render_part(rng, SIZE) for _ in range(2)])
    bad = good[:1].copy()
    mask = np.zeros((SIZE, SIZE), bool)
    mask[40:56, 28:44] = True
    bad[0][mask] = (0, 255, 0)  # a painted defect on the part
    return train, good, bad, mask


def _cfg(**kw):
    base = dict(image_size=SIZE, coreset_ratio=0.25, coreset_min_size=1, batch_size=4)
    base.update(kw)
    return PatchCoreConfig(**base)


@pytest.fixture(scope="module")
def fitted(demo_images):
    train, *_ = demo_images
    det = PatchCoreDetector(_cfg(), seed=0)
    seen = []
    hist = det.fit(train, progress=seen.append)
    return det, hist, seen


def test_fit_builds_a_coreset_bank_and_reports(fitted):
    det, hist, seen = fitted
    grid = SIZE // 8
    assert len(hist) == 1 and hist[0]["epoch"] == 1 and hist[0]["epochs"] == 1 and hist[0]["train_loss"] == 0.0
    assert hist[0]["patches"] == 12 * grid * grid
    assert hist[0]["bank_size"] == det.bank.shape[0] == int(np.ceil(0.25 * 12 * grid * grid))
    assert det.bank.shape[1] == det.feature_dim == 40 + 80
    assert [r.get("phase") for r in seen] == ["features", "coreset", None]


def test_bank_size_has_a_floor_for_small_training_sets():
    det = PatchCoreDetector(PatchCoreConfig(), seed=0)  # 1 %, at least 2048 patches
    assert det.bank_size_for(31 * 1024) == 2048  # 31 images at 256 px: 1 % would keep 318
    assert det.bank_size_for(1000) == 1000  # fewer patches than the floor: keep them all
    assert det.bank_size_for(800 * 1024) == 8192  # a large set: the ratio rules
    capped = PatchCoreDetector(PatchCoreConfig(coreset_max_size=4000), seed=0)
    assert capped.bank_size_for(800 * 1024) == 4000


def test_anomaly_map_highlights_a_painted_defect(fitted, demo_images):
    det, *_ = fitted
    _, good, bad, mask = demo_images
    maps = det.anomaly_maps(np.concatenate([good, bad]))
    assert maps.shape == (3, SIZE, SIZE) and maps.dtype == np.float32
    assert maps[2][mask].mean() > 2.0 * maps[2][~mask].mean()
    assert maps[2][mask].mean() > 1.5 * maps[:2].max()  # above anything on the good images
    assert np.unravel_index(maps[2].argmax(), mask.shape) in set(zip(*np.nonzero(mask)))
    s = det.score(np.concatenate([good, bad])).scores["max"]
    assert s[2] > 1.5 * s[:2].max()


def test_input_validation(fitted):
    det, *_ = fitted
    with pytest.raises(ValueError, match="shape"):
        det.anomaly_maps(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchCoreDetector(_cfg()).anomaly_maps(np.zeros((1, SIZE, SIZE, 3), np.uint8))
    assert det.anomaly_maps(np.zeros((0, SIZE, SIZE, 3), np.uint8)).shape == (0, SIZE, SIZE)


def test_save_load_roundtrip_weights_only(fitted, demo_images, tmp_path, monkeypatch):
    det, *_ = fitted
    _, good, bad, _ = demo_images
    det.threshold, det.pixel_threshold = 1.5, 0.7
    det.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "detector.json").read_text())
    assert meta["family"] == "patchcore" and meta["image_size"] == SIZE and meta["threshold"] == 1.5
    assert meta["config"]["backbone_weights"]["sha256"] == det.backbone.weights_sha256

    calls = spy_torch_load(monkeypatch)
    loaded = load_detector(tmp_path / "m")
    assert isinstance(loaded, PatchCoreDetector)
    assert calls and all(c is True for c in calls)  # backbone weights and memory bank alike
    assert loaded.threshold == 1.5 and loaded.pixel_threshold == 0.7 and loaded.score_method == det.score_method
    torch.testing.assert_close(loaded.bank, det.bank)
    x = np.concatenate([good, bad])
    np.testing.assert_allclose(loaded.anomaly_maps(x), det.anomaly_maps(x), rtol=1e-5, atol=1e-5)


def test_load_refuses_other_backbone_weights(fitted, tmp_path):
    det, *_ = fitted
    det.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "detector.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["backbone_weights"]["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="differ from the ones this model was fitted with"):
        load_detector(tmp_path / "m")


def test_config_validation():
    with pytest.raises(ValueError):
        PatchCoreConfig(image_size=100)
    with pytest.raises(ValueError):
        PatchCoreConfig(coreset_ratio=0)
    with pytest.raises(ValueError):
        PatchCoreConfig(layers=[])
    with pytest.raises(ValueError):
        TrainConfig(detector="fancy")
    assert TrainConfig(detector="patchcore").image_size == 256


def test_family_decision_defaults_apply_without_the_cli():
    """A deployment form or Python caller gets the same per-family defaults as the CLI, an explicit
    value wins, and the dumped config (logged, reloaded) carries the resolved values."""
    pc = TrainConfig(detector="patchcore")
    assert (pc.score_method, pc.pixel_threshold_percentile) == ("max", 99.99)
    ae = TrainConfig(detector="autoencoder")
    assert (ae.score_method, ae.pixel_threshold_percentile) == ("smoothed_max", 99.5)
    assert TrainConfig(detector="patchcore", score_method="mean").score_method == "mean"
    assert TrainConfig.model_validate(pc.model_dump()) == pc


def test_pipeline_steps_end_to_end_on_demo_data(demo_root, tmp_path):
    from anomaflow.model import pipeline

    cfg = TrainConfig(
        data_root=str(demo_root),
        category="demo",
        detector="patchcore",
        score_method="max",
        patchcore=PatchCoreConfig(image_size=64, coreset_ratio=0.1),
        num_threads=2,
    )
    ds = pipeline.load_dataset(*pipeline.resolve_data_root(cfg))
    arrays = pipeline.load_arrays(ds, cfg, log=lambda _: None)
    assert arrays.fit.shape[1:] == (64, 64, 3)
    det, history, seconds = pipeline.fit_detector(cfg, arrays, progress=lambda _: None)
    assert isinstance(det, PatchCoreDetector) and history[0]["bank_size"] > 0 and seconds > 0
    pipeline.calibrate_detector(det, cfg, det.score(arrays.holdout))
    m = pipeline.evaluate_split(det, arrays, det.score(arrays.test), cfg.score_method).metrics
    for key in (
        "image_auroc",
        "image_auroc_max",
        "pixel_auroc",
        "pixel_aupro",
        "pixel_iou",
        "threshold",
        "pixel_threshold",
    ):
        assert key in m, key
    assert m["image_auroc_max"] >= 0.9 and m["pixel_auroc"] >= 0.9
    det.save(tmp_path / "model")
    assert load_detector(tmp_path / "model").family == "patchcore"


def test_faiss_search_gives_the_distances_of_our_exact_search():
    from anomaflow.model.detectors.patchcore import FaissBank, nearest_distances

    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(500, 48, generator=g), torch.randn(300, 48, generator=g)
    for k in (1, 3):
        np.testing.assert_allclose(
            FaissBank(bank).distances(queries, k).numpy(),
            nearest_distances(queries, bank, k).numpy(),
            rtol=1e-4,
            atol=1e-4,
        )
