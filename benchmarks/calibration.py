"""Threshold calibration on normals only: which method hits its false-positive rate on normals
it has not seen, and which survives a few odd images in train/good?

    .venv/bin/python benchmarks/calibration.py [--datasets bottle elpv_mono elpv_poly] [--seeds 0] \
        [--splits 200] [--threads 2] [--json out/calibration.json]

Per dataset and seed: the training flow's split and PatchCore defaults; the held-out normals are
scored once. Then, `--splits` times, they are halved at random: a method calibrates on one half
and its false-positive rate is read on the other half (normals it never saw). "odd" repeats that
with two extra calibration scores at 3x the largest normal score (two odd images in train/good).
No test image is read: the choice of method and default rests on held-out normals only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anomaflow.model import pipeline
from anomaflow.model.evaluation import calibration
from benchmarks.common import DATASETS, emit, present, replay, train_config

METHODS = {
    "percentile 99 (default before)": lambda s: calibration.percentile_threshold(s, 99.0),
    "fpr 0.02 (order statistic)": lambda s: calibration.fpr_threshold(s, 0.02),
    "tail 0.01": lambda s: calibration.tail_threshold(s, 0.01),
    "tail 0.02": lambda s: calibration.tail_threshold(s, 0.02),
    "tail 0.05": lambda s: calibration.tail_threshold(s, 0.05),
}


def heldout_scores(root: Path, category: str, seed: int, threads: int, cache_dir: str) -> np.ndarray:
    cfg = train_config(root, category, seed, threads, cache_dir)
    ds = pipeline.load_dataset(root, category)
    ds.test = []  # never read here
    arrays = pipeline.load_arrays(ds, cfg, log=lambda m: print(m, file=sys.stderr))
    det, _, _ = pipeline.fit_detector(cfg, arrays, progress=lambda r: None)
    return det.score(arrays.holdout, arrays.holdout_valid).scores[cfg.score_method]


def trial(scores: np.ndarray, splits: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for odd in (False, True):
        for _ in range(splits):
            order = rng.permutation(len(scores))
            a, b = scores[order[: len(scores) // 2]], scores[order[len(scores) // 2 :]]
            if odd:
                a = np.r_[a, [3 * scores.max()] * 2]
            for name, method in METHODS.items():
                t = method(a)
                rows.append({"method": name, "odd": odd, "fpr": float(np.mean(b > t))})
    return rows


def report(runs: list[dict], title: str) -> str:
    names = list(dict.fromkeys(r["method"] for r in runs))
    sets = list(dict.fromkeys(r["dataset"] for r in runs))
    lines = [
        title,
        "",
        "| method | " + " | ".join(f"{d} FPR (odd)" for d in sets) + " | mean |",
        "|---" * (len(sets) + 2) + "|",
    ]
    for name in names:
        cells, means = [], []
        for d in sets:
            clean = [r["fpr"] for r in runs if r["method"] == name and r["dataset"] == d and not r["odd"]]
            odd = [r["fpr"] for r in runs if r["method"] == name and r["dataset"] == d and r["odd"]]
            cells.append(f"{mean(clean):.3f} ({mean(odd):.3f})")
            means.append(mean(clean))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean(means):.3f} |")
    return emit(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["bottle", "elpv_mono", "elpv_poly"], choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=str(REPO / ".anomaflow" / "cache"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--from-json", type=Path, default=None)
    args = ap.parse_args(argv)
    if replay(args, report):
        return 0
    pipeline.configure_threads(args.threads)
    runs, held = [], {}
    for name, root, category in present(args.datasets):
        for seed in args.seeds:
            scores = heldout_scores(root, category, seed, args.threads, args.cache_dir)
            held[f"{name}/{seed}"] = scores.tolist()
            runs += [
                {**r, "dataset": f"{name} (n={len(scores)})", "seed": seed} for r in trial(scores, args.splits, seed)
            ]
    title = (
        f"Realised FPR on unseen held-out normals (half splits x {args.splits}, seeds {args.seeds}), "
        "PatchCore defaults; "
        "in brackets: with two odd images (3x the largest normal score) among the calibration half"
    )
    report(runs, title)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = [
            {
                "dataset": d,
                "method": m,
                "odd": o,
                "fpr": mean(r["fpr"] for r in runs if (r["dataset"], r["method"], r["odd"]) == (d, m, o)),
            }
            for d, m, o in dict.fromkeys((r["dataset"], r["method"], r["odd"]) for r in runs)
        ]  # means: the table, compactly
        args.json.write_text(json.dumps({"title": title, "runs": summary, "heldout_scores": held}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
