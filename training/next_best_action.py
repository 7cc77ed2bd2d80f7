"""Next best action: per customer, the action with the highest expected value, and why.

``expected value(a) = uplift_a x value if retained - cost_a`` where ``uplift_a`` is the uplift
model's increase of the probability to stay (buy within the campaign horizon) when contacted with
action ``a``, ``value if retained`` is the customer's 12-month CLV (``training/clv.py``; the last
year's spend when no CLV is known) and ``cost_a`` the average cost of one contact with ``a`` in
the campaigns table (its ``cost`` column; :data:`DEFAULT_COSTS` for actions without one). ``none``
(expected value 0) wins when no action pays for itself. The reason is a sentence with the numbers.

Without a registered uplift model the rule-based suggested action (``training.retention``) is the
fallback, flagged with ``source = "rules"``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: cost of one contact when the campaigns table records none (sending, incentive, call time)
DEFAULT_COSTS = {"reminder": 0.05, "discount": 2.5, "service_call": 4.0, "contact": 1.0}
ACTION_TEXT = {
    "none": "No contact: no action is expected to pay for itself.",
    "reminder": "Send a reminder.",
    "discount": "Send a discount offer.",
    "service_call": "Call the customer (service follow-up).",
    "contact": "Contact the customer.",
}


def action_costs(campaigns: pd.DataFrame | None, actions) -> dict[str, float]:
    """Average cost per contacted customer of each action in ``campaigns`` (treated rows with a
    ``cost``), else :data:`DEFAULT_COSTS`."""
    out = {a: DEFAULT_COSTS.get(a, 1.0) for a in actions}
    if campaigns is not None and {"action", "cost", "group"} <= set(campaigns.columns):
        known = campaigns[campaigns["cost"].notna() & campaigns["group"].astype("string").ne("control").fillna(True)]
        for a, c in known.groupby(known["action"].astype(str))["cost"].mean().items():
            if a in out:
                out[a] = float(c)
    return out


def _reason(best: str, ev: dict[str, float], up: dict[str, float], value: float, costs: dict[str, float]) -> str:
    ranked = sorted(ev, key=lambda a: -ev[a])
    if best == "none":
        a = ranked[0] if ranked else None
        if a is None:
            return "no action is known"
        return (f"no action pays: the best, {a}, adds {up[a]:+.1%} chance to stay x {value:,.2f} value "
                f"= {up[a] * value:,.2f}, less than its cost {costs[a]:,.2f}")
    others = [a for a in ranked if a != best][:2]
    alt = "; ".join(f"{a} {ev[a]:,.2f}" for a in others)
    return (f"{best}: {up[best]:+.1%} chance to stay x {value:,.2f} value if retained - cost {costs[best]:,.2f} "
            f"= {ev[best]:,.2f} expected" + (f" (next: {alt})" if alt else ""))


def next_best_actions(uplift: pd.DataFrame, value, costs: dict[str, float]) -> pd.DataFrame:
    """One row per row of ``uplift`` (columns ``uplift_<action>``): ``next_best_action``,
    ``nba_expected_value``, ``nba_uplift``, ``nba_reason``, ``nba_source`` ("uplift model"),
    and ``ev_<action>`` for every action."""
    actions = [c[len("uplift_"):] for c in uplift.columns if c.startswith("uplift_")]
    v = np.nan_to_num(np.asarray(value, float), nan=0.0).clip(min=0.0)
    ups = {a: uplift[f"uplift_{a}"].to_numpy(float) for a in actions}
    evs = {a: ups[a] * v - costs.get(a, DEFAULT_COSTS.get(a, 1.0)) for a in actions}
    out = pd.DataFrame(index=uplift.index)
    if actions:
        mat = np.column_stack([evs[a] for a in actions])
        best_i = mat.argmax(axis=1)
        best_ev = mat.max(axis=1)
        best = np.where(best_ev > 0, np.array(actions)[best_i], "none")
    else:
        best_ev, best = np.zeros(len(out)), np.full(len(out), "none")
    out["next_best_action"] = best
    out["nba_expected_value"] = np.where(best == "none", 0.0, best_ev)
    out["nba_uplift"] = [ups[b][i] if b != "none" else 0.0 for i, b in enumerate(best)]
    out["nba_reason"] = [
        _reason(b, {a: evs[a][i] for a in actions}, {a: ups[a][i] for a in actions}, v[i], costs)
        for i, b in enumerate(best)
    ]
    out["nba_source"] = "uplift model"
    for a in actions:
        out[f"ev_{a}"] = evs[a]
    return out


def rule_fallback(scored: pd.DataFrame) -> pd.DataFrame:
    """Without an uplift model: the rule-based ``suggested_action`` (``training.retention``), flagged."""
    out = pd.DataFrame(index=scored.index)
    out["next_best_action"] = scored["suggested_action"].astype(str)
    out["nba_expected_value"] = np.nan
    out["nba_uplift"] = np.nan
    text = scored["action_text"] if "action_text" in scored else scored["suggested_action"]
    out["nba_reason"] = "rule-based, no uplift model registered: " + text.astype(str)
    out["nba_source"] = "rules"
    return out


def value_if_retained(frame: pd.DataFrame) -> np.ndarray:
    """12-month CLV (``clv_12m``), else the last year's spend (``spend_365d``), else 0."""
    clv = pd.to_numeric(frame["clv_12m"], errors="coerce") if "clv_12m" in frame else pd.Series(np.nan, frame.index)
    spend = pd.to_numeric(frame["spend_365d"], errors="coerce") if "spend_365d" in frame else 0.0
    return clv.fillna(spend).fillna(0.0).to_numpy(float)




