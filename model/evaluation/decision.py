"""The accept/reject rule, on its own so the exported runtime (model.operations.runtime, no torch, no
scikit-learn) decides with the very code training, inspection and the served model use."""

from __future__ import annotations

import numpy as np

NORMAL, DEFECT = "NORMAL", "DEFECT"


def decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    """NORMAL/DEFECT per score: DEFECT when score > threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.where(scores > threshold, DEFECT, NORMAL)
