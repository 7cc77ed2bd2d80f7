"""`crmml features`: the churn feature matrix (point-in-time features with churn labels) and the customer 360,
stored in the workspace for the later stages to read.

The work is done by ``features.build.build_features``; this module parses the options and prints.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.commands.options import Engine, WorkspaceOption

console = Console()


def _catalog_table() -> Table:
    from features import catalog

    table = Table(title=f"Feature catalog ({len(catalog.FEATURES)} features)")
    for col in ("name", "meaning", "window", "higher means", "reason example"):
        table.add_column(col, overflow="fold")
    for f in catalog.FEATURES.values():
        table.add_row(f.name, f.meaning, f.window, f.higher_means, f.template)
    return table


def print_summary(summary: dict) -> None:
    """The short summary: customers, eligible, churn rate per cutoff; segment and tier sizes."""
    cut = Table(title=f"Snapshots ({summary['engine']}, horizon {summary['horizon_days']} days, "
                      f"eligibility {summary['eligibility_days']} days, {summary['seconds']['snapshots']:.1f} s)")
    for col in ("cutoff", "customers", "eligible", "labelled", "churn rate"):
        cut.add_column(col, justify="right")
    rows = summary["cutoffs"]
    shown = rows if len(rows) <= 12 else rows[:3] + [None] + rows[-8:]
    for row in shown:
        if row is None:
            cut.add_row("...", "", "", "", "")
            continue
        rate = "n/a (horizon after data)" if row["churn_rate"] is None else f"{row['churn_rate']:.1%}"
        style = "bold" if row["cutoff"] == summary.get("focus_cutoff") else None
        cut.add_row(row["cutoff"], f"{row['customers']:,}", f"{row['eligible']:,}", f"{row['labelled']:,}", rate,
                    style=style)
    console.print(cut)
    c360 = summary.get("customer360")
    if not c360:
        return
    sizes = c360["sizes"]
    total = max(c360["customers"], 1)
    seg = Table(title=f"Customer 360 as of {c360['as_of']}: {c360['customers']:,} customers")
    seg.add_column("RFM segment")
    seg.add_column("customers", justify="right")
    seg.add_column("share", justify="right")
    for name, n in sizes["rfm_segment"].items():
        seg.add_row(name, f"{n:,}", f"{n / total:.1%}")
    console.print(seg)
    tiers = Table(title="Value tiers (Pareto of 365-day net revenue)")
    for col in ("tier", "customers", "share of customers", "share of revenue"):
        tiers.add_column(col, justify="right")
    for name, n in sizes["value_tier"].items():
        tiers.add_row(name, f"{n:,}", f"{n / total:.1%}", f"{sizes['revenue_share_by_tier'].get(name, 0.0):.1%}")
    console.print(tiers)
    life = Table(title="Lifecycle stages")
    life.add_column("stage")
    life.add_column("customers", justify="right")
    for name, n in sizes["lifecycle_stage"].items():
        life.add_row(name, f"{n:,}")
    console.print(life)


def register(app: typer.Typer) -> None:
    @app.command()
    def features(
        cutoff: Annotated[Optional[str], typer.Option(help="Cutoff date (YYYY-MM-DD); features use data before it.")] = None,
        cutoffs: Annotated[
            Optional[str], typer.Option(help="More cutoffs as START:END:STEP, e.g. 2010-01-01:2011-09-01:30D (or 1M).")
        ] = None,
        horizon: Annotated[int, typer.Option(min=1, help="Churn horizon in days: no purchase in [cutoff, cutoff+horizon).")] = 90,
        eligibility_days: Annotated[int, typer.Option(min=1, help="Eligible: purchased in the days before the cutoff.")] = 365,
        engine: Annotated[Engine, typer.Option(help="duckdb (embedded) or spark (local PySpark).")] = Engine.duckdb,
        as_of: Annotated[
            Optional[str], typer.Option(help="Date of the customer 360 (default: the day after the last event).")
        ] = None,
        include_ineligible: Annotated[
            bool, typer.Option(help="Also write rows of customers not eligible at a cutoff (for scoring).")
        ] = False,
        customer360: Annotated[bool, typer.Option("--customer360/--no-customer360", help="Build the customer 360.")] = True,
        show_catalog: Annotated[bool, typer.Option("--catalog", help="Print the feature catalog and exit.")] = False,
        workspace: WorkspaceOption = None,
    ):
        """Build point-in-time customer features, churn labels and the customer 360 into the workspace."""
        if show_catalog:
            console.print(_catalog_table())
            return
        from features.build import build_features

        try:
            summary = build_features(workspace, cutoff, cutoffs, horizon, eligibility_days, engine.value, as_of,
                                     include_ineligible, customer360)
        except (FileNotFoundError, ValueError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
        print_summary(summary)
        focus = next((r for r in summary["cutoffs"] if r["cutoff"] == summary["focus_cutoff"]), None)
        if focus:
            rate = "n/a" if focus["churn_rate"] is None else f"{focus['churn_rate']:.1%}"
            console.print(f"cutoff {focus['cutoff']}: {focus['customers']:,} customers, {focus['eligible']:,} eligible, "
                          f"churn rate {rate}")
        console.print(f"stored the churn feature matrix ({summary['rows']:,} rows at the given cutoffs, and the "
                      f"cutoffs of training, backtest, gate and scoring)"
                      + (", customer360" if customer360 else "") + " in the workspace features/ folder")
