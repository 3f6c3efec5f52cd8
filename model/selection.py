"""Choosing a detector without labels: candidates scored on synthetic defects in held-out normals.

`--detector auto` fits each candidate on the fit part of train/good and scores the held-out
normals and defective copies of them (model.synthetic: the classic kinds plus thin lines and
small low-contrast spots, which do not saturate where the classic ones do). The image AUROC
of normals against those copies ranks the candidates; nothing here reads the test split, so
permuting its labels cannot change the choice. A candidate near chance is never chosen, and
the same check warns when a family the user forces scores that low.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model import metrics
from model.config import PatchCoreConfig, TrainConfig
from model.detector import Detector
from model.synthetic import KINDS, SUBTLE_KINDS, synthetic_set

NEAR_CHANCE = 0.6  # synthetic-defect image AUROC below this: the model does not see defects here
TIE = 0.005  # a later candidate must beat the earlier (simpler, default-first) ones by more than this


@dataclass
class Selection:
    chosen: str
    config: TrainConfig  # the resolved run config (a concrete family)
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per candidate: name, scores, seconds, status
    warning: str = ""
    detector: Detector | None = None  # the chosen candidate, already fitted (not refitted by the run)
    history: list[dict[str, Any]] = field(default_factory=list)
    fit_seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Every candidate's synthetic score, the chosen one's as the run's own syn_* metrics."""
        chosen = next(r for r in self.rows if r["name"] == self.chosen)
        out = {k: chosen[k] for k in ("syn_image_auroc", "syn_pixel_auroc") if k in chosen}
        out.update({f"auto_syn_image_auroc_{r['name']}": r["syn_image_auroc"] for r in self.rows if r.get("syn_image_auroc") is not None})
        out["auto_seconds"] = float(sum(r.get("seconds", 0.0) for r in self.rows))
        return out


def candidates(base: TrainConfig) -> dict[str, TrainConfig]:
    """Name -> run config, the default first. PatchCore on EfficientNet-Lite0 at three depths of
    features; the autoencoder trains for minutes and is left to an explicit --detector choice."""
    pc = base.patchcore
    layer_sets = {"patchcore_s3s4": ["stage3", "stage4"], "patchcore_s2s3": ["stage2", "stage3"], "patchcore_s4s5": ["stage4", "stage5"]}
    out = {}
    for name, layers in layer_sets.items():
        cfg = PatchCoreConfig(**{**pc.model_dump(), "backbone": "efficientnet_lite0", "layers": layers})
        out[name] = base.model_copy(update={"detector": "patchcore", "patchcore": cfg})
    return out


def relative_cost(cfg: TrainConfig) -> float:
    """Fit-and-score time relative to the default candidate (finest stage stage3, 1/8 of the
    input): patches grow with the square of the finest stage's resolution."""
    from model.backbone import lite0_stage_info

    info = lite0_stage_info()
    finest = min(info[layer].reduction for layer in cfg.patchcore.layers)
    return (info["stage3"].reduction / finest) ** 2


def synthetic_check(det: Detector, holdout: np.ndarray, valid: np.ndarray | None, seed: int) -> dict[str, float]:
    """Image (and pixel) AUROC of held-out normals against synthetic defects made from them."""
    if len(holdout) < 2:
        return {}
    kinds = KINDS + SUBTLE_KINDS
    syn, syn_masks, _ = synthetic_set(holdout, seed=seed, per_image=2, kinds=kinds)
    if valid is not None:  # a defect painted on padding is no defect: keep the copies' masks inside the image
        syn_masks = syn_masks & np.repeat(valid, 2, axis=0)[: len(syn_masks)]
    normal = det.score(holdout, valid)
    defective = det.score(syn, None if valid is None else np.repeat(valid, 2, axis=0)[: len(syn)])
    labels = np.r_[np.zeros(len(holdout)), np.ones(len(syn))]
    out = {"syn_image_auroc": metrics.image_auroc(labels, np.r_[normal.scores[det.score_method], defective.scores[det.score_method]])}
    if syn_masks.any():
        out["syn_pixel_auroc"] = metrics.pixel_auroc(syn_masks, defective.maps)
    return out


def near_chance_warning(what: str, syn_auroc: float | None) -> str:
    if syn_auroc is None or syn_auroc >= NEAR_CHANCE:
        return ""
    return (f"{what} separates synthetic defects from held-out normals with image AUROC {syn_auroc:.3f} (near chance, "
            f"< {NEAR_CHANCE}): it is unlikely to catch real defects on this product; try --detector auto or another family")


def _better(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Usable (not near chance) and ahead of the best so far by more than TIE (or the best so far is not usable)."""
    if row["syn_image_auroc"] < NEAR_CHANCE:
        return best is None
    return best is None or best["syn_image_auroc"] < NEAR_CHANCE or row["syn_image_auroc"] > best["syn_image_auroc"] + TIE


def select(
    base: TrainConfig,
    fit: np.ndarray,
    holdout: np.ndarray,
    holdout_valid: np.ndarray | None,
    build: Callable[[TrainConfig], Detector],
    budget_seconds: float,
    log: Callable[[str], None] = print,
) -> Selection:
    """Fit and score each candidate in order (default first) until the time budget is spent;
    keep the best (only its fitted detector is kept in memory)."""
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    kept: tuple[Detector, list[dict[str, Any]], float] | None = None
    t_start = time.perf_counter()
    cands = candidates(base)
    for name, cfg in cands.items():
        spent = time.perf_counter() - t_start
        if rows and spent + rows[0]["seconds"] * relative_cost(cfg) > budget_seconds:  # it would likely overrun
            rows.append({"name": name, "status": f"skipped: over the {budget_seconds:.0f} s budget ({spent:.0f} s spent)", "seconds": 0.0})
            log(f"auto: {name} skipped (time budget {budget_seconds:.0f} s, {spent:.0f} s spent)")
            continue
        t0 = time.perf_counter()
        det = build(cfg)
        history = det.fit(fit, holdout, progress=None)
        fit_s = time.perf_counter() - t0
        check = synthetic_check(det, holdout, holdout_valid, cfg.seed)
        row = {"name": name, "layers": cfg.patchcore.layers, **check, "fit_seconds": fit_s, "seconds": time.perf_counter() - t0, "status": "scored"}
        rows.append(row)
        log(f"auto: {name} synthetic image AUROC {check.get('syn_image_auroc', float('nan')):.4f}, "
            f"pixel AUROC {check.get('syn_pixel_auroc', float('nan')):.4f} ({row['seconds']:.1f} s)")
        if "syn_image_auroc" in row and _better(row, best):
            best, kept = row, (det, history, fit_s)
    if best is None:
        raise ValueError("--detector auto needs at least 2 held-out normal images to score its candidates")
    warning = near_chance_warning("every auto candidate", best["syn_image_auroc"]) if best["syn_image_auroc"] < NEAR_CHANCE else ""
    for r in rows:
        r["chosen"] = r["name"] == best["name"]
    assert kept is not None
    return Selection(best["name"], cands[best["name"]], rows, warning, kept[0], kept[1], kept[2])
