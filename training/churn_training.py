"""The churn model's use cases: evaluate it against its baselines, and backtest-train-register it.

``evaluate_churn_model`` is ``crmml evaluate churn``: the protocol of ``training.churn.evaluate_protocol``
at one cutoff, its report (``training.churn.write_report``), optionally a JSON copy and an MLflow run
that is not registered. ``train_churn_model`` is ``crmml train churn`` and the pipeline's
``train_churn`` step: the same protocol at the newest fully-labelled cutoff (the out-of-time metrics
the registry keeps), then the final model on every labelled snapshot, saved under
:func:`model_dir`, logged to MLflow and registered as challenger.

Both report progress through ``progress(message)`` and return their results as data; printing is
the caller's job.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from features import dates
from features.workspace import Workspace, atomic_write_json
from training import churn, registry, retention, rolling
from training.churn_pyfunc import log_churn

Progress = Callable[[str], None]


def model_dir(ws: Workspace) -> Path:
    """Where :func:`train_churn_model` saves the final model (``ChurnModel.save``)."""
    return ws.root / "models" / "churn"


def _quiet(msg: str) -> None:
    pass


def log_evaluation(run: registry.TrainingRun, ev: churn.Evaluation, written: dict, prefix_model: str = "") -> None:
    """Metrics (model + baselines), figures and the report of an Evaluation into a registry run."""
    for name, m in ev.metrics.items():
        if name == "model":
            run.log_metrics(m, prefix=prefix_model)
        else:
            run.log_metrics(m, prefix=f"baseline.{name}")
    run.log_artifact(written["json"], "report")
    for path in written["figures"].values():
        run.log_artifact(path, "plots")


@dataclass
class ChurnEvaluationRun:
    """What ``evaluate_churn_model`` produced."""

    evaluation: churn.Evaluation
    data: dict  # evaluation.to_json()
    written: dict | None  # write_report's {kind: path}, None without a report
    json_path: Path | None  # the extra JSON copy, when asked for
    run_id: str | None  # the MLflow run (evaluation, not registered), None without MLflow


def _sample_size(sample_customers: int | None) -> int | None:
    """The churn training sample asked for: None gives the default (``churn.SAMPLE_CUSTOMERS``), 0 every
    customer (None for ``training.churn``)."""
    return churn.SAMPLE_CUSTOMERS if sample_customers is None else (int(sample_customers) or None)


def evaluate_churn_model(ws: Workspace, cutoff, horizon: int = 90, tune: bool = True, n_trials: int = 10,
                         step_days: int = 30, tune_sample: int | None = 2500, report: bool = True,
                         json_path: str | Path | None = None,
                         mlflow: bool = True, progress: Progress | None = None,
                         sample_customers: int | None = None) -> ChurnEvaluationRun:
    """Train on labels ending on or before ``cutoff``, score the customers eligible at it, compare with the
    baselines; write the report (``training.churn.evaluation_json``) and log the run to MLflow as asked.
    ``sample_customers``: a hash sample of about this many customers (0: all; None: ``churn.SAMPLE_CUSTOMERS``)."""
    sample_customers = _sample_size(sample_customers)
    say = progress or _quiet
    ev = churn.evaluate_protocol(ws, pd.Timestamp(cutoff), horizon_days=horizon, tune=tune, n_trials=n_trials,
                                 step_days=step_days, progress=say, sample_customers=sample_customers,
                                 model_kwargs={"tune_sample": tune_sample or None})
    data = ev.to_json()
    written = churn.write_report(ev, ws.reports_dir) if report else None
    if json_path is not None:
        atomic_write_json(json_path, data)
    run_id = None
    if mlflow:
        with registry.training_run(
            ws, registry.CHURN, run_name=f"churn-evaluate-{ev.cutoff.date()}",
            params={"cutoff": str(ev.cutoff.date()), "horizon_days": horizon, "tune": tune,
                    "n_trials": n_trials if tune else 0, "step_days": step_days,
                    "tune_sample": (tune_sample or "all") if tune else "none",
                    "sample_customers": sample_customers or "all", **churn.output_params(ev.model),
                    **{f"lgb.{k}": v for k, v in ev.model.best_params_.items()}},
            lineage={"cutoff": str(ev.cutoff.date()), "horizon_days": horizon,
                     "train_cutoffs": data["protocol"]["train_cutoffs"]},
            feature_docs=retention.feature_docs(ev.model.feature_names_),
            tags={"kind": "evaluation"},
        ) as run:
            if written is None:  # MLflow keeps the report even when no copy is wanted in reports/
                written = churn.write_report(ev, ws.reports_dir)
            log_evaluation(run, ev, written)
        run_id = run.run_id
    return ChurnEvaluationRun(evaluation=ev, data=data, written=written,
                              json_path=Path(json_path) if json_path is not None else None, run_id=run_id)


def train_churn_model(ws: Workspace, horizon: int = 90, tune: bool = True, n_trials: int = 10, step_days: int = 30,
                      backtest: bool = True, tune_sample: int | None = 2500, register_model: bool = True,
                      backtest_cutoffs: int = 1, every_days: int | None = None,
                      progress: Progress | None = None, sample_customers: int | None = None) -> dict:
    """Backtest against the baselines at the newest labelled cutoff (or at ``backtest_cutoffs`` rolling
    cutoffs every ``every_days``: ``training.rolling``), grade the model on the backtest's cutoffs
    (``training.grade``), train the final model on every labelled snapshot, log both to MLflow and
    register the model as challenger with its grade (version tags ``grade``, ``grade.reason``).

    Returns a JSON-able summary: ``primary_metric`` ("auc"), ``metrics`` (model and baselines of the
    backtest, or the model's validation metrics without one), ``backtest_cutoff``, ``backtest_skipped``
    (why, when the backtest could not run), ``horizon_days``, ``n_rows``, ``cutoffs``,
    ``validation_cutoff``, ``validation_auc``, ``model_dir``, ``run_id``, ``version``, ``grade`` and
    ``grade_reason`` (None without a backtest), ``seconds``. ``sample_customers``: the backtest and the
    final model learn from a hash sample of about this many customers (0: all; None: ``churn.SAMPLE_CUSTOMERS``).
    """
    sample_customers = _sample_size(sample_customers)
    say = progress or _quiet
    started = time.perf_counter()
    ev = None
    written = None
    skipped = None
    rolled, rolled_written = None, None
    if backtest:
        cutoff = dates.newest_labelled_cutoff(dates.workspace_as_of(ws), horizon)
        say(f"backtest at the newest labelled cutoff {cutoff.date()}" if backtest_cutoffs == 1 else
            f"backtest at {backtest_cutoffs} cutoffs back from the newest labelled one ({cutoff.date()})")
        try:
            rolled = rolling.evaluate_churn_rolling(ws, backtest_cutoffs, every_days, horizon=horizon, tune=tune,
                                                    n_trials=n_trials, step_days=step_days, keep_evaluations=True,
                                                    model_kwargs={"tune_sample": tune_sample or None},
                                                    progress=say, sample_customers=sample_customers or 0)
        except ValueError as exc:
            skipped = str(exc)  # the caller says so; the final model is still trained
        if rolled is not None:
            ev = rolled.evaluations[-1]  # the newest cutoff: the out-of-time metrics the registry keeps
            written = churn.write_report(ev, ws.reports_dir)
            rolled_written = rolling.write(rolled, ws.reports_dir)
    say("final model on every labelled snapshot")
    params = dict(ev.model.best_params_) if (ev is not None and tune) else None
    # reuse the backtest's tuned parameters instead of searching twice
    model, info = churn.train_final(ws, horizon_days=horizon, tune=tune and params is None, n_trials=n_trials,
                                    step_days=step_days, progress=say, sample_customers=sample_customers,
                                    model_kwargs={"tune_sample": tune_sample or None,
                                                  **({"params": params} if params else {})})
    saved = model_dir(ws)
    model.save(saved)
    metrics = dict(ev.metrics["model"]) if ev is not None else dict(model.validation_metrics_)
    lineage = {
        "horizon_days": horizon,
        "cutoffs": info["cutoffs"],
        "n_rows": info["n_rows"],
        "validation_cutoff": model.validation_cutoff_,
        "metrics_source": f"backtest at {ev.cutoff.date()}" if ev is not None else "validation cutoff",
    }
    run_params = {"horizon_days": horizon, "tune": tune, "n_trials": n_trials if tune else 0,
                  "tune_sample": (tune_sample or "all") if tune else "none",
                  "sample_customers": sample_customers or "all",
                  "step_days": step_days, "best_iteration": model.best_iteration_,
                  "calibration": model.calibration, **churn.output_params(model),
                  **{f"lgb.{k}": v for k, v in model.best_params_.items()}}
    with registry.training_run(ws, registry.CHURN, params=run_params, lineage=lineage,
                               feature_docs=retention.feature_docs(model.feature_names_)) as run:
        run.log_metrics(metrics)
        run.log_metrics(model.validation_metrics_, prefix="validation")
        if ev is not None:
            log_evaluation(run, ev, written, prefix_model="backtest.model")
            rolling.log_rolling(run, rolled, rolled_written)
        run.log_dict(model.summary(), "model/summary.json")
        model_info = log_churn(model, info["example"])
        if register_model:
            run.register(model_info, metrics, tags=rolling.grade_tags(rolled) if rolled is not None else None)
    return {
        "primary_metric": "auc",
        "metrics": json.loads(json.dumps(ev.metrics if ev is not None else {"model": metrics}, default=float)),
        "backtest_cutoff": str(ev.cutoff.date()) if ev is not None else None,
        "backtest_skipped": skipped,
        "horizon_days": horizon,
        "n_rows": info["n_rows"],
        "cutoffs": info["cutoffs"],
        "validation_cutoff": str(model.validation_cutoff_),
        "validation_auc": float(model.validation_metrics_["auc"]),
        "chosen": model.output_kind(),
        "fallback": getattr(model, "fallback_", None),
        "choice_scores": getattr(model, "choice_scores_", {}),
        "backtest_chosen": ev.model.output_kind() if ev is not None else None,
        "model_dir": str(saved),
        "run_id": run.run_id,
        "version": str(run.model_version) if register_model else None,
        "grade": rolled.grade.letter if rolled is not None else None,
        "grade_reason": rolled.grade.reason if rolled is not None else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


__all__ = ["ChurnEvaluationRun", "evaluate_churn_model", "log_evaluation", "model_dir", "train_churn_model"]
