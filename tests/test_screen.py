"""The training-set screen: defective parts filed as good are found by cross-fitted scores, and
leaving them out (--exclude-suspects) gives back the image decisions they cost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from anomaflow.flows.cli import main
from anomaflow.model.config import TrainConfig
from anomaflow.model.data.demo import make_demo_dataset
from anomaflow.model.data.screen import Z_LIMIT, cross_fit, fold_of, robust_z
from tests.helpers import train_args
from tests.test_selection import Toy


def test_robust_z_ignores_one_outlier_and_folds_are_balanced_and_seeded():
    scores = np.array([1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 50.0])
    z = robust_z(scores)
    assert z[-1] > 100 and np.all(np.abs(z[:-1]) < 2)  # the outlier cannot inflate the scale that judges it
    assert np.all(np.isfinite(robust_z(np.ones(10))))  # MAD 0: no division by zero
    f = fold_of(11, 3, seed=4)
    assert sorted(np.bincount(f)) == [3, 4, 4]
    assert np.array_equal(f, fold_of(11, 3, seed=4)) and not np.array_equal(f, fold_of(11, 3, seed=5))


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(120 + rng.normal(0, 3, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


def test_cross_fit_scores_every_image_out_of_fold_and_flags_the_odd_one():
    images = _images(20, 0)
    images[7, 8:16, 8:16] = 255  # a bright patch: a defect filed as good
    names = [f"{i:03d}.png" for i in range(20)]
    cfg = TrainConfig(detector="patchcore", patchcore={"image_size": 32})
    fitted: list[int] = []

    def build():
        det = Toy(cfg, blind=False)
        fit = det.fit
        det.fit = lambda x, **kw: (fitted.append(len(x)), fit(x, **kw))[1]
        return det

    found = cross_fit(images, names, build, folds=2, seed=0, log=lambda m: None)
    assert fitted == [10, 10]  # each fold fitted on the other half only
    assert found.suspects == [7] and found.z[7] > Z_LIMIT
    assert "007.png" in found.summary() and found.to_dict()["suspects"][0]["image"] == "007.png"
    few = cross_fit(images[:5], names[:5], build, log=lambda m: None)
    assert few.skipped and few.suspects == [] and "skipped" in few.summary()


PLANTED = 10


@pytest.fixture(scope="module")
def contaminated_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Demo data whose good folder holds 10 blob defects (20 %) taken from the test split."""
    root = tmp_path_factory.mktemp("contaminated")
    cat = make_demo_dataset(
        root, "demo", seed=0, image_size=128, n_train=40, n_test_good=8, n_test_per_defect=20, defects=("blob",)
    )
    planted = []
    for i in range(PLANTED):
        shutil.move(cat / "test" / "blob" / f"{i:03d}.png", cat / "train" / "good" / f"planted_blob_{i}.png")
        (cat / "ground_truth" / "blob" / f"{i:03d}_mask.png").unlink()
        planted.append(f"planted_blob_{i}.png")
    return root, planted


@pytest.mark.usefixtures("prefect_api", "mlflow_sqlite")
def test_defects_filed_as_good_are_flagged_and_excluding_them_recovers_the_decisions(contaminated_root, tmp_path):
    root, planted = contaminated_root
    runs = {}
    for flag in ("--no-screen", "--screen", "--exclude-suspects"):
        out = tmp_path / flag.strip("-")
        assert main(train_args(root, out, "--no-register", flag, image_size=128)) == 0
        runs[flag] = (json.loads((out / "metrics.json").read_text()), json.loads((out / "validation.json").read_text()))
    m_off, v_off = runs["--no-screen"]
    m_on, v_on = runs["--screen"]
    m_ex, v_ex = runs["--exclude-suspects"]
    assert v_off["training_screen"] is None and "train_suspects" not in m_off
    screen = v_on["training_screen"]
    flagged = [s["image"] for s in screen["suspects"]]
    assert set(planted) <= set(flagged) and len(flagged) <= PLANTED + 1  # every planted defect, at most one false flag
    assert screen["excluded"] == [] and m_on["train_suspects"] == len(flagged) and m_on["train_excluded"] == 0
    # Reporting alone changes nothing: the same model and scores as without the screen.
    assert m_on["image_auroc"] == m_off["image_auroc"] and m_on["threshold"] == pytest.approx(
        m_off["threshold"], rel=1e-6
    )
    assert set(v_ex["training_screen"]["excluded"]) == set(flagged) and m_ex["train_excluded"] == len(flagged)
    tag = MlflowClient().get_run(m_ex["mlflow_run_id"]).data.tags["anomaflow.train_suspects"]
    assert f"{len(flagged)} of 50 good images look defective" in tag and "planted_blob_" in tag
    # The blobs in the bank taught the detector that blobs are normal: without them the same test
    # split ranks better and the calibrated threshold catches at least as many parts at no more false alarms.
    assert m_ex["image_auroc"] > m_off["image_auroc"]
    assert m_ex["recall"] >= m_off["recall"] and m_ex["false_positive_rate"] <= m_off["false_positive_rate"]
    assert m_ex["recall"] - m_off["recall"] + m_off["false_positive_rate"] - m_ex["false_positive_rate"] > 0


def test_exclude_suspects_needs_the_screen():
    with pytest.raises(ValueError, match="needs the training-set screen"):
        TrainConfig(screen_training_set=False, exclude_suspects=True)
