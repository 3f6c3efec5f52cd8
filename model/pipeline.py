"""The core run as small steps: data -> fit -> score -> calibrate -> evaluate -> report.

Each step is one plain function over arrays and files, so a Prefect task can wrap it
one-to-one and a notebook can call it directly. No step reads test labels before
`evaluate_split`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from anomaflow.model.config import TrainConfig
from anomaflow.model.data import datasets as data
from anomaflow.model.data.demo import make_demo_dataset
from anomaflow.model.data.frame import Frame
from anomaflow.model.data.preprocessing import Preprocessing
from anomaflow.model.data.screen import Screen, cross_fit
from anomaflow.model.detectors.base import Detector, ScoreResult
from anomaflow.model.detectors.registry import build_detector
from anomaflow.model.evaluation import calibration, plots
from anomaflow.model.evaluation.evaluate import Evaluation, evaluate
from anomaflow.model.evaluation.selection import Selection, frame_alternative, select
from anomaflow.model.files import write_json_atomic

DEMO_CATEGORY = "demo"


def default_home() -> Path:
    """Where anomaflow keeps generated demo data and caches (ANOMAFLOW_HOME or the XDG cache)."""
    if os.environ.get("ANOMAFLOW_HOME"):
        return Path(os.environ["ANOMAFLOW_HOME"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "anomaflow"


def configure_threads(num_threads: int | None) -> int:
    """Pin torch's intra-op threads on purpose: oversubscribing 2 cores made calls 50x slower."""
    n = num_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def resolve_data_root(config: TrainConfig) -> tuple[Path, str]:
    """(data_root, category); no data_root means the generated demo set (written once)."""
    if config.data_root:
        return Path(config.data_root).expanduser(), config.category
    root = default_home() / "demo-data"
    make_demo_dataset(root, DEMO_CATEGORY, seed=0)
    return root, DEMO_CATEGORY


def load_dataset(root: Path, category: str) -> data.Dataset:
    """MVTec layout when root/category exists; else root as a plain folder of good images.

    A root that holds MVTec-layout categories never falls back to the plain-folder mode: that
    would train on its test images and masks. A missing category there is a named error.
    """
    if (root / category).is_dir():
        return data.scan_mvtec(root, category)
    found = data.mvtec_categories(root)
    if found:
        lower = {c.lower(): c for c in found}
        close = [lower[m] for m in difflib.get_close_matches(category.lower(), list(lower), n=1, cutoff=0.6)]
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise data.DataError(
            root / category, f"category not found; {root} holds the MVTec categories {', '.join(found)}{hint}"
        )
    if root.is_dir() and any(p.suffix.lower() in data.IMAGE_EXTENSIONS for p in root.rglob("*") if p.is_file()):
        return data.scan_folder(root)
    raise data.DataError(
        root / category,
        "category folder not found (and no images under the root to use as a plain folder of good images)",
    )


@dataclass
class Arrays:
    """Decoded images of every split the run needs, placed in the dataset's frame."""

    fit: np.ndarray
    holdout: np.ndarray
    test: np.ndarray
    test_masks: np.ndarray
    fit_samples: list[data.Sample]
    holdout_samples: list[data.Sample]
    test_samples: list[data.Sample]
    test_gate: np.ndarray | None = None  # True: the promotion gate's part of the test split
    holdout_valid: np.ndarray | None = None  # (N,H,W) each image's own pixels; None = no padding (model.data.frame)
    test_valid: np.ndarray | None = None
    preprocessing: Preprocessing | None = None  # how every array above was prepared; the detector saves it

    @property
    def frame(self) -> Frame:
        return (int(self.fit.shape[1]), int(self.fit.shape[2]))

    def test_part(self, gate: bool) -> tuple["Arrays", np.ndarray]:
        """(these arrays with only the gate or only the reported part of the test split, its index)."""
        in_gate = self.test_gate if self.test_gate is not None else np.zeros(len(self.test_samples), bool)
        idx = np.flatnonzero(in_gate == gate)
        part = Arrays(
            self.fit,
            self.holdout,
            self.test[idx],
            self.test_masks[idx],
            self.fit_samples,
            self.holdout_samples,
            [self.test_samples[i] for i in idx],
            in_gate[idx],
            self.holdout_valid,
            None if self.test_valid is None else self.test_valid[idx],
            self.preprocessing,
        )
        return part, idx


