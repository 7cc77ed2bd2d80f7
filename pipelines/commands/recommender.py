"""`crmml train recommender` and `crmml evaluate recommender`.

    crmml evaluate recommender --cutoff 2011-09-09 --window 90 --k 10 --json out.json
        fits on every interaction before the cutoff, recommends for the customers who bought in
        [cutoff, cutoff + window) and had bought before, and compares the model with every baseline
        on the same users in two views: ``all`` (every item bought in the window, repeats count)
        and ``new`` (items new to the customer; already-bought items are excluded). Writes the JSON
        ``{"all": {"model": {...}, "popularity": {...}, ...}, "new": {...}, "n_users": ...}`` and
        ``reports/recommender_evaluation.json`` (read by ``crmml report``).

    crmml train recommender [--tune] [--window 90]
        backtest first (the protocol above at the newest full window: out-of-time metrics for the
        registry), then the final model on all the data; saved under
        <workspace>/models/recommender/recommender.joblib, logged to MLflow as a pyfunc and
        registered as challenger (the first version becomes champion).

Interactions come from the workspace's ``interactions`` table (generic ratings/clicks) when it has
one, else from its ``events`` with weights view 0.2, cart 0.6, purchase 1 (returns are left out:
returning a unit of a wholesale line is not a dislike of the item).
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
#: event weights of the recommender's interactions (relative to a purchase)
EVENT_WEIGHTS = {"view": 0.2, "cart": 0.6, "purchase": 1.0}
SHOWN = ("ndcg", "precision", "recall", "map", "hit_rate", "coverage", "novelty")


def _say(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}")


def load_inputs(ws) -> tuple:
    """(interactions, items or None, users or None) of a workspace."""
    from features.interactions import load_interactions

    interactions = load_interactions(ws, EVENT_WEIGHTS)
    items = ws.read_table("items") if ws.has_table("items") else None
    users = ws.read_table("customers") if ws.has_table("customers") else None
    return interactions, items, users


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


def _write_json(path: Path, data: dict) -> None:
    from features.workspace import atomic_write

    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))


def evaluate_recommender(ws, cutoff, window: int = 90, k: int = 10, tune: bool = False) -> dict:
    """The evaluation protocol on a workspace (see ``training.recommender.evaluate_time_split``)."""
    from training.recommender import evaluate_time_split

    interactions, items, users = load_inputs(ws)
    return evaluate_time_split(interactions, cutoff, window_days=window, k=k, items=items, users=users,
                               params={"show_progress": True}, tune=tune)


def newest_cutoff(interactions, window: int):
    """The cutoff whose window ends with the data: last day - window."""
    import pandas as pd

    if "timestamp" not in interactions.columns:
        return None
    from features.dates import as_of_date, newest_labelled_cutoff

    return newest_labelled_cutoff(as_of_date(interactions["timestamp"]), window)


def train_recommender_model(ws, tune: bool = False, window: int = 90, k: int = 10, backtest: bool = True,
                            register_model: bool = True, mlflow: bool = True) -> dict:
    """Backtest, fit on everything, save, log to MLflow and register; returns a summary dict
    (``primary_metric``, ``metrics`` {model and baselines: metrics}, ``saved``, ``run_id``, ...)."""
    import joblib

    from features.workspace import Workspace, atomic_write
    from training.recommender import Recommender, evaluate_time_split, evaluation_json

    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    started = time.perf_counter()
    interactions, items, users = load_inputs(ws)
    result = None
    cutoff = newest_cutoff(interactions, window)
    if backtest and cutoff is not None:
        _say(f"backtest: fit before {cutoff.date()}, evaluate on the next {window} days")
        try:
            result = evaluate_time_split(interactions, cutoff, window_days=window, k=k, items=items, users=users,
                                         params={"show_progress": True}, tune=tune)
        except ValueError as exc:
            console.print(f"[yellow]backtest skipped:[/] {exc}")
        if result is not None:
            console.print(metrics_table(result, "all"))
            console.print(metrics_table(result, "new"))
            _write_json(evaluation_json(ws.reports_dir), result)
    _say("final model on all the data")
    model = Recommender().fit(interactions, items=items, users=users, tune=tune)
    model_dir = ws.root / "models" / "recommender"
    model_dir.mkdir(parents=True, exist_ok=True)
    saved = model_dir / "recommender.joblib"
    atomic_write(saved, lambda tmp: joblib.dump(model, tmp))
    metrics = dict(result["all"]["model"]) if result is not None else {}
    if result is not None and "model" in result.get("new", {}):
        metrics.update({f"new.{key}": v for key, v in result["new"]["model"].items()})
    summary = {
        "primary_metric": f"ndcg@{k}",
        "metrics": result["all"] if result is not None else {},
        "metrics_new": result["new"] if result is not None else {},
        "n_users": result["n_users"] if result is not None else None,
        "fit_seconds": round(model.fit_seconds_, 1),
        "saved": str(saved),
        "users": int(model.state_.matrix.shape[0]),
        "items": int(len(model.item_ids_)),
    }
    if mlflow:
        from training import registry
        from training.recommender_pyfunc import log_recommender

        params = {key: (",".join(v) if isinstance(v, tuple) else v) for key, v in model.get_params().items()}
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
            info = log_recommender(model)
            if register_model and result is not None:
                run.register(info, metrics)
        summary["run_id"] = run.run_id
        summary["model_version"] = getattr(run, "model_version", None)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def register(train_app: typer.Typer, evaluate_app: typer.Typer) -> None:
    @evaluate_app.command("recommender")
    def evaluate_cmd(
        cutoff: Annotated[str, typer.Option(help="Evaluation cutoff (YYYY-MM-DD): fit before it, test on the window after.")],
        window: Annotated[int, typer.Option(help="Days of purchases after the cutoff that are the test set.")] = 90,
        k: Annotated[int, typer.Option(help="Length of each recommendation list.")] = 10,
        json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics JSON here.")] = None,
        tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Search hyperparameters on an inner split.")] = False,
        workspace: WorkspaceOption = None,
    ):
        """Fit before CUTOFF, compare the model with every baseline on the following WINDOW days."""
        import pandas as pd

        from features.workspace import Workspace
        from training.recommender import evaluation_json

        ws = Workspace(workspace)
        started = time.perf_counter()
        try:
            result = evaluate_recommender(ws, pd.Timestamp(cutoff), window=window, k=k, tune=tune)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
        console.print(metrics_table(result, "all"))
        console.print(metrics_table(result, "new"))
        _write_json(evaluation_json(ws.reports_dir), result)
        if json_path is not None:
            _write_json(json_path, result)
            console.print(f"metrics: {json_path}")
        console.print(f"[dim]fit {result['fit_seconds']} s, total {time.perf_counter() - started:.0f} s[/]")

    @train_app.command("recommender")
    def train_cmd(
        tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Search hyperparameters on an inner split.")] = False,
        window: Annotated[int, typer.Option(help="Backtest window in days (and the ranker's horizon).")] = 90,
        k: Annotated[int, typer.Option(help="k of the backtest metrics.")] = 10,
        backtest: Annotated[bool, typer.Option("--backtest/--no-backtest",
                                               help="Evaluate against the baselines on the newest window first.")] = True,
        register_model: Annotated[bool, typer.Option("--register/--no-register",
                                                     help="Register as challenger in the MLflow registry.")] = True,
        mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow", help="Log the model to MLflow.")] = True,
        workspace: WorkspaceOption = None,
    ):
        """Fit the recommender on all the data in the workspace, save it, log it to MLflow, register it."""
        from features.workspace import Workspace

        ws = Workspace(workspace)
        try:
            summary = train_recommender_model(ws, tune=tune, window=window, k=k, backtest=backtest,
                                              register_model=register_model, mlflow=mlflow)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
        table = Table(title="crmml-recommender")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("users × items", f"{summary['users']:,} × {summary['items']:,}")
        model_m = summary["metrics"].get("model", {})
        if model_m:
            table.add_row(f"backtest ndcg@{k} (all / new)",
                          f"{model_m.get(f'ndcg@{k}', float('nan')):.3f} / "
                          f"{summary['metrics_new'].get('model', {}).get(f'ndcg@{k}', float('nan')):.3f}")
        table.add_row("fit", f"{summary['fit_seconds']} s")
        table.add_row("saved", summary["saved"])
        if summary.get("run_id"):
            table.add_row("MLflow run", summary["run_id"])
        if summary.get("model_version"):
            table.add_row("registered version", str(summary["model_version"]))
        table.add_row("time", f"{summary['seconds']:.0f} s")
        console.print(table)
