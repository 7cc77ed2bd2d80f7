"""Did a campaign work? Its effect on response, retention and revenue, with confidence intervals.

A campaign is the rows of the ``campaigns`` table with one ``campaign_id``. Its outcomes are read
from the events after each row's ``sent_at``:

* ``response``: a purchase within ``RESPONSE_DAYS`` (defined for the control group too, unlike the
  ``responded_at`` of a contact);
* ``retained``: a purchase within the horizon (``horizon_days``, default 60);
* ``revenue``: purchases minus returns within the horizon.

**Randomised** (``group`` holds ``treatment`` and ``control``): the difference of the group means,
adjusted for pre-campaign covariates the way of Lin (2013): OLS of the outcome on the treatment,
the centred covariates and their interactions, with HC2 standard errors (statsmodels). The
adjustment only removes noise: under random assignment the estimate stays unbiased, and the
interval is valid without any model being right.

**Observational** (no control group): every contacted customer is matched to the nearest
non-contacted customer seen before the send on the logit of a propensity score (logistic
regression on pre-campaign features, with replacement, within a caliper of 0.2 standard deviations);
the effect on the contacted is the mean matched difference. It rests on assumptions a random
control group does not need, listed in :data:`OBSERVATIONAL_ASSUMPTIONS` and returned with the
estimate.

Money: incremental revenue = effect on revenue per contacted customer x contacted customers; the
return on the contact cost is ``(incremental revenue - cost) / cost`` (``cost`` column of the
contacts, or ``contact_cost`` per contact when the table has none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

RESPONSE_DAYS = 14
EFFECTS_NAME = "campaign_effects"
DEFAULT_HORIZON = 60
METRICS = ("response", "retained", "revenue")
#: pre-campaign covariates: behaviour only (no personal data), from the churn feature matrix at the send day
COVARIATES = ("recency_days", "frequency", "orders_90d", "orders_365d", "spend_365d", "tenure_days",
              "complaints_unresolved", "bg_p_alive", "ewm_orders_90")
OBSERVATIONAL_ASSUMPTIONS = (
    "no unmeasured confounding: who was contacted depends only on the pre-campaign features used",
    "overlap: every contacted customer has comparable non-contacted customers (matches within the caliper)",
    "no interference: one customer's contact does not change another's behaviour",
    "the non-contacted customers were not reached by an equivalent contact in the horizon",
)


# --------------------------------------------------------------------------------------------
# the campaign frame: one row per (campaign, customer) with its outcomes
# --------------------------------------------------------------------------------------------
def _net_purchases(events: pd.DataFrame) -> pd.DataFrame:
    ev = events[events["event_type"].isin(["purchase", "return"])]
    sign = np.where(ev["event_type"].to_numpy() == "return", -1.0, 1.0)
    return pd.DataFrame({
        "customer_id": ev["customer_id"].astype(str).to_numpy(),
        "t": ev["timestamp"].to_numpy("datetime64[us]"),
        "amount": sign * ev["amount"].fillna(0.0).to_numpy(float),
        "purchase": sign > 0,
    })


def outcomes(rows: pd.DataFrame, events: pd.DataFrame, horizon_days: int = DEFAULT_HORIZON) -> pd.DataFrame:
    """``rows`` (customer_id, sent_at) with ``response``, ``retained``, ``revenue`` from ``events``.

    Windows are ``(sent_at, sent_at + days]``; revenue counts returns of the window negatively.
    """
    lines = _net_purchases(events)
    out = rows.reset_index(drop=True).copy()
    key = pd.DataFrame({"customer_id": out["customer_id"].astype(str).to_numpy(),
                        "s": out["sent_at"].to_numpy("datetime64[us]"), "row": np.arange(len(out))})
    j = key.merge(lines, on="customer_id", how="inner")
    after = j["t"] > j["s"]
    age = (j["t"] - j["s"]) / pd.Timedelta(days=1)
    in_h = after & (age <= horizon_days)
    n = len(out)
    out["response"] = np.bincount(j["row"][in_h & (age <= RESPONSE_DAYS) & j["purchase"]], minlength=n) > 0
    out["retained"] = np.bincount(j["row"][in_h & j["purchase"]], minlength=n) > 0
    out["revenue"] = np.bincount(j["row"][in_h], weights=j["amount"][in_h], minlength=n)
    for col in ("response", "retained"):
        out[col] = out[col].astype(float)
    return out


def campaign_list(campaigns: pd.DataFrame) -> pd.DataFrame:
    """One row per campaign: id, first send, action, contacted and control counts, randomised or not."""
    cp = campaigns.copy()
    group = cp["group"] if "group" in cp.columns else pd.Series(pd.NA, index=cp.index)
    cp["is_control"] = group.astype("string").eq("control").fillna(False).astype(bool)
    action = cp["action"] if "action" in cp.columns else pd.Series(pd.NA, index=cp.index)
    cp["action_"] = action.astype("string")
    out = cp.groupby("campaign_id", sort=True).agg(
        sent_at=("sent_at", "min"), n_contacted=("is_control", lambda s: int((~s).sum())),
        n_control=("is_control", "sum"), action=("action_", "first"))
    out["randomised"] = out["n_control"] > 0
    return out.reset_index()


def campaign_rows(campaigns: pd.DataFrame, campaign_id: str) -> pd.DataFrame:
    """The rows of one campaign with ``treated`` (bool) and ``cost`` (float, 0 when unknown)."""
    rows = campaigns[campaigns["campaign_id"].astype(str) == str(campaign_id)].copy()
    if rows.empty:
        raise KeyError(f"campaign {campaign_id!r} is not in the campaigns table")
    group = rows["group"].astype("string") if "group" in rows.columns else pd.Series(pd.NA, index=rows.index)
    rows["treated"] = ~group.eq("control").fillna(False).astype(bool)
    rows["cost"] = pd.to_numeric(rows["cost"], errors="coerce") if "cost" in rows.columns else np.nan
    rows["cutoff"] = rows["sent_at"].dt.normalize()
    return rows.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# estimators
# --------------------------------------------------------------------------------------------
def _covariate_matrix(frame: pd.DataFrame, covariates) -> np.ndarray:
    cols = [c for c in covariates if c in frame.columns]
    if not cols:
        return np.zeros((len(frame), 0))
    x = frame[cols].apply(pd.to_numeric, errors="coerce").astype(float)
    miss = x.isna().to_numpy()
    x = x.fillna(x.median()).fillna(0.0).to_numpy()
    keep = x.std(axis=0) > 0
    x = np.column_stack([x[:, keep], miss[:, miss.any(axis=0)].astype(float)])
    x = np.log1p(np.abs(x)) * np.sign(x)  # heavy tails (spend, frequency) would dominate OLS
    # keep linearly independent columns (features missing together give equal or complementary
    # indicators): pivoted QR, columns whose pivot is not negligible
    from scipy.linalg import qr

    xc = x - x.mean(axis=0)
    _, r, piv = qr(xc, mode="economic", pivoting=True)
    diag = np.abs(np.diag(r))
    independent = piv[diag > 1e-8 * max(diag.max(), 1e-300)] if len(diag) else piv
    return x[:, np.sort(independent)]


def difference_in_means(y, treated, x=None, alpha: float = 0.05) -> dict:
    """Effect of the treatment on ``y`` under random assignment, with a ``1 - alpha`` interval.

    Without covariates: ``mean(y | treated) - mean(y | control)`` and its Welch (HC2) standard
    error. With covariates ``x``: Lin's estimator, the coefficient of ``t`` in the OLS
    ``y ~ t + (x - mean x) + t * (x - mean x)`` with HC2 errors. Returns ``effect``, ``se``,
    ``ci_low``, ``ci_high``, ``p_value``, ``treated_mean``, ``control_mean``, ``n_treated``,
    ``n_control``, ``adjusted``.
    """
    import statsmodels.api as sm

    y = np.asarray(y, float)
    t = np.asarray(treated, bool)
    if t.all() or not t.any():
        raise ValueError("both a treated and a control group are needed")
    cols = [np.ones(len(y)), t.astype(float)]
    adjusted = x is not None and np.asarray(x).shape[1] > 0
    if adjusted:
        xa = np.asarray(x, float)
        # a column constant within one group makes its interaction a multiple of t: not identifiable
        xa = xa[:, (xa[t].std(axis=0) > 0) & (xa[~t].std(axis=0) > 0)]
        xc = xa - xa.mean(axis=0)
        cols += [xc, xc * t[:, None]]
    design = np.column_stack(cols)
    fit = sm.OLS(y, design).fit(cov_type="HC2")
    lo, hi = fit.conf_int(alpha)[1]
    return {
        "effect": float(fit.params[1]), "se": float(fit.bse[1]), "ci_low": float(lo), "ci_high": float(hi),
        "p_value": float(fit.pvalues[1]), "treated_mean": float(y[t].mean()), "control_mean": float(y[~t].mean()),
        "n_treated": int(t.sum()), "n_control": int((~t).sum()), "adjusted": bool(adjusted),
    }


def matched_difference(y_treated, y_matched, alpha: float = 0.05) -> dict:
    """Effect on the treated from matched pairs: ``mean(y_t - y_match)`` and a paired t interval.

    The paired interval ignores that matches are reused (matching with replacement) and that the
    propensity is estimated; it is indicative, like every observational interval.
    """
    from scipy import stats

    d = np.asarray(y_treated, float) - np.asarray(y_matched, float)
    n = len(d)
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    q = stats.t.ppf(1 - alpha / 2, max(n - 1, 1))
    effect = float(d.mean())
    p = float(2 * stats.t.sf(abs(effect / se), max(n - 1, 1))) if se > 0 else float("nan")
    return {"effect": effect, "se": se, "ci_low": effect - q * se, "ci_high": effect + q * se, "p_value": p,
            "treated_mean": float(np.mean(y_treated)), "control_mean": float(np.mean(y_matched)),
            "n_treated": n, "n_control": n, "adjusted": False}


def propensity_match(x_treated: np.ndarray, x_pool: np.ndarray, caliper_sd: float = 0.2) -> tuple[np.ndarray, dict]:
    """Index into the pool of each treated row's match (-1: none within the caliper), and diagnostics.

    Propensity: logistic regression (standardised features) of being contacted; matching on its
    logit, nearest neighbour with replacement, caliper ``caliper_sd`` x the logit's standard deviation.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([x_treated, x_pool])
    z = np.r_[np.ones(len(x_treated)), np.zeros(len(x_pool))]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(x, z)
    p = np.clip(model.predict_proba(x)[:, 1], 1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p))
    lt, lp = logit[: len(x_treated)], logit[len(x_treated):]
    order = np.argsort(lp)
    sorted_lp = lp[order]
    pos = np.clip(np.searchsorted(sorted_lp, lt), 1, len(sorted_lp) - 1)
    left, right = sorted_lp[pos - 1], sorted_lp[pos]
    pick = np.where(np.abs(lt - left) <= np.abs(right - lt), pos - 1, pos)
    dist = np.abs(lt - sorted_lp[pick])
    caliper = caliper_sd * float(logit.std())
    match = np.where(dist <= caliper, order[pick], -1)
    diag = {"caliper_logit": caliper, "matched_share": float((match >= 0).mean()),
            "distinct_controls": int(len(np.unique(match[match >= 0]))),
            "propensity_auc": float(_auc(z, p))}
    return match, diag


