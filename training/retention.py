"""From churn scores to a CRM worklist: reasons as sentences, risk tiers, actions, value at stake.

* **Reasons**: the top drivers of a customer's score from LightGBM's SHAP contributions
  (``pred_contrib=True``), keeping only those that push the risk **up**, each turned into a sentence
  from the feature catalog (``features/catalog.py``), e.g. ``"no purchase for 120 days, 3.0x the
  usual gap between purchases"`` or ``"2 unresolved complaints"``. The feature name, its value and
  its contribution (log-odds) are kept next to the sentence for machines.
* **Risk tiers**: ``high`` / ``medium`` / ``low`` from the calibrated probability
  (default: high >= 0.6, medium >= 0.3).
* **Value at stake**: ``P(churn) x CLV over the next 12 months`` (BG/NBD + Gamma-Gamma,
  ``training/clv.py``).
* **Suggested action** from the reasons and the value (:func:`suggest_action`), and the
  **retention list** sorted by value at stake (:func:`retention_list`).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from features import catalog

DEFAULT_TIERS = {"high": 0.6, "medium": 0.3}
TIERS = ("high", "medium", "low")

# Sentences for missing values that carry a meaning.
MISSING_SENTENCES = {
    "gap_mean_days": "bought on a single day only: no purchase rhythm yet",
    "recency_gap_ratio": "bought on a single day only: no purchase rhythm yet",
    "gap_std_days": "too few purchases to know the rhythm",
    "max_gap_days": "bought on a single day only: no purchase rhythm yet",
    "last_gap_days": "bought on a single day only: no purchase rhythm yet",
    "recency_max_gap_ratio": "bought on a single day only: no purchase rhythm yet",
    "orders_trend_90d": "no orders in the 90 days before the last 90",
    "spend_trend_90d": "no spend in the 90 days before the last 90",
    "days_since_complaint": "never complained",
    "satisfaction_mean": "no rated service contact",
    "bg_p_alive": "too little history for the purchase-rhythm model",
    "bg_p_no_purchase": "too little history for the purchase-rhythm model",
    "bg_expected_purchases": "too little history for the purchase-rhythm model",
}

COMPLAINT_FEATURES = frozenset(
    {"complaints_90d", "complaints_365d", "complaints_unresolved", "days_since_complaint", "tickets_365d",
     "satisfaction_mean"}
)
LAPSE_FEATURES = frozenset(
    {"recency_days", "recency_gap_ratio", "recency_max_gap_ratio", "own_gap_survival", "bg_p_alive",
     "bg_p_no_purchase", "bg_expected_purchases", "orders_7d", "orders_30d", "orders_90d", "spend_7d", "spend_30d",
     "spend_90d", "ewm_orders_30", "ewm_orders_90", "days_since_view", "views_30d", "views_90d", "carts_90d",
     "last_gap_days", "purchase_days_ly_next90", "purchase_days_ly_next180"}
)
DECLINE_FEATURES = frozenset(
    {"orders_trend_90d", "spend_trend_90d", "orders_180d", "orders_365d", "spend_180d", "spend_365d",
     "ewm_orders_365", "active_months_365d", "campaign_response_rate", "view_conversion_90d",
     "cart_conversion_90d"}
)
RETURN_FEATURES = frozenset({"return_rate", "return_amount_rate", "cancellation_rate", "returns_90d"})

ACTIONS = {
    "complaint_follow_up": "Call about the recent complaint(s): check it is solved and apologise.",
    "win_back_offer": "Send a personal win-back offer: the customer is overdue for a purchase.",
    "account_manager_call": "Account manager call: a valuable customer is buying less.",
    "loyalty_reward": "Loyalty reward or thank-you voucher to reverse the decline.",
    "quality_follow_up": "Follow up on returned products: ask what went wrong.",
    "reengagement_campaign": "Include in the re-engagement campaign.",
    "none": "No action: low risk.",
}


# --------------------------------------------------------------------------------------------
# sentences
# --------------------------------------------------------------------------------------------
def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def feature_meaning(name: str) -> str:
    """The catalog meaning of a model feature (``features.catalog.lookup``), else its name in words."""
    feature = catalog.lookup(name)
    return feature.meaning if feature is not None else name.replace("_", " ")


def feature_direction(name: str) -> int:
    feature = catalog.lookup(name)
    return feature.direction if feature is not None else catalog.NEUTRAL


def feature_docs(names: Iterable[str]) -> list[dict]:
    """``[{"name", "meaning", "window", "higher_means"}]`` for the model's features (for MLflow and reports)."""
    out = []
    for name in names:
        if name in catalog.FEATURES:
            f = catalog.FEATURES[name]
            out.append({"name": name, "meaning": f.meaning, "window": f.window, "higher_means": f.higher_means,
                        "source": "catalog"})
        else:
            direction = feature_direction(name)
            out.append({"name": name, "meaning": feature_meaning(name), "window": "before the cutoff",
                        "higher_means": {1: "more risk", -1: "less risk"}.get(direction, "no clear direction"),
                        "source": "features.churn_features"})
    return out


