"""Evaluation plots of a churn model next to its baselines (matplotlib figures, Agg backend).

Each function takes ``y`` (0/1 churn labels) and ``scores`` = ``{name: {"score": ..., "proba": ...}}``
(the model first, then the baselines; ``score`` ranks, ``proba`` is the calibrated probability) and
returns a ``matplotlib.figure.Figure``; the caller saves or logs it and closes it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from training import churn_metrics as cm  # noqa: E402

COLORS = {"model": "#1f4e9c", "recency": "#d9822b", "rfm": "#7a9a01", "bgnbd": "#8e44ad"}
LABELS = {"model": "LightGBM (calibrated)", "recency": "recency rule", "rfm": "RFM score", "bgnbd": "BG/NBD"}


def _style(name: str) -> dict:
    return {
        "color": COLORS.get(name),
        "lw": 2.4 if name == "model" else 1.4,
        "alpha": 1.0 if name == "model" else 0.85,
        "label": LABELS.get(name, name),
    }


def roc_figure(y, scores: dict, title: str = "ROC curve"):
    fig, ax = plt.subplots(figsize=(6, 5.2))
    for name, s in scores.items():
        fpr, tpr, _ = skm.roc_curve(y, s["score"])
        st = _style(name)
        st["label"] = f"{st['label']} (AUC {cm.roc_auc(y, s['score']):.3f})"
        ax.plot(fpr, tpr, **st)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="random")
    ax.set(xlabel="false positive rate (stayers flagged)", ylabel="true positive rate (churners caught)",
           title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def pr_figure(y, scores: dict, title: str = "Precision-recall curve"):
    fig, ax = plt.subplots(figsize=(6, 5.2))
    base = float(np.mean(y))
    for name, s in scores.items():
        prec, rec, _ = skm.precision_recall_curve(y, s["score"])
        st = _style(name)
        st["label"] = f"{st['label']} (AP {cm.pr_auc(y, s['score']):.3f})"
        ax.plot(rec, prec, drawstyle="steps-post", **st)
    ax.axhline(base, ls="--", color="grey", lw=1, label=f"churn rate {base:.1%}")
    ax.set(xlabel="recall (share of churners caught)", ylabel="precision (churn rate of those flagged)",
           title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def calibration_figure(y, scores: dict, n_bins: int = 10, title: str = "Calibration (reliability)"):
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(6, 6.6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for name, s in scores.items():
        rows = cm.calibration_table(y, s["proba"], n_bins=n_bins, strategy="quantile")
        st = _style(name)
        st["label"] = f"{st['label']} (ECE {cm.ece(y, s['proba']):.3f})"
        ax.plot([r["mean_predicted"] for r in rows], [r["observed_rate"] for r in rows], marker="o", ms=4, **st)
    ax.set(ylabel="observed churn rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    if "model" in scores:
        axh.hist(scores["model"]["proba"], bins=40, range=(0, 1), color=COLORS["model"], alpha=0.8)
    axh.set(xlabel="predicted churn probability (curve: deciles of customers)", ylabel="customers")
    axh.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def gains_figure(y, scores: dict, title: str = "Cumulative gains and lift"):
    fig, (ax, axl) = plt.subplots(1, 2, figsize=(11, 4.6))
    for name, s in scores.items():
        fracs, captured = cm.gains_curve(y, s["score"], n_points=101)
        st = _style(name)
        ax.plot(fracs, captured, **st)
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.where(fracs > 0, captured / fracs, np.nan)
        axl.plot(fracs[5:], lift[5:], **st)
    base = float(np.mean(y))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="random")
    if base > 0:
        ax.plot([0, base, 1], [0, 1, 1], ls=":", color="black", lw=1, label="perfect")
    for frac in (0.05, 0.10):
        ax.axvline(frac, color="grey", lw=0.6, ls=":")
        axl.axvline(frac, color="grey", lw=0.6, ls=":")
    ax.set(xlabel="share of customers contacted (highest risk first)", ylabel="share of churners captured",
           title="Cumulative gains", xlim=(0, 1), ylim=(0, 1.01))
    axl.axhline(1.0, ls="--", color="grey", lw=1)
    axl.set(xlabel="share of customers contacted", ylabel="lift (churn rate / overall)", title="Lift", xlim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    axl.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def shap_summary_figure(contrib: np.ndarray, X, feature_names: list[str], max_display: int = 20,
                        title: str = "What drives churn risk (SHAP, log-odds)"):
    """Beeswarm of SHAP contributions (``pred_contrib=True``, bias column dropped) for the top features.

    Drawn directly with matplotlib (each dot a customer, colour = the feature's value from low to
    high within the scored customers), so it does not depend on shap's plotting state.
    """
    contrib = np.asarray(contrib)[:, : len(feature_names)]
    mean_abs = np.abs(contrib).mean(axis=0)
    top = np.argsort(-mean_abs)[:max_display][::-1]
    fig, (ax, axb) = plt.subplots(1, 2, figsize=(12, 0.38 * len(top) + 1.8),
                                  gridspec_kw={"width_ratios": [3, 1.3]}, sharey=True)
    rng = np.random.default_rng(0)
    cmap = plt.get_cmap("coolwarm")
    for row, j in enumerate(top):
        vals = contrib[:, j]
        name = feature_names[j]
        raw = X[name] if name in X.columns else None
        colour = np.full(len(vals), 0.5)
        if raw is not None:
            num = np.asarray(raw.astype("float64") if raw.dtype.kind in "fiub" else np.full(len(raw), np.nan),
                             dtype=float)
            ok = np.isfinite(num)
            if ok.sum() > 1:
                lo, hi = np.nanpercentile(num[ok], [5, 95])
                colour[ok] = np.clip((num[ok] - lo) / (hi - lo), 0, 1) if hi > lo else 0.5
        n = len(vals)
        take = rng.choice(n, size=min(n, 3000), replace=False) if n > 3000 else np.arange(n)
        jitter = rng.normal(0, 0.12, size=len(take))
        missing = raw is not None and raw.isna().to_numpy()[take] if raw is not None else np.zeros(len(take), bool)
        c = cmap(colour[take])
        c[np.asarray(missing, bool)] = (0.6, 0.6, 0.6, 1.0)
        ax.scatter(vals[take], row + jitter, c=c, s=5, alpha=0.6, linewidths=0)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(top)))
    ax.set_yticklabels([feature_names[j] for j in top], fontsize=8)
    ax.set_xlabel("contribution to churn log-odds (right = more risk)")
    ax.set_title(title, fontsize=10)
    sm = plt.cm.ScalarMappable(cmap=cmap)
    cb = fig.colorbar(sm, ax=ax, pad=0.01, aspect=40)
    cb.set_ticks([0, 1])
    cb.set_ticklabels(["low", "high"])
    cb.set_label("feature value (grey = missing)", fontsize=8)
    axb.barh(range(len(top)), mean_abs[top], color=COLORS["model"])
    axb.set_xlabel("mean |SHAP|")
    axb.set_title("global importance", fontsize=10)
    axb.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def importance_figure(booster, top: int = 20, title: str = "LightGBM gain importance"):
    gain = booster.feature_importance(importance_type="gain")
    names = booster.feature_name()
    order = np.argsort(-gain)[:top][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(order) + 1.5))
    total = gain.sum() or 1.0
    ax.barh([names[i] for i in order], gain[order] / total, color=COLORS["model"])
    ax.set(xlabel="share of total gain", title=title)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def tiers_figure(scored, title: str = "Risk tiers: customers and value at stake"):
    """Customers and summed value at stake per risk tier (from a ``score_customers`` frame)."""
    order = ["high", "medium", "low"]
    counts = scored["risk_tier"].value_counts().reindex(order).fillna(0)
    value = scored.groupby("risk_tier")["value_at_stake"].sum().reindex(order).fillna(0)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = ["#c0392b", "#e67e22", "#27ae60"]
    a1.bar(order, counts.to_numpy(), color=colors)
    a1.set(title="customers per tier", ylabel="customers")
    a2.bar(order, value.to_numpy(), color=colors)
    a2.set(title="value at stake = P(churn) x 12-month CLV", ylabel="currency")
    for a in (a1, a2):
        a.grid(alpha=0.3, axis="y")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
