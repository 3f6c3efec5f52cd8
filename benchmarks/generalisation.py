"""One table over datasets x detector families x seeds: does a choice made on Bottle carry?

    .venv/bin/python benchmarks/generalisation.py [--datasets bottle elpv_mono elpv_poly demo] \
        [--families patchcore autoencoder] [--seeds 0 1 2] [--threads 2] [--json out/generalisation.json]
    .venv/bin/python benchmarks/generalisation.py --from-json benchmarks/results/generalisation.json   # table only

Each (dataset, family, seed) runs `benchmarks/detectors.py` in its own process: the training
flow's own steps (validate, fit on the fit part of train/good, calibrate on the held-out normal
part, score and evaluate the whole test split), then inspection throughput from disk (decode +
resize + maps). Datasets (NAME or NAME=ROOT:CATEGORY):
- bottle: ../shared/data/mvtec_ad (MVTec AD Bottle, masks);
- elpv_mono, elpv_poly: data/elpv, written by `anomaflow import-elpv data/elpv` (image labels only);
- demo: the generated demo set (masks);
- bottle_tall, bottle_wide, bottle_mixed: data/variants, written by `benchmarks/variants.py data/variants`
  (a tall grayscale JPEG crop, a wide RGB crop, and grayscale crops of five shapes from 1:2.5 to
  2.5:1 in one product, of good Bottle images with small synthetic defects, masks).
`--frames keep square` also runs every cell with images squashed to a square (the old input).
A dataset that is not there is skipped with the reason. Columns: image AUROC of the decision
score; pixel AUROC where masks exist; recall at test FPR 5 % (a label-using reference: the
threshold is read off the test labels); recall and FPR at the calibrated threshold (what the
product does); fit seconds; inspection images/s including decode. Means over seeds, the spread
(min-max) in brackets where it exceeds 0.005.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DATASETS

KNOWN = DATASETS
HOW_TO_MAKE = {"elpv": "run `anomaflow import-elpv data/elpv`", "bottle_": "run `benchmarks/variants.py data/variants`"}
COLUMNS = [
    ("image AUROC", lambda r: r["metrics"].get("image_auroc")),
    ("pixel AUROC", lambda r: r["metrics"].get("pixel_auroc")),
    ("recall @ test FPR 5 % (label-using)", lambda r: r["metrics"].get("recall_at_test_fpr_5pct")),
    ("calibrated recall", lambda r: r["metrics"].get("recall")),
    ("calibrated test FPR", lambda r: r["metrics"].get("false_positive_rate")),
    ("fit s", lambda r: r["fit_seconds"]),
    ("images/s incl. decode", lambda r: r["images_per_second"]),
]


def resolve(spec: str) -> tuple[str, Path, str]:
    """NAME, or NAME=ROOT:CATEGORY -> (name, root, category); demo is generated on demand."""
    if "=" in spec:
        name, rest = spec.split("=", 1)
        root, category = rest.rsplit(":", 1)
        return name, Path(root), category
    if spec == "demo":
        from anomaflow.model.data.demo import make_demo_dataset
        from anomaflow.model.pipeline import DEMO_CATEGORY, default_home

        root = default_home() / "demo-data"
        make_demo_dataset(root, DEMO_CATEGORY, seed=0)
        return spec, root, DEMO_CATEGORY
    if spec not in KNOWN:
        raise SystemExit(f"unknown dataset {spec!r}: use one of {sorted(KNOWN) + ['demo']} or NAME=ROOT:CATEGORY")
    return (spec, *KNOWN[spec])


def run(
    name: str,
    root: Path,
    category: str,
    family: str,
    seed: int,
    args: argparse.Namespace,
    tmp: Path,
    frame: str = "keep",
) -> dict:
    out = tmp / f"{name}-{family}-{seed}-{frame}.json"
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "detectors.py"),
        "--child",
        family,
        "--child-out",
        str(out),
        "--data",
        str(root),
        "--category",
        category,
        "--threads",
        str(args.threads),
        "--seed",
        str(seed),
        "--speed-repeats",
        str(args.speed_repeats),
        "--cache-dir",
        args.cache_dir,
        "--keep-aspect" if frame == "keep" else "--no-keep-aspect",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    rec = json.loads(out.read_text())
    rec.update(dataset=name, seed=seed, wall_seconds=time.perf_counter() - t0)
    return rec


def _cell(values: list[float | None], digits: int) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    m = mean(vals)
    spread = max(vals) - min(vals)
    text = f"{m:.{digits}f}"
    if digits >= 3 and spread > 0.005:
        text += f" ({min(vals):.{digits}f}–{max(vals):.{digits}f})"
    return text


def table(results: list[dict]) -> str:
    lines = [
        "| dataset | family | frame (HxW) | seeds | " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in results:
        frame = "x".join(str(v) for v in r.get("frame") or (r["image_size"], r["image_size"]))
        frame += "" if r.get("keep_aspect", True) else " squashed"
        groups.setdefault((r["dataset"], r["family"], frame), []).append(r)
    for (name, family, frame), rs in groups.items():
        cells = [
            _cell([get(r) for r in rs], 1 if col in ("fit s", "images/s incl. decode") else 3) for col, get in COLUMNS
        ]
        if family == "auto":  # which candidate each seed chose
            family += " (" + ", ".join(str(r.get("auto_choice")) for r in rs) + ")"
        lines.append(
            f"| {name} | {family} | {frame} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def save(path: Path | None, results: list[dict], skipped: list[str]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"results": results, "skipped": skipped}, indent=1, default=float))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["bottle", "elpv_mono", "elpv_poly", "demo"])
    ap.add_argument(
        "--families",
        nargs="+",
        default=["patchcore", "autoencoder"],
        choices=["patchcore", "padim", "fusion", "autoencoder", "auto"],
    )
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--frames",
        nargs="+",
        default=["keep"],
        choices=["keep", "square"],
        help="keep: the training flow's frame (aspect ratio kept); square: squashed, for comparison",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-repeats", type=int, default=1)
    ap.add_argument("--cache-dir", default=str(REPO / ".anomaflow" / "cache"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--from-json", type=Path, nargs="+", default=None, help="run nothing: print the table of earlier --json outputs"
    )
    args = ap.parse_args(argv)
    if args.from_json:
        print(table([r for p in args.from_json for r in json.loads(p.read_text())["results"]]))
        return 0
    results, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.datasets:
            name, root, category = resolve(spec)
            if not (root / category / "train" / "good").is_dir():
                how = next((f" ({v})" for k, v in HOW_TO_MAKE.items() if name.startswith(k)), "")
                skipped.append(f"{name}: {root / category} not found{how}")
                print(f"skipping {skipped[-1]}", file=sys.stderr)
                continue
            for family, frame, seed in ((f, fr, sd) for f in args.families for fr in args.frames for sd in args.seeds):
                rec = run(name, root, category, family, seed, args, Path(tmp), frame)
                m = rec["metrics"]
                print(
                    f"{name} {family} {frame} seed {seed}: image_auroc={m.get('image_auroc', float('nan')):.4f} "
                    f"pixel_auroc={m.get('pixel_auroc', float('nan')):.4f} fit={rec['fit_seconds']:.1f}s "
                    f"({rec['wall_seconds']:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
                results.append(rec)
                save(args.json, results, skipped)  # after every run: an interrupted benchmark keeps what it measured
    save(args.json, results, skipped)
    print()
    print(table(results))
    for s in skipped:
        print(f"\nskipped {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
