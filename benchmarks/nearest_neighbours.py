"""PatchCore's two heavy steps, our torch code against faiss-cpu: the memory bank (greedy
k-center coreset vs faiss k-means centroids) and the nearest-neighbour search (our blocked
matrix multiply vs faiss IndexFlatL2 exact and IndexHNSWFlat approximate).

    .venv/bin/python benchmarks/nearest_neighbours.py [--data ../shared/data/mvtec_ad --category bottle] \
        [--train-limit 800] [--seeds 0] [--threads 2] [--json out/nn.json]

For each seed: the training flow's split, PatchCore's default features, then per bank method the
selection time, and the synthetic-defect image and pixel AUROC (held-out normals + synthetic
defects made from them: the only numbers to choose by). Per search method on the default bank:
seconds for all held-out + synthetic patches, the largest relative error of the patch distances
against the exact search, and the synthetic image AUROC. Both libraries get the same threads.
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
from anomaflow.model.data.synthetic import synthetic_set
from anomaflow.model.detectors.patchcore import greedy_coreset, nearest_distances
from anomaflow.model.detectors.scoring import gaussian_blur, image_scores
from anomaflow.model.evaluation import metrics
from benchmarks import common


def maps_from(dist: np.ndarray, shape: tuple[int, int, int], det) -> np.ndarray:
    """Patch distances (N*h*w,) -> anomaly maps as PatchCoreDetector.anomaly_maps makes them."""
    s = torch.from_numpy(np.ascontiguousarray(dist, dtype=np.float32)).reshape(shape).unsqueeze(1)
    m = torch.nn.functional.interpolate(s, size=det.frame, mode="bilinear", align_corners=False)
    return gaussian_blur(m, det.config.map_sigma).squeeze(1).numpy()


def run_seed(cfg: TrainConfig, ds, train_limit: int | None, kmeans: bool = True) -> list[dict]:
    import faiss

    arrays, fit, det, patches, feature_s = common.fit_patches(
        cfg, ds, train_limit, log=lambda m: print(m, file=sys.stderr)
    )
    n_bank = det.bank_size_for(patches.shape[0])
    syn_imgs, syn_masks, _ = synthetic_set(arrays.holdout, seed=cfg.seed)
    queries_img = np.concatenate([arrays.holdout, syn_imgs])
    q = det.features(queries_img)
    shape = q.shape[:3]
    q = q.reshape(-1, q.shape[-1]).contiguous()
    labels = np.r_[np.zeros(len(arrays.holdout)), np.ones(len(syn_imgs))]
    syn_part = slice(len(arrays.holdout), None)
    rows: list[dict] = []

    def quality(dist: np.ndarray) -> tuple[float, float]:
        maps = maps_from(dist, shape, det)
        scores = image_scores(maps, det.score_sigma)[cfg.score_method]
        return metrics.image_auroc(labels, scores), metrics.pixel_auroc(syn_masks, maps[syn_part])

    banks: dict[str, tuple[torch.Tensor, float]] = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        idx = greedy_coreset(patches, n_bank, projection_dim=cfg.patchcore.projection_dim, seed=cfg.seed)
    banks["greedy coreset (ours)"] = (patches[idx].clone(), time.perf_counter() - t0)
    if kmeans:
        x = patches.numpy().astype(np.float32)
        t0 = time.perf_counter()
        km = faiss.Kmeans(x.shape[1], n_bank, niter=20, seed=cfg.seed, verbose=False, max_points_per_centroid=64)
        km.train(x)
        banks["faiss k-means, 20 iterations"] = (torch.from_numpy(km.centroids.copy()), time.perf_counter() - t0)
    for name, (bank, seconds) in banks.items():
        dist = nearest_distances(q, bank).numpy()
        img, pix = quality(dist)
        rows.append(
            {
                "step": "bank",
                "method": name,
                "seed": cfg.seed,
                "seconds": seconds,
                "fit_seconds": feature_s + seconds,
                "fit_images": len(fit),
                "bank": int(bank.shape[0]),
                "patches": int(patches.shape[0]),
                "syn_image_auroc": img,
                "syn_pixel_auroc": pix,
                "max_rel_error": 0.0,
            }
        )

    bank = banks["greedy coreset (ours)"][0].contiguous()
    t0 = time.perf_counter()
    exact = nearest_distances(q, bank).numpy()
    searches = {"blocked matmul (ours)": (exact, time.perf_counter() - t0)}
    b, qn = bank.numpy().astype(np.float32), q.numpy().astype(np.float32)
    t0 = time.perf_counter()
    flat = faiss.IndexFlatL2(b.shape[1])
    flat.add(b)
    d, _ = flat.search(qn, 1)
    searches["faiss IndexFlatL2"] = (np.sqrt(np.maximum(d[:, 0], 0)), time.perf_counter() - t0)
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(b.shape[1], 32)
    hnsw.hnsw.efSearch = 64
    hnsw.add(b)
    d, _ = hnsw.search(qn, 1)
    searches["faiss HNSW (M 32, efSearch 64)"] = (np.sqrt(np.maximum(d[:, 0], 0)), time.perf_counter() - t0)
    for name, (dist, seconds) in searches.items():
        img, pix = quality(dist)
        rel = float(np.max(np.abs(dist - exact) / np.maximum(exact, 1e-6)))
        rows.append(
            {
                "step": "search",
                "method": name,
                "seed": cfg.seed,
                "seconds": seconds,
                "bank": int(bank.shape[0]),
                "patches": int(q.shape[0]),
                "syn_image_auroc": img,
                "syn_pixel_auroc": pix,
                "max_rel_error": rel,
            }
        )
    for r in rows:
        common.log_row(r)
    return rows


COUNTS = ("fit_images", "bank", "patches")


def counted(col: str) -> str:
    """How report prints a column's mean: counts whole, seconds to 0.1, the rest to 4 decimals."""
    return ".0f" if col in COUNTS else ".1f" if col.endswith("seconds") else ".4f"


def report(runs: list[dict], title: str) -> str:
    cols = [*COUNTS, "seconds", "fit_seconds", "syn_image_auroc", "syn_pixel_auroc", "max_rel_error"]
    return common.emit([title, "", *common.mean_table(runs, ["step", "method"], cols, counted)])


def main(argv: list[str] | None = None) -> int:
    ap = common.seeded_parser(__doc__)
    ap.add_argument("--train-limit", type=int, default=None, help="use at most this many fit images")
    ap.add_argument("--no-kmeans", action="store_true", help="skip the k-means bank (minutes on 800 images)")
    args = ap.parse_args(argv)
    if common.replay(args, report):
        return 0
    threads = pipeline.configure_threads(args.threads)
    try:
        import faiss
    except ImportError:
        print("faiss-cpu is not installed (a dependency of anomaflow): make install", file=sys.stderr)
        return 2
    faiss.omp_set_num_threads(threads)
    ds = pipeline.load_dataset(Path(args.data), args.category)
    runs = []
    for cfg in common.patchcore_seed_configs(args, threads):
        runs += run_seed(cfg, ds, args.train_limit, kmeans=not args.no_kmeans)
    title = (
        f"PatchCore bank selection and nearest-neighbour search on {args.category}, "
        f"ours vs faiss-cpu {faiss.__version__}, "
        f"{threads} threads, seeds {args.seeds}: syn_* = held-out normals + synthetic defects"
    )
    report(runs, title)
    common.store_runs(args.json, title, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
