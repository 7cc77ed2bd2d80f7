"""The uplift model's use cases: evaluate on held-out campaigns, train, log, register, gate.

``crmml train uplift`` runs :func:`train_uplift_model`: the randomised campaigns of the workspace
(rows with a ``group``) become one training row per assigned customer (features: the churn feature
matrix at the send day; outcome: retained over the horizon, ``training.campaigns.outcomes``). The
newest randomised campaign of every action that has an older one is held out; the model trained on
the rest is compared there with "contact the highest churn risk" and "contact at random" (AUUC,
Qini and uplift curves; with the synthetic shop's ``campaign_truth``, the incremental retention of
each rule's top 20% against the potential outcomes). The final model, fitted on every campaign, is
logged to MLflow as a pyfunc and registered as ``crmml-uplift`` (challenger; gate: AUUC on the
newest randomised campaign, :func:`gate_evaluator`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from features.workspace import Workspace, atomic_write_json
from training import campaigns as cmp
from training import registry
from training import uplift as up
from training.names import UPLIFT

try:  # keep the module importable without mlflow
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]

PIP_PACKAGES = ("mlflow", "numpy", "pandas", "pyarrow", "scikit-learn", "lightgbm", "joblib")
TOP_SHARE = 0.2
EVALUATION_NAME = "uplift_evaluation"
RULES = ("uplift", "churn_risk", "random")

Progress = Callable[[str], None]


def evaluation_json(reports_dir: str | Path) -> Path:
    """Where :func:`train_uplift_model` writes the held-out evaluation (read by the report)."""
    return Path(reports_dir) / f"{EVALUATION_NAME}.json"


def qini_plot(reports_dir: str | Path) -> Path:
    return Path(reports_dir) / f"{EVALUATION_NAME}_qini.png"


def _quiet(msg: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def campaign_dataset(ws: Workspace, horizon_days: int = cmp.DEFAULT_HORIZON) -> pd.DataFrame:
    """One row per (randomised campaign, assigned customer): features at the send day, ``treated``,
    ``action``, ``retained``/``response``/``revenue``; campaigns whose horizon is not over are left out.
    With the synthetic shop's ``campaign_truth``, also its ``y0``, ``y1``, ``segment``."""
    from features import dates, synthetic

    campaigns = ws.read_table("campaigns")
    if "group" not in campaigns.columns or not campaigns["group"].notna().any():
        raise ValueError("no randomised campaign (rows with a treatment/control group) to learn uplift from")
    events = ws.read_table("events", columns=["customer_id", "event_type", "timestamp", "amount"])
    rows = campaigns[campaigns["group"].notna()].copy()
    as_of = dates.as_of_date(events["timestamp"])
    rows = rows[rows["sent_at"] + pd.Timedelta(days=horizon_days) <= as_of]
    if rows.empty:
        raise ValueError(f"no randomised campaign whose {horizon_days}-day horizon is over")
    rows["treated"] = rows["group"].astype(str).eq("treatment")
    rows["action"] = rows["action"].fillna("contact").astype(str)
    rows["cutoff"] = rows["sent_at"].dt.normalize()
    feats = cmp.campaign_features(ws, rows, horizon_days)
    frame = cmp.outcomes(rows[["campaign_id", "customer_id", "sent_at", "treated", "action", "cost", "cutoff"]],
                         events, horizon_days)
    frame = frame.merge(feats, on=["customer_id", "cutoff"], how="left")
    truth = synthetic.campaign_truth_path(ws)
    if truth.exists():
        ct = pd.read_parquet(truth, columns=["campaign_id", "customer_id", "y0", "y1", "segment"])
        frame = frame.merge(ct, on=["campaign_id", "customer_id"], how="left")
    return frame