def uplift_champion(ws):
    """(fitted UpliftModel, version) of the registered ``crmml-uplift`` champion, or (None, reason)."""
    from training import registry
    from training.names import UPLIFT
    from training.uplift_training import load_uplift

    registry.configure(ws)
    version = registry.alias_version(registry.client(ws), UPLIFT, registry.CHAMPION)
    if version is None:
        return None, f"no {UPLIFT} champion is registered (crmml train uplift)"
    return load_uplift(registry.model_uri(UPLIFT)), str(version)


def for_customers(scored: pd.DataFrame, features: pd.DataFrame, model=None, campaigns: pd.DataFrame | None = None,
                  version: str | None = None) -> pd.DataFrame:
    """``scored`` (churn scores with ``customer_id``, ``clv_12m``, ``suggested_action``) with the next best
    action columns, from ``model`` (an UpliftModel) on ``features`` (the churn feature matrix rows of the
    same customers), or the rule fallback without a model. Adds ``uplift_model_version``."""
    if model is None:
        out = pd.concat([scored, rule_fallback(scored)], axis=1)
        out["uplift_model_version"] = None
        return out
    feats = features.assign(customer_id=features["customer_id"].astype(str)).drop_duplicates("customer_id")
    rows = scored[["customer_id"]].astype({"customer_id": str}).merge(feats, on="customer_id", how="left")
    uplift = model.predict_frame(rows).drop(columns=["churn_risk"])
    uplift.index = scored.index
    value = value_if_retained(scored.assign(spend_365d=rows.get("spend_365d", pd.Series(np.nan, rows.index)).to_numpy()))
    nba = next_best_actions(uplift, value, action_costs(campaigns, model.actions_))
    out = pd.concat([scored, nba[["next_best_action", "nba_expected_value", "nba_uplift", "nba_reason", "nba_source"]]],
                    axis=1)
    out["uplift_model_version"] = version
    return out


__all__ = ["ACTION_TEXT", "DEFAULT_COSTS", "action_costs", "for_customers", "next_best_actions", "rule_fallback",
           "uplift_champion", "value_if_retained"]
