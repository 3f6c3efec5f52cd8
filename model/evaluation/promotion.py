"""The promotion gate: a challenger replaces the champion only when it is at least as good.

Pure decision logic, so the rule is unit-tested without a registry. Fail-closed: a missing
metric, NaN, or any bar not met keeps the champion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# The gate's default bars (scheduled retraining): below these a challenger is never promoted.
GATE_BARS: dict[str, float] = {"image_auroc": 0.8, "pixel_auroc": 0.8}


@dataclass
class PromotionDecision:
    promote: bool
    reason: str
    primary_metric: str
    challenger_score: float | None
    champion_score: float | None
    failed_bars: list[str] = field(default_factory=list)


def _value(metrics: dict[str, float] | None, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    v = float(metrics[key])
    return None if math.isnan(v) else v


def decide_promotion(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    primary_metric: str = "image_auroc_max",
    min_bars: dict[str, float] | None = None,
    tolerance: float = 0.0,
) -> PromotionDecision:
    """Promote when every bar is met and challenger >= champion - tolerance on the primary
    metric (higher is better). No champion: promote if the bars are met."""
    ch = _value(challenger, primary_metric)
    cp = _value(champion, primary_metric)
    if ch is None:
        return PromotionDecision(False, f"challenger has no {primary_metric}", primary_metric, ch, cp)
    failed = []
    for key, bar in (min_bars or {}).items():
        v = _value(challenger, key)
        if v is None or v < bar:
            failed.append(f"{key}={v if v is not None else 'missing'} < {bar}")
    if failed:
        return PromotionDecision(
            False, "challenger misses minimum bars: " + "; ".join(failed), primary_metric, ch, cp, failed
        )
    if champion is None:
        return PromotionDecision(True, "no champion yet", primary_metric, ch, cp)
    if cp is None:
        return PromotionDecision(
            False, f"champion has no {primary_metric}: cannot compare (fail-closed)", primary_metric, ch, cp
        )
    if ch >= cp - tolerance:
        return PromotionDecision(
            True, f"challenger {primary_metric}={ch:.4f} >= champion {cp:.4f}", primary_metric, ch, cp
        )
    return PromotionDecision(False, f"challenger {primary_metric}={ch:.4f} < champion {cp:.4f}", primary_metric, ch, cp)