def _auc(y, p) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(y, p) if 0 < np.mean(y) < 1 else float("nan")


# --------------------------------------------------------------------------------------------
# the use case
# --------------------------------------------------------------------------------------------
@dataclass
class CampaignEffect:
    """The measured effect of one campaign (see the module docstring)."""

    campaign_id: str
    action: str | None
    sent_at: str
    design: str  # "randomised" or "observational"
    horizon_days: int
    n_contacted: int
    n_comparison: int
    metrics: dict = field(default_factory=dict)  # metric -> difference_in_means / matched_difference dict
    cost: float = 0.0
    incremental_revenue: float = 0.0
    incremental_revenue_ci: tuple[float, float] = (0.0, 0.0)
    roi: float | None = None
    assumptions: tuple[str, ...] = ()
    diagnostics: dict = field(default_factory=dict)

    @property
    def observational(self) -> bool:
        return self.design == "observational"

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["observational"] = self.observational
        out["incremental_revenue_ci"] = list(self.incremental_revenue_ci)
        out["assumptions"] = list(self.assumptions)
        return out


def _money(effect: CampaignEffect, rows: pd.DataFrame, contact_cost: float | None) -> None:
    treated = rows[rows["treated"]]
    known = treated["cost"].notna().any()
    if known:
        effect.cost = float(treated["cost"].fillna(0.0).sum())
    elif contact_cost is not None:
        effect.cost = float(contact_cost) * len(treated)
    rev = effect.metrics["revenue"]
    n = effect.n_contacted
    effect.incremental_revenue = rev["effect"] * n
    effect.incremental_revenue_ci = (rev["ci_low"] * n, rev["ci_high"] * n)
    effect.roi = (effect.incremental_revenue - effect.cost) / effect.cost if effect.cost > 0 else None


