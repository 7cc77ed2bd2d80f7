"""`crmml train recommender` and `crmml evaluate recommender`.

    crmml evaluate recommender --cutoff 2011-09-09 --window 90 --k 10 --json out.json
        fits on every interaction before the cutoff, recommends for the customers who bought in
        [cutoff, cutoff + window) and had bought before, and compares the model with every baseline
        on the same users in two views: ``all`` (every item bought in the window, repeats count)
        and ``new`` (items new to the customer; already-bought items are excluded). Writes the JSON
        ``{"all": {"model": {...}, "popularity": {...}, ...}, "new": {...}, "n_users": ...}`` and
        ``reports/recommender_evaluation.json`` (read by ``crmml report``).

    crmml evaluate recommender --cutoffs 4 [--every 91]
        the same protocol at 4 cutoffs every 91 days (default: the window) back from the newest full
        window, every generator alone plus popularity as baselines: nDCG@10 (all / new) per cutoff
        with mean ± sd, and the grade (``training.grade``); writes ``training.rolling.rolling_json`` +
        plot and logs one MLflow run.

    crmml train recommender [--tune] [--window 90] [--backtest-cutoffs N]
        backtest first (the protocol above at the newest full window: out-of-time metrics for the
        registry), then the final model on all the data; saved under
        <workspace>/models/recommender/recommender.joblib, logged to MLflow as a pyfunc and
        registered as challenger (the first version becomes champion).

Interactions come from the workspace's ``interactions`` table (generic ratings/clicks) when it has
one, else from its ``events`` (``training.recommender_inputs``). The work is done by
``training.recommender_training``; this module parses the options and prints.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.commands.options import BacktestCutoffsOption, CutoffsOption, EveryOption, WorkspaceOption

console = Console()
SHOWN = ("ndcg", "precision", "recall", "map", "hit_rate", "coverage", "novelty")


def say(msg: str) -> None:
    """Progress of a long step, timestamped."""
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}")


def metrics_table(result: dict, view: str) -> Table:
    """Model and baselines of one view side by side (best value per column in bold)."""
    rows = result.get(view, {})
    k = result.get("k", 10)
    n = result.get("n_users" if view == "all" else "n_users_new")
    title = {"all": "all purchases in the window (repeats count)", "new": "items new to the customer"}[view]
    table = Table(title=f"{title}: {n:,} users, k={k}" if n is not None else title)
    table.add_column("recommender")
    keys = [m for m in next(iter(rows.values()), {}) if m.split("@")[0] in SHOWN]
    for key in keys:
        table.add_column(key, justify="right")
    best = {key: max((m[key] for m in rows.values() if key in m and math.isfinite(m[key])), default=None) for key in keys}
    for name, m in rows.items():
        cells = []
        for key in keys:
            v = m.get(key)
            text = "-" if v is None else (f"{v:.2f}" if key == "novelty" else f"{v:.3f}")
            cells.append(f"[bold]{text}[/]" if v is not None and v == best[key] and key != "novelty" else text)
        table.add_row(name, *cells, style="cyan" if name == "model" else None)
    return table


def print_backtest(summary: dict) -> None:
    """The backtest of a ``train_recommender_model`` summary (both views), or why it was skipped."""
    if summary.get("backtest_skipped"):
        console.print(f"[yellow]backtest skipped:[/] {summary['backtest_skipped']}")
    if summary.get("backtest_cutoff"):
        result = {"all": summary["metrics"], "new": summary["metrics_new"], "k": summary["k"],
                  "n_users": summary["n_users"], "n_users_new": summary["n_users_new"]}
        console.print(metrics_table(result, "all"))
        console.print(metrics_table(result, "new"))


def register(train_app: typer.Typer, evaluate_app: typer.Typer) -> None:
    @evaluate_app.command("recommender")
    def evaluate_cmd(
        cutoff: Annotated[Optional[str], typer.Option(help="Evaluation cutoff (YYYY-MM-DD): fit before it, test on the "
                                                           "window after.")] = None,
        cutoffs: CutoffsOption = None,
        every: EveryOption = None,
        mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the rolling evaluation to MLflow.")] = True,
        window: Annotated[int, typer.Option(help="Days of purchases after the cutoff that are the test set.")] = 90,
        k: Annotated[int, typer.Option(help="Length of each recommendation list.")] = 10,
        json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics JSON here.")] = None,
        tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Search hyperparameters on an inner split.")] = False,
        workspace: WorkspaceOption = None,
    ):
        """Fit before CUTOFF, compare the model with every baseline on the following WINDOW days."""
        import pandas as pd

        from features.workspace import Workspace
        from training.recommender import selection_lines
        from training.recommender_training import evaluate_recommender

        ws = Workspace(workspace)
        started = time.perf_counter()
        if cutoffs is not None:
            from pipelines.commands.rolling import evaluate_rolling
            from training.names import RECOMMENDER

            tables = [("all", f"ndcg@{k}", f"nDCG@{k} per cutoff: all purchases in the window", True, 3),
                      ("new", f"ndcg@{k}", f"nDCG@{k} per cutoff: items new to the customer", True, 3)]
            evaluate_rolling(console, say, ws, RECOMMENDER, cutoffs, every, tables, json_path, mlflow,
                             window=window, k=k, tune=tune)
            return
        if cutoff is None:
            console.print("[bold red]error:[/] give --cutoff DATE (one cutoff) or --cutoffs N (rolling evaluation)")
            raise typer.Exit(2)
        try:
            result = evaluate_recommender(ws, pd.Timestamp(cutoff), window=window, k=k, tune=tune,
                                          json_path=json_path)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
        console.print(metrics_table(result, "all"))
        console.print(metrics_table(result, "new"))
        for line in selection_lines(result.get("selection")):
            console.print(f"[dim]model's choice on its inner split, {line}[/]")
        if json_path is not None:
            console.print(f"metrics: {json_path}")
        console.print(f"[dim]fit {result['fit_seconds']} s, total {time.perf_counter() - started:.0f} s[/]")

    @train_app.command("recommender")
    def train_cmd(
        tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Search hyperparameters on an inner split.")] = False,
        window: Annotated[int, typer.Option(help="Backtest window in days (and the ranker's horizon).")] = 90,
        k: Annotated[int, typer.Option(help="k of the backtest metrics.")] = 10,
        backtest: Annotated[bool, typer.Option("--backtest/--no-backtest",
                                               help="Evaluate against the baselines on the newest window first.")] = True,
        backtest_cutoffs: BacktestCutoffsOption = 1,
        every: EveryOption = None,
        register_model: Annotated[bool, typer.Option("--register/--no-register",
                                                     help="Register as challenger in the MLflow registry.")] = True,
        mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the model to MLflow.")] = True,
        workspace: WorkspaceOption = None,
    ):
        """Fit the recommender on all the data in the workspace, save it, log it to MLflow, register it."""
        from features.workspace import Workspace
        from training.recommender import selection_lines
        from training.recommender_training import train_recommender_model

        ws = Workspace(workspace)
        try:
            summary = train_recommender_model(ws, tune=tune, window=window, k=k, backtest=backtest,
                                              register_model=register_model, mlflow=mlflow,
                                              backtest_cutoffs=backtest_cutoffs, every_days=every, progress=say)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
        print_backtest(summary)
        for line in selection_lines(summary.get("selection")):
            console.print(f"[dim]final model's choice on its inner split, {line}[/]")
        table = Table(title="crmml-recommender")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("users × items", f"{summary['users']:,} × {summary['items']:,}")
        model_m = summary["metrics"].get("model", {})
        if model_m:
            table.add_row(f"backtest ndcg@{k} (all / new)",
                          f"{model_m.get(f'ndcg@{k}', float('nan')):.3f} / "
                          f"{summary['metrics_new'].get('model', {}).get(f'ndcg@{k}', float('nan')):.3f}")
        if summary.get("grade"):
            table.add_row("grade", f"{summary['grade']}: {summary['grade_reason'].split(': ', 1)[-1]}")
        table.add_row("fit", f"{summary['fit_seconds']} s")
        table.add_row("saved", summary["saved"])
        if summary.get("run_id"):
            table.add_row("MLflow run", summary["run_id"])
        if summary.get("model_version"):
            table.add_row("registered version", str(summary["model_version"]))
        table.add_row("time", f"{summary['seconds']:.0f} s")
        console.print(table)
