"""`crmml run` (raw histories to a served, promoted model) and `crmml score` (nightly batch scoring)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.commands import churn, recommender
from pipelines.commands.data import Source
from pipelines.commands.options import Engine, WorkspaceOption

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        files: Annotated[Optional[list[Path]], typer.Argument(help="Input files; none = the synthetic shop.")] = None,
        source: Annotated[Optional[Source], typer.Option(help="Kind of input files.")] = None,
        customers: Annotated[int, typer.Option(help="Synthetic shop: number of customers.")] = 5000,
        seed: Annotated[int, typer.Option(help="Synthetic shop: random seed.")] = 0,
        experiments: Annotated[int, typer.Option(min=0, help="Synthetic shop: randomised campaigns with planted "
                                                 "effects (the uplift model learns from them).")] = 0,
        horizon: Annotated[int, typer.Option(help="Churn horizon in days.")] = 90,
        tune: Annotated[bool, typer.Option("--tune/--no-tune", help="Hyperparameter search for both models.")] = False,
        k: Annotated[int, typer.Option(help="Recommendations per customer in the batch scores.")] = 10,
        db_url: Annotated[Optional[str], typer.Option(help="Also write scores to this SQLAlchemy URL.")] = None,
        from_step: Annotated[Optional[str], typer.Option("--from", help="Re-run this step and all after it.")] = None,
        serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the API when done.")] = False,
        port: Annotated[int, typer.Option(help="Port for --serve (127.0.0.1).")] = 3000,
        customer_col: Annotated[Optional[str], typer.Option(help="transactions: customer column.")] = None,
        time_col: Annotated[Optional[str], typer.Option(help="transactions: timestamp column.")] = None,
        amount_col: Annotated[Optional[str], typer.Option(help="transactions: amount column.")] = None,
        item_col: Annotated[Optional[str], typer.Option(help="transactions: item column.")] = None,
        quantity_col: Annotated[Optional[str], typer.Option(help="transactions: quantity column.")] = None,
        sep: Annotated[Optional[str], typer.Option(help="transactions: separator.")] = None,
        time_format: Annotated[Optional[str], typer.Option(help="transactions: strftime format.")] = None,
        names: Annotated[Optional[str], typer.Option(help="transactions: column names (no header).")] = None,
        config: Annotated[Optional[Path], typer.Option(help="A mapping file (crmml init-config) naming the shop's "
                                                       "files; replaces --source and FILES.")] = None,
        workspace: WorkspaceOption = None,
    ):
        """Ingest -> features -> train churn and recommender -> evaluate -> register -> gate -> score -> report."""
        from features.workspace import Workspace
        from pipelines import flow
        from pipelines.steps import StepFailed

        ws = Workspace(workspace)
        params = flow.RunParams(
            files=[str(f) for f in files or []],
            source=(source.value if source else ("online-retail" if files else "synthetic")),
            customers=customers, seed=seed, experiments=experiments, horizon=horizon, tune=tune, k=k, db_url=db_url,
            transactions={"customer_col": customer_col, "time_col": time_col, "amount_col": amount_col,
                          "item_col": item_col, "quantity_col": quantity_col, "sep": sep,
                          "time_format": time_format, "names": names.split(",") if names else None},
            config=str(config) if config is not None else None,
        )
        if config is not None and (files or source is not None):
            console.print("[bold red]error:[/] the mapping file names its files: drop --source and FILES")
            raise typer.Exit(2)
        started = time.perf_counter()
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            steps = flow.steps()
            task = progress.add_task("pipeline", total=len(steps))

            def on_start(step):
                progress.update(task, description=f"[bold]{step.name}[/]")

            def say(msg: str) -> None:
                progress.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}")

            backtests = {"train_churn": churn.print_backtest, "train_recommender": recommender.print_backtest}

            def on_end(result):
                if result.status == "ran" and result.name in backtests:
                    backtests[result.name](result.summary)
                note = {"ran": "[green]done[/]", "cached": "[dim]cached[/]", "failed": "[red]failed[/]"}
                progress.console.print(f"  {result.name:<18} {note.get(result.status, result.status)}"
                                       f"  {result.seconds:6.1f} s")
                progress.advance(task)

            try:
                results = flow.pipeline(ws, steps).run({"params": params, "workspace": ws, "progress": say},
                                                       force_from=from_step, on_start=on_start, on_end=on_end)
            except StepFailed as exc:
                console.print(f"[bold red]{exc}[/]")
                console.print("Earlier steps' outputs and the model registry are as they were before this step.")
                raise typer.Exit(1) from None
            except ValueError as exc:
                console.print(f"[bold red]error:[/] {exc}")
                raise typer.Exit(2) from None
        console.print(flow.summary_table(ws, results, time.perf_counter() - started))
        if serve:
            serve_demo(ws, port)

    @app.command()
    def score(
        k: Annotated[int, typer.Option(help="Recommendations per customer.")] = 10,
        db_url: Annotated[Optional[str], typer.Option(help="Also write a table through this SQLAlchemy URL "
                                                           "(sqlite:////abs/path.db, postgresql+psycopg2://...).")] = None,
        table: Annotated[str, typer.Option(help="Database table name.")] = "crmml_scores",
        as_of: Annotated[Optional[str], typer.Option(help="Score date (default: the day after the last event).")] = None,
        engine: Annotated[Engine, typer.Option(help="duckdb (features on DuckDB, model in this process) or spark "
                                                    "(features on Spark, the churn model as a Spark UDF).")] = Engine.duckdb,
        workspace: WorkspaceOption = None,
    ):
        """Score every eligible customer with the champion models; write Parquet, CSV and optionally a table."""
        from features.workspace import Workspace
        from pipelines.score import score as run_score

        ws = Workspace(workspace)
        started = time.perf_counter()
        summary = run_score(ws, k=k, db_url=db_url, table=table, as_of=as_of, engine=engine.value)
        out = Table(title=f"Batch scores as of {summary['as_of']} ({engine.value}, {time.perf_counter() - started:.1f} s)")
        out.add_column("")
        out.add_column("value")
        out.add_row("customers scored", f"{summary['rows']:,}")
        for tier, n in sorted(summary["risk_tiers"].items()):
            out.add_row(f"risk tier {tier}", f"{n:,}")
        out.add_row("parquet", summary["parquet"])
        out.add_row("csv", summary["csv"])
        if "table" in summary:
            out.add_row("table", summary["table"])
        console.print(out)



def example_requests(ws, url: str) -> list[str]:
    """A working curl for each endpoint, with a real customer and item of this workspace."""
    import pandas as pd

    from pipelines.score import scores_path

    scores = scores_path(ws)
    customer = str(pd.read_parquet(scores, columns=["customer_id"])["customer_id"].iloc[0])
    items = ws.read_table("events", columns=["item_id"])["item_id"].dropna().value_counts().index[:2].tolist()
    post = f"curl -s -X POST {url}"
    json_header = "-H 'Content-Type: application/json'"
    return [
        f"{post}/churn/score {json_header} -d '{{\"customer_ids\": [\"{customer}\"]}}'",
        f"curl -s {url}/customers/{customer}/profile",
        f"{post}/recommend {json_header} -d '{{\"customer_id\": \"{customer}\", \"k\": 5, \"exclude_seen\": true}}'",
        f"{post}/recommend {json_header} -d '{{\"customer_id\": \"new-visitor\", \"k\": 5}}'",
        f"{post}/recommend/basket {json_header} -d '{{\"item_ids\": [\"{items[0]}\", \"{items[-1]}\"], \"k\": 5}}'",
        f"curl -s {url}/items/{items[0]}/similar",
        f"curl -s {url}/items/{items[0]}/bought-together",
        f"curl -s {url}/healthz",
        f"curl -s {url}/readyz",
        f"curl -s {url}/metadata",
        f"curl -s {url}/metrics | head",
    ]


def serve_demo(ws, port: int) -> None:
    """Serve the champions in the foreground (local demo, no API key); print curls once it is ready."""
    import threading

    import httpx

    from pipelines.commands.serve import HOST, preflight, run_service, serve_command, serve_env

    env = serve_env(ws.root, None, no_auth=True)
    for line in preflight(ws.root, env):
        console.print(f"[dim]{line}[/]", soft_wrap=True)
    url = f"http://{HOST}:{port}"
    stop = threading.Event()

    def announce():
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            stop.wait(0.5)
        else:
            return
        console.print(f"\n[bold green]crmml API ready on {url}[/] (local demo: no API key; "
                      f"OpenAPI at {url}/docs). Try:\n")
        for line in example_requests(ws, url):
            console.print(line, soft_wrap=True, highlight=False, markup=False)
        console.print("\nCtrl-C stops the service.")

    threading.Thread(target=announce, daemon=True).start()
    try:
        code = run_service(serve_command(port), env, console)
    finally:
        stop.set()
    raise typer.Exit(code)
