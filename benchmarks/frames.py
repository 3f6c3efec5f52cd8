"""auto's frame policy on the shape variants: aspect-keeping frame against squashing, as auto
sees it (synthetic defects in held-out normals) and as it cannot (the test split, reported only).

    .venv/bin/python benchmarks/frames.py [--datasets bottle_mixed bottle_tall bottle_wide] [--candidate fusion] \
        [--seed 0] [--threads 2] [--json out/frames.json]
    .venv/bin/python benchmarks/frames.py --from-json benchmarks/results/frames-seed0.json   # table only

Per dataset: the candidate (auto's default, the fusion) fitted on the fit part of train/good in
the aspect-keeping frame and on the same images squashed to a square; both scored on synthetic
defects of the same held-out normals; `anomaflow.model.evaluation.selection.clear_lead` (the rule of auto's frame step)
says which frame auto keeps. Test image AUROC of both frames is printed next to it: the policy
must never be below squashing by more than 0.005.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DATASETS, present, row_table, rows_main, seeded_parser, train_config


def run(name: str, root: Path, category: str, candidate: str, seed: int, threads: int, cache_dir: str) -> dict:
    from anomaflow.model import pipeline
    from anomaflow.model.evaluation import metrics, selection

    pipeline.configure_threads(threads)
    ds = pipeline.load_dataset(root, category)
    row: dict = {"dataset": name, "seed": seed, "candidate": candidate}
    checks = {}
    for frame, keep in (("keep", True), ("square", False)):
        base = train_config(root, category, seed, threads, cache_dir, detector="auto", keep_aspect=keep)
        arrays = pipeline.load_arrays(ds, base, log=lambda m: print(f"[{name}] {m}", file=sys.stderr))
        cfg = selection.candidate_config(base, candidate)
        t0 = time.perf_counter()
        det, _ = selection.fit_candidate(candidate, cfg, pipeline.builder(arrays), arrays.fit, arrays.holdout, {})
        checks[frame] = selection.synthetic_check(det, arrays.holdout, arrays.holdout_valid, seed)
        labels = np.array([s.label for s in arrays.test_samples], float)
        test = det.score(arrays.test, arrays.test_valid).scores[det.score_method]
        row[frame] = {
            "frame": list(arrays.fit.shape[1:3]),
            "syn_image_auroc": checks[frame].metrics.get("syn_image_auroc"),
            "test_image_auroc": metrics.image_auroc(labels, test),
            "seconds": time.perf_counter() - t0,
        }
        print(f"[{name}] {frame}: {json.dumps(row[frame])}", file=sys.stderr, flush=True)
    better, lead, se = selection.clear_lead(checks["square"], checks["keep"], seed)
    row.update(square_lead=lead, square_lead_se=se, auto_frame="square" if better else "keep")
    return row


HEADS = (  # the table's columns
    "dataset | frame kept / squashed | syn AUROC kept / squashed | square lead ± se | auto keeps | "
    "test AUROC kept / squashed (reported only) | auto - squashed"
)


def cells(r: dict) -> list[str]:
    k, q = r["keep"], r["square"]
    return [
        r["dataset"],
        f"{k['frame'][0]}x{k['frame'][1]} / {q['frame'][0]}x{q['frame'][1]}",
        f"{k['syn_image_auroc']:.4f} / {q['syn_image_auroc']:.4f}",
        f"{r['square_lead']:+.4f} ± {r['square_lead_se']:.4f}",
        r["auto_frame"],
        f"{k['test_image_auroc']:.4f} / {q['test_image_auroc']:.4f}",
        f"{r[r['auto_frame']]['test_image_auroc'] - q['test_image_auroc']:+.4f}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = seeded_parser(__doc__)
    ap.add_argument(
        "--datasets", nargs="+", default=["bottle_mixed", "bottle_tall", "bottle_wide"], choices=sorted(DATASETS)
    )
    ap.add_argument("--candidate", default="fusion")
    ap.add_argument("--seed", type=int, default=0)
    return rows_main(ap, argv, row_table(HEADS, cells), measure, data=False)


def measure(args) -> list[dict]:
    return [
        run(name, root, cat, args.candidate, args.seed, args.threads or 2, args.cache_dir)
        for name, root, cat in present(args.datasets)
    ]


if __name__ == "__main__":
    raise SystemExit(main())
