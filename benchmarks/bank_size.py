"""PatchCore memory-bank size: quality on synthetic defects, fit and scoring time, per bank size.

    .venv/bin/python benchmarks/bank_size.py [--data ../shared/data/mvtec_ad --category bottle] \
        [--train-limit 31] [--sizes 1% 1024 2048 4096 8192 16384] [--seeds 0 1 2] [--threads 2] [--json out/bank.json]

For each seed: split train/good as the training flow does (fit part, held-out normals), keep at
most --train-limit fit images (to stand in for a small product), extract the patch features
once and run the greedy coreset once at the largest size: greedy k-center picks are nested, so
the first k picks are the coreset of size k, and every size is scored from one selection.
Selection metrics (the only ones to choose by): held-out normals plus synthetic defects made
from them (model/data/synthetic.py), image AUROC of the decision score and pixel AUROC. The test
split is scored too and reported only. Times: coreset selection at each size (its own run),
and model-only scoring images/s on the held-out images.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anomaflow.model import pipeline
from anomaflow.model.config import TrainConfig
from anomaflow.model.data import datasets as data
from anomaflow.model.data.synthetic import synthetic_set
from anomaflow.model.detectors.patchcore import greedy_coreset
from anomaflow.model.evaluation import metrics
from benchmarks.common import (
    emit,
    fit_patches,
    log_row,
    mean_table,
    patchcore_seed_configs,
    replay,
    seeded_parser,
    store_runs,
)


def parse_size(spec: str, n_patches: int) -> int:
    """'1%' -> share of the training patches; '4096' -> that many (at most all patches)."""
    if spec.endswith("%"):
        return max(1, min(n_patches, int(np.ceil(float(spec[:-1]) / 100 * n_patches))))
    return min(n_patches, int(spec))


def run_seed(cfg: TrainConfig, ds: data.Dataset, sizes: list[str], train_limit: int | None) -> list[dict]:
    arrays, fit, det, patches, feature_s = fit_patches(cfg, ds, train_limit)
    wanted = {s: parse_size(s, patches.shape[0]) for s in sizes}
    with torch.inference_mode():
        order = greedy_coreset(
            patches, max(wanted.values()), projection_dim=cfg.patchcore.projection_dim, seed=cfg.seed
        )
    syn_imgs, syn_masks, _ = synthetic_set(arrays.holdout, seed=cfg.seed)
    labels = np.r_[np.zeros(len(arrays.holdout)), np.ones(len(syn_imgs))]
    test_labels = np.array([s.label for s in arrays.test_samples])
    rows = []
    for spec, k in wanted.items():
        with torch.inference_mode():
            t1 = time.perf_counter()
            greedy_coreset(patches, k, projection_dim=cfg.patchcore.projection_dim, seed=cfg.seed)
            coreset_s = time.perf_counter() - t1
        det._set_bank(patches[order[:k]].clone())
        t2 = time.perf_counter()
        hold = det.score(arrays.holdout)
        ips = len(arrays.holdout) / (time.perf_counter() - t2)
        syn = det.score(syn_imgs)
        test = det.score(arrays.test)
        m = cfg.score_method
        row = {
            "size": spec,
            "bank": k,
            "patches": int(patches.shape[0]),
            "fit_images": len(fit),
            "seed": cfg.seed,
            "syn_image_auroc": metrics.image_auroc(labels, np.r_[hold.scores[m], syn.scores[m]]),
            "syn_pixel_auroc": metrics.pixel_auroc(syn_masks, syn.maps),
            "test_image_auroc": metrics.image_auroc(test_labels, test.scores[m])
            if len(set(test_labels)) == 2
            else float("nan"),
            "test_pixel_auroc": metrics.pixel_auroc(arrays.test_masks, test.maps)
            if arrays.test_masks.any()
            else float("nan"),
            "fit_seconds": feature_s + coreset_s,
            "coreset_seconds": coreset_s,
            "images_per_second": ips,
        }
        rows.append(row)
        log_row(row)
    return rows


TIMES = ("fit_seconds", "coreset_seconds", "images_per_second")  # printed to 0.1, as is the bank size


def report(runs: list[dict], title: str) -> str:
    cols = ["bank", "syn_image_auroc", "syn_pixel_auroc", "test_image_auroc", "test_pixel_auroc", *TIMES]
    return emit([title, "", *mean_table(runs, ["size"], cols, lambda c: ".1f" if c == "bank" or c in TIMES else ".4f")])


def main(argv: list[str] | None = None) -> int:
    ap = seeded_parser(__doc__)
    ap.add_argument("--train-limit", type=int, default=None, help="use at most this many fit images (a small product)")
    ap.add_argument("--sizes", nargs="+", default=["1%", "1024", "2048", "4096", "8192", "16384"])
    args = ap.parse_args(argv)
    if replay(args, report):
        return 0
    pipeline.configure_threads(args.threads)
    ds = pipeline.load_dataset(Path(args.data), args.category)
    runs = []
    for cfg in patchcore_seed_configs(args, args.threads):
        runs += run_seed(cfg, ds, args.sizes, args.train_limit)
    limit = f", at most {args.train_limit} fit images" if args.train_limit else ""
    title = (
        f"PatchCore bank size on {args.category}{limit}: means over seeds {args.seeds}. syn_* = held-out normals + "
        "synthetic defects (choose by these); test_* reported only; images/s model only"
    )
    report(runs, title)
    store_runs(args.json, title, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