def sentence(name: str, value, row: dict | None = None) -> str:
    """A CRM-readable sentence for one driver; ``row`` gives the customer's other values for context."""
    row = row or {}
    if _missing(value):
        if name in MISSING_SENTENCES:
            return MISSING_SENTENCES[name]
        return f"{name.replace('_', ' ')}: unknown"
    if name in ("bg_p_no_purchase", "bg_p_alive", "bg_expected_purchases", "own_gap_survival",
                "recency_max_gap_ratio") and not _missing(row.get("recency_days")):
        # the rhythm models' verdicts read better with the absence they are based on
        lapse = sentence("recency_days", row.get("recency_days"), row)
        return f"{lapse}: {_base_sentence(name, value)}"
    if name in ("recency_days", "recency_gap_ratio"):
        rec = row.get("recency_days", value if name == "recency_days" else None)
        ratio = row.get("recency_gap_ratio", value if name == "recency_gap_ratio" else None)
        gap = row.get("gap_mean_days")
        parts = []
        if not _missing(rec):
            parts.append(f"no purchase for {float(rec):.0f} days")
        if not _missing(ratio) and not _missing(gap) and float(ratio) >= 1.0:
            parts.append(f"{float(ratio):.1f}x the usual gap of {float(gap):.0f} days")
        elif not _missing(ratio) and float(ratio) >= 1.0:
            parts.append(f"{float(ratio):.1f}x the usual gap between purchases")
        if parts:
            return ", ".join(parts)
    return _base_sentence(name, value)


def _base_sentence(name: str, value) -> str:
    if name in catalog.FEATURES:
        return _singular(catalog.reason(name, value))
    if name in catalog.EXTRAS:
        try:
            return _singular(catalog.EXTRAS[name].template.format(value=value))
        except (ValueError, TypeError):
            pass
    return f"{name.replace('_', ' ')} = {value}"


def _singular(text: str) -> str:
    """'1 unresolved complaints' -> '1 unresolved complaint' (catalog templates are written for plurals)."""
    if not text.startswith("1 "):
        return text
    words = text.split(" ")
    for i in range(1, min(len(words), 4)):
        w = words[i]
        if w in ("complaints", "orders", "tickets", "purchases", "products", "views", "add-to-carts",
                 "campaigns", "days"):
            words[i] = "category" if w == "categories" else w[:-1]
            return " ".join(words)
    return text


#: the columns of a customer's row that :func:`sentence` reads besides the driver's own value
SENTENCE_CONTEXT = ("recency_days", "recency_gap_ratio", "gap_mean_days")


def reasons_from_contributions(
    contrib: np.ndarray,
    X: pd.DataFrame,
    feature_names: list[str],
    top_k: int = 3,
    min_contribution: float = 1e-6,
) -> list[list[dict]]:
    """Per row: the ``top_k`` features with the largest positive contribution (risk-increasing).

    ``contrib`` is ``booster.predict(X, pred_contrib=True)`` (last column = bias, dropped).
    Each reason is ``{"feature", "value", "contribution", "sentence"}``; ``value`` is a JSON-safe
    float/str/None.
    """
    contrib = np.asarray(contrib)[:, : len(feature_names)]
    out: list[list[dict]] = []
    if contrib.shape[0] == 0:
        return out
    order = np.argsort(-contrib, axis=1, kind="stable")[:, :top_k]
    top = np.take_along_axis(contrib, order, axis=1)
    # only the columns a reason can read: the top features' values and the context of the sentences;
    # records of these columns only (not of the whole frame) keep the values' types and cost
    used = {feature_names[j] for j in np.unique(order[top > min_contribution])}
    take = [c for c in X.columns if c in used or c in SENTENCE_CONTEXT]
    values = X[take].to_dict(orient="records")
    present = set(take)
    for i in range(contrib.shape[0]):
        row = values[i]
        reasons = []
        for j, c in zip(order[i], top[i]):
            if c <= min_contribution:
                break
            name = feature_names[j]
            value = row.get(name) if name in present else None
            reasons.append(
                {
                    "feature": name,
                    "value": _json_value(value),
                    "contribution": round(float(c), 6),
                    "sentence": sentence(name, value, row),
                }
            )
        out.append(reasons)
    return out


def _json_value(value):
    if _missing(value):
        return None
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    return str(value)


