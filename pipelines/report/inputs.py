"""What the report reads, each input at the path its writer declares, loaded once before any section runs.

- ``events``, ``items``: ``ws.table_path("events")``, ``ws.table_path("items")`` (``crmml ingest`` /
  ``crmml generate``);
- ``customer360``: the rows of the report's date in ``ws.table_path(features.insight.CUSTOMER360,
  "features")`` (``crmml features``), else computed now with ``features.insight.build_customer360``;
- ``scores``: ``pipelines.score.scores_path(ws)`` (``crmml score``), read by ``score.OUTPUT_COLUMNS``;
- ``churn_evaluation``: ``training.churn.evaluation_json(ws.reports_dir)`` and ``evaluation_plots``
  (``crmml train churn`` / ``crmml evaluate churn``), else the MLflow training run of the
  ``training.names.CHURN`` champion (else the newest training run of that model): its metrics and
  ``plots/``;
- ``recommender_evaluation``: ``training.recommender.evaluation_json(ws.reports_dir)``, else MLflow as
  above for ``training.names.RECOMMENDER``;
- ``churn_rolling`` / ``recommender_rolling``: ``training.rolling.rolling_json(ws.reports_dir, model)`` and
  ``rolling_plots`` (``crmml evaluate churn|recommender --cutoffs N`` and ``crmml train``'s backtest): the
  per-cutoff metrics, mean ± sd and the grade;
- ``item_rules``: ``ws.table_path(features.interactions.ITEM_RULES, "features")``
  (``features.interactions.write_interaction_tables``), else mined from the events now.

``value`` (net revenue of the last 365 days and the A/B/C value tiers) and ``summary`` are derived
from these once, so that no section depends on another having run first.

An absent input is a :class:`Found` whose ``value`` is None and whose ``source`` says where it was
looked for (or, for a derived input, why there is none); ``error`` holds the reason when reading it
failed. The section that needs it says so in one line instead of showing its content. No input is
searched for among guessed paths.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import pandas as pd

from features import insight
from features.interactions import ITEM_RULES, association_rules
from features.workspace import Workspace
from pipelines import score
from pipelines.report import evaluations
from pipelines.report.insight import (
    TIER_CUTS,
    VALUE_WINDOW_DAYS,
    customer_revenue,
    data_summary,
    dedupe_rule_pairs,
    has_amount,
    prepare_events,
)
from pipelines.report.plots import Plot, png_file
from pipelines.report.text import as_list, date
from training import churn, names, recommender, registry, rolling

T = TypeVar("T")

PROBABILITY = "churn_probability"  # the column of pipelines.score's output (score.OUTPUT_COLUMNS) the report reads
TOP_RULES = 15
RULE_SUPPORTS = (0.005, 0.002, 0.001)  # mining rules now: the first support giving TOP_RULES distinct pairs


@dataclass(frozen=True)
class Found(Generic[T]):
    """An input: its ``value`` and where it came from, or None and where it was looked for."""

    value: T | None
    source: str
    error: str = ""  # why reading it failed (one line), if it did

    @property
    def ok(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class ValueBasis:
    """Net revenue of the last ``VALUE_WINDOW_DAYS`` days and the value tier of each customer who bought then."""

    revenue: pd.Series  # indexed by customer_id
    tiers: pd.Series  # "A" / "B" / "C", same index
    source: str  # where the tiers come from


@dataclass(frozen=True)
class ModelEvaluation:
    """A model against its baselines (``views``), the evaluation's own details and its plots."""

    views: dict
    details: dict = field(default_factory=dict)  # the evaluation JSON (cutoff, tiers, ...); empty from MLflow
    plots: list[Plot] = field(default_factory=list)


@dataclass(frozen=True)
class RollingEvaluation:
    """A rolling-origin evaluation: its JSON (``training.rolling.RollingResult.to_json``) and its plots."""

    details: dict
    plots: list[Plot] = field(default_factory=list)


