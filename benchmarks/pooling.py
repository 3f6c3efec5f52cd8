"""Image-score pooling and fusion form on the development sets: what PaDiM's and the fusion's
`top_mean` default and auto's fusion-first order were decided on.

    .venv/bin/python benchmarks/pooling.py [--datasets bottle bottle_mixed bottle_tall elpv_mono elpv_poly] \
        [--seed 0] [--threads 2] [--json out/pooling.json]

Per dataset: PatchCore (Lite0 stage3+4) and PaDiM (stage2+3) fitted once on the fit part of
train/good; their maps of the held-out normals, of synthetic defects pasted into them (what auto
sees) and of the whole test split (reported only, never used by the product). Pooled by max and
by the mean of the top 0.1 % / 1 % of pixels; fused by standardising scores (`scorez`) or maps
(`mapz`, anomaflow.model.detectors.fusion) on the held-out normals. Prints synthetic and test image AUROC per row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import present, train_config

SHARES = ("max", 0.001, 0.01)


def pool(maps: np.ndarray, valid: np.ndarray | None, how) -> np.ndarray:
    from anomaflow.model.detectors.scoring import top_mean

    flat = maps.reshape(len(maps), -1)
    keep = np.ones_like(flat, bool) if valid is None else valid.reshape(len(maps), -1)
    return np.array([f[k].max() if how == "max" else top_mean(f[k], how) for f, k in zip(flat, keep)])


def run(
    name: str, root: Path, category: str, seed: int, threads: int, cache_dir: str
) -> dict[str, tuple[float, float]]:
    from anomaflow.model import pipeline
    from anomaflow.model.data.synthetic import KINDS, SUBTLE_KINDS, synthetic_set
    from anomaflow.model.detectors.scoring import fill_outside
    from anomaflow.model.evaluation import metrics

    pipeline.configure_threads(threads)
    base = train_config(root, category, seed, threads, cache_dir)
    arrays = pipeline.load_arrays(pipeline.load_dataset(root, category), base, log=lambda m: None)
    labels = np.array([s.label for s in arrays.test_samples], float)
    syn, _, _ = synthetic_set(arrays.holdout, seed=seed, per_image=2, kinds=KINDS + SUBTLE_KINDS)
    syn_valid = None if arrays.holdout_valid is None else np.repeat(arrays.holdout_valid, 2, axis=0)[: len(syn)]
    parts = {
        "hold": (arrays.holdout, arrays.holdout_valid),
        "syn": (syn, syn_valid),
        "test": (arrays.test, arrays.test_valid),
    }
    maps = {}
    for fam in ("patchcore", "padim"):
        det, _, _ = pipeline.fit_detector(base.for_family(fam), arrays, progress=lambda r: None)
        maps[fam] = {k: fill_outside(det.anomaly_maps(x), v) for k, (x, v) in parts.items()}
    rows: dict[str, dict[str, np.ndarray]] = {}
    for how in SHARES:
        scores = {f: {k: pool(maps[f][k], parts[k][1], how) for k in parts} for f in maps}
        rows.update({f"{f}/{how}": scores[f] for f in maps})
        rows[f"scorez/{how}"] = {
            k: np.mean([(scores[f][k] - scores[f]["hold"].mean()) / scores[f]["hold"].std() for f in maps], axis=0)
            for k in parts
        }
        stats = {f: (maps[f]["hold"].mean(), maps[f]["hold"].std()) for f in maps}
        fused = {k: np.mean([(maps[f][k] - stats[f][0]) / stats[f][1] for f in maps], axis=0) for k in parts}
        rows[f"mapz/{how}"] = {k: pool(fused[k], parts[k][1], how) for k in parts}
    out = {}
    for row, s in rows.items():
        syn_auc = metrics.image_auroc(
            np.r_[np.zeros(len(s["hold"])), np.ones(len(s["syn"]))], np.r_[s["hold"], s["syn"]]
        )
        out[row] = (syn_auc, metrics.image_auroc(labels, s["test"]))
        print(f"{name} {row:18s} syn {syn_auc:.4f} test {out[row][1]:.4f}", file=sys.stderr, flush=True)
    return out


def table(results: dict[str, dict[str, tuple[float, float]]]) -> str:
    names = list(next(iter(results.values())))
    lines = ["| pooling / fusion | " + " | ".join(results) + " | mean test |", "|---" * (len(results) + 2) + "|"]
    for row in names:
        tests = [results[d][row][1] for d in results]
        lines.append(
            f"| {row} | "
            + " | ".join(f"{results[d][row][0]:.4f} / {results[d][row][1]:.4f}" for d in results)
            + f" | {np.mean(tests):.4f} |"
        )
    return "cells: synthetic / test image AUROC\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--datasets", nargs="+", default=["bottle", "bottle_mixed", "bottle_tall", "elpv_mono", "elpv_poly"]
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=str(REPO / ".anomaflow" / "cache"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--from-json", type=Path, default=None, help="run nothing: print the table of an earlier --json output"
    )
    args = ap.parse_args(argv)
    if args.from_json:
        print(table(json.loads(args.from_json.read_text())))
        return 0
    results = {
        name: run(name, root, cat, args.seed, args.threads, args.cache_dir)
        for name, root, cat in present(args.datasets)
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