# --------------------------------------------------------------------------------------------
# tiers, actions, value
# --------------------------------------------------------------------------------------------
def risk_tier(p, thresholds: dict | None = None) -> np.ndarray:
    """``high`` when p >= thresholds["high"], ``medium`` when p >= thresholds["medium"], else ``low``."""
    t = {**DEFAULT_TIERS, **(thresholds or {})}
    if not 0 <= t["medium"] <= t["high"] <= 1:
        raise ValueError(f"tier thresholds must satisfy 0 <= medium <= high <= 1, got {t}")
    p = np.asarray(p, dtype=float)
    return np.where(p >= t["high"], "high", np.where(p >= t["medium"], "medium", "low"))


def suggest_action(tier: str, reasons: list[dict], clv: float | None = None, high_value: float | None = None) -> str:
    """One action key of ``ACTIONS`` from the tier, the reasons (strongest first) and the value.

    Rules, first match wins: low risk -> ``none``; a complaint/service driver -> ``complaint_follow_up``;
    a return driver -> ``quality_follow_up``; the strongest driver a decline (fewer orders, lower
    spend, falling trend) -> ``account_manager_call`` for high-value customers (CLV >= ``high_value``)
    else ``loyalty_reward``; a lapse driver (long absence vs the usual rhythm) -> ``win_back_offer``;
    another decline driver -> as above; otherwise ``reengagement_campaign``.
    """
    if tier == "low":
        return "none"
    feats = [r["feature"] for r in reasons]
    valuable = clv is not None and high_value is not None and not _missing(clv) and clv >= high_value
    if any(f in COMPLAINT_FEATURES for f in feats):
        return "complaint_follow_up"
    if any(f in RETURN_FEATURES for f in feats):
        return "quality_follow_up"
    first = feats[0] if feats else None
    decline = "account_manager_call" if valuable else "loyalty_reward"
    if first in DECLINE_FEATURES:
        return decline
    if any(f in LAPSE_FEATURES for f in feats):
        return "win_back_offer"
    if any(f in DECLINE_FEATURES for f in feats):
        return decline
    return "reengagement_campaign"


def value_at_stake(p, clv) -> np.ndarray:
    """Expected value lost: ``P(churn) x CLV`` (a missing CLV counts as 0)."""
    p = np.asarray(p, dtype=float)
    v = np.nan_to_num(np.asarray(clv, dtype=float), nan=0.0)
    return p * np.maximum(v, 0.0)


def high_value_threshold(clv, high_value_quantile: float = 0.8) -> float | None:
    """The CLV from which a customer counts as high value: the ``high_value_quantile`` of ``clv``."""
    clv = pd.to_numeric(pd.Series(clv), errors="coerce")
    return float(clv.quantile(high_value_quantile)) if clv.notna().any() else None


def attach_actions(scored: pd.DataFrame, high_value_quantile: float = 0.8, high_value=...) -> pd.DataFrame:
    """Add ``value_at_stake`` and ``suggested_action`` (+ ``action_text``) to a scored frame.

    ``scored`` needs ``churn_probability``, ``risk_tier``, ``reasons`` and ``clv_12m``. High value =
    CLV at or above the ``high_value_quantile`` of the scored customers, or at or above ``high_value``
    when given (the threshold of the whole population, for scoring a few customers at a time).
    """
    out = scored.copy()
    clv = pd.to_numeric(out["clv_12m"], errors="coerce")
    out["value_at_stake"] = value_at_stake(out["churn_probability"], clv)
    if high_value is ...:
        high_value = high_value_threshold(clv, high_value_quantile)
    out["suggested_action"] = [
        suggest_action(t, r, c, high_value) for t, r, c in zip(out["risk_tier"], out["reasons"], clv)
    ]
    out["action_text"] = out["suggested_action"].map(ACTIONS)
    return out


def retention_list(scored: pd.DataFrame, top: int | None = None, include_low: bool = False) -> pd.DataFrame:
    """The prioritised call list: customers sorted by value at stake (highest first), ranked from 1;
    by expected incremental value (``nba_expected_value``, ``training.next_best_action``) when known.

    Low-risk customers are left out unless ``include_low``. Adds ``value_at_stake`` and
    ``suggested_action`` when missing, and a readable ``why`` column (the reason sentences joined).
    """
    df = scored
    if "value_at_stake" not in df.columns or "suggested_action" not in df.columns:
        df = attach_actions(df)
    if not include_low:
        df = df[df["risk_tier"] != "low"]
    if "nba_expected_value" in df.columns and df["nba_expected_value"].notna().any():
        # with an uplift model: what a contact is expected to bring back, not what is at risk
        df = df.sort_values(["nba_expected_value", "value_at_stake"], ascending=[False, False], kind="stable")
    else:
        df = df.sort_values(["value_at_stake", "churn_probability"], ascending=[False, False], kind="stable")
    if top is not None:
        df = df.head(top)
    df = df.reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    df["why"] = [
        "; ".join(r["sentence"] for r in reasons) if isinstance(reasons, list) else "" for reasons in df["reasons"]
    ]
    return df