@dataclass(frozen=True)
class ReportInputs:
    """Everything the sections read; a section names the fields it needs (``SectionSpec.inputs``)."""

    workspace: Workspace
    as_of: pd.Timestamp  # the report's date: data strictly before it
    events: pd.DataFrame  # canonical events before as_of, with order_key (insight.prepare_events)
    purchases: pd.DataFrame  # the purchase events
    summary: dict  # insight.data_summary of the events
    items: pd.DataFrame | None
    customer360: Found[pd.DataFrame]  # at as_of
    value: Found[ValueBasis]
    scores: Found[pd.DataFrame]
    customer360_at_scoring: Found[pd.DataFrame]  # at the scores' as_of (the scores' segments and tiers)
    churn_evaluation: Found[ModelEvaluation]
    recommender_evaluation: Found[ModelEvaluation]
    churn_rolling: Found[RollingEvaluation]
    recommender_rolling: Found[RollingEvaluation]
    item_rules: Found[pd.DataFrame]
    campaigns: Found[dict] = Found(None, "not loaded")  # campaign effects and uplift evaluation (JSON)


def load(ws: Workspace, as_of=None) -> ReportInputs:
    """Read (or compute) every input once; ``as_of`` defaults to the day after the last event."""
    events, as_of = prepare_events(ws.read_table("events"), as_of)
    purchases = events[events["event_type"] == "purchase"]
    c360 = _guarded("the customer 360", load_customer360, ws, as_of)
    scores = _guarded("the churn scores", load_scores, ws)
    scored_at = scores_date(scores.value) if scores.ok else None
    at_scoring = c360
    if scored_at is not None and scored_at < as_of:
        at_scoring = _guarded("the customer 360", load_customer360, ws, scored_at)
    return ReportInputs(
        workspace=ws,
        as_of=as_of,
        events=events,
        purchases=purchases,
        summary=data_summary(events),
        items=ws.read_table("items") if ws.has_table("items") else None,
        customer360=c360,
        value=_guarded("the value tiers", value_basis, events, as_of, c360),
        scores=scores,
        customer360_at_scoring=at_scoring,
        churn_evaluation=_guarded("the churn evaluation", load_evaluation, ws, names.CHURN),
        recommender_evaluation=_guarded("the recommender evaluation", load_evaluation, ws, names.RECOMMENDER),
        churn_rolling=_guarded("the churn rolling evaluation", load_rolling, ws, names.CHURN),
        recommender_rolling=_guarded("the recommender rolling evaluation", load_rolling, ws, names.RECOMMENDER),
        item_rules=_guarded("the association rules", load_item_rules, ws, events, purchases),
        campaigns=_guarded("the campaign results", _load_campaigns, ws),
    )


def _load_campaigns(ws: Workspace) -> Found[dict]:
    """``crmml evaluate campaign``'s effects and ``crmml train uplift``'s held-out evaluation (JSON in the
    reports folder; either may be missing, None when both are)."""
    from training.campaigns import effects_json
    from training.uplift_training import evaluation_json

    out = {}
    paths = {"effects": effects_json(ws.reports_dir), "uplift": evaluation_json(ws.reports_dir)}
    for key, path in paths.items():
        if path.exists():
            out[key] = json.loads(path.read_text())
    return Found(out or None, " and ".join(_relative(ws, p) for p in paths.values()))


def _guarded(what: str, load_input, *args) -> Found:
    try:
        return load_input(*args)
    except Exception as exc:  # noqa: BLE001 - one unreadable input must not sink the whole report
        return Found(None, what, error=f"Reading {what} failed: {type(exc).__name__}: {exc}")


def _relative(ws: Workspace, path: Path) -> str:
    try:
        return str(path.relative_to(ws.root))
    except ValueError:
        return str(path)


# -- tables -----------------------------------------------------------------------------------------
def load_customer360(ws: Workspace, when: pd.Timestamp) -> Found[pd.DataFrame]:
    """The customer 360 at ``when``: the saved table's rows of that date, else computed now (about
    10 s on the UCI data)."""
    when = pd.Timestamp(when).normalize()
    path = ws.table_path(insight.CUSTOMER360, "features")
    df, src = None, ""
    if path.exists():
        saved = pd.read_parquet(path)
        if "as_of" in saved.columns:
            rows = saved[pd.to_datetime(saved["as_of"], errors="coerce").dt.normalize() == when]
            if len(rows):
                df, src = rows, _relative(ws, path)
    if df is None:
        try:
            df = insight.build_customer360(ws, as_of=when)
            src = "features.insight.build_customer360 (computed for this report)"
        except Exception as exc:  # noqa: BLE001 - the sections that need it say why it is absent
            return Found(None, "features.insight.build_customer360",
                         error=f"features.insight.build_customer360 failed: {type(exc).__name__}: {exc}")
    df = df.copy()
    df["customer_id"] = df["customer_id"].astype(str)
    return Found(df, src)


