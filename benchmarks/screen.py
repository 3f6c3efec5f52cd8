"""Training-set screen on a good folder with real defects filed as good.

    .venv/bin/python benchmarks/screen.py [--data ../shared/data/mvtec_ad --category bottle] \
        [--planted 0 10 20] [--seed 0] [--threads 2] [--json out/screen.json]

Per row: a copy of the category (hard links where the file system allows) whose train/good also
holds N of its test defects (seeded, spread over the defect types; the test split keeps the rest).
The screen (anomaflow.model.data.screen, the training flow's default) runs on train/good; then the default
PatchCore is fitted, calibrated on its held-out part and evaluated on the rest of the test split,
once on everything in train/good and once with the screen's suspects left out (--exclude-suspects).
Printed: planted defects flagged, good images flagged, screen seconds, and image AUROC / calibrated
recall / test FPR of both fits. The z limit is fixed in anomaflow.model.data.screen, not tuned on these rows.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anomaflow.model.data.curation import _link_or_copy
from benchmarks.common import category_parser, emit, printed_stored, row_table, save_rows


def contaminated_copy(root: Path, category: str, planted: int, seed: int, work: Path) -> tuple[Path, list[str]]:
    """root/category copied under work with `planted` test defects moved into train/good."""
    src, dst = root / category, work / category
    for p in sorted((src / "train" / "good").iterdir()):
        _link_or_copy(p, dst / "train" / "good" / p.name)
    defects = sorted(p for p in (src / "test").glob("*/*") if p.parent.name != "good" and p.is_file())
    rng = np.random.default_rng([seed, planted])
    chosen = set(rng.choice(len(defects), size=planted, replace=False).tolist()) if planted else set()
    names = []
    for i, p in enumerate(defects):
        if i in chosen:
            name = f"planted_{p.parent.name}_{p.stem}{p.suffix}"
            _link_or_copy(p, dst / "train" / "good" / name)
            names.append(name)
        else:
            _link_or_copy(p, dst / "test" / p.parent.name / p.name)
            mask = src / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
            if mask.is_file():
                _link_or_copy(mask, dst / "ground_truth" / p.parent.name / mask.name)
    for p in sorted((src / "test" / "good").iterdir()):
        _link_or_copy(p, dst / "test" / "good" / p.name)
    return work, names


def fit_and_evaluate(cfg, arrays) -> dict[str, float]:
    from anomaflow.model import pipeline

    det, _, fit_s = pipeline.fit_detector(cfg, arrays, progress=None)
    pipeline.calibrate_detector(det, cfg, det.score(arrays.holdout, arrays.holdout_valid))
    ev = pipeline.evaluate_split(det, arrays, det.score(arrays.test, arrays.test_valid), cfg.score_method)
    return {
        "image_auroc": ev.metrics["image_auroc"],
        "recall": ev.metrics["recall"],
        "fpr": ev.metrics["false_positive_rate"],
        "fit_s": fit_s,
    }


def run(root: Path, category: str, planted: int, seed: int, threads: int | None) -> dict:
    from anomaflow.model import pipeline
    from anomaflow.model.config import TrainConfig

    pipeline.configure_threads(threads)
    with tempfile.TemporaryDirectory(dir=REPO / ".anomaflow") as tmp:
        work, names = contaminated_copy(root, category, planted, seed, Path(tmp))
        cfg = TrainConfig(
            data_root=str(work), category=category, detector="patchcore", seed=seed, num_threads=threads
        )  # fresh copies: no cache
        arrays = pipeline.load_arrays(pipeline.load_dataset(work, category), cfg, log=lambda m: None)
        found = pipeline.screen_training_set(cfg, arrays, log=lambda m: print(f"[{planted}] {m}", flush=True))
        flagged = [found.names[i] for i in found.suspects]
        row = {
            "planted": planted,
            "good_images": len(found.names),
            "flagged_planted": sum(n in names for n in flagged),
            "flagged_good": sum(n not in names for n in flagged),
            "screen_s": found.seconds,
            "all": fit_and_evaluate(cfg, arrays),
        }
        row["excluded"] = (
            fit_and_evaluate(cfg, pipeline.without_suspects(arrays, found)[0]) if found.suspects else row["all"]
        )
    print(f"[{planted}] {json.dumps(row)}", flush=True)
    return row


HEADS = (  # the table's columns
    "planted defects | flagged planted | flagged good | screen s | all: AUROC / recall / FPR | "
    "excluded: AUROC / recall / FPR"
)


def cells(r: dict) -> list[str]:
    fits = [f"{f['image_auroc']:.3f} / {f['recall']:.3f} / {f['fpr']:.3f}" for f in (r["all"], r["excluded"])]
    return [
        f"{r['planted']} of {r['good_images']}",
        f"{r['flagged_planted']}",
        f"{r['flagged_good']}",
        f"{r['screen_s']:.1f}",
        *fits,
    ]


def main(argv: list[str] | None = None) -> int:
    ap = category_parser(__doc__)
    ap.add_argument("--planted", nargs="+", type=int, default=[0, 10, 20])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    table = row_table(HEADS, cells)
    if printed_stored(args, table):
        return 0
    (REPO / ".anomaflow").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    rows = [run(args.data, args.category, n, args.seed, args.threads) for n in args.planted]
    emit(table(rows))
    print(f"\n{time.perf_counter() - t0:.0f}s")
    save_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
