"""Every `--detector auto` candidate side by side: what auto sees (synthetic defects in held-out
normals) next to what it cannot see (the test split), per dataset and seed.

    .venv/bin/python benchmarks/candidates.py [--datasets bottle elpv_mono elpv_poly] [--pool all|auto] \
        [--seeds 0 1 2] [--threads 2] [--json out/candidates.json]
    .venv/bin/python benchmarks/candidates.py --from-json benchmarks/results/candidates.json   # table only

A candidate left out with `--skip` is left out of the pick too, as when auto's time budget skips it.
This is how the candidate set and the choice rule are judged: auto's pick should sit within 0.005
test image AUROC of the best candidate and never below the default (the first) by more than that.
The test columns are reported only; the pick is `anomaflow.model.evaluation.selection.pick` over the synthetic rows,
the rule the training flow applies. `--pool all` scores candidates auto does not run (other
backbones and stages) so a candidate earns its place by these numbers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DATASETS, emit, present, replay, seeded_parser, store_runs, train_config


def run(
    name: str, root: Path, category: str, seed: int, pool: str, threads: int, cache_dir: str, skip: list[str]
) -> list[dict]:
    from anomaflow.model import pipeline
    from anomaflow.model.evaluation import metrics, selection

    pipeline.configure_threads(threads)
    base = train_config(root, category, seed, threads, cache_dir)
    ds = pipeline.load_dataset(root, category)
    arrays = pipeline.load_arrays(ds, base, log=lambda m: print(m, file=sys.stderr))
    labels = np.array([s.label for s in arrays.test_samples], float)
    rows = []
    fitted: dict = {}  # a fusion candidate reuses its fitted members, as auto does
    for cand, cfg in selection.candidates(base, pool=pool).items():
        if cand in skip:
            continue
        t0 = time.perf_counter()
        det, _ = selection.fit_candidate(cand, cfg, pipeline.builder(arrays), arrays.fit, arrays.holdout, fitted)
        fitted[cand] = det
        fit_s = time.perf_counter() - t0
        syn = selection.synthetic_check(det, arrays.holdout, arrays.holdout_valid, seed)
        test = det.score(arrays.test, arrays.test_valid).scores[det.score_method]
        row = {
            "dataset": name,
            "seed": seed,
            "name": cand,
            **syn.metrics,
            "fit_seconds": fit_s,
            "seconds": time.perf_counter() - t0,
            "test_image_auroc": metrics.image_auroc(labels, test),
            "test_recall_at_fpr_5pct": metrics.recall_at_fpr(labels, test, 0.05),
            "normal_scores": syn.normal_scores.tolist(),
            "defect_scores": syn.defect_scores.tolist(),
        }
        print(
            f"{name} seed {seed} {cand}: syn {syn.metrics.get('syn_image_auroc', float('nan')):.4f} "
            f"test {row['test_image_auroc']:.4f} "
            f"({row['seconds']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        rows.append(row)
    return rows


def _pick(rows: list[dict], seed: int) -> str | None:
    """anomaflow.model.evaluation.selection.pick over the stored rows, in --pool auto's candidate order:
    what the flow would keep."""
    from anomaflow.model.evaluation import selection

    rows = [dict(r) for r in rows if r["name"] in selection.AUTO]
    rows.sort(key=lambda r: selection.AUTO.index(r["name"]))
    checks = {
        r["name"]: selection.SyntheticCheck(
            defect_scores=np.array(r["defect_scores"]), normal_scores=np.array(r["normal_scores"])
        )
        for r in rows
    }
    return selection.pick(rows, checks, seed)


def report(runs: list[dict], title: str) -> str:

    lines = [
        f"## {title}",
        "",
        "| dataset | candidate | syn image AUROC | test image AUROC (reported only) "
        "| test recall @ FPR 5 % | fit+score s | picked (seeds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in dict.fromkeys(r["dataset"] for r in runs):
        mine = [r for r in runs if r["dataset"] == ds]
        seeds = sorted({r["seed"] for r in mine})
        picks = {s: _pick([r for r in mine if r["seed"] == s], s) for s in seeds}
        for cand in dict.fromkeys(r["name"] for r in mine):
            rs = [r for r in mine if r["name"] == cand]

            def mean(k: str, rs: list = rs) -> float:
                return float(np.mean([r[k] for r in rs if r.get(k) is not None]))

            picked = sum(picks[s] == cand for s in seeds)
            lines.append(
                f"| {ds} | {cand} | {mean('syn_image_auroc'):.4f} | {mean('test_image_auroc'):.4f} "
                f"| {mean('test_recall_at_fpr_5pct'):.3f} "
                f"| {mean('seconds'):.0f} | {picked}/{len(seeds)} |"
            )
        auto = float(
            np.mean(
                [next(r["test_image_auroc"] for r in mine if r["seed"] == s and r["name"] == picks[s]) for s in seeds]
            )
        )
        lines.append(f"| {ds} | **auto's pick** | | {auto:.4f} | | | |")
        rho = [spearman([r for r in mine if r["seed"] == s]) for s in seeds]
        lines.append(
            f"| {ds} | **Spearman syn vs test** (per seed) | "
            f"{', '.join('n/a' if np.isnan(x) else f'{x:+.2f}' for x in rho)} | | | | |"
        )
    return emit(lines)


def spearman(rows: list[dict]) -> float:
    """Rank correlation of synthetic and test image AUROC over one seed's candidates: whether the
    synthetic defects order candidates as real ones do (nan: fewer than 3 candidates, or a
    constant column, e.g. every candidate at test AUROC 1.0)."""
    from scipy.stats import spearmanr

    pairs = [(r["syn_image_auroc"], r["test_image_auroc"]) for r in rows if r.get("syn_image_auroc") is not None]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return float("nan")
    return float(spearmanr(*zip(*pairs)).statistic)


def main(argv: list[str] | None = None) -> int:
    ap = seeded_parser(__doc__)
    ap.add_argument("--datasets", nargs="+", default=["bottle", "elpv_mono", "elpv_poly"], choices=sorted(DATASETS))
    ap.add_argument("--pool", choices=["auto", "all"], default="all")
    ap.add_argument(
        "--skip",
        nargs="*",
        default=[],
        metavar="DATASET:CANDIDATE",
        help="leave a candidate out on a dataset, as auto's time budget does (e.g. elpv_poly:patchcore_s2s3)",
    )
    args = ap.parse_args(argv)
    skip: dict[str, list[str]] = {}
    for item in args.skip:
        ds, _, cand = item.partition(":")
        skip.setdefault(ds, []).append(cand)
    args.skip = skip
    if replay(args, report):
        return 0
    runs: list[dict] = []
    for name, root, category in present(args.datasets):
        for seed in args.seeds:
            runs.extend(
                run(name, root, category, seed, args.pool, args.threads or 2, args.cache_dir, args.skip.get(name, []))
            )
            store_runs(args.json, f"auto candidates, pool {args.pool}", runs)
    report(runs, f"auto candidates, pool {args.pool}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