def value_basis(events: pd.DataFrame, as_of: pd.Timestamp, c360: Found[pd.DataFrame]) -> Found[ValueBasis]:
    """The customer 360's own revenue basis and tiers (``revenue_365d``, ``value_tier``) when it has
    them, else ``features.insight.value_tiers`` on net revenue computed from the events."""
    if not has_amount(events):
        return Found(None, "No purchase amounts in the events: revenue concentration cannot be computed.")
    frame = c360.value
    if frame is not None and {"value_tier", "revenue_365d"} <= set(frame.columns):
        active = frame["active_365d"].astype(bool) if "active_365d" in frame.columns else frame["revenue_365d"] > 0
        pop = frame[active].set_index("customer_id")
        rev = pop["revenue_365d"].astype(float).rename("revenue")
        tiers = pop["value_tier"].astype(str)
        source = f"value_tier of the customer 360 ({c360.source})"
    else:
        rev = customer_revenue(events, as_of - pd.Timedelta(days=VALUE_WINDOW_DAYS), as_of)
        tiers = insight.value_tiers(rev, TIER_CUTS[0], TIER_CUTS[1]).astype(str)
        source = "features.insight.value_tiers on net revenue computed from events"
    if rev.empty or rev.clip(lower=0).sum() <= 0:
        return Found(None, f"No revenue in the last {VALUE_WINDOW_DAYS} days before {date(as_of)}.")
    return Found(ValueBasis(rev, tiers, source), source)


def load_scores(ws: Workspace) -> Found[pd.DataFrame]:
    """The batch scores of ``crmml score`` (one row per eligible customer, ``score.OUTPUT_COLUMNS``)."""
    path = score.scores_path(ws)
    if not path.exists():
        return Found(None, _relative(ws, path))
    df = pd.read_parquet(path)
    df["customer_id"] = df["customer_id"].astype(str)
    if "reasons" in df.columns:  # Parquet gives lists back as arrays; pipelines.score stores JSON text
        df["reasons"] = df["reasons"].map(as_list)
    return Found(df, _relative(ws, path))


def scores_date(scores: pd.DataFrame) -> pd.Timestamp | None:
    """The date the scores were computed at (their ``as_of`` column), None without one."""
    if "as_of" not in scores.columns:
        return None
    when = pd.to_datetime(scores["as_of"], errors="coerce").dropna()
    return pd.Timestamp(when.max()).normalize() if len(when) else None


def load_item_rules(ws: Workspace, events: pd.DataFrame, purchases: pd.DataFrame) -> Found[pd.DataFrame]:
    """The association rules ``crmml features`` wrote, else mined from the events now (at the first
    support of ``RULE_SUPPORTS`` that gives ``TOP_RULES`` distinct pairs)."""
    path = ws.table_path(ITEM_RULES, "features")
    if path.exists():
        return Found(pd.read_parquet(path), _relative(ws, path))
    if "item_id" not in purchases.columns or purchases["item_id"].isna().all():
        return Found(None, "No item ids in the purchases: no association rules.")
    n_orders = purchases["order_key"].nunique()
    rules = pd.DataFrame()
    for support in RULE_SUPPORTS:
        min_count = max(5, int(math.ceil(support * n_orders)))
        rules = association_rules(events, min_support=support, min_count=min_count)
        if len(dedupe_rule_pairs(rules)) >= TOP_RULES:
            break
    return Found(rules, f"features.interactions.association_rules (min support {support:g}, computed now)")


# -- model evaluations --------------------------------------------------------------------------------
CHURN_PLOT_CAPTIONS = {  # training.churn.write_report's plots, in the order shown
    "roc": "ROC curve of the model and the baselines on the evaluation window.",
    "precision_recall": "Precision-recall: the churn rate among the customers flagged, against the share of "
                        "churners caught.",
    "calibration": "Calibration: predicted probability against the observed churn rate.",
    "gains_lift": "Cumulative gains and lift: churners caught when calling the riskiest customers first.",
    "tiers": "Risk tiers: customers and value at stake.",
    "shap_summary": "What drives the model's scores (SHAP contributions).",
}
EVALUATION_FILES = {  # model -> (its backtest's JSON, the folder of its plots or None), as the trainers write them
    names.CHURN: (churn.evaluation_json, churn.evaluation_plots),
    names.RECOMMENDER: (recommender.evaluation_json, None),
}
PLOT_CAPTIONS = {names.CHURN: CHURN_PLOT_CAPTIONS}