def screen_training_set(config: TrainConfig, arrays: Arrays, log: Callable[[str], None] = print) -> Screen:
    """Cross-fitted screen of every train/good image (fit and held-out part) for likely defects."""
    prep = arrays.preprocessing
    if prep is None:
        raise ValueError(
            "these arrays do not say how they were prepared (Arrays.preprocessing): load them with load_arrays"
        )
    samples = [*arrays.fit_samples, *arrays.holdout_samples]
    valid = prep.valid(samples)
    build, cfg = builder(arrays), config.screen_config()
    paths = [os.path.abspath(s.path) for s in samples]
    folder = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    names = [data.display_path(os.path.relpath(p, folder)) for p in paths]  # short names; the folder is reported once
    torch.manual_seed(config.seed)
    found = cross_fit(
        np.concatenate([arrays.fit, arrays.holdout]),
        names,
        lambda: build(cfg),
        valid=valid,
        folds=config.screen_folds,
        seed=config.seed,
        log=log,
    )
    return dataclasses.replace(found, folder=data.display_path(folder))


def without_suspects(arrays: Arrays, found: Screen) -> tuple[Arrays, Screen]:
    """These arrays with the screen's suspects left out of the fit and held-out parts (the frame
    stays the one read from all training images), and the screen saying what was left out."""
    n_fit = len(arrays.fit)
    out = set(found.suspects)
    keep_fit = np.array([i for i in range(n_fit) if i not in out], int)
    keep_hold = np.array([i for i in range(len(arrays.holdout)) if i + n_fit not in out], int)
    if len(keep_fit) == 0:
        raise ValueError("the training-set screen flagged every fit image; nothing left to train on")
    part = dataclasses.replace(
        arrays,
        fit=arrays.fit[keep_fit],
        holdout=arrays.holdout[keep_hold],
        fit_samples=[arrays.fit_samples[i] for i in keep_fit],
        holdout_samples=[arrays.holdout_samples[i] for i in keep_hold],
        holdout_valid=None if arrays.holdout_valid is None else arrays.holdout_valid[keep_hold],
    )
    return part, dataclasses.replace(found, excluded=[found.names[i] for i in found.suspects])


def frames_differ(arrays: Arrays) -> bool:
    """Whether squashing to a square would prepare these training images differently from their
    aspect-keeping frame (a frame that is not square, or images padded in it)."""
    if arrays.fit.shape[1] != arrays.fit.shape[2]:
        return True
    prep = arrays.preprocessing
    valid = [] if prep is None else [v for v in (prep.valid(arrays.fit_samples), arrays.holdout_valid) if v is not None]
    return any(not v.all() for v in valid)


def choose_frame(
    config: TrainConfig,
    ds: data.Dataset,
    arrays: Arrays,
    chosen: Selection,
    screened: Screen | None,
    log: Callable[[str], None] = print,
) -> tuple[Selection, Arrays]:
    """auto's frame policy (model.evaluation.selection.frame_alternative): for training images of other shapes
    than one square, the chosen candidate is also tried on squashed images; returns the selection
    and the arrays the run goes on with (the square ones when that frame won)."""
    if not (config.keep_aspect and frames_differ(arrays)):
        return chosen, arrays
    spent = sum(r.get("seconds", 0.0) for r in chosen.rows)
    square_cfg = config.model_copy(update={"keep_aspect": False})
    square = load_arrays(ds, square_cfg, log=log)
    if screened is not None and screened.excluded:  # the same images left out as in the kept frame
        square, _ = without_suspects(square, screened)
    result = frame_alternative(
        chosen, square.fit, square.holdout, builder(square), config.auto_budget_seconds - spent, log=log
    )
    return (result, square) if not result.config.keep_aspect else (result, arrays)


