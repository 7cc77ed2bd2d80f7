"""`crmml report`: the static HTML insight report (plots embedded), also logged to MLflow."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from pipelines.commands.options import WorkspaceOption

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def report(
        workspace: WorkspaceOption = None,
        out: Annotated[
            Optional[Path], typer.Option("--out", help="HTML file to write (default <workspace>/reports/report.html).")
        ] = None,
        as_of: Annotated[
            Optional[str], typer.Option("--as-of", help="Report date YYYY-MM-DD (data strictly before it; "
                                        "default: the day after the last event).")
        ] = None,
        mlflow: Annotated[
            bool, typer.Option("--mlflow/--no-mlflow", help="Also log the report to MLflow as an artifact.")
        ] = True,
    ):
        """Write the insight report: revenue Pareto and value tiers, RFM segments, cohorts, retention,
        churn risk and model evaluation, recommendation metrics, association rules, retention list."""
        from features.workspace import Workspace
        from pipelines.report import log_report, write

        ws = Workspace(workspace)
        if not ws.has_table("events"):
            console.print(f"[red]error:[/red] no events in workspace {ws.root}; run `crmml ingest` or `crmml generate` first")
            raise typer.Exit(2)
        started = time.perf_counter()
        written = write(ws, out, as_of=as_of)
        path = written.path
        seconds = time.perf_counter() - started
        console.print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB, {written.images} plots, {seconds:.1f} s)")
        console.print(f"plots:  {written.files_dir}/")
        for title in written.missing:
            console.print(f"[yellow]not available:[/yellow] {title}")
        if mlflow:
            try:
                run_id = log_report(ws, path)
                console.print(f"MLflow: logged to run {run_id} (artifacts report/)")
            except Exception as exc:  # noqa: BLE001 - the report itself is written; say why logging failed
                console.print(f"[yellow]MLflow logging failed:[/yellow] {type(exc).__name__}: {exc}")