def load_evaluation(ws: Workspace, model_name: str) -> Found[ModelEvaluation]:
    """The model's backtest in the reports folder, else its MLflow run (see the module docstring)."""
    json_path, plots_dir = EVALUATION_FILES[model_name]
    path = json_path(ws.reports_dir)
    if path.exists():
        details = json.loads(path.read_text())
        views = evaluations.evaluation_views(details)
        if views:
            plots = []
            if plots_dir is not None:
                folder = plots_dir(ws.reports_dir)
                plots = [p for p in (png_file(f) for f in sorted(folder.glob("*.png"))) if p is not None]
            return Found(ModelEvaluation(views, details, _ordered(plots, model_name)), _relative(ws, path))
    found = mlflow_evaluation(ws, model_name)
    if found is not None:
        return found
    return Found(None, f"{_relative(ws, path)} or MLflow")


def load_rolling(ws: Workspace, model_name: str) -> Found[RollingEvaluation]:
    """The model's rolling-origin evaluation in the reports folder (JSON and plots), as its writer put it."""
    path = rolling.rolling_json(ws.reports_dir, model_name)
    if not path.exists():
        return Found(None, _relative(ws, path))
    details = json.loads(path.read_text())
    folder = rolling.rolling_plots(ws.reports_dir, model_name)
    plots = [p for p in (png_file(f) for f in sorted(folder.glob("*.png"))) if p is not None]
    prefix = f"rolling_{rolling.KINDS[model_name]}"
    for plot in plots:
        plot.name = f"{prefix}_{plot.name}"
        plot.caption = (f"{model_name} at each cutoff of the rolling evaluation: the model (blue, thick) and every "
                        "baseline.")
    return Found(RollingEvaluation(details, plots), _relative(ws, path))


def _ordered(plots: list[Plot], model_name: str) -> list[Plot]:
    """Known plots first (in caption order, with those captions), names prefixed for the report's folder."""
    captions = PLOT_CAPTIONS.get(model_name, {})
    order = list(captions)
    plots = sorted(plots, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    prefix = model_name.removeprefix("crmml-")
    for plot in plots:
        plot.caption = captions.get(plot.name, plot.caption)
        plot.name = f"{prefix}_{plot.name}"
    return plots


def _training_run(mlc, model_name: str):
    """The champion's training run (``training.names.CHAMPION``), else the newest finished run of
    ``registry.training_run`` for the model (its ``model_name`` tag); with a label saying which."""
    version = registry.alias_version(mlc, model_name, names.CHAMPION)
    if version is not None:
        run = mlc.get_run(mlc.get_model_version(model_name, version).run_id)
        return run, f"MLflow: {model_name} {names.CHAMPION}, version {version} (run {run.info.run_id[:8]})"
    experiments = [e.experiment_id for e in mlc.search_experiments()]
    if not experiments:
        return None, ""
    runs = mlc.search_runs(experiments, f"tags.model_name = '{model_name}' and attributes.status = 'FINISHED'",
                           order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None, ""
    run = runs[0]
    return run, f"MLflow: newest {model_name} run {run.info.run_name} ({run.info.run_id[:8]})"


def mlflow_evaluation(ws: Workspace, model_name: str) -> Found[ModelEvaluation] | None:
    """The model's MLflow training run as an evaluation: the run's metrics as views and its
    ``plots/*.png`` (``registry.TrainingRun.log_figure``); None without a store or a run.

    Never creates a store just to look into it. MLflow's per-artifact progress bars are the
    caller's setting (``pipelines.cli`` turns them off)."""
    import tempfile

    from mlflow import MlflowClient

    uri = registry.tracking_uri(ws)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None
    mlc = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run, label = _training_run(mlc, model_name)
    if run is None:
        return None
    views = evaluations.views_from_metrics(run.data.metrics)
    if not views:
        return None
    plots: list[Plot] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for art in mlc.list_artifacts(run.info.run_id, "plots"):
                if art.path.endswith(".png"):
                    plot = png_file(Path(mlc.download_artifacts(run.info.run_id, art.path, tmp)))
                    if plot is not None:
                        plots.append(plot)
    except Exception:  # noqa: BLE001 - the plots are a bonus; the metrics remain
        plots = []
    return Found(ModelEvaluation(views, {}, _ordered(plots, model_name)), label)
