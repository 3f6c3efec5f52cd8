"""Inspection throughput: the batch-inspection flow vs a bare PyTorch loop, same files, same model.

    .venv/bin/python benchmarks/inspection_throughput.py [--data ROOT --category bottle] [--copies 3]

Copies the test images of a category (default: real MVTec Bottle from ../shared, else the demo
data) into an inbox (`--copies` distinct variants each), trains a 1-epoch autoencoder (speed
does not depend on quality), registers it in a temporary SQLite MLflow store, then times
(1) a bare loop: read bytes, decode + resize, model call, decide; (2) the flow: resolve alias,
hash, decode, model call, decide, append rows, heat maps for DEFECTs. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import inbox_parser


def build_inbox(src_files: list[Path], inbox: Path, copies: int) -> list[Path]:
    from PIL import Image

    inbox.mkdir(parents=True, exist_ok=True)
    out = []
    for c in range(copies):
        for i, p in enumerate(src_files):
            img = np.array(Image.open(p).convert("RGB"))
            img[0, 0] = (c, i % 256, 1)  # distinct content per copy
            dst = inbox / f"c{c}_{p.parent.name}_{p.name}"
            Image.fromarray(img).save(dst, compress_level=1)
            out.append(dst)
    return sorted(out)


def prepare(args: argparse.Namespace, work: Path, model_name: str):
    """Shared setup of the inspection benchmarks, all inside `work`: a SQLite MLflow store, the
    category's test images (real data when present, else the demo set) copied into work/inbox,
    a 1-epoch autoencoder (speed does not depend on quality) calibrated and registered as
    model_name. Returns (detector, inbox files, torch threads); args.category may become "demo"."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.chdir(work)
    from mlflow.tracking import MlflowClient

    from anomaflow.model import pipeline
    from anomaflow.model.config import AutoencoderConfig, TrainConfig
    from anomaflow.model.data import datasets as data
    from anomaflow.model.data.demo import make_demo_dataset
    from anomaflow.tasks import tracking

    root = Path(args.data)
    if not (root / args.category).is_dir():
        print(f"{root / args.category} not found: using the generated demo data", file=sys.stderr)
        root, args.category = work / "demo", "demo"
        make_demo_dataset(root, "demo")
    threads = pipeline.configure_threads(args.threads)
    ds = data.scan_mvtec(root, args.category)
    cfg = TrainConfig(
        data_root=str(root),
        category=args.category,
        detector="autoencoder",
        autoencoder=AutoencoderConfig(image_size=args.image_size, epochs=1),
    )
    arrays = pipeline.load_arrays(ds, cfg)
    det, _, _ = pipeline.fit_detector(cfg, arrays, progress=lambda r: None)
    pipeline.calibrate_detector(det, cfg, det.score(arrays.holdout))
    files = build_inbox([s.path for s in ds.test], work / "inbox", args.copies)
    tracking.configure()
    run_id = MlflowClient().create_run(tracking.ensure_experiment("bench")).info.run_id
    tracking.register(tracking.log_model(run_id, det), model_name, run_id)
    return det, files, threads


def bare_loop(det, files: list[Path], batch_size: int) -> float:
    from anomaflow.model.evaluation.calibration import decide

    t0 = time.perf_counter()
    for i in range(0, len(files), batch_size):
        batch = det.preprocessing.batch([(f, f.read_bytes()) for f in files[i : i + batch_size]])
        scores = det.score_batch(batch).scores[det.score_method]
        decide(scores, det.threshold)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = inbox_parser(__doc__, copies=3)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="anomaflow-bench-"))
    name = "anomaflow-bench"
    det, files, threads = prepare(args, work, name)
    print(f"{len(files)} images, model at {args.image_size}px, {threads} torch threads", file=sys.stderr)

    from anomaflow.flows.inspection import batch_inspection

    bare_loop(det, files[: args.batch_size], args.batch_size)  # warm-up
    bare_s = bare_loop(det, files, args.batch_size)
    batch_inspection(
        input_dir=str(work / "inbox"), output_dir=str(work / "warm"), model_name=name, batch_size=args.batch_size
    )
    t0 = time.perf_counter()
    res = batch_inspection(
        input_dir=str(work / "inbox"), output_dir=str(work / "out"), model_name=name, batch_size=args.batch_size
    )
    flow_s = time.perf_counter() - t0
    n = len(files)
    inspect_rate = res["images_per_second"]
    rows = [
        ("bare PyTorch loop (decode + model + decide)", n / bare_s, 1.0),
        ("batch-inspection task (hash, decode, model, rows, heat maps)", inspect_rate, inspect_rate / (n / bare_s)),
        ("batch-inspection flow call (incl. alias resolve + model download)", n / flow_s, (n / flow_s) / (n / bare_s)),
    ]
    print("\n| path | images/s | ratio vs bare |\n| --- | --- | --- |")
    for label, rate, ratio in rows:
        print(f"| {label} | {rate:.1f} | {ratio:.2f} |")
    print(
        f"\n{n} images ({args.category} test x{args.copies}), batch {args.batch_size}, "
        f"{args.image_size}px, {threads} threads; "
        f"decisions: NORMAL {res['NORMAL']}, DEFECT {res['DEFECT']}, ERROR {res['ERROR']}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"images": n, "bare_ips": n / bare_s, "task_ips": inspect_rate, "flow_ips": n / flow_s}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
