"""`crmml models ...`: list, compare, promote and roll back registered models (see training/registry.py).

    crmml models list                         versions, aliases, key metric, gate decision
    crmml models compare NAME                 champion vs challenger, and what the gate would say
    crmml models promote NAME [--version V] [--force] [--tolerance T] [--recorded]
    crmml models rollback NAME                champion back to the previous champion

`promote` evaluates champion and challenger on the newest window with the evaluator of the model
(``training.promotion.gate_evaluator``, passed to ``training.registry.promote``) when there is one,
else it compares the metrics recorded at training (``--recorded`` forces that). A refused promotion
is a normal outcome (exit code 0); errors (unknown model or version) exit with code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

WorkspaceOpt = typer.Option(
    None, "--workspace", envvar="CRMML_WORKSPACE", help="Workspace folder (default <repo>/workspace)."
)


def _fmt(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _fail(console: Console, message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


def _workspace(path: Optional[Path]):
    from features.workspace import Workspace

    return Workspace(path)


def register(app: typer.Typer) -> None:
    def guarded(console: Console, fn, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        from training.registry import RegistryError

        try:
            return fn(*args, **kwargs)
        except RegistryError as exc:
            _fail(console, str(exc))
        except MlflowException as exc:
            _fail(console, f"MLflow: {exc.message if hasattr(exc, 'message') else exc}")

    @app.command("list")
    def list_(
        name: Optional[str] = typer.Argument(None, help="Only this registered model."),
        workspace: Optional[Path] = WorkspaceOpt,
    ) -> None:
        """Registered models: versions, aliases, key metric and gate decision."""
        from training import registry

        console = Console()
        ws = _workspace(workspace)
        rows = guarded(console, registry.list_models, ws, name)
        if not rows:
            console.print(f"No registered models in {registry.tracking_uri(ws)}; train one first.")
            return
        table = Table(title=f"Registered models ({registry.tracking_uri(ws)})")
        for col in ("Model", "Version", "Aliases", "Key metric", "Value", "Gate", "Created", "Run"):
            table.add_column(col, justify="right" if col in ("Version", "Value") else "left")
        for r in rows:
            aliases = ", ".join(r["aliases"])
            style = "bold green" if "champion" in r["aliases"] else ("yellow" if "challenger" in r["aliases"] else None)
            gate = r["decision"] if r["decision"] else "-"
            if r["promotion"] and r["promotion"] not in ("initial", "gate") and r["promotion"] not in gate:
                gate += f", restored by {r['promotion']}" if r["promotion"] == "rollback" else f" ({r['promotion']})"
            if r["rolled_back"]:
                gate += ", rolled back"
            table.add_row(
                r["name"], r["version"], aliases or "-", r["metric"], _fmt(r["value"]), gate, r["created"],
                (r["run_id"] or "-")[:12], style=style,
            )
        console.print(table)

    @app.command("compare")
    def compare(
        name: str = typer.Argument(..., help="Registered model, e.g. crmml-churn."),
        evaluate: bool = typer.Option(False, "--evaluate", help="Evaluate both now on the newest window."),
        tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Primary-metric tolerance."),
        workspace: Optional[Path] = WorkspaceOpt,
    ) -> None:
        """Champion vs challenger metrics side by side (nothing is changed)."""
        from training import registry

        console = Console()
        ws = _workspace(workspace)
        fn = None
        if evaluate:
            from training.promotion import gate_evaluator

            guarded(console, registry.list_models, ws, name)
            fn, note = gate_evaluator(ws, name)
            console.print(f"[dim]{note}[/]")
        result = guarded(console, registry.compare, ws, name, fn, tolerance)
        champ, chall = result["champion"], result["challenger"]
        table = Table(title=f"{name}: champion vs challenger ({result['source']} figures)")
        table.add_column("Metric")
        table.add_column("Role")
        table.add_column(f"Champion v{champ}" if champ else "Champion (none)", justify="right")
        table.add_column(f"Challenger v{chall}" if chall else "Challenger (none)", justify="right")
        table.add_column("Δ", justify="right")
        for row in result["rows"]:
            table.add_row(
                row["metric"], row["role"], _fmt(row["champion"]), _fmt(row["challenger"]), _fmt(row["delta"], True)
            )
        console.print(table)
        gate = result["gate"]
        if gate is None:
            console.print("No challenger to compare." if champ else "No champion yet.")
            return
        verdict = "[green]would promote[/]" if gate["passed"] else "[red]would refuse[/]"
        console.print(f"Gate: {verdict} challenger v{chall}")
        for reason in gate["reasons"]:
            console.print(f"  - {reason}")

    @app.command("promote")
    def promote(
        name: str = typer.Argument(..., help="Registered model, e.g. crmml-churn."),
        version: Optional[str] = typer.Option(None, "--version", help="Version to promote (default: challenger)."),
        force: bool = typer.Option(False, "--force", help="Promote even if the gate refuses (recorded)."),
        tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Primary-metric tolerance."),
        recorded: bool = typer.Option(False, "--recorded", help="Compare recorded metrics, do not evaluate now."),
        workspace: Optional[Path] = WorkspaceOpt,
    ) -> None:
        """Run the promotion gate: challenger vs champion on the same window; move champion if it passes."""
        from training import registry

        console = Console()
        ws = _workspace(workspace)
        guarded(console, registry.list_models, ws, name)  # unknown model: fail before any evaluation
        fn = None
        if not recorded:
            from training.promotion import gate_evaluator

            fn, note = gate_evaluator(ws, name)
            if fn is None:
                console.print(f"[dim]{note}; comparing the metrics recorded at training[/]")
        d = guarded(console, registry.promote, ws, name, version, fn, force, tolerance)
        table = Table(title=f"{name}: gate for v{d.challenger} against champion v{d.champion or '-'} ({d.source} figures)")
        table.add_column("Metric")
        table.add_column(f"Champion v{d.champion}" if d.champion else "Champion", justify="right")
        table.add_column(f"Challenger v{d.challenger}", justify="right")
        table.add_column("Δ", justify="right")
        for key in sorted(set(d.challenger_metrics) | set(d.champion_metrics), key=lambda k: (k != d.primary, k)):
            old, new = d.champion_metrics.get(key), d.challenger_metrics.get(key)
            delta = None if old is None or new is None else new - old
            table.add_row(key, _fmt(old), _fmt(new), _fmt(delta, True))
        console.print(table)
        for reason in d.reasons:
            console.print(f"  - {reason}")
        if d.window:
            console.print(f"  window: {d.window}")
        if d.grade:
            console.print(f"  grade: {d.grade}")
        if d.decision == "promoted":
            console.print(f"[bold green]promoted[/]: {name}@champion -> v{d.challenger}")
        elif d.decision == "forced":
            console.print(f"[bold yellow]forced[/]: gate refused, {name}@champion -> v{d.challenger} (--force, recorded)")
        else:
            console.print(f"[bold red]refused[/]: {name}@champion stays v{d.champion}; v{d.challenger} not promoted")

    @app.command("rollback")
    def rollback(
        name: str = typer.Argument(..., help="Registered model, e.g. crmml-churn."),
        workspace: Optional[Path] = WorkspaceOpt,
    ) -> None:
        """Move champion back to the previous champion."""
        from training import registry

        console = Console()
        ws = _workspace(workspace)
        result = guarded(console, registry.rollback, ws, name)
        console.print(f"[bold yellow]rolled back[/]: {name}@champion v{result['from']} -> v{result['to']}")
