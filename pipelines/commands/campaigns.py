"""`crmml evaluate campaign [ID]` and `crmml train uplift`: did a campaign work, and whom to contact next.

    crmml evaluate campaign [ID ...] [--horizon 60] [--contact-cost C] [--json out.json]
        per campaign (default: every campaign whose horizon is over): response, retention and
        revenue per contacted customer against the control group with 95% intervals, incremental
        revenue and the return on the contact cost; a campaign without a control group is compared
        with matched non-contacted customers and flagged OBSERVATIONAL with its assumptions.

    crmml train uplift [--horizon 60] [--no-register]
        the uplift model on the randomised campaigns, evaluated on held-out campaigns beside
        "contact the highest churn risk" and "contact at random", logged to MLflow and registered as
        crmml-uplift (challenger; `crmml models promote crmml-uplift` puts it through the gate).

The work is done by ``training.campaigns`` and ``training.uplift_training``; this module parses and prints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.commands.options import WorkspaceOption

console = Console()


def say(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}")


def _ci(m: dict, fmt: str) -> str:
    return f"{format(m['effect'], fmt)} [{format(m['ci_low'], fmt)}, {format(m['ci_high'], fmt)}]"


def effects_table(effects) -> Table:
    table = Table(title="Campaign effects per contacted customer (95% intervals)")
    for col in ("campaign", "action", "design", "contacted", "comparison", "response", "retention", "revenue",
                "incremental revenue", "cost", "ROI"):
        table.add_column(col, justify="left" if col in ("campaign", "action", "design") else "right")
    for e in effects:
        m = e.metrics
        design = "[yellow]OBSERVATIONAL[/]" if e.observational else "randomised"
        table.add_row(
            e.campaign_id, e.action or "", design, f"{e.n_contacted:,}", f"{e.n_comparison:,}",
            _ci(m["response"], "+.1%"), _ci(m["retained"], "+.1%"), _ci(m["revenue"], "+,.2f"),
            f"{e.incremental_revenue:,.0f} [{e.incremental_revenue_ci[0]:,.0f}, {e.incremental_revenue_ci[1]:,.0f}]",
            f"{e.cost:,.0f}", "" if e.roi is None else f"{e.roi:+.0%}",
        )
    return table


def register(train_app: typer.Typer, evaluate_app: typer.Typer) -> None:
    @evaluate_app.command("campaign")
    def evaluate_campaign(
        campaign_ids: Annotated[Optional[list[str]], typer.Argument(help="Campaign id(s); default: every campaign.")] = None,
        horizon: Annotated[int, typer.Option(min=1, help="Retention and revenue window after the send, in days.")] = 60,
        contact_cost: Annotated[Optional[float], typer.Option(min=0.0, help="Cost per contact when the campaigns "
                                                                           "table has no cost column.")] = None,
        json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the effects as JSON here.")] = None,
        workspace: WorkspaceOption = None,
    ):
        """Effect of each campaign: against its control group, or against matched customers (observational)."""
        from features.workspace import Workspace, atomic_write_json
        from training.campaigns import effects_json, evaluate_campaigns

        ws = Workspace(workspace)
        if not ws.has_table("campaigns"):
            console.print("[bold red]error:[/] the workspace has no campaigns table")
            raise typer.Exit(1)
        say("outcomes and pre-campaign features")
        try:
            effects = evaluate_campaigns(ws, campaign_ids, horizon_days=horizon, contact_cost=contact_cost)
        except (KeyError, ValueError) as exc:
            console.print(f"[bold red]error:[/] {exc.args[0] if exc.args else exc}")
            raise typer.Exit(1)
        if not effects:
            console.print(f"no campaign whose {horizon}-day horizon is over")
            raise typer.Exit(1)
        Console(width=max(console.width, 200)).print(effects_table(effects))
        observational = [e for e in effects if e.observational]
        if observational:
            console.print(f"[yellow]{len(observational)} campaign(s) without a control group: OBSERVATIONAL "
                          "estimates (matched non-contacted customers), valid only if:[/]")
            for a in observational[0].assumptions:
                console.print(f"  - {a}")
        data = [e.to_json() for e in effects]
        atomic_write_json(effects_json(ws.reports_dir), data)  # the report's section reads this copy
        console.print(f"effects: {effects_json(ws.reports_dir)}")
        if json_path is not None:
            atomic_write_json(json_path, data)
            console.print(f"effects: {json_path}")

    @train_app.command("uplift")
    def train_uplift(
        horizon: Annotated[int, typer.Option(min=1, help="Retention window after the send, in days.")] = 60,
        register_model: Annotated[bool, typer.Option("--register/--no-register",
                                                     help="Register as challenger in the MLflow registry.")] = True,
        workspace: WorkspaceOption = None,
    ):
        """Train the uplift model on randomised campaigns, compare targeting rules on held-out ones, register it."""
        from features.workspace import Workspace
        from training.uplift_training import train_uplift_model

        try:
            result = train_uplift_model(Workspace(workspace), horizon_days=horizon, register_model=register_model,
                                        progress=say)
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(1)
        table = Table(title=f"Targeting rules on the held-out campaigns {', '.join(result['holdout']) or '(none)'}")
        for col in ("campaign", "action", "rule", "AUUC (observed)", "AUUC (truth)", "gain top 20% (truth)"):
            table.add_column(col, justify="left" if col in ("campaign", "action", "rule") else "right")
        for cid, res in result["evaluation"].items():
            for rule, r in res["rules"].items():
                table.add_row(cid, res["action"], rule, f"{r['auuc']:.4f}",
                              "" if "true_auuc" not in r else f"{r['true_auuc']:.4f}",
                              "" if "true_gain_top20" not in r else f"{r['true_gain_top20']:.1f}")
        console.print(table)
        console.print(f"actions: {', '.join(result['actions'])}; rows: {result['n_rows']:,}; "
                      f"evaluation: {result['evaluation_json']}")
        if result["run_id"]:
            console.print(f"MLflow run {result['run_id']}" + (f", registered version {result['version']}"
                                                              if result["version"] else ", not registered"))
        console.print(f"[dim]time {result['seconds']:.0f} s[/]")
