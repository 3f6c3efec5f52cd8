"""The label-free choice: a candidate near chance on synthetic defects is never chosen; ties keep the default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anomaflow.model.config import TrainConfig
from anomaflow.model.detectors.base import Detector
from anomaflow.model.evaluation.selection import NEAR_CHANCE, candidates, near_chance_warning, relative_cost, select


class Toy(Detector):
    """Maps = brightness deviation from the fit images' mean ('sees' defects), or constant ('blind')."""

    family = "toy"

    def __init__(self, cfg: TrainConfig, blind: bool) -> None:
        super().__init__(cfg.patchcore.image_size, "max", 1.0)
        self.blind, self.mean = blind, None
        self.rng = np.random.default_rng(0)

    def fit(self, images, holdout=None, progress=None):
        self.set_frame(images)
        self.mean = images.astype(np.float32).mean(axis=(0, 3))
        return [{"epoch": 1}]

    def anomaly_maps(self, images):
        if self.blind:  # the same map for every image: AUROC exactly 0.5, alone or fused
            return np.zeros(images.shape[:3], np.float32)
        return np.abs(images.astype(np.float32).mean(axis=3) - self.mean)

    def config_dict(self) -> dict[str, Any]:
        return {}

    def _save_weights(self, directory: Path) -> None: ...

    def _load_weights(self, directory: Path) -> None: ...

    @classmethod
    def from_config(cls, config):
        raise NotImplementedError


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(120 + rng.normal(0, 3, (n, 32, 32, 3)), 0, 255).astype(np.uint8)


def test_a_candidate_near_chance_is_never_chosen_and_ties_keep_the_default():
    base = TrainConfig(detector="auto", patchcore={"image_size": 32})
    names = list(candidates(base))
    assert names == ["fusion", "patchcore_s3s4", "padim_s2s3", "patchcore_s2s3", "patchcore_s4s5"]  # the default first
    # The budget check expects the fusion's members to cost a re-score (fitted with it), and
    # stage2 PatchCore features (4x the patches) twice the fusion of two stage3-cost members.
    assert [relative_cost(n) for n in names] == [1.0, 0.1, 0.1, 2.0, 0.125]
    fit, holdout = _images(20, 0), _images(12, 1)
    blind_default = select(
        base,
        fit,
        holdout,
        None,
        lambda c: Toy(c, blind=c.detector == "padim" or c.patchcore.layers == ["stage3", "stage4"]),
        600,
        log=lambda m: None,
    )
    # the fusion (the default) and both its members blind: a later candidate that sees is chosen
    assert blind_default.chosen in ("patchcore_s2s3", "patchcore_s4s5") and not blind_default.warning
    scores = {r["name"]: r["syn_image_auroc"] for r in blind_default.rows}
    assert max(scores["patchcore_s3s4"], scores["padim_s2s3"]) < NEAR_CHANCE < scores[blind_default.chosen]
    assert scores[blind_default.chosen] > scores["fusion"] + 0.1
    all_seeing = select(base, fit, holdout, None, lambda c: Toy(c, blind=False), 600, log=lambda m: None)
    assert all_seeing.chosen == "fusion"  # equal scores: the default stays
    all_blind = select(base, fit, holdout, None, lambda c: Toy(c, blind=True), 600, log=lambda m: None)
    assert "near chance" in all_blind.warning
    assert near_chance_warning("x", 0.9) == "" and "near chance" in near_chance_warning("the autoencoder model", 0.52)


