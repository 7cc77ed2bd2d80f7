"""`crmml train churn` and `crmml evaluate churn`: the churn warning model and its honest evaluation.

    crmml evaluate churn --cutoff 2011-09-09 --horizon 90 --json out.json [--no-tune]
        trains on labels that end on or before the cutoff, scores the customers eligible at the
        cutoff, prints the model and the baselines side by side, writes the JSON (keys model,
        recency, rfm, bgnbd, n_customers, churn_rate, ...) and reports/churn_evaluation.json + plots,
        and logs the run to MLflow (not registered).

    crmml train churn [--horizon 90] [--no-tune]
        backtest first (the protocol above at the newest fully-labelled cutoff: metrics of the model
        and the baselines, plots, report), then the final model on every labelled snapshot; saved
        under <workspace>/models/churn, logged to MLflow and registered as challenger (the first
        version becomes champion) with the backtest's out-of-time metrics.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from pipelines.commands.options import WorkspaceOption

console = Console()


def _wide() -> Console:
    """A console at least 120 columns wide for the side-by-side table (rich uses 80 when not on a terminal)."""
    return Console(width=max(console.width, 120))


def _say(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}")


def metrics_table(metrics: dict, title: str) -> Table:
    """Model and baselines side by side (best value per column in bold)."""
    from training import churn_metrics as cm

    labels = {"model": "LightGBM", "recency": "recency", "rfm": "RFM", "bgnbd": "BG/NBD"}
    table = Table(title=title)
    table.add_column("scorer")
    for _, header, _, _ in cm.DISPLAY:
        table.add_column(header, justify="right")
    best = {}
    for key, _, _, higher in cm.DISPLAY:
        vals = [m.get(key) for m in metrics.values() if m.get(key) is not None and math.isfinite(m.get(key))]
        if vals:
            best[key] = max(vals) if higher else min(vals)
    for name, m in metrics.items():
        cells = []
        for key, _, fmt, _ in cm.DISPLAY:
            v = m.get(key)
            if v is None or not math.isfinite(v):
                cells.append("-")
                continue
            text = fmt.format(v)
            cells.append(f"[bold]{text}[/]" if best.get(key) == v else text)
        table.add_row(labels.get(name, name), *cells, style="cyan" if name == "model" else None)
    return table


def _write_json(path: Path, data: dict) -> None:
    from features.workspace import atomic_write

    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))


def _log_evaluation(run, ev, written: dict, prefix_model: str = "") -> None:
    """Metrics (model + baselines), figures and the report of an Evaluation into a registry run."""
    for name, m in ev.metrics.items():
        if name == "model":
            run.log_metrics(m, prefix=prefix_model)
        else:
            run.log_metrics(m, prefix=f"baseline.{name}")
    run.log_artifact(written["json"], "report")
    for path in written["figures"].values():
        run.log_artifact(path, "plots")


def register(train_app: typer.Typer, evaluate_app: typer.Typer) -> None:
    @evaluate_app.command("churn")
    def evaluate_churn(
        cutoff: Annotated[str, typer.Option(help="Evaluation cutoff date (YYYY-MM-DD): labels are the purchases in "
                                                 "[cutoff, cutoff + horizon).")],
        horizon: Annotated[int, typer.Option(help="Churn horizon in days.")] = 90,
        json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics JSON here.")] = None,
        tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Optuna search on the time split.")] = True,
        n_trials: Annotated[int, typer.Option(help="Optuna trials when tuning.")] = 25,
        step_days: Annotated[int, typer.Option(help="Days between stacked training cutoffs.")] = 30,
        report: Annotated[bool, typer.Option("--report/--no-report", help="Write reports/churn_evaluation.json + plots.")] = True,
        mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the evaluation run to MLflow.")] = True,
        workspace: WorkspaceOption = None,
    ):
        """Train on labels ending on or before CUTOFF, score the customers eligible at CUTOFF, compare with baselines."""
        import pandas as pd

        from features.workspace import Workspace
        from training import churn

        ws = Workspace(workspace)
        try:
            ev = churn.evaluate_protocol(ws, pd.Timestamp(cutoff), horizon_days=horizon, tune=tune, n_trials=n_trials,
                                         step_days=step_days, progress=_say)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
        _wide().print(metrics_table(ev.metrics, f"Churn at {ev.cutoff.date()} (+{horizon} days): "
                                                f"{len(ev.y):,} customers, churn rate {ev.y.mean():.1%}"))
        data = ev.to_json()
        written = None
        if report:
            written = churn.write_report(ev, ws.reports_dir)
            console.print(f"report: {written['json']}")
        if json_path is not None:
            _write_json(json_path, data)
            console.print(f"metrics: {json_path}")
        if mlflow:
            from training import registry, retention

            with registry.training_run(
                ws, registry.CHURN, run_name=f"churn-evaluate-{ev.cutoff.date()}",
                params={"cutoff": str(ev.cutoff.date()), "horizon_days": horizon, "tune": tune,
                        "n_trials": n_trials if tune else 0, "step_days": step_days,
                        **{f"lgb.{k}": v for k, v in ev.model.best_params_.items()}},
                lineage={"cutoff": str(ev.cutoff.date()), "horizon_days": horizon,
                         "train_cutoffs": data["protocol"]["train_cutoffs"]},
                feature_docs=retention.feature_docs(ev.model.feature_names_),
                tags={"kind": "evaluation"},
            ) as run:
                if written is None:
                    written = churn.write_report(ev, ws.reports_dir)
                _log_evaluation(run, ev, written)
            console.print(f"MLflow run {run.run_id} (evaluation, not registered)")
        t = data["timings_s"]
        console.print(f"[dim]timings: features {t.get('features')} s, model {t.get('model_fit')} s, "
                      f"total {t.get('total')} s[/]")

    @train_app.command("churn")
    def train_churn(
        horizon: Annotated[int, typer.Option(help="Churn horizon in days.")] = 90,
        tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Optuna search on the time split.")] = True,
        n_trials: Annotated[int, typer.Option(help="Optuna trials when tuning.")] = 25,
        step_days: Annotated[int, typer.Option(help="Days between stacked training cutoffs.")] = 30,
        backtest: Annotated[bool, typer.Option("--backtest/--no-backtest",
                                               help="Evaluate against the baselines at the newest labelled cutoff "
                                                    "first (out-of-time metrics for the registry).")] = True,
        register_model: Annotated[bool, typer.Option("--register/--no-register",
                                                     help="Register as challenger in the MLflow registry.")] = True,
        workspace: WorkspaceOption = None,
    ):
        """Train the churn model on every labelled snapshot, log it to MLflow and register it as challenger."""
        from features.workspace import Workspace

        try:
            result = train_churn_model(Workspace(workspace), horizon=horizon, tune=tune, n_trials=n_trials,
                                       step_days=step_days, backtest=backtest, register_model=register_model)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
        table = Table(title="crmml-churn")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("training snapshots", f"{result['n_rows']:,} ({len(result['cutoffs'])} cutoffs)")
        table.add_row("validation cutoff", str(result["validation_cutoff"]))
        table.add_row("validation AUC", f"{result['validation_auc']:.3f}")
        if result["backtest_cutoff"]:
            table.add_row(f"backtest AUC ({result['backtest_cutoff']})", f"{result['metrics']['model']['auc']:.3f}")
        table.add_row("saved", result["model_dir"])
        table.add_row("MLflow run", result["run_id"])
        if register_model:
            table.add_row("registered version", str(result["version"]))
        table.add_row("time", f"{result['seconds']:.0f} s")
        console.print(table)


def train_churn_model(ws, horizon: int = 90, tune: bool = True, n_trials: int = 25, step_days: int = 30,
                      backtest: bool = True, register_model: bool = True) -> dict:
    """Backtest against the baselines at the newest labelled cutoff, train the final model on every labelled
    snapshot, log both to MLflow and register the model as challenger. Returns a JSON-able summary."""
    import pandas as pd

    from features import dates
    from training import churn, registry, retention
    from training.churn_pyfunc import log_churn

    started = time.perf_counter()
    ev = None
    written = None
    if backtest:
        cutoff = dates.newest_labelled_cutoff(dates.workspace_as_of(ws), horizon)
        _say(f"backtest at the newest labelled cutoff {cutoff.date()}")
        try:
            ev = churn.evaluate_protocol(ws, cutoff, horizon_days=horizon, tune=tune, n_trials=n_trials,
                                         step_days=step_days, progress=_say)
        except ValueError as exc:
            console.print(f"[yellow]backtest skipped:[/] {exc}")
        if ev is not None:
            _wide().print(metrics_table(ev.metrics, f"Backtest at {ev.cutoff.date()} (+{horizon} days)"))
            written = churn.write_report(ev, ws.reports_dir)
    _say("final model on every labelled snapshot")
    params = dict(ev.model.best_params_) if (ev is not None and tune) else None
    # reuse the backtest's tuned parameters instead of searching twice
    model, info = churn.train_final(ws, horizon_days=horizon, tune=tune and params is None, n_trials=n_trials,
                                    step_days=step_days, model_kwargs={"params": params} if params else None,
                                    progress=_say)
    model_dir = ws.root / "models" / "churn"
    model.save(model_dir)
    metrics = dict(ev.metrics["model"]) if ev is not None else dict(model.validation_metrics_)
    lineage = {
        "horizon_days": horizon,
        "cutoffs": info["cutoffs"],
        "n_rows": info["n_rows"],
        "validation_cutoff": model.validation_cutoff_,
        "metrics_source": f"backtest at {ev.cutoff.date()}" if ev is not None else "validation cutoff",
    }
    run_params = {"horizon_days": horizon, "tune": tune, "n_trials": n_trials if tune else 0,
                  "step_days": step_days, "best_iteration": model.best_iteration_,
                  "calibration": model.calibration,
                  **{f"lgb.{k}": v for k, v in model.best_params_.items()}}
    with registry.training_run(ws, registry.CHURN, params=run_params, lineage=lineage,
                               feature_docs=retention.feature_docs(model.feature_names_)) as run:
        run.log_metrics(metrics)
        run.log_metrics(model.validation_metrics_, prefix="validation")
        if ev is not None:
            _log_evaluation(run, ev, written, prefix_model="backtest.model")
        run.log_dict(model.summary(), "model/summary.json")
        model_info = log_churn(model, info["example"])
        if register_model:
            run.register(model_info, metrics)
    return {
        "primary_metric": "auc",
        "metrics": json.loads(json.dumps(ev.metrics if ev is not None else {"model": metrics}, default=float)),
        "backtest_cutoff": str(ev.cutoff.date()) if ev is not None else None,
        "n_rows": info["n_rows"],
        "cutoffs": info["cutoffs"],
        "validation_cutoff": str(model.validation_cutoff_),
        "validation_auc": float(model.validation_metrics_["auc"]),
        "model_dir": str(model_dir),
        "run_id": run.run_id,
        "version": str(run.model_version) if register_model else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
