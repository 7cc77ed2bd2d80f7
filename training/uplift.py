"""Uplift: how much a contact changes a customer's retention, per action (X-/T-learner on LightGBM).

:class:`UpliftModel` learns, from randomised campaigns (``training.campaigns``), one outcome model
for the customers left alone (``mu0``: P(retained | no contact, x), shared by every action: every
control group answers it) and one per action for the contacted (``mu1_a``); the T-learner's uplift
of action ``a`` is ``mu1_a(x) - mu0(x)``, the X-learner regresses the imputed effects on ``x`` and
the action. ``1 - mu0(x)`` is the churn risk over the campaign horizon, the "contact the highest
churn risk" baseline of the evaluation.

Metrics (pure functions, formulas in their docstrings): :func:`uplift_curve`, :func:`qini_curve`,
:func:`auuc`, and :func:`true_gain` (incremental retention of a targeting rule measured against
the synthetic shop's potential outcomes).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

#: columns that are never model inputs: ids, labels, personal data, and a campaign row's outcomes,
#: assignment and truth (``training.campaigns.outcomes``, ``campaign_truth``)
NOT_FEATURES = frozenset({"customer_id", "cutoff", "eligible", "label_available", "churned", "country", "gender",
                          "age", "acquisition_channel", "membership_tier", "campaign_id", "sent_at", "treated",
                          "action", "cost", "group", "response", "retained", "revenue", "y0", "y1", "tau",
                          "won_back", "segment", "responded_at", "horizon_days"})
#: small trees: an effect is a difference of noisy outcomes, deep trees fit the noise (BENCHMARKS.md)
DEFAULT_PARAMS = {"n_estimators": 120, "learning_rate": 0.05, "num_leaves": 7, "min_child_samples": 100,
                  "subsample": 0.8, "subsample_freq": 1, "colsample_bytree": 0.8, "reg_lambda": 1.0}


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric behaviour columns of a churn feature matrix (no ids, labels or personal data)."""
    return [c for c in frame.columns if c not in NOT_FEATURES and pd.api.types.is_numeric_dtype(frame[c])
            and not pd.api.types.is_bool_dtype(frame[c])]


