"""The recommender's use cases: evaluate it against its baselines, and backtest-train-register it.

``evaluate_recommender`` is ``crmml evaluate recommender``: the protocol of
``training.recommender.evaluate_time_split`` at one cutoff, written to
``training.recommender.evaluation_json`` (read by ``crmml report``). ``train_recommender_model`` is
``crmml train recommender`` and the pipeline's ``train_recommender`` step: the same protocol on the
newest full window (the out-of-time metrics the registry keeps), then the final model on all the
data, saved under :func:`model_path`, logged to MLflow as a pyfunc and registered as challenger (the
first version becomes champion).

Inputs: ``training.recommender_inputs``. Both report progress through ``progress(message)`` and
return their results as data; printing is the caller's job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import joblib
import pandas as pd

from features.workspace import Workspace, atomic_write, atomic_write_json
from training import registry, rolling
from training.recommender import Recommender, evaluate_time_split, evaluation_json, selection_params
from training.recommender_inputs import load_inputs, newest_window_cutoff
from training.recommender_pyfunc import log_recommender

Progress = Callable[[str], None]


def model_path(ws: Workspace) -> Path:
    """Where :func:`train_recommender_model` saves the fitted model (joblib)."""
    return ws.root / "models" / "recommender" / "recommender.joblib"


def _quiet(msg: str) -> None:
    pass


def evaluate_recommender(ws: Workspace, cutoff, window: int = 90, k: int = 10, tune: bool = False,
                         json_path: str | Path | None = None) -> dict:
    """The evaluation protocol on a workspace (see ``training.recommender.evaluate_time_split``); the result
    is written to ``training.recommender.evaluation_json`` and, when given, to ``json_path``."""
    interactions, items, users = load_inputs(ws)
    result = evaluate_time_split(interactions, cutoff, window_days=window, k=k, items=items, users=users,
                                 params={"show_progress": True}, tune=tune)
    atomic_write_json(evaluation_json(ws.reports_dir), result)
    if json_path is not None:
        atomic_write_json(json_path, result)
    return result


def train_recommender_model(ws: Workspace | str | Path | None, tune: bool = False, window: int = 90, k: int = 10,
                            backtest: bool = True, register_model: bool = True, mlflow: bool = True,
                            backtest_cutoffs: int = 1, every_days: int | None = None,
                            progress: Progress | None = None) -> dict:
    """Backtest (at the newest full window, or at ``backtest_cutoffs`` rolling cutoffs every ``every_days``:
    ``training.rolling``), grade the model on the backtest's cutoffs (``training.grade``), fit on
    everything, save, log to MLflow and register with the grade (version tags ``grade``, ``grade.reason``).

    Returns a JSON-able summary: ``primary_metric`` (``ndcg@k``), ``metrics`` / ``metrics_new`` (model
    and baselines of the backtest's ``all`` / ``new`` views), ``n_users``, ``n_users_new``, ``k``,
    ``window_days``, ``backtest_cutoff``, ``backtest_skipped`` (why, when it could not run),
    ``fit_seconds``, ``selection`` (what ``Recommender.fit`` chose: re-ranker or blend, per view), ``saved``,
    ``users``, ``items``, ``run_id`` and ``model_version`` (with MLflow), ``grade`` and ``grade_reason``
    (None without a backtest), ``seconds``.
    """
    say = progress or _quiet
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    started = time.perf_counter()
    interactions, items, users = load_inputs(ws)
    result = None
    skipped = None
    rolled, rolled_written = None, None
    cutoff = newest_window_cutoff(interactions, window)
    if backtest and cutoff is not None:
        say(f"backtest: fit before {cutoff.date()}, evaluate on the next {window} days"
            + (f" (and {backtest_cutoffs - 1} earlier cutoffs)" if backtest_cutoffs > 1 else ""))
        try:
            rolled = rolling.evaluate_recommender_rolling(ws, backtest_cutoffs, every_days, window=window, k=k,
                                                          tune=tune, params={"show_progress": True},
                                                          inputs=(interactions, items, users), progress=say)
        except ValueError as exc:
            skipped = str(exc)  # the caller says so; the final model is still trained
        if rolled is not None:
            result = rolling.time_split_result(rolled)  # the newest cutoff, as evaluate_time_split gives it
            cutoff = pd.Timestamp(result["cutoff"])
            atomic_write_json(evaluation_json(ws.reports_dir), result)
            rolled_written = rolling.write(rolled, ws.reports_dir)
    say("final model on all the data")
    model = Recommender().fit(interactions, items=items, users=users, tune=tune)
    saved = model_path(ws)
    saved.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(saved, lambda tmp: joblib.dump(model, tmp))
    metrics = dict(result["all"]["model"]) if result is not None else {}
    if result is not None and "model" in result.get("new", {}):
        metrics.update({f"new.{key}": v for key, v in result["new"]["model"].items()})
    summary = {
        "primary_metric": f"ndcg@{k}",
        "metrics": result["all"] if result is not None else {},
        "metrics_new": result["new"] if result is not None else {},
        "n_users": result["n_users"] if result is not None else None,
        "n_users_new": result["n_users_new"] if result is not None else None,
        "k": k,
        "window_days": window,
        "backtest_cutoff": str(cutoff.date()) if result is not None else None,
        "backtest_skipped": skipped,
        "fit_seconds": round(model.fit_seconds_, 1),
        "selection": model.selection_,
        "saved": str(saved),
        "users": int(model.state_.matrix.shape[0]),
        "items": int(len(model.item_ids_)),
        "grade": rolled.grade.letter if rolled is not None else None,
        "grade_reason": rolled.grade.reason if rolled is not None else None,
    }
    if mlflow:
        # the constructor's parameters, then what tuning chose (recorded in best_params_, never set back)
        chosen = {**model.get_params(), **{f"best.{k}": v for k, v in model.best_params_.items()}}
        params = {key: (",".join(v) if isinstance(v, tuple) else v) for key, v in chosen.items()}
        params.update(selection_params(model.selection_))  # what fit chose on its inner split
        lineage = {"window_days": window, "k": k, "backtest_cutoff": str(cutoff.date()) if cutoff is not None else None,
                   "n_interactions": int(len(interactions)),
                   "metrics_source": f"backtest at {cutoff.date()}" if result is not None else "none"}
        with registry.training_run(ws, registry.RECOMMENDER, params={**params, "tune": tune}, lineage=lineage,
                                   feature_docs=model.feature_docs()) as run:
            if result is not None:
                for view in ("all", "new"):
                    for name, m in result[view].items():
                        prefix = ("" if name == "model" else f"baseline.{name}") if view == "all" else f"{view}.{name}"
                        run.log_metrics(m, prefix=prefix)
                run.log_dict(result, f"evaluation/{evaluation_json('').name}")
                rolling.log_rolling(run, rolled, rolled_written)
            info = log_recommender(model)
            if register_model and result is not None:
                run.register(info, metrics, tags=rolling.grade_tags(rolled))
        summary["run_id"] = run.run_id
        summary["model_version"] = getattr(run, "model_version", None)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


__all__ = ["evaluate_recommender", "model_path", "train_recommender_model"]
