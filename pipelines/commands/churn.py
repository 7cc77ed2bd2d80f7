"""`crmml train churn` and `crmml evaluate churn`: the churn warning model and its honest evaluation.

    crmml evaluate churn --cutoff 2011-09-09 --horizon 90 --json out.json [--no-tune]
        trains on labels that end on or before the cutoff, scores the customers eligible at the
        cutoff, prints the model and the baselines side by side, writes the JSON (keys model,
        recency, rfm, bgnbd, n_customers, churn_rate, ...) and reports/churn_evaluation.json + plots,
        and logs the run to MLflow (not registered).

    crmml evaluate churn --cutoffs 4 [--every 91] [--no-tune]
        the same protocol at 4 cutoffs, every 91 days (default: the horizon) back from the newest
        labelled one: AUC, PR-AUC and Brier per cutoff with mean ± sd for the model and each
        baseline, and the grade (``training.grade``); writes ``training.rolling.rolling_json`` + plot
        and logs one MLflow run (per-cutoff metrics as steps, tag ``grade``).

    crmml train churn [--horizon 90] [--no-tune] [--backtest-cutoffs N]
        backtest first (the protocol above at the newest fully-labelled cutoff, or at N rolling
        cutoffs: metrics of the model and the baselines, plots, report, the grade), then the final model on every labelled snapshot; saved
        under <workspace>/models/churn, logged to MLflow and registered as challenger (the first
        version becomes champion) with the backtest's out-of-time metrics.

The work is done by ``training.churn_training``; this module parses the options and prints.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.commands.options import (
    BacktestCutoffsOption,
    CutoffsOption,
    EveryOption,
    SampleCustomersOption,
    WorkspaceOption,
)

console = Console()


def _wide() -> Console:
    """A console at least 120 columns wide for the side-by-side table (rich uses 80 when not on a terminal)."""
    return Console(width=max(console.width, 120))


def say(msg: str) -> None:
    """Progress of a long step, timestamped."""
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


def print_backtest(result: dict) -> None:
    """The backtest of a ``train_churn_model`` summary: model and baselines side by side, or why it was skipped."""
    if result.get("backtest_skipped"):
        console.print(f"[yellow]backtest skipped:[/] {result['backtest_skipped']}")
    if result.get("backtest_cutoff"):
        _wide().print(metrics_table(result["metrics"], f"Backtest at {result['backtest_cutoff']} "
                                                      f"(+{result['horizon_days']} days)"))


def print_choice(chosen: str | None, fallback: str | None) -> None:
    """What the model serves: LightGBM, the stack with BG/NBD, or the baseline it fell back to (and why)."""
    if fallback:
        console.print(f"[yellow]fallback:[/] on its held-out cutoff the {fallback} baseline beat the model in ROC-AUC "
                      f"and Brier; the model serves the {fallback} probabilities")
    elif chosen:
        console.print(f"output stage: {chosen} (chosen on the held-out cutoff)")


ROLLING_TABLES = [("all", "auc", "ROC-AUC per cutoff", True, 3), ("all", "pr_auc", "PR-AUC per cutoff", True, 3),
                  ("all", "brier", "Brier score per cutoff (lower is better)", False, 4)]


def register(train_app: typer.Typer, evaluate_app: typer.Typer) -> None:
    @evaluate_app.command("churn")
    def evaluate_churn(
        cutoff: Annotated[Optional[str], typer.Option(help="Evaluation cutoff date (YYYY-MM-DD): labels are the purchases "
                                                           "in [cutoff, cutoff + horizon).")] = None,
        cutoffs: CutoffsOption = None,
        every: EveryOption = None,
        horizon: Annotated[int, typer.Option(help="Churn horizon in days.")] = 90,
        json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics JSON here.")] = None,
        tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Optuna search on the time split.")] = True,
        n_trials: Annotated[int, typer.Option(help="Optuna trials when tuning (pruned when behind).")] = 10,
        tune_sample: Annotated[int, typer.Option(help="Customers the search trains on (a fixed sample; 0 = all, the "
                                                      "full search).")] = 2500,
        step_days: Annotated[int, typer.Option(help="Days between stacked training cutoffs.")] = 30,
        sample_customers: SampleCustomersOption = None,
        report: Annotated[bool, typer.Option("--report/--no-report", help="Write reports/churn_evaluation.json + plots.")] = True,
        mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the evaluation run to MLflow.")] = True,
        workspace: WorkspaceOption = None,
    ):
        """Train on labels ending on or before CUTOFF, score the customers eligible at CUTOFF, compare with baselines
        (or do so at N rolling cutoffs with --cutoffs N and grade the model)."""
        from features.workspace import Workspace
        from training.churn_training import evaluate_churn_model

        ws = Workspace(workspace)
        if cutoffs is not None:
            from pipelines.commands.rolling import evaluate_rolling
            from training.names import CHURN

            evaluate_rolling(console, say, ws, CHURN, cutoffs, every, ROLLING_TABLES, json_path, mlflow,
                             horizon=horizon, tune=tune, n_trials=n_trials, step_days=step_days,
                             sample_customers=sample_customers, model_kwargs={"tune_sample": tune_sample or None})
            return
        if cutoff is None:
            console.print("[bold red]error:[/] give --cutoff DATE (one cutoff) or --cutoffs N (rolling evaluation)")
            raise typer.Exit(2)
        try:
            done = evaluate_churn_model(ws, cutoff, horizon=horizon, tune=tune, n_trials=n_trials,
                                        tune_sample=tune_sample, sample_customers=sample_customers,
                                        step_days=step_days, report=report, json_path=json_path, mlflow=mlflow,
                                        progress=say)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
        ev = done.evaluation
        _wide().print(metrics_table(ev.metrics, f"Churn at {ev.cutoff.date()} (+{horizon} days): "
                                                f"{len(ev.y):,} customers, churn rate {ev.y.mean():.1%}"))
        print_choice(ev.model.output_kind(), getattr(ev.model, "fallback_", None))
        if report:
            console.print(f"report: {done.written['json']}")
        if done.json_path is not None:
            console.print(f"metrics: {done.json_path}")
        if done.run_id is not None:
            console.print(f"MLflow run {done.run_id} (evaluation, not registered)")
        t = done.data["timings_s"]
        console.print(f"[dim]timings: features {t.get('features')} s, model {t.get('model_fit')} s, "
                        f"total {t.get('total')} s[/]")

    @train_app.command("churn")
    def train_churn(
        horizon: Annotated[int, typer.Option(help="Churn horizon in days.")] = 90,
        tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Optuna search on the time split.")] = True,
        n_trials: Annotated[int, typer.Option(help="Optuna trials when tuning (pruned when behind).")] = 10,
        tune_sample: Annotated[int, typer.Option(help="Customers the search trains on (a fixed sample; 0 = all, the "
                                                      "full search).")] = 2500,
        step_days: Annotated[int, typer.Option(help="Days between stacked training cutoffs.")] = 30,
        sample_customers: SampleCustomersOption = None,
        backtest: Annotated[bool, typer.Option("--backtest/--no-backtest",
                                               help="Evaluate against the baselines at the newest labelled cutoff "
                                                    "first (out-of-time metrics for the registry).")] = True,
        backtest_cutoffs: BacktestCutoffsOption = 1,
        every: EveryOption = None,
        register_model: Annotated[bool, typer.Option("--register/--no-register",
                                                     help="Register as challenger in the MLflow registry.")] = True,
        workspace: WorkspaceOption = None,
    ):
        """Train the churn model on every labelled snapshot, log it to MLflow and register it as challenger."""
        from features.workspace import Workspace
        from training.churn_training import train_churn_model

        try:
            result = train_churn_model(Workspace(workspace), horizon=horizon, tune=tune, n_trials=n_trials,
                                       tune_sample=tune_sample, sample_customers=sample_customers,
                                       step_days=step_days, backtest=backtest, register_model=register_model,
                                       backtest_cutoffs=backtest_cutoffs, every_days=every, progress=say)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
        print_backtest(result)
        print_choice(result.get("chosen"), result.get("fallback"))
        table = Table(title="crmml-churn")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("training snapshots", f"{result['n_rows']:,} ({len(result['cutoffs'])} cutoffs)")
        table.add_row("validation cutoff", str(result["validation_cutoff"]))
        table.add_row("validation AUC", f"{result['validation_auc']:.3f}")
        if result["backtest_cutoff"]:
            table.add_row(f"backtest AUC ({result['backtest_cutoff']})", f"{result['metrics']['model']['auc']:.3f}")
        if result.get("grade"):
            table.add_row("grade", f"{result['grade']}: {result['grade_reason'].split(': ', 1)[-1]}")
        table.add_row("saved", result["model_dir"])
        table.add_row("MLflow run", result["run_id"])
        if register_model:
            table.add_row("registered version", str(result["version"]))
        table.add_row("time", f"{result['seconds']:.0f} s")
        console.print(table)
