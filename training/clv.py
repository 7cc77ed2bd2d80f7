"""Customer lifetime value: BG/NBD purchase counts times Gamma-Gamma order values.

The BG/NBD model itself (:class:`features.bgnbd.BGNBD`, :func:`features.bgnbd.transaction_summary`)
lives with the features, where it also gives the churn model's ``bg_*`` features and the BG/NBD
churn baseline. Here: the **Gamma-Gamma** spend model and the **customer lifetime value** over the
next 12 months (``clv_frame``): expected purchases per month from BG/NBD times the expected value per
purchase from Gamma-Gamma, discounted monthly.

Conventions (those of ``features/bgnbd.py``): a "transaction" is a **purchase day**; only rows strictly
before the cutoff are used. The value of a purchase day is its gross purchase amount; Gamma-Gamma is
fitted on the mean value of the repeat purchase days of customers with at least one repeat (the
lifetimes convention), with ``lifetimes``' ``GammaGammaFitter``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.bgnbd import BGNBD, transaction_summary

log = logging.getLogger(__name__)

DAYS_PER_MONTH = 365.25 / 12


# --------------------------------------------------------------------------------------------
# Gamma-Gamma
# --------------------------------------------------------------------------------------------
@dataclass
class GammaGamma:
    """Gamma-Gamma spend model (p, q, v): expected value of a customer's future purchase days."""

    p: float = np.nan
    q: float = np.nan
    v: float = np.nan
    penalizer: float = 0.001
    fallback_mean: float = np.nan  # used when the model cannot be fitted (too few repeat buyers)

    def fit(self, summary: pd.DataFrame) -> "GammaGamma":
        from lifetimes import GammaGammaFitter

        rep = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
        first = summary["first_value"] if len(summary) else pd.Series(dtype=float)
        if len(rep):
            self.fallback_mean = float(rep["monetary_value"].mean())
        elif (first > 0).any():
            self.fallback_mean = float(first[first > 0].mean())
        else:  # a log without amounts: value one unit per purchase day (CLV counts purchases)
            self.fallback_mean = 1.0
        if len(rep) < 20:
            return self
        # work in units of the median value for numerical stability
        scale = float(rep["monetary_value"].median()) or 1.0
        for pen in (self.penalizer, 0.01, 0.1):
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    fitter = GammaGammaFitter(penalizer_coef=pen)
                    fitter.fit(rep["frequency"].to_numpy(float), rep["monetary_value"].to_numpy(float) / scale)
                p, q, v = (float(fitter.params_[k]) for k in ("p", "q", "v"))
                if all(np.isfinite([p, q, v])) and q > 1 and p > 0 and v > 0:
                    self.p, self.q, self.v = p, q, v * scale
                    self.penalizer = pen
                    return self
            except Exception as exc:
                log.debug("Gamma-Gamma fit failed with penalizer %s: %s", pen, exc)
        return self

    @property
    def fitted(self) -> bool:
        return bool(np.isfinite(self.p))

    def expected_value(self, summary: pd.DataFrame) -> np.ndarray:
        """E[value of a purchase day | history]: the population mean shrunk towards the customer's mean."""
        x = summary["frequency"].to_numpy(float)
        m = summary["monetary_value"].to_numpy(float)
        if not self.fitted:
            return np.where(x > 0, m, self.fallback_mean)
        p, q, v = self.p, self.q, self.v
        pop = p * v / (q - 1)
        w = p * x / (p * x + q - 1)
        return (1 - w) * pop + w * m


@dataclass
class CLVModel:
    """BG/NBD + Gamma-Gamma fitted at one cutoff; ``predict`` gives the discounted CLV per customer."""

    months: int = 12
    monthly_discount: float = 0.01
    bgnbd: BGNBD = field(default_factory=BGNBD)
    gamma_gamma: GammaGamma = field(default_factory=GammaGamma)
    cutoff: pd.Timestamp | None = None

    def fit(self, events: pd.DataFrame, cutoff, days: pd.DataFrame | None = None) -> "CLVModel":
        self.cutoff = pd.Timestamp(cutoff).normalize()
        summary = transaction_summary(events, self.cutoff, days=days)
        self.bgnbd.fit(summary)
        self.gamma_gamma.fit(summary)
        self._summary = summary
        return self

    def predict(self, summary: pd.DataFrame | None = None, horizon_days: int | None = 90) -> pd.DataFrame:
        """``customer_id, clv_12m, expected_purchases_12m, expected_value, p_alive`` and, for
        ``horizon_days``, the churn model's BG/NBD features ``bg_p_alive, bg_expected_purchases,
        bg_p_no_purchase`` (the same fit; used when a snapshot lacks them)."""
        s = self._summary if summary is None else summary
        value = self.gamma_gamma.expected_value(s)
        cum_prev = np.zeros(len(s))
        clv = np.zeros(len(s))
        for month in range(1, self.months + 1):
            cum = self.bgnbd.expected_purchases(month * DAYS_PER_MONTH, s)
            clv += (cum - cum_prev) * value / (1 + self.monthly_discount) ** month
            cum_prev = cum
        p_alive = self.bgnbd.p_alive(s)
        out = pd.DataFrame(
            {
                "customer_id": s.index.astype(str).to_numpy(),
                f"clv_{self.months}m": clv,
                f"expected_purchases_{self.months}m": cum_prev,
                "expected_value": value,
                "p_alive": p_alive,
            }
        )
        if horizon_days:
            out["bg_p_alive"] = p_alive
            out["bg_expected_purchases"] = self.bgnbd.expected_purchases(horizon_days, s)
            out["bg_p_no_purchase"] = self.bgnbd.p_no_purchase(horizon_days, s)
        return out


def clv_frame(events: pd.DataFrame, cutoff, months: int = 12, monthly_discount: float = 0.01,
              horizon_days: int | None = 90) -> pd.DataFrame:
    """12-month CLV of every customer with a purchase before ``cutoff`` (see :class:`CLVModel`),
    with the BG/NBD churn features for ``horizon_days``."""
    model = CLVModel(months=months, monthly_discount=monthly_discount).fit(events, cutoff)
    return model.predict(horizon_days=horizon_days)