def choose_detector(
    config: TrainConfig,
    ds: data.Dataset,
    arrays: Arrays,
    screened: Screen | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Selection, Arrays]:
    """--detector auto: the candidates fitted and scored on synthetic defects in held-out normals
    (never the test split), then the frame policy; the choice and the arrays the run goes on with.
    The training flow (tasks.training) and benchmarks/detectors.py both choose through this."""
    choice = select(
        config, arrays.fit, arrays.holdout, arrays.holdout_valid, builder(arrays), config.auto_budget_seconds, log=log
    )
    return choose_frame(config, ds, arrays, choice, screened, log=log)


def take(result: ScoreResult, idx: np.ndarray) -> ScoreResult:
    """The rows `idx` of a scored batch."""
    return ScoreResult(
        result.maps[idx],
        {k: v[idx] for k, v in result.scores.items()},
        None if result.valid is None else result.valid[idx],
    )


def dataset_preprocessing(samples: list[data.Sample], config: TrainConfig) -> Preprocessing:
    """The preprocessing for this training set (model.data.frame): read from image headers only."""
    return Preprocessing.for_training(samples, config.image_size, config.keep_aspect)


def load_arrays(ds: data.Dataset, config: TrainConfig, log: Callable[[str], None] = print) -> Arrays:
    """Every split decoded once, all through one Preprocessing, the one the detector will save."""
    cache = data.ImageCache(config.cache_dir)
    fit_s, hold_s = data.split_train(ds.train, config.holdout_fraction, config.seed)
    t0 = time.perf_counter()
    prep = dataset_preprocessing(fit_s, config)
    fit, holdout, test = prep.images(fit_s, cache), prep.images(hold_s, cache), prep.images(ds.test, cache)
    masks = prep.masks(ds.test, cache)
    gate = data.partition_test(ds.test, config.gate_fraction)
    hold_valid, test_valid = prep.valid(hold_s), prep.valid(ds.test)
    padded = sum(int((~v).any(axis=(1, 2)).sum()) for v in (hold_valid, test_valid, prep.valid(fit_s)) if v is not None)
    log(
        f"loaded {len(fit)} fit, {len(holdout)} held-out normal, {len(test)} test images "
        f"({int(gate.sum())} of them for the "
        f"promotion gate only) in a {prep.describe()} frame"
        + (f", {padded} padded" if padded else "")
        + f" in {time.perf_counter() - t0:.1f}s"
    )
    return Arrays(fit, holdout, test, masks, fit_s, hold_s, list(ds.test), gate, hold_valid, test_valid, prep)


def builder(arrays: Arrays) -> Callable[[TrainConfig], Detector]:
    """build_detector for detectors fitted on these arrays: they save the arrays' preprocessing."""
    if arrays.preprocessing is None:
        raise ValueError(
            "these arrays do not say how they were prepared (Arrays.preprocessing): load them with load_arrays"
        )
    return lambda cfg: build_detector(cfg, arrays.preprocessing)


