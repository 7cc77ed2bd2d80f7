"""Metrics of a churn score: pure functions of (labels, scores), no I/O, no state.

``y`` is a 0/1 array (1 = churned), ``p`` a churn probability or any score where higher means
more risk. Ranking metrics (AUC, PR-AUC, lift, capture, gains) only use the order of ``p``;
probability metrics (Brier, log loss, ECE, calibration curve) need ``p`` in [0, 1].

Ties: ``lift_at`` / ``capture_at`` / ``gains_curve`` treat customers with the same score as one
block and count the expected positives of a random order inside the block that straddles the
cut. A rule with few distinct values (an RFM score, a recency threshold) is therefore neither
flattered nor punished by an arbitrary tie order.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

EPS = 1e-15


def _arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y and p differ in length: {y.shape[0]} vs {p.shape[0]}")
    if np.isnan(y).any():
        raise ValueError("y contains missing labels")
    if np.isnan(p).any():
        raise ValueError("p contains missing scores")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y must be 0/1")
    return y, p


def _both_classes(y: np.ndarray) -> bool:
    return 0 < y.sum() < len(y)


def roc_auc(y, p) -> float:
    """Area under the ROC curve (NaN when only one class is present)."""
    y, p = _arrays(y, p)
    return float(skm.roc_auc_score(y, p)) if _both_classes(y) else math.nan


def pr_auc(y, p) -> float:
    """Average precision (the step-wise area under the precision-recall curve)."""
    y, p = _arrays(y, p)
    return float(skm.average_precision_score(y, p)) if y.sum() > 0 else math.nan


def brier(y, p) -> float:
    """Mean squared error of the probability: ``mean((p - y)^2)``."""
    y, p = _arrays(y, p)
    return float(np.mean((p - y) ** 2))


def log_loss(y, p, eps: float = EPS) -> float:
    """Mean negative log-likelihood with ``p`` clipped to ``[eps, 1 - eps]``."""
    y, p = _arrays(y, p)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _top_positives(y: np.ndarray, p: np.ndarray, k: float) -> float:
    """Expected positives among the ``k`` highest scores (ties share the remaining slots)."""
    if k <= 0:
        return 0.0
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    # blocks of equal score
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    sizes = np.diff(np.r_[starts, len(ps)])
    pos = np.add.reduceat(ys, starts)
    before = np.r_[0, np.cumsum(sizes)[:-1]]
    take = np.clip(k - before, 0, sizes)
    return float(np.sum(pos * take / sizes))


def capture_at(y, p, frac: float) -> float:
    """Share of all churners found in the top ``frac`` of customers by score (recall at ``frac``)."""
    y, p = _arrays(y, p)
    if not 0 < frac <= 1:
        raise ValueError("frac must be in (0, 1]")
    total = y.sum()
    if total == 0:
        return math.nan
    return _top_positives(y, p, frac * len(y)) / total


def precision_at(y, p, frac: float) -> float:
    """Churn rate among the top ``frac`` of customers by score."""
    y, p = _arrays(y, p)
    if not 0 < frac <= 1:
        raise ValueError("frac must be in (0, 1]")
    k = frac * len(y)
    return _top_positives(y, p, k) / k


def lift_at(y, p, frac: float) -> float:
    """Churn rate in the top ``frac`` divided by the overall churn rate (1.0 = no better than random)."""
    y, p = _arrays(y, p)
    base = y.mean()
    if base == 0:
        return math.nan
    return precision_at(y, p, frac) / base


def gains_curve(y, p, n_points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative gains: (share of customers contacted, share of churners captured), from (0, 0) to (1, 1)."""
    y, p = _arrays(y, p)
    fracs = np.linspace(0.0, 1.0, n_points)
    total = y.sum()
    if total == 0:
        return fracs, np.full_like(fracs, np.nan)
    captured = np.array([_top_positives(y, p, f * len(y)) for f in fracs]) / total
    return fracs, captured


def calibration_table(y, p, n_bins: int = 10, strategy: str = "uniform") -> list[dict]:
    """Reliability bins: for each non-empty bin its range, count, mean predicted and observed rate.

    ``strategy="uniform"``: equal-width bins on [0, 1] (bin i is ``[i/n, (i+1)/n)``, the last one
    closed); ``"quantile"``: bins with about the same number of customers.
    """
    y, p = _arrays(y, p)
    if len(y) == 0:
        return []
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
        edges[0], edges[-1] = min(edges[0], 0.0), max(edges[-1], 1.0)
    else:
        raise ValueError("strategy must be 'uniform' or 'quantile'")
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        mask = idx == b
        n = int(mask.sum())
        if n == 0:
            continue
        rows.append(
            {
                "bin_low": float(edges[b]),
                "bin_high": float(edges[b + 1]),
                "n": n,
                "mean_predicted": float(p[mask].mean()),
                "observed_rate": float(y[mask].mean()),
            }
        )
    return rows


def ece(y, p, n_bins: int = 10, strategy: str = "uniform") -> float:
    """Expected calibration error: ``sum_b n_b / N * |observed_b - predicted_b|`` over the reliability bins."""
    y, p = _arrays(y, p)
    if len(y) == 0:
        return math.nan
    rows = calibration_table(y, p, n_bins, strategy)
    return float(sum(r["n"] * abs(r["observed_rate"] - r["mean_predicted"]) for r in rows) / len(y))


def evaluate(y, p, score=None) -> dict:
    """All churn metrics of one scorer.

    ``p`` is the churn probability (used for Brier, log loss, ECE); ``score`` the ranking score when
    it differs from ``p`` (used for AUC, PR-AUC, lift, capture); by default the ranking uses ``p``.
    """
    y, p = _arrays(y, p)
    s = p if score is None else _arrays(y, score)[1]
    return {
        "auc": roc_auc(y, s),
        "pr_auc": pr_auc(y, s),
        "brier": brier(y, p),
        "log_loss": log_loss(y, p),
        "ece": ece(y, p),
        "top_decile_lift": lift_at(y, s, 0.10),
        "top_decile_capture": capture_at(y, s, 0.10),
        "top_5pct_lift": lift_at(y, s, 0.05),
        "top_5pct_capture": capture_at(y, s, 0.05),
        "mean_predicted": float(p.mean()) if len(p) else math.nan,
        "n_customers": int(len(y)),
        "churn_rate": float(y.mean()) if len(y) else math.nan,
    }


# Order and labels of the columns printed side by side (key, header, format, higher is better?).
DISPLAY = (
    ("auc", "ROC-AUC", "{:.3f}", True),
    ("pr_auc", "PR-AUC", "{:.3f}", True),
    ("brier", "Brier", "{:.4f}", False),
    ("log_loss", "log loss", "{:.4f}", False),
    ("ece", "ECE", "{:.4f}", False),
    ("top_decile_lift", "lift@10%", "{:.2f}", True),
    ("top_decile_capture", "capture@10%", "{:.1%}", True),
    ("top_5pct_capture", "capture@5%", "{:.1%}", True),
)
