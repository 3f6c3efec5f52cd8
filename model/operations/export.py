"""Export a fitted detector as one graph for machines without a Python ML stack.

The graph is the detector's own `map_tensor` (backbone, bank distance or Gaussian scoring, map
upsampling and smoothing, a fusion's standardisation) followed by `model.detectors.scoring.
image_score_tensor` (padding fill and the image score), captured once by torch.export: inputs `images` (N,H,W,3)
uint8 in the model's frame and `valid` (N,H,W) uint8 (1 = the image's own pixel), outputs `maps`
(N,H,W) and `score` (N,). The batch size is free. Preprocessing stays outside the graph and is
the same `model.data.preprocessing.Preprocessing` (numpy + Pillow) every other path uses; the
threshold is metadata a caller may override, never part of the scores. `model.operations.runtime` runs
the result with onnxruntime or OpenVINO alone.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anomaflow.model.detectors.base import Detector
from anomaflow.model.detectors.scoring import image_score_tensor
from anomaflow.model.files import write_json_atomic
from anomaflow.model.operations.runtime import EXPORT_FILE

EXPORT_FORMAT_VERSION = 1
ONNX_FILE = "model.onnx"
OPENVINO_FILE = "model.xml"
FORMATS = ("onnx", "openvino")
OPSET = 18  # the lowest the torch.export-based exporter writes without a version conversion


def missing_libraries(runtime: str = "onnxruntime") -> list[str]:
    """What the export extra lacks here: torch.onnx's exporter needs onnx and onnxscript, a run the runtime."""
    import importlib.util

    return [m for m in ("onnx", "onnxscript", runtime) if importlib.util.find_spec(m) is None]


class ScoringGraph(nn.Module):
    """uint8 images and valid masks -> (maps, score): what torch.export captures."""

    def __init__(self, det: Detector) -> None:
        super().__init__()
        object.__setattr__(self, "det", det)  # not a submodule: the detector is no nn.Module
        self.parts = nn.ModuleList(_modules_of(det))  # its networks, so the export sees their weights as parameters

    def forward(self, images: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 255.0  # model.detectors.base.to_tensor
        maps = self.det.map_tensor(x, exportable=True)
        return image_score_tensor(maps, valid > 0, self.det.score_method, self.det.score_sigma)


def _modules_of(det: Detector) -> list[nn.Module]:
    found = [v for v in vars(det).values() if isinstance(v, nn.Module)]
    for member in getattr(det, "members", []):
        found += _modules_of(member)
    return found


def metadata(
    det: Detector, fmt: str, model_name: str | None, model_version: str | None, operating_point: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "export_format_version": EXPORT_FORMAT_VERSION,
        "format": fmt,
        "file": ONNX_FILE if fmt == "onnx" else OPENVINO_FILE,
        "family": det.family,
        "frame": list(det.frame),
        "keep_aspect": det.keep_aspect,
        "score_method": det.score_method,
        "threshold": det.threshold,  # DEFECT when score > threshold; a caller may pass its own
        "pixel_threshold": det.pixel_threshold,
        "model_name": model_name,
        "model_version": model_version,
        "operating_point": operating_point or {},
        "inputs": {"images": "uint8 (N, H, W, 3) in the frame", "valid": "uint8 (N, H, W), 1 = the image's own pixel"},
        "outputs": {"maps": "float32 (N, H, W)", "score": "float32 (N,)"},
        "opset": OPSET,
    }


def export_detector(
    det: Detector,
    output: str | Path,
    fmt: str = "onnx",
    *,
    model_name: str | None = None,
    model_version: str | None = None,
    operating_point: dict[str, Any] | None = None,
) -> Path:
    """Write OUTPUT/model.onnx (or model.xml + model.bin) and OUTPUT/anomaflow_export.json.
    Built in a temporary folder and moved into place whole: OUTPUT never holds half an export."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    if det.threshold is None:
        raise ValueError("the detector has no calibrated threshold; export a trained, calibrated model")
    missing = missing_libraries("openvino" if fmt == "openvino" else "onnx")
    if missing:
        raise ValueError(f"exporting needs {', '.join(missing)}: pip install 'anomaflow[export]'")
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output}: folder exists and is not empty; choose a new --output")
    graph = ScoringGraph(det).eval()
    h, w = det.frame
    example = (torch.zeros(2, h, w, 3, dtype=torch.uint8), torch.ones(2, h, w, dtype=torch.uint8))
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as tmp:
        work = Path(tmp) / "out"
        work.mkdir()
        batch = torch.export.Dim("batch")  # free batch size; the frame is fixed per model
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="# The axis name", category=UserWarning
            )  # both inputs share one batch axis
            torch.onnx.export(
                graph,
                example,
                str(work / ONNX_FILE),
                input_names=["images", "valid"],
                output_names=["maps", "score"],
                dynamic_shapes={"images": {0: batch}, "valid": {0: batch}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        if fmt == "openvino":
            import openvino as ov

            # full-precision weights: OpenVINO compresses to FP16 by default, which moves scores by percents
            ov.save_model(ov.convert_model(str(work / ONNX_FILE)), str(work / OPENVINO_FILE), compress_to_fp16=False)
            (work / ONNX_FILE).unlink()
        write_json_atomic(metadata(det, fmt, model_name, model_version, operating_point), work / EXPORT_FILE)
        if output.exists():
            output.rmdir()
        shutil.move(str(work), str(output))
    return output


def cached_export(det: Detector, cache_dir: str | Path, fmt: str, model_name: str, model_version: str) -> Path:
    """The export of one registered version, made once into cache_dir/<name>/v<version>/<fmt> and reused:
    what `anomaflow inspect --runtime onnxruntime|openvino` scores with."""
    import json

    target = Path(cache_dir) / model_name / f"v{model_version}" / fmt
    meta = target / EXPORT_FILE
    if meta.is_file():
        saved = json.loads(meta.read_text())
        if (
            saved.get("model_version") == model_version
            and saved.get("threshold") == det.threshold
            and (target / saved["file"]).is_file()
        ):
            return target
        shutil.rmtree(target)  # another model's or a broken export under this name: made again
    return export_detector(det, target, fmt, model_name=model_name, model_version=model_version)
