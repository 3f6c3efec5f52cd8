"""Which detector families exist, and the two ways to get a detector: build one from a run config,
load a saved one. The interface (model.detectors.base) knows no implementation and each family imports
only the interface; this module is the one place that imports them all, so there is no cycle.
A new family registers here."""

from __future__ import annotations

import json
from pathlib import Path

from anomaflow.model.config import TrainConfig
from anomaflow.model.data.preprocessing import Preprocessing
from anomaflow.model.detectors.base import METADATA_FILE, Detector, migrate


def families() -> dict[str, type[Detector]]:
    """Family name -> class (imported on first use: PatchCore pulls in the backbone code)."""
    from anomaflow.model.detectors.autoencoder import AutoencoderDetector
    from anomaflow.model.detectors.fusion import FusionDetector
    from anomaflow.model.detectors.padim import PadimDetector
    from anomaflow.model.detectors.patchcore import PatchCoreDetector

    return {d.family: d for d in (AutoencoderDetector, PatchCoreDetector, PadimDetector, FusionDetector)}


def build_detector(config: TrainConfig, preprocessing: Preprocessing | None = None) -> Detector:
    """An unfitted detector of the config's family with its settings; with `preprocessing` (the
    one its training images were prepared with) the detector saves exactly that, so inspection
    and serving prepare images as training did."""
    known = families()
    if config.detector not in known:
        raise ValueError(f"unknown detector {config.detector!r}; expected one of {sorted(known)}")
    if config.detector == "fusion":
        members = [
            build_detector(config.model_copy(update={"detector": m}), preprocessing) for m in config.fusion.members
        ]
        det = known["fusion"](config.fusion, members, score_method=config.score_method, seed=config.seed)
    else:
        det = known[config.detector](
            getattr(config, config.detector), score_method=config.score_method, seed=config.seed
        )
    prep = preprocessing or Preprocessing(det.frame, config.keep_aspect)  # fit() learns the frame itself
    det.set_input(prep.frame, prep.keep_aspect)
    return det


def load_detector(directory: str | Path) -> Detector:
    """Load any saved detector; weights are read with torch.load(weights_only=True)."""
    directory = Path(directory)
    meta_path = directory / METADATA_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not a saved anomaflow detector (no {METADATA_FILE})")
    meta = json.loads(meta_path.read_text())
    family = meta.get("family")
    meta = migrate(meta, meta_path)
    known = families()
    if family not in known:
        raise ValueError(f"{meta_path}: unknown detector family {family!r}; known: {sorted(known)}")
    det = known[family].from_config(meta["config"])
    det.restore(meta)
    det._load_weights(directory)
    member_dirs = getattr(det, "member_dirs", None)
    if member_dirs is not None:  # a fusion: complete detectors of their own in sub-folders
        det.attach([load_detector(d) for d in member_dirs(directory)], directory)
    return det