def fit_detector(
    config: TrainConfig, arrays: Arrays, progress: Callable[[dict[str, Any]], None] | None = None
) -> tuple[Detector, list[dict[str, Any]], float]:
    """Seeded fit on good images only; returns (detector, per-epoch history, seconds)."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    det = builder(arrays)(config)
    t0 = time.perf_counter()
    kwargs = {"progress": progress} if progress is not None else {}
    history = det.fit(arrays.fit, arrays.holdout, **kwargs)
    return det, history, time.perf_counter() - t0


def calibrate_detector(
    det: Detector, config: TrainConfig, holdout_result: ScoreResult, synthetic_scores: np.ndarray | None = None
) -> dict[str, Any]:
    """Image and pixel thresholds from held-out normal images only (and, for the recall operating
    point, synthetic defects made from them); stored on the detector.

    Beside the threshold: the held-out FPR with its Wilson interval (what the count can say), the
    tail model's FPR at the threshold, and the share of synthetic defects above it, an estimate
    of recall that real defects (other kinds, other contrasts) will not match exactly."""
    normal = holdout_result.scores[config.score_method]
    method = config.threshold_method
    if method in ("tail", "recall") and len(normal) < calibration.TAIL_MIN_NORMALS:
        method = "percentile"  # too few held-out normals to fit a tail or make defects from: the order statistic
    if method == "recall" and (synthetic_scores is None or len(synthetic_scores) == 0):
        raise ValueError("threshold_method 'recall' needs the synthetic-defect scores of the held-out normals")
    threshold = calibration.calibrate(
        method,
        normal,
        percentile=config.threshold_percentile,
        target_fpr=config.target_fpr,
        target_recall=config.target_recall,
        defect_scores=synthetic_scores,
    )
    pixel_threshold = calibration.pixel_threshold(
        holdout_result.maps, config.pixel_threshold_percentile, holdout_result.valid
    )
    det.calibrate(threshold=threshold, pixel_threshold=pixel_threshold)
    point = config.operating_point(method)
    out = {
        "threshold": det.threshold,
        "pixel_threshold": det.pixel_threshold,
        "threshold_method_used": method,
        **point,
        **calibration.fpr_estimate(normal, det.threshold),
    }
    if len(normal) >= calibration.TAIL_MIN_NORMALS:
        out["tail_fpr_estimate"] = calibration.tail_exceedance(normal, det.threshold)
    if synthetic_scores is not None and len(synthetic_scores):
        out["syn_recall_estimate"] = float(np.mean(np.asarray(synthetic_scores) > det.threshold))
    return out


def drift_reference(det: Detector, arrays: Arrays, holdout_result: ScoreResult) -> dict[str, Any]:
    """What inspection batches are compared with (model.operations.drift): the held-out normal scores the
    threshold was set on and the training images' brightness, sizes and colour modes."""
    from anomaflow.model.operations import drift

    assert det.threshold is not None
    samples = [*arrays.fit_samples, *arrays.holdout_samples]
    reference = drift.reference(
        holdout_result.scores[det.score_method],
        [drift.image_stats(im) for im in arrays.fit],
        data.image_sizes(samples),
        data.image_modes(samples),
        det.threshold,
    )
    det.calibrate(reference=reference)
    return reference


def evaluate_split(det: Detector, arrays: Arrays, test_result: ScoreResult, score_method: str) -> Evaluation:
    assert det.threshold is not None
    return evaluate(
        labels=np.array([s.label for s in arrays.test_samples]),
        scores=test_result.scores,
        score_method=score_method,
        threshold=det.threshold,
        masks=arrays.test_masks,
        maps=test_result.maps,
        defects=[s.defect for s in arrays.test_samples],
        pixel_threshold=det.pixel_threshold,
        paths=[str(s.path) for s in arrays.test_samples],
        pixel_truth=data.pixel_truth(arrays.test_samples),
        valid=test_result.valid,
    )


def evaluate_detector(
    det: Detector, ds: data.Dataset, gate_fraction: float, cache_dir: str | None = None
) -> Evaluation:
    """Score a (loaded) detector on the promotion gate's part of a dataset's test split (the
    partition `gate_fraction` gives) with its own size and thresholds."""
    samples = [s for s, g in zip(ds.test, data.partition_test(ds.test, gate_fraction)) if g]
    if not samples:
        raise ValueError(
            f"dataset {ds.category} has no gate part of the test split to evaluate on "
            f"(gate_fraction={gate_fraction}, {len(ds.test)} test images)"
        )
    cache, prep = data.ImageCache(cache_dir), det.preprocessing
    images, masks, valid = prep.images(samples, cache), prep.masks(samples, cache), prep.valid(samples)
    arrays = Arrays(images[:0], images[:0], images, masks, [], [], samples, test_valid=valid, preprocessing=prep)
    return evaluate_split(det, arrays, det.score(images, valid), det.score_method)


