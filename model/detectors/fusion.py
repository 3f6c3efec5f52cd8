"""Label-free fusion: the anomaly maps of several fitted detectors, standardised on held-out
normals and averaged.

Why: PatchCore (nearest patch anywhere) and PaDiM (Gaussian at the patch's own position) fail on
different defects, and which one wins on a product nobody has tuned on is not known in advance.
Each member's map is turned into "standard deviations above what a good part shows here" with
the mean and standard deviation of its map values on held-out normal images (no labels), so the
members are on one scale and the average of the standardised maps is a map like any other: the
image score pools it with the family's `score_method`, the pixel threshold and overlays read it.

Saved as one detector folder: `fusion.json` (member order and statistics) and one sub-folder per
member, each a complete saved detector of its own family.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from anomaflow.model.config import FusionConfig
from anomaflow.model.detectors.base import METADATA_FILE, Detector, ProgressFn
from anomaflow.model.files import write_json_atomic

STATS_FILE = "fusion.json"


class FusionDetector(Detector):
    family = "fusion"

    def __init__(
        self,
        config: FusionConfig | None = None,
        members: list[Detector] | None = None,
        score_method: str = "top_mean",
        seed: int = 0,
    ) -> None:
        self.config = config or FusionConfig()
        self.members: list[Detector] = list(members or [])
        size = self.members[0].image_size if self.members else 0
        super().__init__(size, score_method, self.members[0].score_sigma if self.members else 4.0)
        self.seed = seed
        self.stats: list[tuple[float, float]] = []  # (mean, std) of each member's held-out normal map values
        self._member_families: list[str] = [m.family for m in self.members]
        self.history: list[dict[str, Any]] = []

    def _sync_frame(self) -> None:
        for m in self.members:
            m.frame, m.keep_aspect = self.frame, self.keep_aspect

    def fit(
        self, images: np.ndarray, holdout: np.ndarray | None = None, progress: ProgressFn | None = None
    ) -> list[dict[str, Any]]:
        """Fit every member on `images`; standardise on `holdout` (held-out normals; the fit
        images themselves when none are given, which understates the normal spread)."""
        images = self.set_frame(images)
        self._sync_frame()
        t0 = time.perf_counter()
        for m in self.members:
            m.fit(images, holdout, progress=progress)
        self.standardise(images if holdout is None or len(holdout) == 0 else holdout)
        self._record(time.perf_counter() - t0)
        if progress:
            progress(self.history[-1])
        return self.history

    def _record(self, seconds: float) -> None:
        self.history = [
            {
                "epoch": 1,
                "epochs": 1,
                "train_loss": 0.0,
                "val_loss": None,
                "seconds": seconds,
                "members": [m.family for m in self.members],
                "member_stats": [list(s) for s in self.stats],
            }
        ]

    def standardise(self, normals: np.ndarray) -> None:
        """Each member's map statistics on good images (fitted members: no refit)."""
        normals = self.check_images(normals)
        self.stats = []
        for m in self.members:
            maps = m.anomaly_maps(normals).astype(np.float64)
            self.stats.append((float(maps.mean()), max(float(maps.std()), 1e-12)))

    @classmethod
    def of_fitted(
        cls,
        members: list[Detector],
        normals: np.ndarray,
        config: FusionConfig | None = None,
        score_method: str = "top_mean",
        seed: int = 0,
    ) -> "FusionDetector":
        """A fusion of members already fitted on the same frame (what --detector auto builds
        from its candidates without fitting them again)."""
        frames = {m.frame for m in members}
        if len(frames) != 1 or len({m.keep_aspect for m in members}) != 1:
            raise ValueError(f"fusion members must share one preprocessing, got frames {sorted(frames)}")
        det = cls(config, members, score_method=score_method, seed=seed)
        det.set_input(members[0].frame, members[0].keep_aspect)
        det.standardise(normals)
        det._record(0.0)
        return det

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        images = self.check_images(images)
        if not self.stats or len(self.stats) != len(self.members):
            raise RuntimeError("the fusion is not fitted (no member statistics)")
        self._sync_frame()
        out = np.zeros((len(images), *self.frame), np.float64)
        for m, (mu, sd) in zip(self.members, self.stats):
            out += (m.anomaly_maps(images).astype(np.float64) - mu) / sd
        return (out / len(self.members)).astype(np.float32)

    def map_tensor(self, x, exportable: bool = False):
        """The same average of standardised member maps on a [0,1] tensor (N,3,H,W), in float32: what
        model.operations.export traces (within 1e-6 relative of anomaly_maps' float64 sum, tested)."""
        self._sync_frame()
        total = None
        for m, (mu, sd) in zip(self.members, self.stats):
            z = (m.map_tensor(x, exportable) - mu) / sd
            total = z if total is None else total + z
        return total / len(self.members)

    # -- persistence -------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"fusion": self.config.model_dump(), "seed": self.seed, "members": [m.family for m in self.members]}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "FusionDetector":
        return cls(FusionConfig.model_validate(config["fusion"]), seed=config.get("seed", 0))

    def _save_weights(self, directory: Path) -> None:
        if not self.stats:
            raise RuntimeError("nothing to save: the fusion is not fitted")
        self._sync_frame()
        for i, m in enumerate(self.members):
            m.save(directory / f"member_{i}")
        write_json_atomic(
            {"members": [m.family for m in self.members], "stats": [list(s) for s in self.stats]},
            directory / STATS_FILE,
        )

    def _load_weights(self, directory: Path) -> None:
        """Reads the member list and statistics; model.detectors.registry.load_detector loads the member
        folders (`member_dirs`) and hands them to `attach` (a family never imports the registry)."""
        saved = json.loads((directory / STATS_FILE).read_text())
        families, stats = saved.get("members"), saved.get("stats")
        if not isinstance(families, list) or not isinstance(stats, list) or len(families) != len(stats) or not families:
            raise ValueError(f"{directory / STATS_FILE}: no member list with one (mean, std) each")
        for i, fam in enumerate(families):
            if not (directory / f"member_{i}" / METADATA_FILE).is_file():
                raise ValueError(
                    f"{directory}: member {i} ({fam}) is missing ({directory / f'member_{i}' / METADATA_FILE})"
                )
        self._member_families = [str(f) for f in families]
        self.stats = [(float(a), float(b)) for a, b in stats]

    def member_dirs(self, directory: Path) -> list[Path]:
        return [directory / f"member_{i}" for i in range(len(self._member_families))]

    def attach(self, members: list[Detector], directory: Path) -> None:
        for sub, m, fam in zip(self.member_dirs(directory), members, self._member_families):
            if m.family != fam:
                raise ValueError(f"{sub}: a {m.family} detector where {directory / STATS_FILE} says {fam}")
        self.members = members
        self.image_size = members[0].image_size
        self._sync_frame()
