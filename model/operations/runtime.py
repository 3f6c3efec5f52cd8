"""Run an exported detector (model.operations.export) with onnxruntime or OpenVINO: numpy and Pillow, no torch,
no Prefect, no MLflow.

    python -m anomaflow.model.operations.runtime MODEL_DIR INPUT_DIR [--threshold X] [--runtime onnxruntime|openvino] \\
        [--batch-size 8] [--threads 2] [--output results.csv]

Images are prepared by the same `model.data.preprocessing.Preprocessing` training and inspection use
(frame and aspect policy from the export's metadata) and decided by `model.evaluation.decision.decide`
with the exported threshold unless --threshold overrides it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaflow.model.data.preprocessing import Batch, Preprocessing
from anomaflow.model.evaluation.decision import decide
from anomaflow.model.files import write_bytes_atomic

EXPORT_FILE = "anomaflow_export.json"  # model.operations.export writes it (that module needs torch)
RUNTIMES = ("onnxruntime", "openvino")


@dataclass
class Scored:
    """What `model.detectors.base.ScoreResult` holds, so model.operations.inspection scores through either."""

    maps: np.ndarray  # (N, H, W) float32, padding filled
    scores: dict[str, np.ndarray]  # {score_method: (N,)}
    valid: np.ndarray | None = None


class ExportedDetector:
    """An exported graph with its metadata; `score_batch` takes what `preprocessing` prepares."""

    def __init__(self, directory: str | Path, runtime: str | None = None, threads: int | None = None) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / EXPORT_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.directory}: no {EXPORT_FILE}; not an `anomaflow export` folder")
        self.meta = json.loads(meta_path.read_text())
        self.preprocessing = Preprocessing(tuple(self.meta["frame"]), bool(self.meta["keep_aspect"]))
        self.frame = self.preprocessing.frame
        self.family = self.meta["family"]
        self.score_method = self.meta["score_method"]
        self.threshold = self.meta["threshold"]
        self.pixel_threshold = self.meta.get("pixel_threshold")
        model_file = self.directory / self.meta["file"]
        self.runtime = runtime or ("openvino" if self.meta["format"] == "openvino" else "onnxruntime")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; expected one of {RUNTIMES}")
        if self.runtime == "onnxruntime":
            if model_file.suffix != ".onnx":
                raise ValueError(f"{model_file}: onnxruntime runs an ONNX export (--format onnx)")
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            # idle threads sleep instead of spinning: the decode thread of inspection shares the cores
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
            self._run = lambda images, valid: self._session.run(["maps", "score"], {"images": images, "valid": valid})
        else:
            import openvino as ov

            core = ov.Core()
            config: dict[str, object] = {
                "INFERENCE_PRECISION_HINT": "f32"
            }  # not bf16 where the CPU has it: same scores as torch
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            compiled = core.compile_model(core.read_model(str(model_file)), "CPU", config)
            request = compiled.create_infer_request()
            maps_out, score_out = compiled.output("maps"), compiled.output("score")

            def run(images: np.ndarray, valid: np.ndarray) -> list[np.ndarray]:
                result = request.infer({"images": images, "valid": valid})
                return [np.array(result[maps_out]), np.array(result[score_out])]

            self._run = run

    def score_batch(self, batch: Batch) -> Scored:
        n, h, w = batch.images.shape[:3]
        valid = np.ones((n, h, w), np.uint8) if batch.valid is None else batch.valid.astype(np.uint8)
        maps, scores = self._run(np.ascontiguousarray(batch.images, dtype=np.uint8), valid)
        return Scored(np.asarray(maps, np.float32), {self.score_method: np.asarray(scores, np.float64)}, batch.valid)

    def decide(self, scores: np.ndarray, threshold: float | None = None) -> np.ndarray:
        t = self.threshold if threshold is None else threshold
        if t is None:
            raise ValueError("the export has no threshold; pass one")
        return decide(scores, t)


def inspect_folder(
    det: ExportedDetector, input_dir: str | Path, threshold: float | None = None, batch_size: int = 8
) -> list[dict[str, object]]:
    """One row per image file under input_dir (the inbox rules of `anomaflow inspect`: recursive,
    sorted, links out of the folder ignored): path, score, decision, or ERROR with the reason."""
    from anomaflow.model.operations.inspection import ERROR, decode_items, list_inbox, read_item

    root = Path(input_dir)
    files = list_inbox(root)
    if not files:
        raise FileNotFoundError(f"{root}: no images in the folder")
    t = det.threshold if threshold is None else threshold
    rows: list[dict[str, object]] = []
    for i in range(0, len(files), batch_size):
        decoded = decode_items(
            [read_item(p, root) for p in files[i : i + batch_size]], det.preprocessing, keep_picture=False
        )
        rows += [
            {"path": item.rel, "score": "", "decision": ERROR, "threshold": t, "error": why}
            for item, why in decoded.errors
        ]
        if decoded.framed:
            scores = det.score_batch(det.preprocessing.stack(decoded.framed)).scores[det.score_method]
            rows += [
                {"path": item.rel, "score": float(s), "decision": str(d), "threshold": t, "error": ""}
                for item, s, d in zip(decoded.keep, scores, det.decide(scores, threshold))
            ]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m anomaflow.model.operations.runtime",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("model_dir", type=Path, help="an `anomaflow export` output folder")
    ap.add_argument("input_dir", type=Path, help="folder of images, searched recursively")
    ap.add_argument(
        "--threshold", type=float, default=None, help="decide with this threshold instead of the exported one"
    )
    ap.add_argument("--runtime", choices=RUNTIMES, default=None, help="default: the one the export was made for")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--output", type=Path, default=None, help="write the rows as CSV here (default: stdout)")
    args = ap.parse_args(argv)
    try:
        det = ExportedDetector(args.model_dir, args.runtime, args.threads)
        rows = inspect_folder(det, args.input_dir, args.threshold, args.batch_size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"anomaflow runtime: error: {exc}", file=sys.stderr)
        return 2
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=["path", "score", "decision", "threshold", "error"])
    writer.writeheader()
    writer.writerows(rows)
    if args.output:  # whole or not at all: a temporary name, then a rename
        write_bytes_atomic(text.getvalue().encode(), args.output)
    else:
        sys.stdout.write(text.getvalue())
    counts = {d: sum(r["decision"] == d for r in rows) for d in ("NORMAL", "DEFECT", "ERROR")}
    print(f"{len(rows)} images: " + ", ".join(f"{k} {v}" for k, v in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