class UpliftModel(BaseEstimator):
    """Uplift of each action: T-learner, or X-learner pooling the actions (``learner="x"``).

    ``"t"``: ``uplift_a(x) = mu1_a(x) - mu0(x)``, one LightGBM classifier for the customers left
    alone (every control group) and one per action for the contacted.
    ``"x"`` (Kuenzel et al. 2019): the same outcome models, then the imputed effects
    ``D = y - mu0(x)`` of the contacted and ``D = mu1_a(x) - y`` of the controls are regressed on
    ``x`` and the action (one model per group, actions pooled so that every campaign teaches the
    shape of the effect), averaged with the assignment share (0.5 for a half-half split).

    Parameters
    ----------
    learner: ``"x"`` (default) or ``"t"``.
    params: LightGBM parameters of every model (default :data:`DEFAULT_PARAMS`).
    features: the feature columns (default: :func:`feature_columns` of the training frame).
    random_state: seed of the boosters.
    """

    def __init__(self, learner: str = "x", params: dict | None = None, features: list[str] | None = None,
                 random_state: int = 0):
        self.learner = learner
        self.params = params
        self.features = features
        self.random_state = random_state

    def _booster(self, regression: bool = False):
        from lightgbm import LGBMClassifier, LGBMRegressor

        cls = LGBMRegressor if regression else LGBMClassifier
        return cls(**{**DEFAULT_PARAMS, **(self.params or {})}, random_state=self.random_state, n_jobs=1, verbose=-1)

    def _x(self, X: pd.DataFrame) -> pd.DataFrame:
        return X.reindex(columns=self.feature_names_in_).apply(pd.to_numeric, errors="coerce").astype(float)

    def _with_action(self, x: pd.DataFrame, action) -> pd.DataFrame:
        out = x.copy()
        act = np.broadcast_to(np.asarray(action, dtype=object), (len(x),))
        for a in self.actions_:
            out[f"action={a}"] = (act == a).astype(float)
        return out

    def fit(self, X: pd.DataFrame, y, treatment, action=None):
        """``y``: retained (0/1); ``treatment``: contacted (bool); ``action``: the action of each row
        (default one action, ``"contact"``)."""
        y = np.asarray(y, float)
        t = np.asarray(treatment, bool)
        act = np.asarray(["contact"] * len(y) if action is None else action, dtype=object)
        self.feature_names_in_ = np.array(list(self.features or feature_columns(X)))
        x = self._x(X)
        self.control_model_ = self._booster().fit(x[~t], y[~t])
        self.treated_models_ = {}
        for a in sorted(set(act[t])):
            rows = t & (act == a)
            if len(np.unique(y[rows])) < 2:
                continue  # nothing to learn: every contacted row had the same outcome
            self.treated_models_[a] = self._booster().fit(x[rows], y[rows])
        self.actions_ = np.array(sorted(self.treated_models_))
        keep = np.isin(act, self.actions_)
        self.treated_share_ = float(t[keep].mean()) if keep.any() else 0.5
        self.n_train_ = {"control": int((~t).sum()), **{a: int((t & (act == a)).sum()) for a in self.actions_}}
        self.effect_models_ = None
        if self.learner == "x" and len(self.actions_):
            p0 = self.control_model_.predict_proba(x)[:, 1]
            p1 = np.zeros(len(y))
            for a, model in self.treated_models_.items():
                rows = act == a
                p1[rows] = model.predict_proba(x[rows])[:, 1]
            d = np.where(t, y - p0, p1 - y)
            xa = self._with_action(x, act)
            self.effect_models_ = {
                "treated": self._booster(True).fit(xa[t & keep], d[t & keep]),
                "control": self._booster(True).fit(xa[~t & keep], d[~t & keep]),
            }
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Uplift of each action (columns in ``actions_`` order): the change of P(retained) by the contact."""
        x = self._x(X)
        if self.effect_models_ is not None:
            g = self.treated_share_
            cols = []
            for a in self.actions_:
                xa = self._with_action(x, a)
                tau1 = self.effect_models_["treated"].predict(xa)
                tau0 = self.effect_models_["control"].predict(xa)
                cols.append(g * tau0 + (1 - g) * tau1)  # weight each by the other group's share
            return np.column_stack(cols)
        p0 = self.control_model_.predict_proba(x)[:, 1]
        return np.column_stack([self.treated_models_[a].predict_proba(x)[:, 1] - p0 for a in self.actions_])

    def predict_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        """``uplift_<action>`` per action and ``churn_risk`` (1 - P(retained | left alone))."""
        out = pd.DataFrame(self.predict(X), columns=[f"uplift_{a}" for a in self.actions_], index=X.index)
        out["churn_risk"] = self.churn_risk(X)
        return out

    def churn_risk(self, X: pd.DataFrame) -> np.ndarray:
        """P(no purchase in the horizon | no contact): the "contact the highest churn risk" score."""
        return 1.0 - self.control_model_.predict_proba(self._x(X))[:, 1]


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def _ranked(score, y, treatment, seed: int = 0):
    score = np.asarray(score, float)
    tie = np.random.default_rng(seed).random(len(score))  # ties (a constant score) in random order
    order = np.lexsort((tie, -score))
    return np.asarray(y, float)[order], np.asarray(treatment, bool)[order]


def uplift_curve(score, y, treatment, n_points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """(fraction targeted, incremental outcomes per customer of the population) along ``score``.

    Targeting the top ``k`` of ``N``: ``u(k) = (Yt(k)/Nt(k) - Yc(k)/Nc(k)) * k / N`` where ``Yt``,
    ``Nt`` (``Yc``, ``Nc``) are the outcome sum and count of the treated (control) rows in the top
    ``k``; 0 where a group is empty. ``u(N)`` is the average effect.
    """
    ys, ts = _ranked(score, y, treatment)
    n = len(ys)
    nt, nc = np.cumsum(ts), np.cumsum(~ts)
    yt, yc = np.cumsum(ys * ts), np.cumsum(ys * ~ts)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where((nt > 0) & (nc > 0), yt / np.maximum(nt, 1) - yc / np.maximum(nc, 1), 0.0)
    k = np.arange(1, n + 1)
    curve = u * k / n
    frac = np.linspace(0, 1, n_points)
    idx = np.clip(np.round(frac * n).astype(int) - 1, 0, n - 1)
    return frac, np.where(frac == 0, 0.0, curve[idx])


def qini_curve(score, y, treatment, n_points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """(fraction targeted, Qini) along ``score``: ``Q(k) = Yt(k) - Yc(k) * Nt(k) / Nc(k)`` (0 while
    ``Nc(k) = 0``), divided by the number of treated rows ``Nt(N)``."""
    ys, ts = _ranked(score, y, treatment)
    n = len(ys)
    nt, nc = np.cumsum(ts), np.cumsum(~ts)
    yt, yc = np.cumsum(ys * ts), np.cumsum(ys * ~ts)
    q = np.where(nc > 0, yt - yc * nt / np.maximum(nc, 1), 0.0) / max(int(ts.sum()), 1)
    frac = np.linspace(0, 1, n_points)
    idx = np.clip(np.round(frac * n).astype(int) - 1, 0, n - 1)
    return frac, np.where(frac == 0, 0.0, q[idx])


def auuc(score, y, treatment, n_points: int = 101) -> float:
    """Area under the uplift curve (:func:`uplift_curve`) over the fraction targeted, trapezoids.

    Random targeting gives ``ATE / 2`` in expectation (a straight line to ``u(N)``)."""
    frac, curve = uplift_curve(score, y, treatment, n_points)
    return float(np.trapezoid(curve, frac))


def true_auuc(score, y1, y0, n_points: int = 101) -> float:
    """Area under the true uplift curve: ``sum(y1 - y0)`` over the top ``k`` by ``score``, divided by
    ``N``, over the fraction targeted (ties in random order). Needs both potential outcomes."""
    d = np.asarray(y1, float) - np.asarray(y0, float)
    ds, _ = _ranked(score, d, np.ones(len(d), bool))
    curve = np.cumsum(ds) / len(ds)
    frac = np.linspace(0, 1, n_points)
    idx = np.clip(np.round(frac * len(ds)).astype(int) - 1, 0, len(ds) - 1)
    return float(np.trapezoid(np.where(frac == 0, 0.0, curve[idx]), frac))


def true_gain(score, y1, y0, share: float = 0.2) -> float:
    """Incremental outcomes from contacting the top ``share`` by ``score``: ``sum(y1 - y0)`` over them,
    with both potential outcomes known (the synthetic shop's ``campaign_truth``).

    Customers tied at the threshold are taken at random: their group counts with its mean effect
    times the number taken (the expected gain of the rule, not an artefact of the row order)."""
    score = np.asarray(score, float)
    d = np.asarray(y1, float) - np.asarray(y0, float)
    k = int(round(share * len(score)))
    if k == 0:
        return 0.0
    threshold = np.sort(score)[::-1][k - 1]
    above = score > threshold
    tied = score == threshold
    return float(d[above].sum() + (k - above.sum()) * d[tied].mean())


__all__ = ["DEFAULT_PARAMS", "NOT_FEATURES", "UpliftModel", "auuc", "feature_columns", "qini_curve", "true_auuc", "true_gain",
           "uplift_curve"]