def evaluate_campaign(campaigns: pd.DataFrame, events: pd.DataFrame, features: pd.DataFrame | None,
                      campaign_id: str, horizon_days: int = DEFAULT_HORIZON, contact_cost: float | None = None,
                      alpha: float = 0.05, covariates=COVARIATES) -> CampaignEffect:
    """The effect of ``campaign_id`` on response, retention and revenue per contacted customer.

    ``features``: the churn feature matrix at the send day (``customer_id``, ``cutoff`` and the
    covariates), every customer seen before it (``include_ineligible``): the covariates of a
    randomised campaign, the propensity features and the pool of non-contacted customers of an
    observational one (required then).
    """
    rows = campaign_rows(campaigns, campaign_id)
    sent_at = rows["sent_at"].min()
    action = rows["action"].dropna().astype(str).iloc[0] if "action" in rows and rows["action"].notna().any() else None
    randomised = bool((~rows["treated"]).any())
    feats = None
    if features is not None:
        feats = features[features["cutoff"].isin(rows["cutoff"].unique())]
    if randomised:
        frame = outcomes(rows[["customer_id", "sent_at", "treated", "cost", "cutoff"]], events, horizon_days)
        if feats is not None:
            frame = frame.merge(feats, on=["customer_id", "cutoff"], how="left")
        x = _covariate_matrix(frame, covariates) if feats is not None else None
        t = frame["treated"].to_numpy(bool)
        metrics = {m: difference_in_means(frame[m], t, x, alpha) for m in METRICS}
        effect = CampaignEffect(str(campaign_id), action, str(sent_at), "randomised", horizon_days,
                                int(t.sum()), int((~t).sum()), metrics,
                                diagnostics={"covariates": [c for c in covariates if feats is not None and c in frame]})
    else:
        if feats is None or feats.empty:
            raise ValueError(f"campaign {campaign_id} has no control group: matching needs the pre-campaign features")
        contacted = set(rows["customer_id"].astype(str))
        cutoff = rows["cutoff"].min()
        f = feats[feats["cutoff"] == cutoff]
        pool = f[~f["customer_id"].astype(str).isin(contacted)]
        # contacted customers are compared at their own send; the pool at the campaign's first send day
        treated = rows[rows["cutoff"] == cutoff].merge(f, on=["customer_id", "cutoff"], how="inner")
        x_all = _covariate_matrix(pd.concat([treated, pool], ignore_index=True), covariates)
        match, diag = propensity_match(x_all[: len(treated)], x_all[len(treated):])
        ok = match >= 0
        pool_rows = pool.iloc[match[ok]][["customer_id"]].assign(sent_at=treated["sent_at"].to_numpy()[ok])
        y_t = outcomes(treated.loc[ok, ["customer_id", "sent_at"]], events, horizon_days)
        y_c = outcomes(pool_rows, events, horizon_days)
        metrics = {m: matched_difference(y_t[m], y_c[m], alpha) for m in METRICS}
        diag |= {"n_unmatched": int((~ok).sum()), "caliper_sd": 0.2}
        effect = CampaignEffect(str(campaign_id), action, str(sent_at), "observational", horizon_days,
                                int(ok.sum()), int(diag["distinct_controls"]), metrics,
                                assumptions=OBSERVATIONAL_ASSUMPTIONS, diagnostics=diag)
        rows = rows[rows["customer_id"].isin(treated.loc[ok, "customer_id"])]
    _money(effect, rows, contact_cost)
    return effect


