"""The served model: the MLflow pyfunc that wraps a saved detector. It imports MLflow, pandas and
anomaflow.model only (never Prefect or the CLI), so `mlflow models serve` and
`mlflow.pyfunc.load_model` stay light."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from anomaflow.model.data.preprocessing import Batch
from anomaflow.model.detectors.registry import load_detector

# MLflow's models-from-code entry point, copied into every logged model.
SERVED_MODEL_FILE = str(Path(__file__).with_name("served_model.py"))


class AnomaflowModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: carries the detector dir (weights, preprocessing size, score method,
    thresholds). Input: DataFrame with column `image` (encoded image bytes) or `path`.
    Output: DataFrame with `score`, `decision`, `threshold` (+ `anomaly_map` when
    params={"return_maps": True})."""

    def load_context(self, context: Any) -> None:
        self.detector = load_detector(context.artifacts["detector"])

    # model_input: pd.DataFrame is a hint MLflow infers no schema from (the signature is explicit,
    # SIGNATURE); without any hint MLflow warns on every run that there is none.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        result = self.detector.score_batch(_decode_input(model_input, self.detector))
        scores = result.scores[self.detector.score_method]
        out = pd.DataFrame(
            {
                "score": scores.astype(float),
                "decision": self.detector.decide(scores),
                "threshold": float(self.detector.threshold),
            }
        )
        if params and params.get("return_maps"):
            out["anomaly_map"] = [m.tolist() for m in result.maps]
        return out


def _decode_input(model_input: Any, detector: Any) -> Batch:
    """Images prepared the way the detector saved (its Preprocessing), as inspection does."""
    if isinstance(model_input, pd.DataFrame):
        if "image" in model_input and model_input["image"].notna().all():
            sources = [(f"<row {i}>", _as_bytes(b)) for i, b in enumerate(model_input["image"])]
        elif "path" in model_input:
            sources = [(Path(p), None) for p in model_input["path"]]
        else:
            raise ValueError("input needs an 'image' column (encoded image bytes) or a 'path' column")
    elif isinstance(model_input, (list, tuple)):
        sources = [(Path(p), None) for p in model_input]
    else:
        raise ValueError(f"unsupported input type {type(model_input).__name__}")
    return detector.preprocessing.batch(sources)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # base64 from a JSON request
        import base64

        return base64.b64decode(value)
    raise ValueError(f"image column holds {type(value).__name__}, expected bytes")


SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", "image", required=False), ColSpec("string", "path", required=False)]),
    outputs=Schema([ColSpec("double", "score"), ColSpec("string", "decision"), ColSpec("double", "threshold")]),
    params=ParamSchema([ParamSpec("return_maps", "boolean", False)]),
)
