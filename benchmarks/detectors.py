"""Detector families side by side: quality, fit time, throughput, memory bank, peak memory.

    .venv/bin/python benchmarks/detectors.py [--data ROOT --category bottle] \
        [--families autoencoder,patchcore] [--epochs 30] [--threads 2] [--json out/detectors.json]

Each family runs in its own subprocess (so its peak memory is its own) through the project's
own steps (anomaflow.model.pipeline): load + validate data, fit on train/good (fit part), calibrate image
and pixel thresholds on the held-out normal part, score the test split, evaluate. No test label
is used by any step before the evaluation.

Throughput counts what inspection pays per image: PNG decode + resize from disk
(`anomaflow.model.data.datasets.load_image`, no cache) and `anomaly_maps` in batches, over all test files; best
of `--speed-repeats` passes, after one warm-up batch (the machine is shared; the best pass is
the least disturbed one). Model-only throughput (already decoded arrays) is shown for reference.
Prints a markdown table and writes all numbers as JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAMILIES = ("autoencoder", "patchcore", "padim", "fusion", "auto")


def run_family(family: str, args: argparse.Namespace) -> dict[str, Any]:
    """One family end to end in this process; returns a JSON-able record."""
    import torch

    from anomaflow.model import pipeline
    from anomaflow.model.config import AutoencoderConfig, TrainConfig
    from anomaflow.model.data import datasets as data

    threads = pipeline.configure_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    overrides: dict[str, Any] = {}
    if args.epochs is not None and family == "autoencoder":
        overrides["autoencoder"] = AutoencoderConfig(epochs=args.epochs)
    cfg = TrainConfig(
        data_root=str(args.data),
        category=args.category,
        detector=family,
        seed=args.seed,
        cache_dir=args.cache_dir,
        num_threads=threads,
        keep_aspect=args.keep_aspect,
        **overrides,
    )
    root, category = pipeline.resolve_data_root(cfg)
    ds = pipeline.load_dataset(root, category)
    data.validate_dataset(ds, decode=False).raise_for_problems()
    arrays = pipeline.load_arrays(ds, cfg, log=lambda m: print(f"[{family}] {m}", flush=True))

    def progress(rec: dict[str, Any]) -> None:
        if family == "autoencoder" and rec.get("epoch") and rec["epoch"] % 10 and rec["epoch"] != rec.get("epochs"):
            return
        print(
            f"[{family}] " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()),
            flush=True,
        )

    selection = None
    if family == "auto":  # the training flow's label-free choice; its time is what the run pays
        t0 = time.perf_counter()
        selection, arrays = pipeline.choose_detector(cfg, ds, arrays, log=lambda m: print(f"[auto] {m}", flush=True))
        det, history, fit_s = selection.detector, selection.history, time.perf_counter() - t0
        cfg = selection.config
    else:
        det, history, fit_s = pipeline.fit_detector(cfg, arrays, progress=progress)
    holdout = det.score(arrays.holdout, arrays.holdout_valid)
    thresholds = pipeline.calibrate_detector(det, cfg, holdout)
    test = det.score(arrays.test, arrays.test_valid)
    ev = pipeline.evaluate_split(det, arrays, test, cfg.score_method)

    # Throughput including PNG decode + resize from disk, no cache.
    paths = [s.path for s in ds.test]
    bs = args.batch_size
    prep = det.preprocessing

    def load(p: Path) -> np.ndarray:
        return prep.image(p).array

    det.anomaly_maps(np.stack([load(p) for p in paths[:bs]]))  # warm-up
    passes, loads, model_only = [], [], []
    for _ in range(args.speed_repeats):
        t0 = time.perf_counter()
        for i in range(0, len(paths), bs):
            det.anomaly_maps(np.stack([load(p) for p in paths[i : i + bs]]))
        passes.append(len(paths) / (time.perf_counter() - t0))
        loads.append(os.getloadavg()[0])
        t0 = time.perf_counter()
        for i in range(0, len(arrays.test), bs):
            det.anomaly_maps(arrays.test[i : i + bs])
        model_only.append(len(arrays.test) / (time.perf_counter() - t0))

    rec = history[-1] if history else {}
    return {
        "family": family,
        "image_size": det.image_size,
        "frame": list(det.frame),
        "keep_aspect": det.keep_aspect,
        "score_method": cfg.score_method,
        "pixel_threshold_percentile": cfg.pixel_threshold_percentile,
        "metrics": ev.metrics,
        "thresholds": thresholds,
        "fit_seconds": fit_s,
        "images_per_second": max(passes),
        "images_per_second_passes": passes,
        "load_average_1min_after_passes": loads,
        "model_only_images_per_second": max(model_only),
        "bank_size": rec.get("bank_size"),
        "feature_dim": rec.get("feature_dim"),
        "n_fit": len(arrays.fit),
        "n_holdout": len(arrays.holdout),
        "n_test": len(arrays.test),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "config": json.loads(cfg.model_dump_json()),
        "auto_choice": selection.chosen if selection else None,
        "auto_candidates": selection.rows if selection else None,
    }


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(results: list[dict[str, Any]]) -> str:
    defects = sorted(
        {
            k[len("pixel_iou_") :]
            for r in results
            for k in r["metrics"]
            if k.startswith("pixel_iou_") and k not in ("pixel_iou_oracle",)
        }
    )
    rows: list[tuple[str, list[str]]] = [
        ("image size (px)", [str(r["image_size"]) for r in results]),
        (
            "image AUROC (decision score)",
            [f"{_fmt(r['metrics'].get('image_auroc'))} ({r['score_method']})" for r in results],
        ),
        ("image AUROC, mean score", [_fmt(r["metrics"].get("image_auroc_mean")) for r in results]),
        ("image AUROC, max score", [_fmt(r["metrics"].get("image_auroc_max")) for r in results]),
        ("pixel AUROC", [_fmt(r["metrics"].get("pixel_auroc")) for r in results]),
        ("AUPRO (FPR ≤ 0.3)", [_fmt(r["metrics"].get("pixel_aupro")) for r in results]),
    ]
    for d in defects:
        rows.append((f"IoU {d}", [_fmt(r["metrics"].get(f"pixel_iou_{d}")) for r in results]))
    rows += [
        ("IoU overall (mean)", [_fmt(r["metrics"].get("pixel_iou")) for r in results]),
        (
            "IoU oracle (test-optimal threshold, not used)",
            [_fmt(r["metrics"].get("pixel_iou_oracle")) for r in results],
        ),
        ("pixel threshold percentile (held-out normals)", [_fmt(r["pixel_threshold_percentile"], 2) for r in results]),
        ("image F1 at calibrated threshold", [_fmt(r["metrics"].get("f1")) for r in results]),
        ("fit seconds", [_fmt(r["fit_seconds"], 1) for r in results]),
        ("images/s incl. PNG decode + resize", [_fmt(r["images_per_second"], 1) for r in results]),
        ("images/s model only", [_fmt(r["model_only_images_per_second"], 1) for r in results]),
        (
            "machine load (1-min avg) after the best pass",
            [
                _fmt(r["load_average_1min_after_passes"][int(np.argmax(r["images_per_second_passes"]))], 1)
                for r in results
            ],
        ),
        (
            "memory bank (patches x dims)",
            [f"{r['bank_size']} x {r['feature_dim']}" if r.get("bank_size") else "–" for r in results],
        ),
        ("peak memory (MiB)", [_fmt(r["peak_rss_mib"], 0) for r in results]),
    ]
    head = "| | " + " | ".join(r["family"] for r in results) + " |"
    sep = "|---|" + "---|" * len(results)
    return "\n".join([head, sep] + [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows])


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_ad", help="MVTec AD root")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: autoencoder,patchcore")
    ap.add_argument("--epochs", type=int, default=None, help="autoencoder epochs (default: its config default)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--keep-aspect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the training flow's frame (default); --no-keep-aspect squashes to a square",
    )
    ap.add_argument("--batch-size", type=int, default=8, help="images per anomaly_maps call in the throughput loop")
    ap.add_argument("--speed-repeats", type=int, default=3)
    ap.add_argument(
        "--omp-wait-policy",
        default="PASSIVE",
        help="OMP_WAIT_POLICY for the family subprocesses ('' = leave as is). PASSIVE: idle OpenMP threads "
        "sleep instead of spinning, which keeps torch from collapsing when the 2 cores are shared",
    )
    ap.add_argument(
        "--cache-dir",
        default=str(Path(tempfile.gettempdir()) / "anomaflow-bench-cache"),
        help="decoded-image cache for the quality runs (the throughput loop never uses it)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--table-from", type=Path, default=None, help="only print the table of a JSON written by --json")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.data = args.data.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.table_from:
        print(table(json.loads(args.table_from.read_text())["results"]))
        return 0
    if args.child:
        rec = run_family(args.child, args)
        args.child_out.write_text(json.dumps(rec, default=float))
        return 0
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(f"unknown families {unknown}; expected some of {FAMILIES}", file=sys.stderr)
        return 2
    results = []
    passthrough = [
        "--data",
        str(args.data),
        "--category",
        args.category,
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--batch-size",
        str(args.batch_size),
        "--speed-repeats",
        str(args.speed_repeats),
        "--cache-dir",
        args.cache_dir,
        "--keep-aspect" if args.keep_aspect else "--no-keep-aspect",
    ]
    if args.epochs is not None:
        passthrough += ["--epochs", str(args.epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    with tempfile.TemporaryDirectory() as tmp:
        for fam in families:
            out = Path(tmp) / f"{fam}.json"
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, __file__, "--child", fam, "--child-out", str(out), *passthrough], check=True, env=env
            )
            rec = json.loads(out.read_text())
            rec["wall_seconds"] = time.perf_counter() - t0
            results.append(rec)
    print()
    print(
        f"## {args.category}: detector families ({args.threads} torch threads, {os.cpu_count()} CPUs, "
        f"OMP_WAIT_POLICY={args.omp_wait_policy or os.environ.get('OMP_WAIT_POLICY', 'unset')})"
    )
    print()
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"category": args.category, "data": str(args.data), "results": results}, indent=2, default=float)
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
