"""Train = inspect = serve, for every option that changes how images are prepared or scored.

Each case trains through the pipeline steps the training flow's tasks call (load_arrays,
fit_detector, calibrate, score), saves the model, loads it back and scores the same test files
through the inspection path (inspect_files) and through the served pyfunc (the model folder
`mlflow models serve` loads): scores and maps agree to 1e-5. The data mixes sizes and aspect
ratios (up to 2.5:1) so that keeping the aspect ratio and squashing prepare different pixels: a
path that letterboxes where the model squashes (or the reverse) fails here.

A new option that changes preprocessing or scoring gets a row in CASES.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomaflow.model import pipeline
from anomaflow.model.config import AutoencoderConfig, PadimConfig, PatchCoreConfig, TrainConfig
from anomaflow.model.detectors.registry import load_detector
from anomaflow.model.operations.inspection import RowBuffer, inspect_files
from tests.helpers import inspect_args, train_args

SIZES = [(96, 160), (128, 128), (160, 96), (200, 80)]  # (width, height): tall, square, wide, 2.5:1
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _part(rng: np.random.Generator, w: int, h: int, rgb: bool, defect: bool) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 25 * np.sin(xx / 7.0) * np.cos(yy / 9.0) + rng.normal(0, 4, (h, w))
    img = np.stack([base, base * 0.8 + 30, base * 0.6 + 60], -1) if rgb else base
    mask = np.zeros((h, w), np.uint8)
    if defect:
        y, x = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
        img[y : y + h // 5, x : x + max(3, w // 12)] = 25
        mask[y : y + h // 5, x : x + max(3, w // 12)] = 255
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_mixed_dataset(root: Path, rgb: bool, n_train: int = 12) -> Path:
    """An MVTec-layout category whose images differ in size and aspect ratio; grayscale JPEGs or RGB PNGs."""
    rng = np.random.default_rng(7 if rgb else 3)
    cat, ext = root / "tiles", (".png" if rgb else ".jpg")
    mode = "RGB" if rgb else "L"

    def save(arr: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode).save(path, **({} if rgb else {"quality": 95}))

    for i in range(n_train):
        save(_part(rng, *SIZES[i % len(SIZES)], rgb, False)[0], cat / "train" / "good" / f"{i:03d}{ext}")
    for i, (w, h) in enumerate(SIZES):
        save(_part(rng, w, h, rgb, False)[0], cat / "test" / "good" / f"{i:03d}{ext}")
        img, mask = _part(rng, w, h, rgb, True)
        save(img, cat / "test" / "spot" / f"{i:03d}{ext}")
        (cat / "ground_truth" / "spot").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask, "L").save(cat / "ground_truth" / "spot" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def mixed_roots(tmp_path_factory) -> dict[str, Path]:
    return {
        mode: make_mixed_dataset(tmp_path_factory.mktemp(f"mixed-{mode}"), rgb=mode == "rgb")
        for mode in ("gray", "rgb")
    }


def _config(root: Path, family: str, keep_aspect: bool, size: int) -> TrainConfig:
    family_cfg = {
        "autoencoder": {
            "autoencoder": AutoencoderConfig(
                image_size=size, base_channels=8, latent_channels=8, epochs=1, batch_size=8
            )
        },
        "padim": {"padim": PadimConfig(image_size=size)},
        "fusion": {"padim": PadimConfig(image_size=size), "patchcore": PatchCoreConfig(image_size=size)},
    }.get(family, {"patchcore": PatchCoreConfig(image_size=size)})
    return TrainConfig(
        data_root=str(root),
        category="tiles",
        detector=family,
        keep_aspect=keep_aspect,
        num_threads=2,
        seed=0,
        auto_budget_seconds=600,
        **family_cfg,
    )


CASES = [  # (family, keep_aspect, colour, image size)
    *[(f, k, c, 64) for f in ("autoencoder", "patchcore") for k in (True, False) for c in ("gray", "rgb")],
    ("autoencoder", True, "rgb", 128),
    ("patchcore", False, "gray", 96),
    ("padim", True, "gray", 64),
    ("padim", False, "rgb", 64),
    ("fusion", True, "gray", 64),
    ("auto", True, "gray", 64),
    ("auto", False, "rgb", 64),
]


def _train(cfg: TrainConfig, ds):
    """What train-pipeline does, step by step (its tasks are one call each of these)."""
    arrays = pipeline.load_arrays(ds, cfg, log=lambda m: None)
    if cfg.detector == "auto":
        choice, arrays = pipeline.choose_detector(cfg, ds, arrays, log=lambda m: None)
        if cfg.keep_aspect:  # mixed shapes: the frame policy tried the chosen candidate squashed too
            assert any(r["name"].endswith("_square") and r["status"] == "scored" for r in choice.rows)
        det, cfg = choice.detector, choice.config
    else:
        det, _, _ = pipeline.fit_detector(cfg, arrays)
    pipeline.calibrate_detector(det, cfg, det.score(arrays.holdout, arrays.holdout_valid))
    return det, arrays, det.score(arrays.test, arrays.test_valid), cfg


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,keep_aspect,colour,size", CASES, ids=[f"{f}-{'keep' if k else 'squash'}-{c}-{s}" for f, k, c, s in CASES]
)
def test_training_scores_equal_inspection_and_served_model(mixed_roots, tmp_path, family, keep_aspect, colour, size):
    import mlflow

    from anomaflow.tasks.tracking import save_served_model

    cfg = _config(mixed_roots[colour], family, keep_aspect, size)
    ds = pipeline.load_dataset(mixed_roots[colour], "tiles")
    det, arrays, trained, cfg = _train(cfg, ds)
    keep_aspect = cfg.keep_aspect  # auto's frame policy may have chosen the square frame
    assert det.keep_aspect == keep_aspect and det.preprocessing == arrays.preprocessing
    assert min(det.frame) == size
    if not keep_aspect:
        assert det.frame == (size, size) and arrays.test_valid is None  # squashed: no padding anywhere
    else:
        assert arrays.test_valid is not None and not arrays.test_valid.all()  # mixed ratios: some images letterboxed
    saved = json.loads((det.save(tmp_path / "model") / "detector.json").read_text())
    assert saved["keep_aspect"] == keep_aspect and tuple(saved["frame"]) == det.frame

    loaded = load_detector(tmp_path / "model")
    files = [s.path for s in arrays.test_samples]
    method = loaded.score_method

    # the inspection path: the ledger rows of `anomaflow inspect`
    buf = RowBuffer(tmp_path / "inspected")
    inspect_files(
        loaded,
        files,
        files[0].parents[1],
        buf,
        model_name="m",
        model_version="1",
        threshold=loaded.threshold,
        write_figures=False,
    )
    by_path = {r.path: r for r in buf.rows}
    inspected = np.array([by_path[f"{f.parent.name}/{f.name}"].score for f in files])
    np.testing.assert_allclose(inspected, trained.scores[method], **TOL)
    assert [by_path[f"{f.parent.name}/{f.name}"].decision for f in files] == list(det.decide(trained.scores[method]))

    # the served model: the pyfunc folder `mlflow models serve -m` loads, fed encoded bytes
    served = mlflow.pyfunc.load_model(str(save_served_model(det, tmp_path / "served", example_image=files[0])))
    out = served.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}), params={"return_maps": True})
    np.testing.assert_allclose(out["score"].to_numpy(), trained.scores[method], **TOL)
    np.testing.assert_allclose(np.stack([np.asarray(m, np.float32) for m in out["anomaly_map"]]), trained.maps, **TOL)
    assert list(out["decision"]) == list(det.decide(trained.scores[method]))


def test_the_preprocessing_a_model_saves_is_the_one_its_training_images_had(mixed_roots):
    """The cause of a past mismatch: the loaders took the frame and a keep_aspect default of
    their own. Arrays carry one Preprocessing; a detector built for them saves exactly it."""
    root = mixed_roots["gray"]
    ds = pipeline.load_dataset(root, "tiles")
    squash = pipeline.load_arrays(ds, _config(root, "autoencoder", False, 64), log=lambda m: None)
    keep = pipeline.load_arrays(ds, _config(root, "autoencoder", True, 64), log=lambda m: None)
    assert squash.preprocessing.keep_aspect is False and keep.preprocessing.keep_aspect is True
    wide = next(i for i, s in enumerate(squash.test_samples) if s.label == 1 and Image.open(s.path).size == (200, 80))
    squashed_by_hand = np.asarray(
        Image.open(squash.test_samples[wide].path).convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    )
    assert np.abs(squash.test[wide].astype(int) - squashed_by_hand.astype(int)).max() <= 2  # squashed, not letterboxed
    assert squash.test_masks[wide].any()  # the mask is squashed with its image
    det = pipeline.builder(squash)(
        _config(root, "autoencoder", True, 64)
    )  # a config that disagrees loses to the arrays
    assert det.preprocessing == squash.preprocessing


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api", "mlflow_sqlite")
def test_no_keep_aspect_run_equals_anomaflow_inspect_and_the_registered_model(mixed_roots, tmp_path):
    """The commands as a user runs them: `anomaflow train --no-keep-aspect` on mixed aspect ratios,
    then `anomaflow inspect` with the registered champion and the champion's pyfunc: the run's
    logged per-image scores are what both give."""
    import csv

    import mlflow

    from anomaflow.flows.cli import main

    root = mixed_roots["gray"]
    out = tmp_path / "train"
    assert main(train_args(root, out, "--no-keep-aspect", "--seed", "0", category="tiles")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "model" / "detector.json").read_text())["keep_aspect"] is False
    local = mlflow.artifacts.download_artifacts(run_id=m["mlflow_run_id"], artifact_path="tables/per_image_scores.json")
    doc = json.loads(Path(local).read_text())
    logged = pd.DataFrame(doc["data"], columns=doc["columns"]).set_index("path")
    score_col = f"score_{json.loads((out / 'model' / 'detector.json').read_text())['score_method']}"

    inbox = root / "tiles" / "test"
    # the torch path to 1e-5 here; the exported runtimes (the default where installed) in tests/test_export.py
    assert main(inspect_args(inbox, tmp_path / "inspect", "anomaflow-tiles", "--runtime", "torch")) == 0
    with open(tmp_path / "inspect" / "results.csv", newline="") as fh:
        inspected = {str(inbox / r["path"]): r for r in csv.DictReader(fh)}
    assert set(logged.index) <= set(inspected) and len(logged) >= 4  # the run logs the reported part of the test split
    paths = sorted(logged.index)
    np.testing.assert_allclose(
        [float(inspected[p]["score"]) for p in paths], logged.loc[paths, score_col].to_numpy(), **TOL
    )
    assert [inspected[p]["decision"] for p in paths] == list(logged.loc[paths, "decision"])

    served = mlflow.pyfunc.load_model("models:/anomaflow-tiles@champion").predict(pd.DataFrame({"path": paths}))
    np.testing.assert_allclose(served["score"].to_numpy(), logged.loc[paths, score_col].to_numpy(), **TOL)