GATE_METRICS = (
    "image_auroc",
    "image_auroc_mean",
    "image_auroc_max",
    "image_auroc_smoothed_max",
    "pixel_auroc",
    "pixel_aupro",
    "pixel_iou",
)


def gate_metrics(ev: Evaluation) -> dict[str, float]:
    """The metrics the promotion gate may compare, under gate_* names (kept apart from the reported ones)."""
    return {f"gate_{k}": ev.metrics[k] for k in GATE_METRICS if k in ev.metrics}


def evaluation_split(arrays: Arrays, gate_fraction: float) -> dict[str, Any]:
    """Which test images were reported and which only gated promotion (logged with the run)."""
    report, _ = arrays.test_part(gate=False)
    gate, _ = arrays.test_part(gate=True)
    return {
        "method": "seeded stratified partition of the test split",
        "gate_fraction": gate_fraction,
        "seed": data.GATE_SEED,
        "report": [data.display_path(s.path) for s in report.test_samples],
        "gate": [data.display_path(s.path) for s in gate.test_samples],
    }


def write_json(obj: Any, path: Path) -> Path:
    """Atomic JSON write: a crash never leaves half a metrics file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(obj, path, sort_keys=True, default=float)


def write_figures(
    out: Path,
    arrays: Arrays,
    test_result: ScoreResult,
    ev: Evaluation,
    det: Detector,
    score_method: str,
    max_heatmaps: int = 16,
) -> dict[str, Path]:
    """ROC curves, score histogram with threshold, heat-map overlay grid; returns name -> path."""
    figs: dict[str, Path] = {}
    if ev.roc_curves:
        figs["roc"] = plots.save_figure(plots.plot_roc(ev.roc_curves), out / "roc.png")
    labels = np.array([s.label for s in arrays.test_samples])
    if len(labels):
        figs["score_histogram"] = plots.save_figure(
            plots.plot_score_histogram(
                test_result.scores[score_method], labels, det.threshold, title=f"Image scores ({score_method})"
            ),
            out / "score_histogram.png",
        )
        idx = _heatmap_selection(arrays.test_samples, max_heatmaps)
        figs["heatmaps"] = plots.save_figure(
            plots.plot_heatmap_grid(
                arrays.test[idx],
                test_result.maps[idx],
                arrays.test_masks[idx],
                titles=[f"{arrays.test_samples[i].defect}/{arrays.test_samples[i].path.name}" for i in idx],
                vmax=det.pixel_threshold * 2 if det.pixel_threshold else None,
            ),
            out / "heatmaps.png",
        )
    return figs


def sample_groups(ds: data.Dataset, size: int, per_group: int = 4) -> dict[str, list[np.ndarray]]:
    """A few images per split/defect type, for the dataset sample grid."""
    groups: dict[str, list[data.Sample]] = {}
    for s in [*ds.train, *ds.test]:
        groups.setdefault(f"{s.split}/{s.defect}", []).append(s)
    return {name: [data.load_image(s.path, size) for s in items[:per_group]] for name, items in groups.items()}


def _heatmap_selection(samples: list[data.Sample], k: int) -> np.ndarray:
    """Up to k test images spread over defect types (good included), deterministic."""
    by_type: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_type.setdefault(s.defect, []).append(i)
    picked: list[int] = []
    while len(picked) < min(k, len(samples)):
        for idxs in by_type.values():
            if idxs and len(picked) < k:
                picked.append(idxs.pop(0))
    return np.array(sorted(picked), dtype=int)
