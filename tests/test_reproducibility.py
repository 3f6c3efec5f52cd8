"""A seeded run repeats bit for bit from its logged params: same config, same thread count,
separate processes (as a rerun would be). Another thread count is allowed to differ slightly
(float summation order), and the README says by how much."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SCORE = r"""
import json, pathlib, sys
from anomaflow.model import pipeline
from anomaflow.model.config import AutoencoderConfig, PatchCoreConfig, TrainConfig
root, family, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
pipeline.configure_threads(threads)
cfg = TrainConfig(data_root=root, category="demo", detector=family, seed=3, num_threads=threads,
                  autoencoder=AutoencoderConfig(image_size=64, epochs=2), patchcore=PatchCoreConfig(image_size=64))
arrays = pipeline.load_arrays(pipeline.load_dataset(pathlib.Path(root), "demo"), cfg, log=lambda m: None)
det, _, _ = pipeline.fit_detector(cfg, arrays, progress=lambda r: None)
print(json.dumps(det.score(arrays.test).scores[cfg.score_method].tolist()))
"""


def _scores(root, family: str, threads: int) -> np.ndarray:
    out = subprocess.run(
        [sys.executable, "-c", SCORE, str(root), family, str(threads)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("family", ["autoencoder", "patchcore"])
def test_a_seeded_run_repeats_bit_for_bit_with_the_same_thread_count(demo_root, family):
    first, second = _scores(demo_root, family, 2), _scores(demo_root, family, 2)
    assert np.array_equal(first, second)
    other = _scores(demo_root, family, 1)
    assert np.allclose(first, other, rtol=1e-3)  # another thread count: the same model up to float summation order
