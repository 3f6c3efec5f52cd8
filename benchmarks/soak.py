"""Soak: one inspection run over thousands of generated images; memory must stay flat.

    .venv/bin/python benchmarks/soak.py [--images 5000] [--size 64] [--batch-size 16] [--defect-rate 0.1]

Generates `--images` distinct parts with the demo generator (`anomaflow.model.data.demo`; a share of them
with a painted defect), trains a small autoencoder on separate good renders, calibrates its
threshold on held-out good renders, then inspects the whole inbox in ONE call to
`anomaflow.model.operations.inspection.inspect_files` (the loop the batch-inspection flow runs: hash, decode,
score, decide, heat maps for DEFECTs, rows appended and fsynced per batch). A progress hook
samples the resident set (VmRSS), its peak (VmHWM) and the throughput of each window.

Prints a markdown table per 10 % of the run, then start vs end: throughput of the first and
last window and RSS growth after warm-up (from the end of the first window to the end).
Exits 1 when that growth exceeds --max-growth-mb (a leak), or results.csv does not hold
exactly one row per image.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _status_kb(field: str) -> float:
    """A VmRSS/VmHWM line of /proc/self/status in kB (Linux); peak falls back to getrusage."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def peak_mb() -> float:
    return _status_kb("VmHWM") / 1024


@dataclass
class Sample:
    done: int
    t: float
    rss: float
    peak: float


def generate(inbox: Path, n: int, size: int, defect_rate: float, seed: int) -> int:
    """n distinct PNG parts (good renders; `defect_rate` of them with a defect); returns #defects."""
    from PIL import Image

    from anomaflow.model.data.demo import DEFECT_TYPES, add_defect, render_part

    inbox.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    defects = 0
    for i in range(n):
        img = render_part(rng, size)
        if rng.random() < defect_rate:
            img, _ = add_defect(img, DEFECT_TYPES[i % len(DEFECT_TYPES)], rng)
            defects += 1
        img[0, 0] = (i % 256, (i // 256) % 256, 3)  # distinct content even if two renders coincide
        Image.fromarray(img).save(inbox / f"part_{i:05d}.png", compress_level=1)
    return defects


def train(size: int, n_train: int, epochs: int, seed: int):
    from anomaflow.model import pipeline
    from anomaflow.model.config import AutoencoderConfig, TrainConfig
    from anomaflow.model.data.demo import render_part
    from anomaflow.model.detectors.autoencoder import AutoencoderDetector

    rng = np.random.default_rng(seed + 1)
    good = np.stack([render_part(rng, size) for _ in range(n_train)])
    holdout = np.stack([render_part(rng, size) for _ in range(max(8, n_train // 4))])
    det = AutoencoderDetector(
        AutoencoderConfig(image_size=size, base_channels=8, latent_channels=8, epochs=epochs, batch_size=16), seed=seed
    )
    det.fit(good, holdout, progress=None)
    pipeline.calibrate_detector(
        det, TrainConfig(detector="autoencoder"), det.score(holdout)
    )  # the training flow's calibration
    return det


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64, help="generated and model image size (multiple of 16)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--defect-rate", type=float, default=0.1)
    ap.add_argument("--window", type=int, default=500, help="images per throughput window at start and end")
    ap.add_argument("--train-images", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-growth-mb", type=float, default=50.0)
    ap.add_argument("--workdir", default=None, help="keep inbox and results here (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from anomaflow.model.operations import inspection

    torch.set_num_threads(args.threads)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="anomaflow-soak-")
    work = Path(args.workdir or tmp.name)
    inbox, out = work / "inbox", work / "out"
    try:
        t0 = time.perf_counter()
        n_defects = generate(inbox, args.images, args.size, args.defect_rate, args.seed)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        det = train(args.size, args.train_images, args.epochs, args.seed)
        train_s = time.perf_counter() - t0
        print(
            f"generated {args.images} images ({n_defects} with a defect, {args.size}px) in {gen_s:.1f}s; "
            f"trained in {train_s:.1f}s; threshold {det.threshold:.6g}; torch threads {torch.get_num_threads()}"
        )

        files = inspection.list_inbox(inbox)
        samples = [Sample(0, time.perf_counter(), rss_mb(), peak_mb())]

        def progress(done: int, total: int) -> None:
            samples.append(Sample(done, time.perf_counter(), rss_mb(), peak_mb()))

        with inspection.Ledger(out) as ledger:
            summary = inspection.inspect_files(
                det,
                files,
                inbox,
                ledger,
                model_name="soak",
                model_version="1",
                threshold=det.threshold,
                batch_size=args.batch_size,
                progress=progress,
            )
        rows = inspection.read_results(out / inspection.RESULTS_FILE)
        return report(args, samples, summary, rows, len(files))
    finally:
        if tmp is not None:
            tmp.cleanup()


def at(samples: list[Sample], done: int) -> Sample:
    """The first sample at or past `done` images."""
    return next(s for s in samples if s.done >= done)


def report(args: argparse.Namespace, samples: list[Sample], summary, rows: list[dict], n_files: int) -> int:
    total = samples[-1].done
    print()
    print("| images done | images/s (this 10 %) | RSS MB | peak RSS MB |")
    print("| ---: | ---: | ---: | ---: |")
    prev = samples[0]
    for k in range(1, 11):
        s = at(samples, total * k // 10)
        rate = (s.done - prev.done) / max(s.t - prev.t, 1e-9)
        print(f"| {s.done} | {rate:.0f} | {s.rss:.1f} | {s.peak:.1f} |")
        prev = s
    w = min(args.window, total // 2)
    first_end, last_start, last = at(samples, w), at(samples, total - w), samples[-1]
    start_rate = (first_end.done - samples[0].done) / (first_end.t - samples[0].t)
    end_rate = (last.done - last_start.done) / (last.t - last_start.t)
    growth = last.rss - first_end.rss
    print()
    print("| window | images/s | RSS MB at its end | peak RSS MB at its end |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| start (first {first_end.done} images) | {start_rate:.0f} | {first_end.rss:.1f} | {first_end.peak:.1f} |")
    print(f"| end (last {last.done - last_start.done} images) | {end_rate:.0f} | {last.rss:.1f} | {last.peak:.1f} |")
    print()
    counts = summary.counts()
    print(
        f"{summary.inspected} inspected in {summary.seconds:.1f}s ({summary.images_per_second:.0f} images/s overall); "
        f"NORMAL {counts['NORMAL']}, DEFECT {counts['DEFECT']}, ERROR {counts['ERROR']}; results.csv rows: {len(rows)}"
    )
    print(
        f"RSS growth after warm-up: {growth:+.1f} MB (limit {args.max_growth_mb:.0f} MB); "
        f"peak RSS start {first_end.peak:.1f} MB -> end {last.peak:.1f} MB"
    )
    ok = True
    if growth > args.max_growth_mb:
        print(f"FAIL: resident memory grew by {growth:.1f} MB over the run (leak?)")
        ok = False
    if len(rows) != n_files or len({r["sha256"] for r in rows}) != n_files:
        print(f"FAIL: {len(rows)} rows for {n_files} images")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
