"""The simple rules a churn model must beat, and the score -> probability calibrators.

Every baseline turns a snapshot frame (one row per customer and cutoff, columns as in
``features/catalog.py`` plus the ``bg_*`` columns of ``features.churn_features.feature_matrix``) into a **risk
score** (higher = more likely to churn):

``recency``
    days since the last purchase (``recency_days``): "call the customers who have been away
    longest". Customers without any purchase get the highest risk.
``rfm``
    the classic RFM score: recency, frequency and monetary quintiles 1-5 computed among the
    customers of the same cutoff (5 = most recent / most orders / most spend); risk = 15 - (R+F+M).
``bgnbd``
    the BG/NBD buy-till-you-die model fitted on each cutoff's own past: P(no purchase in the
    horizon) (``bg_p_no_purchase``), equivalently a ranking by expected purchases in the horizon.

Ranking metrics (AUC, PR-AUC, lift) use the score itself. Brier, log loss and ECE need
probabilities: :class:`Baselines` maps each score to a probability with a :class:`Calibrator`
(centered isotonic regression by default) fitted on the **training cutoffs**, the same labelled
snapshots the churn model learns from; the evaluation cutoff is never used to fit it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

BASELINES = ("recency", "rfm", "bgnbd")
BASELINE_DOCS = {
    "recency": "days since the last purchase (longest away = highest risk)",
    "rfm": "15 - (R + F + M), quintile scores 1-5 among the customers of the same cutoff",
    "bgnbd": "BG/NBD P(no purchase in the horizon), fitted on the history before each cutoff",
}


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------
def _pava(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool-adjacent-violators on sorted data: (block start index, block end index, block value).

    scikit-learn's compiled PAVA gives the fitted value of every point; the blocks are the runs of
    equal fitted values (adjacent blocks of equal value are pooled, as the textbook loop does). A
    Python loop over every distinct score cost seconds per fit on 200k-row training frames."""
    from sklearn.isotonic import isotonic_regression

    y = np.asarray(y, dtype=float)
    if len(y) == 0:
        return np.array([], dtype=int), np.array([], dtype=int), np.array([], dtype=float)
    fitted = isotonic_regression(y, sample_weight=np.asarray(w, dtype=float), increasing=True)
    starts = np.flatnonzero(np.r_[True, fitted[1:] != fitted[:-1]])
    ends = np.r_[starts[1:] - 1, len(y) - 1]
    return starts, ends, fitted[starts]


@dataclass
class Calibrator:
    """Monotone map from a risk score to a probability, fitted on held-out labelled rows.

    ``method="isotonic"``: centered isotonic regression (isotonic regression whose constant
    blocks are replaced by one knot at each block's weighted centre, linearly interpolated):
    as flexible as isotonic, but strictly increasing between knots so it keeps the ranking of
    the scores (plain isotonic steps would create ties and lower the AUC).
    ``method="sigmoid"``: Platt scaling, a logistic regression on the standardised score.
    """

    method: str = "isotonic"
    knots_x_: np.ndarray | None = None
    knots_y_: np.ndarray | None = None
    coef_: tuple[float, float, float, float] | None = None  # (a, b, mean, std)
    n_: int = 0
    eps: float = 1e-4  # probabilities kept in [eps, 1 - eps]

    def fit(self, score, y, sample_weight=None) -> "Calibrator":
        s = np.asarray(score, dtype=float)
        y = np.asarray(y, dtype=float)
        ok = np.isfinite(s) & np.isfinite(y)
        s, y = s[ok], y[ok]
        w = np.ones_like(s) if sample_weight is None else np.asarray(sample_weight, dtype=float)[ok]
        if len(s) == 0:
            raise ValueError("no labelled rows to calibrate on")
        self.n_ = int(len(s))
        if self.method == "sigmoid":
            from sklearn.linear_model import LogisticRegression

            mu, sd = float(s.mean()), float(s.std()) or 1.0
            lr = LogisticRegression(C=1e6, max_iter=1000)
            if len(np.unique(y)) < 2:
                rate = float(np.clip(y.mean(), self.eps, 1 - self.eps))
                self.coef_ = (0.0, float(np.log(rate / (1 - rate))), mu, sd)
                return self
            lr.fit(((s - mu) / sd)[:, None], y, sample_weight=w)
            self.coef_ = (float(lr.coef_[0, 0]), float(lr.intercept_[0]), mu, sd)
            return self
        if self.method != "isotonic":
            raise ValueError("method must be 'isotonic' or 'sigmoid'")
        # aggregate equal scores, then PAVA
        order = np.argsort(s, kind="stable")
        s, y, w = s[order], y[order], w[order]
        uniq, idx = np.unique(s, return_index=True)
        wsum = np.add.reduceat(w, idx)
        ysum = np.add.reduceat(y * w, idx)
        ybar = ysum / wsum
        b_start, b_end, b_val = _pava(ybar, wsum)
        cx = np.add.reduceat(uniq * wsum, b_start) / np.add.reduceat(wsum, b_start)  # weighted block centres
        self.knots_x_, self.knots_y_ = cx, np.clip(b_val, self.eps, 1 - self.eps)
        return self

    def predict(self, score) -> np.ndarray:
        s = np.asarray(score, dtype=float)
        if self.method == "sigmoid":
            if self.coef_ is None:
                raise RuntimeError("Calibrator is not fitted")
            a, b, mu, sd = self.coef_
            z = a * (s - mu) / sd + b
            out = 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))
        else:
            if self.knots_x_ is None:
                raise RuntimeError("Calibrator is not fitted")
            if len(self.knots_x_) == 1:
                out = np.full(s.shape, self.knots_y_[0])
            else:
                out = np.interp(s, self.knots_x_, self.knots_y_)
        out = np.where(np.isfinite(s), out, np.nan)
        return np.clip(out, self.eps, 1 - self.eps)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "n": self.n_,
            "knots_x": None if self.knots_x_ is None else self.knots_x_.tolist(),
            "knots_y": None if self.knots_y_ is None else self.knots_y_.tolist(),
            "coef": self.coef_,
        }