def holdout_campaigns(frame: pd.DataFrame) -> list[str]:
    """The newest campaign of every action that has an older one to learn from."""
    first = frame.groupby("campaign_id").agg(sent=("sent_at", "min"), action=("action", "first")).reset_index()
    out = []
    for _, g in first.sort_values("sent").groupby("action"):
        if len(g) >= 2:
            out.append(str(g["campaign_id"].iloc[-1]))
    return sorted(out)


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def rule_scores(model: up.UpliftModel, test: pd.DataFrame, action: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The score of each targeting rule on ``test`` for ``action``."""
    pf = model.predict_frame(test)
    col = f"uplift_{action}"
    return {
        "uplift": pf[col].to_numpy() if col in pf else np.zeros(len(test)),
        "churn_risk": pf["churn_risk"].to_numpy(),
        "random": np.random.default_rng(seed).random(len(test)),
    }


def evaluate_holdout(model: up.UpliftModel, test: pd.DataFrame) -> dict:
    """Per held-out campaign: AUUC, curves and (with the truth) the top-20% true gain of every rule.

    Scored on the customers the churn model scores too (``eligible``: a purchase in the year before
    the send), so that "highest churn risk" is not won by customers who never bought."""
    out = {}
    if "eligible" in test.columns:
        test = test[test["eligible"].fillna(False).astype(bool)]
    for cid, g in test.groupby("campaign_id"):
        action = str(g["action"].iloc[0])
        scores = rule_scores(model, g, action)
        y, t = g["retained"].to_numpy(), g["treated"].to_numpy(bool)
        res: dict[str, Any] = {"action": action, "n": int(len(g)), "n_treated": int(t.sum()),
                               "ate_observed": float(y[t].mean() - y[~t].mean()), "rules": {}}
        # what a retained customer brings in the horizon and what a contact costs: the money of a rule
        kept = g.loc[(~g["treated"]) & (g["retained"] > 0), "revenue"]
        res["value_per_retained"] = float(kept.mean()) if len(kept) else 0.0
        res["cost_per_contact"] = float(pd.to_numeric(g.loc[g["treated"], "cost"], errors="coerce").fillna(0).mean())
        has_truth = "y1" in g and g["y1"].notna().all()
        for rule, s in scores.items():
            frac, qini = up.qini_curve(s, y, t)
            _, curve = up.uplift_curve(s, y, t)
            r = {"auuc": up.auuc(s, y, t), "qini": qini.tolist(), "uplift_curve": curve.tolist()}
            # the next campaign contacting TOP_SHARE of these customers by this rule (observed curve)
            at = float(curve[int(round(TOP_SHARE * (len(frac) - 1)))]) * len(g)
            r["incremental_retained_top20"] = at
            r["expected_value_top20"] = at * res["value_per_retained"] - TOP_SHARE * len(g) * res["cost_per_contact"]
            if has_truth:
                r["true_gain_top20"] = up.true_gain(s, g["y1"], g["y0"], TOP_SHARE)
                r["true_auuc"] = up.true_auuc(s, g["y1"], g["y0"])
            res["rules"][rule] = r
        res["fraction"] = frac.tolist()
        if has_truth:
            res["true_ate"] = float((g["y1"] - g["y0"]).mean())
            risk = res["rules"]["churn_risk"]["true_gain_top20"]
            res["gain_ratio_vs_churn_risk"] = (res["rules"]["uplift"]["true_gain_top20"] / risk) if risk > 0 else None
        out[str(cid)] = res
    return out


def summary_metrics(evaluation: dict) -> dict[str, float]:
    """Flat metrics over the held-out campaigns (means): ``auuc``, ``auuc_churn_risk``, ``auuc_random``,
    ``true_gain_top20*`` when known."""
    out: dict[str, float] = {}
    for rule in RULES:
        suffix = "" if rule == "uplift" else f"_{rule}"
        vals = [c["rules"][rule]["auuc"] for c in evaluation.values()]
        out[f"auuc{suffix}"] = float(np.mean(vals)) if vals else float("nan")
        gains = [c["rules"][rule].get("true_gain_top20") for c in evaluation.values()]
        if gains and all(v is not None for v in gains):
            out[f"true_gain_top20{suffix}"] = float(np.sum(gains))
            out[f"true_auuc{suffix}"] = float(np.mean([c["rules"][rule]["true_auuc"] for c in evaluation.values()]))
    return out


def qini_figure(evaluation: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(evaluation), 1)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2), squeeze=False)
    labels = {"uplift": "uplift model", "churn_risk": "highest churn risk", "random": "random"}
    for ax, (cid, res) in zip(axes[0], evaluation.items()):
        for rule in RULES:
            r = res["rules"][rule]
            ax.plot(res["fraction"], r["qini"], lw=2.2 if rule == "uplift" else 1.3,
                    label=f"{labels[rule]} (AUUC {r['auuc']:.4f})")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{cid} ({res['action']}), held out")
        ax.set_xlabel("share of customers contacted")
        ax.set_ylabel("Qini: incremental retained / treated")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------
class UpliftPyfunc(PythonModel):
    """MLflow pyfunc around a fitted ``UpliftModel`` (artifact ``uplift_model``): returns
    ``uplift_<action>`` columns and ``churn_risk`` (and ``customer_id`` when given)."""

    def __init__(self, model=None):
        self.model = model

    def load_context(self, context):
        import joblib

        self.model = joblib.load(context.artifacts["uplift_model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        out = self.model.predict_frame(df).reset_index(drop=True)
        if "customer_id" in df.columns:
            out.insert(0, "customer_id", df["customer_id"].astype(str).to_numpy())
        return out


def log_uplift(model: up.UpliftModel, example: pd.DataFrame, name: str = "model"):
    """Log ``model`` as a pyfunc in the active run (signature from ``example``); returns the ModelInfo."""
    from mlflow.models import infer_signature

    cols = ["customer_id"] + [c for c in model.feature_names_in_]
    ex = example.reindex(columns=cols).head(5).reset_index(drop=True)
    ex["customer_id"] = ex["customer_id"].astype(str)
    for c in cols[1:]:
        ex[c] = pd.to_numeric(ex[c], errors="coerce").astype("float64")
    signature = infer_signature(ex, UpliftPyfunc(model).predict(None, ex))
    # what is logged is made up (issue #16): the signature needs real rows' types, never their values
    from training.churn_pyfunc import synthetic_example

    ex = synthetic_example(ex)
    return registry.log_joblib_pyfunc(
        UpliftPyfunc(), "uplift_model", model, name=name, signature=signature, input_example=ex, packages=PIP_PACKAGES
    )


def load_uplift(model_uri: str) -> up.UpliftModel:
    """The fitted UpliftModel behind a logged/registered pyfunc URI."""
    import mlflow

    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model


def gate_evaluator(ws: Workspace) -> Callable[[str], dict]:
    """For ``crmml models promote``: AUUC of a model URI on the newest randomised campaign of each
    action (both versions scored on the same customers)."""
    cache: dict = {}

    def evaluate(model_uri: str) -> dict:
        if "test" not in cache:
            frame = campaign_dataset(ws)
            cache["test"] = frame[frame["campaign_id"].isin(holdout_campaigns(frame))]
        test = cache["test"]
        metrics = summary_metrics(evaluate_holdout(load_uplift(model_uri), test))
        metrics["window"] = ",".join(sorted(test["campaign_id"].astype(str).unique()))
        return metrics

    return evaluate


# --------------------------------------------------------------------------------------------
# the use case
# --------------------------------------------------------------------------------------------
def train_uplift_model(ws: Workspace, horizon_days: int = cmp.DEFAULT_HORIZON, register_model: bool = True,
                       mlflow: bool = True, progress: Progress | None = None) -> dict:
    """Evaluate on the held-out campaigns, fit on every campaign, log and register (see the module doc).

    Returns a JSON-able summary: ``metrics`` (:func:`summary_metrics`), ``evaluation`` (per held-out
    campaign), ``holdout``, ``train_campaigns``, ``actions``, ``n_rows``, ``run_id``, ``version``,
    ``evaluation_json``, ``seconds``.
    """
    say = progress or _quiet
    started = time.perf_counter()
    say("campaign rows with their features and outcomes")
    frame = campaign_dataset(ws, horizon_days)
    holdout = holdout_campaigns(frame)
    train = frame[~frame["campaign_id"].isin(holdout)]
    test = frame[frame["campaign_id"].isin(holdout)]
    evaluation: dict = {}
    if holdout:
        say(f"held-out evaluation on {', '.join(holdout)}")
        model = up.UpliftModel().fit(train, train["retained"], train["treated"], train["action"])
        evaluation = evaluate_holdout(model, test)
    metrics = summary_metrics(evaluation)
    say("final model on every campaign")
    final = up.UpliftModel().fit(frame, frame["retained"], frame["treated"], frame["action"])
    reports = Path(ws.reports_dir)
    reports.mkdir(parents=True, exist_ok=True)
    data = {"horizon_days": horizon_days, "holdout": holdout, "metrics": metrics, "campaigns": evaluation,
            "actions": list(final.actions_), "n_rows": int(len(frame))}
    atomic_write_json(evaluation_json(reports), data)
    fig = qini_figure(evaluation) if evaluation else None
    if fig is not None:
        fig.savefig(qini_plot(reports), dpi=110)
    run_id = version = None
    if mlflow:
        params = {"horizon_days": horizon_days, "holdout": ",".join(holdout), "actions": ",".join(final.actions_),
                  "learner": "T-learner (shared control model), LightGBM",
                  **{f"lgb.{k}": v for k, v in up.DEFAULT_PARAMS.items()}}
        lineage = {"horizon_days": horizon_days, "campaigns": sorted(frame["campaign_id"].astype(str).unique()),
                   "holdout": holdout, "n_rows": int(len(frame))}
        with registry.training_run(ws, UPLIFT, params=params, lineage=lineage) as run:
            run.log_metrics(metrics)
            run.log_dict(data, "report/uplift_evaluation.json")
            if fig is not None:
                run.log_figure(fig, "qini.png")
            info = log_uplift(final, frame)
            if register_model and "auuc" in metrics and np.isfinite(metrics["auuc"]):
                run.register(info, metrics)
        run_id, version = run.run_id, run.model_version
    if fig is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return {"metrics": metrics, "evaluation": evaluation, "holdout": holdout,
            "train_campaigns": sorted(train["campaign_id"].astype(str).unique()), "actions": list(final.actions_),
            "n_rows": int(len(frame)), "run_id": run_id, "version": version,
            "evaluation_json": str(evaluation_json(reports)), "seconds": round(time.perf_counter() - started, 1),
            "model": final}


__all__ = ["EVALUATION_NAME", "UpliftPyfunc", "campaign_dataset", "evaluate_holdout", "evaluation_json",
           "gate_evaluator", "holdout_campaigns", "load_uplift", "log_uplift", "qini_figure", "qini_plot",
           "rule_scores", "summary_metrics", "train_uplift_model"]