def effects_json(reports_dir) -> Path:
    """Where ``crmml evaluate campaign`` writes the effects (read by the report)."""

    return Path(reports_dir) / f"{EFFECTS_NAME}.json"


def campaign_features(source, campaigns: pd.DataFrame, horizon_days: int = DEFAULT_HORIZON) -> pd.DataFrame:
    """The churn feature matrix at every send day of ``campaigns`` (every customer seen before it)."""
    from features.churn_features import feature_matrix

    cuts = sorted(pd.to_datetime(campaigns["sent_at"]).dt.normalize().unique())
    return feature_matrix(source, cuts, horizon_days=horizon_days, include_ineligible=True)


def evaluate_campaigns(ws, campaign_ids=None, horizon_days: int = DEFAULT_HORIZON, contact_cost: float | None = None,
                       alpha: float = 0.05) -> list[CampaignEffect]:
    """``crmml evaluate campaign [ID]``: the effect of each campaign (default: every campaign) of ``ws``.

    Campaigns whose horizon ends after the data are left out (their retention is not known yet).
    """
    from features import dates

    campaigns = ws.read_table("campaigns")
    events = ws.read_table("events", columns=["customer_id", "event_type", "timestamp", "amount"])
    listing = campaign_list(campaigns)
    if campaign_ids:
        unknown = [c for c in campaign_ids if c not in set(listing["campaign_id"].astype(str))]
        if unknown:
            raise KeyError(f"unknown campaign(s): {', '.join(unknown)}")
        listing = listing[listing["campaign_id"].astype(str).isin(campaign_ids)]
    as_of = dates.as_of_date(events["timestamp"])
    listing = listing[listing["sent_at"] + pd.Timedelta(days=horizon_days) <= as_of]
    if listing.empty:
        return []
    chosen = campaigns[campaigns["campaign_id"].isin(listing["campaign_id"])]
    feats = campaign_features(ws, chosen, horizon_days)
    return [evaluate_campaign(campaigns, events, feats, cid, horizon_days, contact_cost, alpha)
            for cid in listing["campaign_id"].astype(str)]


__all__ = ["COVARIATES", "CampaignEffect", "DEFAULT_HORIZON", "METRICS", "OBSERVATIONAL_ASSUMPTIONS",
           "RESPONSE_DAYS", "campaign_features", "effects_json", "campaign_list", "campaign_rows", "difference_in_means",
           "evaluate_campaign", "evaluate_campaigns", "matched_difference", "outcomes", "propensity_match"]
