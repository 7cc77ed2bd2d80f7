"""Model evaluations as comparison tables: the model against its baselines, per view.

An evaluation arrives either as the JSON a trainer wrote (``training.churn.write_report``,
``training.recommender``'s backtest) or as an MLflow run's metrics (``registry.TrainingRun.log_metrics``
with ``baseline.<name>`` prefixes); both become *views*: ``{view: {model_or_baseline: {metric: value}}}``.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from features.numeric import finite_or_none as _finite
from pipelines.report.text import label as _label
from training.rolling import METRIC_PREFIX

NOT_MODELS = ("protocol", "model_info", "timings_s", "timings", "calibration_curve", "tiers", "notes", "params")
MODEL_ROWS = ("model", "champion", "challenger", "lightgbm", "recommender")


def _numeric_metrics(d: Any) -> dict[str, float]:
    if not isinstance(d, dict):
        return {}
    return {str(k): float(v) for k, v in d.items() if not isinstance(v, bool) and _finite(v) is not None}


def _evaluation_rows(obj: Any) -> dict[str, dict[str, float]]:
    """``{model_or_baseline: {metric: value}}`` from one evaluation: ``{"model": {..}, "baselines":
    {name: {..}}}``, ``{name: {..}}`` or a flat ``{metric: value}`` (the model alone)."""
    rows: dict[str, dict[str, float]] = {}
    if not isinstance(obj, dict):
        return rows
    for key, value in obj.items():
        if key == "baselines" and isinstance(value, dict):
            rows.update({str(n): _numeric_metrics(m) for n, m in value.items() if _numeric_metrics(m)})
        elif key == "baselines" and isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and (item.get("name") or item.get("baseline")):
                    m = _numeric_metrics(item.get("metrics", item))
                    if m:
                        rows[str(item.get("name") or item.get("baseline"))] = m
        elif isinstance(value, dict) and _numeric_metrics(value):
            rows["model" if key == "metrics" else str(key)] = _numeric_metrics(value)
    if not rows and _numeric_metrics(obj):
        rows["model"] = _numeric_metrics(obj)
    # keep the rows that are evaluations like the model's (not timings, model info, ...)
    model = next((r for r in MODEL_ROWS if r in rows), None)
    if model is not None and len(rows) > 1:
        keys = set(rows[model])
        rows = {n: m for n, m in rows.items()
                if n == model or (n not in NOT_MODELS and len(keys & set(m)) >= min(2, len(keys)))}
    return rows


def evaluation_views(obj: Any) -> dict[str, dict[str, dict[str, float]]]:
    """An evaluation JSON as ``{view: {model_or_baseline: {metric: value}}}``.

    Several views (the recommender's ``{"all": {name: metrics}, "new": {...}, "k": 10}``) keep their
    names; a single evaluation (``{"model": {...}, "baselines": {...}}``) is the view ``""``."""
    if not isinstance(obj, dict):
        return {}
    views: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in obj.items():
        if key in ("baselines", "models", "model", "metrics") or not isinstance(value, dict) or not value:
            continue
        if all(isinstance(v, dict) for v in value.values()):
            rows = _evaluation_rows(value)
            if rows:
                views[str(key)] = rows
    if views:
        return views
    if isinstance(obj.get("models"), dict):
        obj = {**obj["models"], **{k: v for k, v in obj.items() if k != "models"}}
    rows = _evaluation_rows(obj)
    return {"": rows} if rows else {}



def model_row(table: pd.DataFrame) -> str:
    """The row of the model itself (the others are its baselines)."""
    return next((r for r in MODEL_ROWS if r in table.index), table.index[0])


def versus(table: pd.DataFrame, metric: str, model: str, higher_better: bool = True) -> str:
    """'0.812 against 0.744 for the best baseline (recency)'."""
    if metric not in table.columns or model not in table.index or not _finite(table.loc[model, metric]):
        return ""
    base = table.drop(index=model)[metric].dropna()
    text = f"{table.loc[model, metric]:.3f}"
    if len(base):
        best = base.idxmax() if higher_better else base.idxmin()
        text += f" against {base.loc[best]:.3f} for the best baseline ({_label(best)})"
    return text


def view_tables(views: dict, preferred: list[str]) -> dict[str, pd.DataFrame]:
    """Each view as a table: the model's row first, the ``preferred`` metric columns present (else the first six)."""
    out = {}
    for view, rows in views.items():
        df = pd.DataFrame(rows).T
        cols = [c for c in preferred if c in df.columns] or list(df.columns)[:6]
        model = model_row(df)
        out[view] = df.loc[[model] + [i for i in df.index if i != model], cols]
    return out


def metric_key(name: str) -> str:
    """MLflow-safe metric names back to their usual spelling: ``ndcg_at_10`` -> ``ndcg@10``."""
    return re.sub(r"_at_(\d+)", r"@\1", str(name))


def views_from_metrics(metrics: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    """An MLflow run's metrics as evaluation views. Keys: ``auc`` (the model), ``baseline.<name>.<metric>``
    (a baseline), ``<view>.<name>.<metric>`` (``new.popular.ndcg_at_10``) and ``<view>.<metric>`` (the
    model in another view). The unnamed view is called ``all`` when other views exist."""
    views: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        # a rolling evaluation's metrics (training.rolling.METRIC_PREFIX) belong to its own section
        if _finite(value) is None or str(key).startswith(f"{METRIC_PREFIX}."):
            continue
        parts = str(key).split(".")
        if parts[0] == "baseline" and len(parts) >= 3:
            view, name = ".".join(parts[2:-1]), parts[1]
        elif len(parts) == 3:
            view, name = parts[0], parts[1]
        elif len(parts) == 2:
            view, name = parts[0], "model"
        else:
            view, name = "", "model"
        views.setdefault(view, {}).setdefault(name, {})[metric_key(parts[-1])] = float(value)
    # a view holding the model alone (e.g. training-time figures) is no comparison: keep views with baselines
    compared = {v: rows for v, rows in views.items() if len(rows) > 1} or views
    if "" in compared and len(compared) > 1 and "all" not in compared:
        compared = {("all" if v == "" else v): rows for v, rows in compared.items()}
    return compared