# --------------------------------------------------------------------------------------------
# baseline scores
# --------------------------------------------------------------------------------------------
def _col(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        raise KeyError(f"the snapshot frame has no '{name}' column")
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def recency_score(frame: pd.DataFrame) -> np.ndarray:
    """Days since the last purchase; never-purchased customers get the largest value."""
    r = _col(frame, "recency_days")
    fill = (np.nanmax(r) + 1.0) if np.isfinite(r).any() else 0.0
    return np.where(np.isfinite(r), r, fill)


def _quintile(values: np.ndarray, groups: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Quintile score 1-5 within each group (ties share the average rank); NaN -> 1 (worst)."""
    out = np.ones(len(values))
    s = pd.Series(values if higher_is_better else -values)
    ranks = s.groupby(groups).rank(method="average", pct=True).to_numpy()
    ok = np.isfinite(ranks)
    out[ok] = np.clip(np.ceil(ranks[ok] * 5), 1, 5)
    return out


def rfm_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """R, F and M quintile scores (1-5, 5 best) within each cutoff."""
    groups = frame["cutoff"].astype("int64").to_numpy() if "cutoff" in frame.columns else np.zeros(len(frame))
    r = _col(frame, "recency_days")
    f = _col(frame, "frequency")
    m = _col(frame, "monetary")
    return pd.DataFrame(
        {
            "r_score": _quintile(r, groups, higher_is_better=False),
            "f_score": _quintile(f, groups, higher_is_better=True),
            "m_score": _quintile(m, groups, higher_is_better=True),
        },
        index=frame.index,
    )


def rfm_score(frame: pd.DataFrame) -> np.ndarray:
    """Risk = 15 - (R + F + M): 0 for the best customers, 12 for the worst."""
    s = rfm_scores(frame)
    return 15.0 - s.sum(axis=1).to_numpy(dtype=float)


def bgnbd_score(frame: pd.DataFrame) -> np.ndarray:
    """BG/NBD P(no purchase in the horizon); customers unknown to the model count as certain churners."""
    p = _col(frame, "bg_p_no_purchase")
    return np.where(np.isfinite(p), p, 1.0)


SCORERS = {"recency": recency_score, "rfm": rfm_score, "bgnbd": bgnbd_score}


def baseline_scores(frame: pd.DataFrame, names=BASELINES) -> dict[str, np.ndarray]:
    return {name: SCORERS[name](frame) for name in names}


@dataclass
class Baselines:
    """The three baselines with probability calibrators fitted on training snapshots."""

    names: tuple[str, ...] = BASELINES
    method: str = "isotonic"
    calibrators_: dict[str, Calibrator] = field(default_factory=dict)

    def fit(self, frame: pd.DataFrame, y) -> "Baselines":
        y = np.asarray(y, dtype=float)
        for name, score in baseline_scores(frame, self.names).items():
            self.calibrators_[name] = Calibrator(self.method).fit(score, y)
        return self

    def predict(self, frame: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
        """``{name: {"score": risk score, "proba": calibrated P(churn)}}``."""
        out = {}
        for name, score in baseline_scores(frame, self.names).items():
            out[name] = {"score": score, "proba": self.calibrators_[name].predict(score)}
        return out