def test_a_lead_the_held_out_count_cannot_support_keeps_the_default():
    """pick() replaces the default only on a clear lead: more than TIE and more than LEAD_SE
    bootstrap standard errors of the difference on the same held-out images."""
    from anomaflow.model.evaluation.selection import SyntheticCheck, auroc_lead, pick

    rng = np.random.default_rng(0)

    def pair(n: int, shift_b: float) -> dict[str, SyntheticCheck]:
        normal, defect = rng.normal(0, 1, n), rng.normal(1.5, 1, 2 * n)
        noise_n, noise_d = rng.normal(0, 0.3, n), rng.normal(0, 0.3, 2 * n)  # b: the same images, its own noise
        return {
            "a": SyntheticCheck({}, defect, normal),
            "b": SyntheticCheck({}, defect + shift_b + noise_d, normal + noise_n),
        }

    def rows(checks: dict[str, SyntheticCheck]) -> list[dict]:
        from anomaflow.model.evaluation.selection import _auroc

        return [
            {"name": k, "syn_image_auroc": float(_auroc(c.normal_scores[None], c.defect_scores[None])[0])}
            for k, c in checks.items()
        ]

    small = pair(10, 0.15)  # b a little ahead on 10 held-out normals: within the noise
    r = rows(small)
    lead, se = auroc_lead(small["b"], small["a"])
    assert lead == r[1]["syn_image_auroc"] - r[0]["syn_image_auroc"] and se > 0
    assert pick(r, small) == "a" and r[1]["lead_se"] == se and r[1]["lead"] > 0.02  # well past TIE, yet not clear
    large = pair(400, 0.6)  # a clear lead on 400
    r = rows(large)
    assert r[1]["syn_image_auroc"] - r[0]["syn_image_auroc"] > 0.02
    assert pick(r, large) == "b" and r[1]["lead"] > 2 * r[1]["lead_se"]


class SquareOnly(Toy):
    """Sees defects only in a square frame (as a detector might on squashed thin tiles)."""

    def anomaly_maps(self, images):
        if images.shape[1] != images.shape[2]:
            return np.zeros(images.shape[:3], np.float32)
        return super().anomaly_maps(images)


def test_the_frame_policy_keeps_the_aspect_frame_unless_the_square_one_clearly_wins():
    """auto's frame step (anomaflow.model.evaluation.selection.frame_alternative): the same held-out images squashed to
    a square, the chosen candidate fitted again; only a clear synthetic lead switches the frame."""
    from anomaflow.model.evaluation.selection import frame_alternative

    base = TrainConfig(detector="auto", patchcore={"image_size": 32})
    rng = np.random.default_rng(0)
    tall = lambda n: np.clip(120 + rng.normal(0, 3, (n, 64, 32, 3)), 0, 255).astype(np.uint8)  # noqa: E731
    fit, holdout = tall(20), tall(40)
    sq_fit, sq_hold = fit[:, ::2], holdout[:, ::2]  # the same images squashed to 32x32
    quiet = lambda m: None  # noqa: E731

    seeing = select(base, fit, holdout, None, lambda c: Toy(c, blind=False), 600, log=quiet)
    same = frame_alternative(seeing, sq_fit, sq_hold, lambda c: Toy(c, blind=False), 600, log=quiet)
    assert same is seeing and same.config.keep_aspect and same.chosen == "fusion"  # a tie keeps the aspect frame
    row = same.rows[-1]
    assert row["name"] == "fusion_square" and row["status"] == "scored" and not row["chosen"] and "lead" in row

    square_only = select(base, fit, holdout, None, lambda c: SquareOnly(c, blind=False), 600, log=quiet)
    assert "near chance" in square_only.warning  # blind in the tall frame
    switched = frame_alternative(square_only, sq_fit, sq_hold, lambda c: SquareOnly(c, blind=False), 600, log=quiet)
    assert switched.chosen == "fusion_square" and switched.config.keep_aspect is False and switched.warning == ""
    assert [r["name"] for r in switched.rows if r.get("chosen")] == ["fusion_square"]
    assert switched.detector is not square_only.detector and switched.rows[-1]["lead"] > 0.3

    broke = select(base, fit, holdout, None, lambda c: SquareOnly(c, blind=False), 600, log=quiet)
    skipped = frame_alternative(broke, sq_fit, sq_hold, lambda c: SquareOnly(c, blind=False), 0.0, log=quiet)
    assert skipped is broke and skipped.rows[-1]["status"].startswith("skipped")
