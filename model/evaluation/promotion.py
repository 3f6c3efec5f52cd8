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
    field_metrics: dict[str, float] = field(default_factory=dict)  # challenger_/champion_field_precision, _recall


def _value(metrics: dict[str, float] | None, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    v = float(metrics[key])
    return None if math.isnan(v) else v


FIELD_METRICS = ("precision", "recall")


def field_check(challenger: dict[str, float], champion: dict[str, float], tolerance: float = 0.0) -> list[str]:
    """What the challenger does worse than the champion on the same reviewed parts, each scored by
    its own model at its own threshold: field precision and recall must each be at least the
    champion's minus tolerance. Fail-closed: a value the challenger lacks (NaN: it flagged none of
    them) where the champion has one fails; a metric the champion lacks is not compared."""
    failed = []
    for key in FIELD_METRICS:
        ch, cp = _value(challenger, key), _value(champion, key)
        if cp is None:
            continue
        if ch is None or ch < cp - tolerance:
            failed.append(f"field {key} {'n/a' if ch is None else f'{ch:.4f}'} < champion {cp:.4f}")
    return failed


def decide_promotion(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    primary_metric: str = "image_auroc_max",
    min_bars: dict[str, float] | None = None,
    tolerance: float = 0.0,
    challenger_field: dict[str, float] | None = None,
    champion_field: dict[str, float] | None = None,
) -> PromotionDecision:
    """Promote when every bar is met and challenger >= champion - tolerance on the primary
    metric (higher is better). No champion: promote if the bars are met. With the field metrics of
    both on reviewed parts (precision, recall), the challenger must also pass field_check."""
    decision = _decide_primary(challenger, champion, primary_metric, min_bars, tolerance)
    if challenger_field is None or champion_field is None:
        return decision
    decision.field_metrics = {
        f"{who}_field_{k}": float(m[k])
        for who, m in (("challenger", challenger_field), ("champion", champion_field))
        for k in FIELD_METRICS
        if k in m
    }
    if champion is None or not decision.promote:
        return decision
    failed = field_check(challenger_field, champion_field, tolerance)
    if failed:
        decision.promote = False
        decision.reason = f"{decision.reason}, but on the reviewed parts: " + "; ".join(failed)
    else:
        decision.reason += "; field precision and recall on the reviewed parts not below the champion's"
    return decision


def _decide_primary(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    primary_metric: str,
    min_bars: dict[str, float] | None,
    tolerance: float,
) -> PromotionDecision:
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
