"""BG/NBD, the buy-till-you-die model of purchase counts and dropout, as churn model features.

A feature module (``features`` imports nothing from ``training``): the churn model's BG/NBD inputs
(``bg_p_alive``, ``bg_expected_purchases``, ``bg_p_no_purchase``, see ``features.catalog.EXTRAS``;
the BG/NBD churn baseline is ``bg_p_no_purchase``) come from here, joined to the other features by
``features.churn_features.feature_matrix``, and ``training/clv.py`` builds customer lifetime value
on the same :class:`BGNBD` and :func:`transaction_summary`.

Conventions. The unit of time is a day and a "transaction" is a **purchase day** (all purchase lines of
a customer on one calendar day), as in the lifetimes package: ``frequency`` = repeat purchase days,
``recency`` = days from the first to the last purchase day, ``T`` = days from the first purchase day
to the cutoff. Only rows strictly before the cutoff are used. Parameters are fitted with ``lifetimes``
(``BetaGeoFitter``); the probability of zero purchases in a window, which lifetimes does not offer
conditionally, is computed here in closed form (see ``BGNBD.p_no_purchase``).

Two steps per cutoff, kept apart so that one customer's values can later be computed online:
:meth:`BGNBD.fit` learns the population parameters ``(r, alpha, a, b)`` from every customer's
history before the cutoff (:attr:`BGNBD.params`); :func:`bgnbd_features` then gives any customer's
values from those parameters and that customer's own :func:`transaction_summary` row.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import betaln, gammaln

log = logging.getLogger(__name__)

BG_COLUMNS = ["bg_p_alive", "bg_expected_purchases", "bg_p_no_purchase"]  # the churn model's BG/NBD features


# --------------------------------------------------------------------------------------------
# the transaction summary
# --------------------------------------------------------------------------------------------
def purchase_days(events: pd.DataFrame, cutoff=None) -> pd.DataFrame:
    """One row per (customer, purchase day) before ``cutoff``: ``customer_id, day, amount``."""
    ev = events
    mask = ev["event_type"].astype("string") == "purchase"
    if cutoff is not None:
        mask &= ev["timestamp"] < pd.Timestamp(cutoff)
    ev = ev.loc[mask.fillna(False).to_numpy(bool), ["customer_id", "timestamp", "amount"]]
    amount = pd.to_numeric(ev["amount"], errors="coerce").fillna(0.0).to_numpy(float)
    out = pd.DataFrame(
        {
            "customer_id": ev["customer_id"].astype(str).to_numpy(),
            "day": ev["timestamp"].to_numpy("datetime64[us]").astype("datetime64[D]"),
            "amount": amount,
        }
    )
    return out.groupby(["customer_id", "day"], sort=True, as_index=False)["amount"].sum()


def transaction_summary(events: pd.DataFrame, cutoff, days: pd.DataFrame | None = None) -> pd.DataFrame:
    """BG/NBD inputs per customer with a purchase before ``cutoff`` (index ``customer_id``).

    Columns ``frequency``, ``recency``, ``T`` (days, floats), ``monetary_value`` (mean value of the
    repeat purchase days; 0 without a repeat), ``first_value`` and ``n_days``.
    ``days`` may pass a precomputed :func:`purchase_days` table (it is filtered to the cutoff).
    """
    cutoff = pd.Timestamp(cutoff).normalize()
    if days is None:
        days = purchase_days(events, cutoff)
    else:
        days = days[days["day"] < np.datetime64(cutoff.date(), "D")]
    if days.empty:
        return pd.DataFrame(
            columns=["frequency", "recency", "T", "monetary_value", "first_value", "n_days"],
            index=pd.Index([], name="customer_id", dtype=str),
            dtype=float,
        )
    g = days.groupby("customer_id", sort=True)
    first = g["day"].min()
    last = g["day"].max()
    n = g.size().astype(float)
    total = g["amount"].sum()
    first_value = g["amount"].first()
    cut = np.datetime64(cutoff.date(), "D")
    frequency = n - 1.0
    recency = (last - first).dt.days.astype(float)
    T = ((cut - first.to_numpy("datetime64[D]")).astype("timedelta64[D]").astype(float))
    repeat_total = total - first_value
    monetary = np.where(frequency > 0, repeat_total / frequency.clip(lower=1), 0.0)
    out = pd.DataFrame(
        {
            "frequency": frequency.to_numpy(),
            "recency": recency.to_numpy(),
            "T": T,
            "monetary_value": monetary,
            "first_value": first_value.to_numpy(float),
            "n_days": n.to_numpy(),
        },
        index=pd.Index(first.index.astype(str), name="customer_id"),
    )
    return out



# --------------------------------------------------------------------------------------------
# BG/NBD
# --------------------------------------------------------------------------------------------
@dataclass
class BGNBD:
    """BG/NBD parameters (r, alpha, a, b) with vectorised predictions; time unit = days."""

    r: float = np.nan
    alpha: float = np.nan
    a: float = np.nan
    b: float = np.nan
    penalizer: float = 0.001
    n_customers: int = 0
    method_: str = ""

    def fit(self, summary: pd.DataFrame, init: "BGNBD | None" = None) -> "BGNBD":
        """Fit on a :func:`transaction_summary`.

        lifetimes' ``BetaGeoFitter`` (time scaled to weeks) first, with growing penalizers; when it
        does not converge (short histories), a direct maximum-likelihood fit of the same model with
        scipy (L-BFGS-B on the log parameters, started from several points). ``init``: a fitted model
        to start from (consecutive cutoffs have similar parameters: faster and steadier).
        """
        from lifetimes import BetaGeoFitter

        if len(summary) < 2:
            raise ValueError("BG/NBD needs at least two customers with purchases")
        f = summary["frequency"].to_numpy(float)
        r = summary["recency"].to_numpy(float) / 7.0
        T = summary["T"].to_numpy(float) / 7.0
        self.n_customers = int(len(summary))
        for pen in (self.penalizer, 0.01):
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")  # lifetimes prints the optimiser state on failure
                    fitter = BetaGeoFitter(penalizer_coef=pen)
                    start = None
                    if init is not None and np.isfinite(init.r):
                        start = np.array([init.r, init.alpha / 7.0, init.a, init.b])
                    fitter.fit(f, r, T, initial_params=start)
                vals = [float(fitter.params_[k]) for k in ("r", "alpha", "a", "b")]
                if all(np.isfinite(vals)) and all(v > 0 for v in vals):
                    self.r, alpha_w, self.a, self.b = vals
                    self.alpha = alpha_w * 7.0  # weeks -> days
                    self.penalizer = pen
                    self.method_ = "lifetimes"
                    return self
            except Exception as exc:  # convergence problems: retry, then the direct fit
                log.debug("lifetimes BG/NBD fit failed with penalizer %s: %s", pen, exc)
        return self._fit_direct(f, r, T)

    def _fit_direct(self, x, tx, T) -> "BGNBD":
        from scipy.optimize import minimize

        pen = max(self.penalizer, 0.001)

        def nll(theta):
            self.r, self.alpha, self.a, self.b = np.exp(np.clip(theta, -20, 20))
            log_A, log_D = self._log_terms(x, tx, T)
            ll = np.logaddexp(log_A, log_D).sum()
            return -ll / len(x) + pen * float(np.sum(np.exp(np.clip(theta, -20, 20)) ** 2))

        best = None
        for start in ([0.0, 0.0, 0.0, 0.0], [-0.5, 1.5, -1.0, 0.5], [0.5, 2.5, 0.0, 1.0]):
            with np.errstate(all="ignore"):
                res = minimize(nll, np.array(start), method="L-BFGS-B")
            if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
        if best is None:
            raise RuntimeError("BG/NBD did not converge")
        self.r, alpha_w, self.a, self.b = (float(v) for v in np.exp(np.clip(best.x, -20, 20)))
        self.alpha = alpha_w * 7.0
        self.penalizer = pen
        self.method_ = "scipy"
        return self

    @property
    def params(self) -> dict:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    def _xtT(self, summary):
        return (
            summary["frequency"].to_numpy(float),
            summary["recency"].to_numpy(float),
            summary["T"].to_numpy(float),
        )

    def _log_terms(self, x, tx, T):
        """log A(T) (alive at T) and log D (dropped out after the last purchase; -inf when x = 0)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        common = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        log_A = betaln(a, b + x) - betaln(a, b) + common - (r + x) * np.log(alpha + T)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_D = np.where(
                x > 0,
                betaln(a + 1, b + np.maximum(x, 1) - 1) - betaln(a, b) + common - (r + x) * np.log(alpha + tx),
                -np.inf,
            )
        return log_A, log_D

    def p_alive(self, summary: pd.DataFrame) -> np.ndarray:
        """P(the customer has not dropped out by the cutoff | history)."""
        x, tx, T = self._xtT(summary)
        log_A, log_D = self._log_terms(x, tx, T)
        return np.exp(log_A - np.logaddexp(log_A, log_D))

    def p_no_purchase(self, t: float, summary: pd.DataFrame) -> np.ndarray:
        """P(no purchase in the next ``t`` days | history): the BG/NBD churn probability.

        With the individual likelihood ``L = A + D`` (A: still alive at T, D: dropped out right after
        the last purchase), zero purchases in (T, T + t] happen when the customer is dead (D) or
        alive and silent; integrating over the Gamma(r, alpha) purchase rate gives
        ``(A(T + t) + D) / (A(T) + D)`` where ``A(s) = B(a, b+x)/B(a, b) * G(r+x)/G(r) * alpha^r / (alpha+s)^(r+x)``.
        """
        x, tx, T = self._xtT(summary)
        log_A, log_D = self._log_terms(x, tx, T)
        log_At = log_A + (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + t))
        return np.exp(np.logaddexp(log_At, log_D) - np.logaddexp(log_A, log_D))

    def expected_purchases(self, t, summary: pd.DataFrame) -> np.ndarray:
        """E[purchase days in the next ``t`` days | history] (Fader, Hardie and Lee 2005, eq. 10)."""
        from scipy.special import hyp2f1

        x, tx, T = self._xtT(summary)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        t = np.asarray(t, dtype=float)
        z = t / (alpha + T + t)
        hyp = hyp2f1(r + x, b + x, a + b + x - 1, z)
        first = (a + b + x - 1) / (a - 1) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp)
        log_A, log_D = self._log_terms(x, tx, T)
        p_alive = np.exp(log_A - np.logaddexp(log_A, log_D))
        out = first * p_alive
        return np.where(np.isfinite(out), np.maximum(out, 0.0), 0.0)


