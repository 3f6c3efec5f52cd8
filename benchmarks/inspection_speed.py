"""Inspection at line speed: images/s of `anomaflow.model.operations.inspection.inspect_files` at several defect rates,
and what one DEFECT's figures cost.

    .venv/bin/python benchmarks/inspection_speed.py [--data ROOT --category bottle] [--rates 0 0.05 0.76] \\
        [--shapes native tall] [--runtimes torch onnxruntime openvino] [--threads 2] [--batch-size 16] \\
        [--json out/speed.json]
    .venv/bin/python benchmarks/inspection_speed.py --from-json benchmarks/results/inspection-speed.json

PatchCore (default config) is fitted on train/good; the inbox is every distinct image of the
category (train/good and test, 292 for Bottle). The defect rate is set by the threshold (a
quantile of the model's own scores), so the same images and model run at 0 %, 5 % and 76 %
DEFECT. Each run writes into a fresh output folder what a real run writes: hashes, ledger rows
(fsynced per batch), review copies of every part and the full-size heat map and overlay of each
DEFECT. `tall`: the same images as 500x1250 grayscale JPEGs (a second product shape). The
figure column times one DEFECT's figures alone: the old way (a second decode, matplotlib colours,
two full-size RGB PNGs at zlib level 6) and the current one (the decoded image reused,
anomaflow.model.operations.heatmaps colouring once, a palette PNG at zlib level 1 and a JPEG overlay, both full size).
Per runtime (torch, and the model's export under ONNX Runtime and OpenVINO, as `anomaflow inspect
--runtime` uses them): the model call alone on prepared batches, batch-1 latency, then the rates.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import category_parser, row_table, rows_main


def tall_copy(src: Path, category: str, dst: Path) -> Path:
    """The category as 500x1250 grayscale JPEGs (train/good and test; masks resized alike)."""
    from PIL import Image

    for p in sorted((src / category).glob("*/*/*.png")):
        out = dst / category / p.relative_to(src / category)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(p) as img:
            mask = p.parent.parent.name == "ground_truth"
            img = img.convert("L").resize((500, 1250), Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR)
            if mask:
                img.save(out)
            else:
                img.save(out.with_suffix(".jpg"), quality=90)
    return dst


def fitted(root: Path, category: str, threads: int):
    from anomaflow.model import pipeline
    from anomaflow.model.config import TrainConfig

    cfg = TrainConfig(
        data_root=str(root), category=category, detector="patchcore", num_threads=threads, screen_training_set=False
    )
    ds = pipeline.load_dataset(root, category)
    arrays = pipeline.load_arrays(ds, cfg, log=lambda m: print(m, file=sys.stderr))
    t0 = time.perf_counter()
    det, _, _ = pipeline.fit_detector(cfg, arrays, progress=lambda r: None)
    pipeline.calibrate_detector(det, cfg, det.score(arrays.holdout, arrays.holdout_valid))
    print(f"fitted {det.family} {det.frame} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return det, [s.path for s in ds.train] + [s.path for s in ds.test]


def inspect_once(det, files: list[Path], out: Path, threshold: float, batch_size: int) -> tuple[float, dict]:
    from anomaflow.model.operations import inspection

    inbox = Path(files[0]).parents[2]  # the category folder: files sit in <split>/<label>/
    with inspection.Ledger(out) as ledger:
        t0 = time.perf_counter()
        s = inspection.inspect_files(
            det, files, inbox, ledger, model_name="bench", model_version="1", threshold=threshold, batch_size=batch_size
        )
        return time.perf_counter() - t0, s.counts()


def old_figures(item, det, framed, m: np.ndarray, vmax: float, heat: Path, over: Path) -> None:
    """What a DEFECT cost before anomaflow.model.operations.heatmaps: a second decode, matplotlib colours at full size,
    a float blend, two RGB PNGs at zlib level 6."""
    from matplotlib import colormaps
    from PIL import Image

    from anomaflow.model.data.datasets import open_image
    from anomaflow.model.data.frame import display_size, to_image_frame

    size = display_size(framed.size, 1024)
    full = to_image_frame(m, framed.box, size)
    picture = np.asarray(open_image(item.path, data=item.raw, at_least=size).resize(size, Image.Resampling.BILINEAR))
    rgb = (colormaps["jet"](np.clip(full / vmax, 0, 1))[..., :3] * 255).astype(np.uint8)
    Image.fromarray(rgb).save(heat)
    blend = (picture.astype(np.float32) * 0.55 + rgb.astype(np.float32) * 0.45).round().astype(np.uint8)
    Image.fromarray(blend).save(over)


def figure_ms(det, path: Path, work: Path, repeats: int = 5) -> tuple[float, float, tuple[int, int]]:
    """ms per DEFECT for its two figures alone, the old way and the way score_items does it now."""
    from anomaflow.model.operations import inspection
    from anomaflow.model.operations.heatmaps import blend, heatmap_image

    raw = path.read_bytes()
    item = inspection.Item(path, path.name, "0" * 64, raw)
    framed = det.preprocessing.image(path, raw, keep_picture=True)
    prepared = det.preprocessing.stack([framed])
    m = det.score_batch(prepared).maps[0]
    b = framed.box
    vmax = 2 * det.pixel_threshold
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        old_figures(item, det, framed, m, vmax, work / "h_old.png", work / "o_old.png")
        times["old"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        picture, heat = inspection.in_image_frame(item, prepared.images[0], m, b, framed.size, framed.picture)
        coloured = heatmap_image(heat, vmax)
        inspection.save_png_atomic(coloured, work / "h.png")
        inspection.save_png_atomic(blend(picture, coloured), work / "o.jpg")
        times["new"].append(time.perf_counter() - t0)
    return 1000 * float(np.median(times["old"])), 1000 * float(np.median(times["new"])), picture.size


def runtimes_of(det, work: Path, threads: int, names: list[str]) -> dict[str, object]:
    """The scorer of each runtime: the torch detector, or its export (what `inspect --runtime` uses)."""
    from anomaflow.model.operations.export import export_detector
    from anomaflow.model.operations.runtime import ExportedDetector

    out: dict[str, object] = {}
    for name in names:
        if name == "torch":
            out[name] = det
            continue
        fmt = "openvino" if name == "openvino" else "onnx"
        folder = work / f"export-{det.frame[0]}x{det.frame[1]}-{fmt}"
        if not folder.exists():
            t0 = time.perf_counter()
            export_detector(det, folder, fmt)
            print(f"exported {fmt} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        out[name] = ExportedDetector(folder, name, threads=threads)
    return out


def parity(scorer, det, batches: list) -> tuple[float, float, bool]:
    """(max |score - torch score| / max |torch score|, the same for maps, every decision the same)."""
    worst_s = worst_m = 0.0
    same = True
    for b in batches:
        ref, got = det.score_batch(b), scorer.score_batch(b)
        r, g = ref.scores[det.score_method], got.scores[det.score_method]
        worst_s = max(worst_s, float(np.abs(g - r).max() / np.abs(r).max()))
        worst_m = max(worst_m, float(np.abs(got.maps - ref.maps).max() / np.abs(ref.maps).max()))
        same &= bool((det.decide(g) == det.decide(r)).all())
    return worst_s, worst_m, same


def model_call(scorer, batches: list, repeats: int = 2) -> tuple[float, float]:
    """(images/s over prepared batches, median ms of one image at batch 1): the model call alone."""
    scorer.score_batch(batches[0])  # warm-up
    best = float("inf")
    n = sum(len(b.images) for b in batches)
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            scorer.score_batch(b)
        best = min(best, time.perf_counter() - t0)
    one = batches[0].__class__(
        batches[0].images[:1],
        batches[0].boxes[:1],
        batches[0].sizes[:1],
        None if batches[0].valid is None else batches[0].valid[:1],
    )
    lat = []
    for _ in range(10):
        t0 = time.perf_counter()
        scorer.score_batch(one)
        lat.append(time.perf_counter() - t0)
    return n / best, 1000 * float(np.median(lat))


def run_shape(
    name: str,
    root: Path,
    category: str,
    rates: list[float],
    threads: int,
    batch_size: int,
    work: Path,
    runtimes: list[str],
) -> list[dict]:
    det, files = fitted(root, category, threads)
    direct = np.concatenate(
        [
            det.score_batch(det.preprocessing.batch([(f, f.read_bytes()) for f in files[i : i + batch_size]])).scores[
                det.score_method
            ]
            for i in range(0, len(files), batch_size)
        ]
    )
    old_ms, new_ms, size = figure_ms(det, files[-1], work)
    prepared = [
        det.preprocessing.batch([(f, f.read_bytes()) for f in files[i : i + batch_size]])
        for i in range(0, len(files), batch_size)
    ]
    rows = []
    for runtime, scorer in runtimes_of(det, work, threads, runtimes).items():
        call_ips, latency_ms = model_call(scorer, prepared)
        score_diff, map_diff, same = parity(scorer, det, prepared)
        inspect_once(scorer, files[:batch_size], work / f"{name}-{runtime}-warm", float("inf"), batch_size)  # warm-up
        base_s = None
        for rate in rates:
            threshold = float("inf") if rate <= 0 else float(np.quantile(direct, 1 - rate))
            seconds, counts = inspect_once(scorer, files, work / f"{name}-{runtime}-{rate}", threshold, batch_size)
            base_s = seconds if base_s is None and rate <= 0 else base_s
            extra = (seconds - base_s) / counts["DEFECT"] * 1000 if base_s is not None and counts["DEFECT"] else None
            rows.append(
                {
                    "shape": name,
                    "runtime": runtime,
                    "images": len(files),
                    "image_size": list(size),
                    "frame": list(det.frame),
                    "rate": rate,
                    "defects": counts["DEFECT"],
                    "seconds": seconds,
                    "images_per_second": len(files) / seconds,
                    "model_call_ips": call_ips,
                    "latency_ms_batch1": latency_ms,
                    "extra_ms_per_defect": extra,
                    "score_diff": score_diff,
                    "map_diff": map_diff,
                    "same_decisions": same,
                    "figures_ms_old": old_ms,
                    "figures_ms_new": new_ms,
                    "threads": threads,
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
            print(f"[{name}] {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    return rows


HEADS = (  # the table's columns
    "shape (figure size, model frame) | runtime | model call images/s | batch-1 ms "
    "| vs torch: score / map diff, same decisions "
    "| DEFECT rate | DEFECTs | inspect images/s | extra ms per DEFECT "
    "| figures of one DEFECT: old / now ms | peak RSS so far MiB"
)


def cells(r: dict) -> list[str]:
    same = "yes" if r.get("same_decisions") else "NO"
    return [
        f"{r['shape']} ({r['image_size'][0]}x{r['image_size'][1]}, {r['frame'][0]}x{r['frame'][1]})",
        r["runtime"],
        f"{r['model_call_ips']:.1f}",
        f"{r['latency_ms_batch1']:.0f}",
        f"{r['score_diff']:.1e} / {r['map_diff']:.1e}, {same}" if "score_diff" in r else "-",
        f"{100 * r['rate']:.0f} %",
        f"{r['defects']} of {r['images']}",
        f"{r['images_per_second']:.1f}",
        "-" if r["extra_ms_per_defect"] is None else f"{r['extra_ms_per_defect']:.1f}",
        f"{r['figures_ms_old']:.0f} / {r['figures_ms_new']:.0f}",
        f"{r['peak_rss_mib']:.0f}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = category_parser(__doc__)
    ap.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.05, 0.76])
    ap.add_argument(
        "--shapes",
        nargs="+",
        choices=["native", "tall"],
        default=["native", "tall"],
        help="native: the category's own images; tall: the same as 500x1250 grayscale JPEGs",
    )
    ap.add_argument(
        "--runtimes",
        nargs="+",
        choices=["torch", "onnxruntime", "openvino"],
        default=["torch", "onnxruntime", "openvino"],
    )
    ap.add_argument("--batch-size", type=int, default=16)
    return rows_main(ap, argv, row_table(HEADS, cells), measure)


def measure(args) -> list[dict]:
    from anomaflow.model import pipeline

    pipeline.configure_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="anomaflow-speed-") as tmp:
        work = Path(tmp)
        for shape in args.shapes:
            root = args.data if shape == "native" else tall_copy(args.data, args.category, work / "tall")
            name = args.category if shape == "native" else "tall"
            rows += run_shape(name, root, args.category, args.rates, args.threads, args.batch_size, work, args.runtimes)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
