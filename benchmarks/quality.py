"""Autoencoder quality: configurations x seeds on a data root, selection without test labels.

    .venv/bin/python benchmarks/quality.py --configs default augment --seeds 0 1 2 \
        [--data ../shared/data/mvtec_ad --category bottle] [--json out/quality.json]

For every run: fit on train/good (fit part), calibrate on the held-out normal part, then
(a) SELECTION metrics on held-out normals + synthetic anomalies made from them
(model/synthetic.py) and (b) REPORTED metrics on the test split. Choose configurations by (a);
(b) is only reported. Prints a markdown table of means over seeds and writes all runs as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import mean

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model import data, metrics, pipeline  # noqa: E402
from model.config import AutoencoderConfig, TrainConfig  # noqa: E402
from model.synthetic import synthetic_set  # noqa: E402

# Named configurations: overrides of AutoencoderConfig (and TrainConfig for score_method).
CONFIGS: dict[str, dict] = {
    "seed-mse": {"ae": {"loss": "mse", "map_kind": "l2", "map_sigma": 0.0}, "score_method": "max"},
    "default": {"ae": {}},
    "augment": {"ae": {"augment": True, "epochs": 40}},
    "augment-60": {"ae": {"augment": True, "epochs": 60}},
    "ssim-map": {"ae": {"map_kind": "ssim"}},
    "wide-latent": {"ae": {"latent_channels": 64}},
}


def make_config(name: str, seed: int, root: Path, category: str, cache_dir: str | None, threads: int | None, epochs: int | None = None) -> TrainConfig:
    spec = CONFIGS[name]
    ae = AutoencoderConfig(**{**spec.get("ae", {}), **({"epochs": epochs} if epochs else {})})
    return TrainConfig(data_root=str(root), category=category, autoencoder=ae, seed=seed, cache_dir=cache_dir,
                       num_threads=threads, score_method=spec.get("score_method", TrainConfig().score_method))


def evaluate_variant(det, cfg: TrainConfig, arrays: pipeline.Arrays, syn_imgs: np.ndarray, syn_masks: np.ndarray) -> dict:
    """Calibrate on held-out normals, then (a) selection metrics and (b) test metrics."""
    holdout = det.score(arrays.holdout)
    pipeline.calibrate_detector(det, cfg, holdout)
    # (a) selection: held-out normals vs synthetic defects made from them.
    syn = det.score(syn_imgs)
    labels = np.r_[np.zeros(len(arrays.holdout)), np.ones(len(syn_imgs))]
    scores = np.r_[holdout.scores[cfg.score_method], syn.scores[cfg.score_method]]
    normal_masks = np.zeros((len(arrays.holdout),) + syn_masks.shape[1:], bool)
    sel = {"syn_image_auroc": metrics.image_auroc(labels, scores),
           "syn_pixel_auroc": metrics.pixel_auroc(syn_masks, syn.maps),
           "syn_pixel_aupro": metrics.pixel_aupro(np.concatenate([normal_masks, syn_masks]), np.concatenate([holdout.maps, syn.maps]))}
    # (b) report: the test split.
    t0 = time.perf_counter()
    test = det.score(arrays.test)
    ips = len(arrays.test) / (time.perf_counter() - t0)
    ev = pipeline.evaluate_split(det, arrays, test, cfg.score_method)
    return {**sel, **ev.metrics, "images_per_second": ips}


def run_one(cfg: TrainConfig, ds: data.Dataset, map_sigmas: list[float], save_dir: Path | None) -> dict[float, dict]:
    """Train once; evaluate each anomaly-map smoothing (a scoring choice: no retraining)."""
    arrays = pipeline.load_arrays(ds, cfg, log=lambda m: None)
    det, history, train_s = pipeline.fit_detector(cfg, arrays, progress=lambda r: None)
    if save_dir is not None:
        det.save(save_dir)
    syn_imgs, syn_masks, _ = synthetic_set(arrays.holdout, seed=cfg.seed)
    out = {}
    for sigma in map_sigmas or [cfg.autoencoder.map_sigma]:
        det.config = det.config.model_copy(update={"map_sigma": sigma})
        out[sigma] = {**evaluate_variant(det, cfg, arrays, syn_imgs, syn_masks), "train_seconds": train_s,
                      "epochs": cfg.autoencoder.epochs, "map_sigma": sigma}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mvtec_ad"))
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--configs", nargs="+", default=["default"], choices=sorted(CONFIGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--cache-dir", default=str(REPO / ".anomaflow" / "cache"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="override every configuration's epochs (smoke runs)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--map-sigmas", nargs="*", type=float, default=[],
                    help="also evaluate each trained model with these anomaly-map smoothings (scoring only, no retraining)")
    ap.add_argument("--save-models", type=Path, default=None, help="save each trained detector under this folder")
    args = ap.parse_args(argv)

    pipeline.configure_threads(args.threads)
    ds = data.scan_mvtec(args.data, args.category)
    results: dict[str, list[dict]] = {}
    for name in args.configs:
        for seed in args.seeds:
            t0 = time.perf_counter()
            cfg = make_config(name, seed, Path(args.data), args.category, args.cache_dir, args.threads, args.epochs)
            save = args.save_models / f"{name}-seed{seed}" if args.save_models else None
            for sigma, r in run_one(cfg, ds, args.map_sigmas, save).items():
                label = name if sigma == cfg.autoencoder.map_sigma else f"{name}@map_sigma={sigma:g}"
                results.setdefault(label, []).append({"seed": seed, **r})
                print(f"{label} seed {seed}: syn_image_auroc={r['syn_image_auroc']:.4f} syn_pixel_auroc={r['syn_pixel_auroc']:.4f} "
                      f"syn_pixel_aupro={r['syn_pixel_aupro']:.4f} | image_auroc={r['image_auroc']:.4f} "
                      f"pixel_auroc={r['pixel_auroc']:.4f} pixel_aupro={r['pixel_aupro']:.4f} pixel_iou={r['pixel_iou']:.4f} "
                      f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=2, default=float))

    defects = sorted(k for k in next(iter(results.values()))[0] if k.startswith("pixel_iou_") and k != "pixel_iou_oracle")
    cols = ["syn_image_auroc", "syn_pixel_auroc", "syn_pixel_aupro", "image_auroc", "image_auroc_mean", "image_auroc_max", "pixel_auroc",
            "pixel_aupro", "pixel_iou", *defects, "train_seconds", "images_per_second"]
    print(f"\nMeans over seeds {args.seeds} on {args.category} (syn_* = selection on held-out normals + synthetic defects; the rest = test split, report only)\n")
    print("| config | " + " | ".join(cols) + " |")
    print("| --- " * (len(cols) + 1) + "|")
    for name, runs in results.items():
        vals = [mean(float(r[c]) for r in runs) for c in cols]
        print(f"| {name} | " + " | ".join(f"{v:.1f}" if c in ("train_seconds", "images_per_second") else f"{v:.3f}" for c, v in zip(cols, vals)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