def bgnbd_features(model: BGNBD, summary: pd.DataFrame, cutoff, horizon_days: int) -> pd.DataFrame:
    """The BG/NBD values of the customers of ``summary`` (a :func:`transaction_summary` at ``cutoff``)
    under the population parameters of ``model`` (fitted at the same cutoff).

    Columns ``customer_id, cutoff, bg_p_alive, bg_expected_purchases`` (in the horizon),
    ``bg_p_no_purchase`` (the BG/NBD churn probability) and ``bg_frequency, bg_T``.
    """
    return pd.DataFrame(
        {
            "customer_id": summary.index.to_numpy(),
            "cutoff": pd.Timestamp(cutoff).normalize(),
            "bg_p_alive": model.p_alive(summary),
            "bg_expected_purchases": model.expected_purchases(horizon_days, summary),
            "bg_p_no_purchase": model.p_no_purchase(horizon_days, summary),
            "bg_frequency": summary["frequency"].to_numpy(),
            "bg_T": summary["T"].to_numpy(),
        }
    )


def fit_at(days: pd.DataFrame, cutoff, init: BGNBD | None = None,
           sample: int | None = None) -> tuple[pd.DataFrame, BGNBD | None]:
    """The :func:`transaction_summary` at ``cutoff`` (from a :func:`purchase_days` table) and the BG/NBD
    fitted on it (None with fewer than two customers). ``init``: see :meth:`BGNBD.fit`.

    ``sample``: fit the four population parameters on about this many customers (a hash sample,
    ``features.sampling``) when there are more; the summary, and so the values, cover every customer.
    Each likelihood evaluation of the fit costs a pass over its customers: at 1,000,000 customers a
    fit on all of them costs minutes of CPU per cutoff for parameters a 100,000-customer sample
    already pins down."""
    from features.sampling import in_sample

    summary = transaction_summary(None, cutoff, days=days)
    if len(summary) < 2:
        return summary, None
    keep = in_sample(summary.index.to_numpy(), sample)
    return summary, BGNBD().fit(summary if keep.all() else summary[keep], init=init)
