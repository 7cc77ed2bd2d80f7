"""`crmml ingest` and `crmml generate`: get customer histories into the workspace."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pipelines.commands.options import WorkspaceOption

console = Console()


class Source(str, Enum):
    online_retail = "online-retail"
    transactions = "transactions"
    interactions = "interactions"


def print_ingestion(result, seconds: float) -> None:
    """The summary after ingestion: every input row accounted for."""
    table = Table(title=f"Ingestion of {result.source} ({seconds:.1f} s)", show_footer=True)
    table.add_column("rows", footer="read")
    table.add_column("count", justify="right", footer=f"{result.n_read:,}")
    for kind, n in sorted(result.accepted_by_type.items()):
        table.add_row(f"accepted: {kind}", f"{n:,}")
    for reason, n in sorted(result.rejected_by_reason.items(), key=lambda kv: -kv[1]):
        table.add_row(f"rejected: {reason}", f"{n:,}", style="yellow")
    table.add_row("accepted + rejected", f"{result.n_accepted + result.n_rejected:,}", style="bold")
    console.print(table)
    for name, value in result.facts.items():
        console.print(f"{name.replace('_', ' ')}: {value:,}")
    console.print("tables: " + ", ".join(f"{n} {len(df):,}" for n, df in result.tables.items()))


def register(app: typer.Typer) -> None:
    @app.command()
    def ingest(
        files: Annotated[Optional[list[Path]], typer.Argument(help="Input files (CSV, CSV.gz, TSV, XLSX).")] = None,
        source: Annotated[Source, typer.Option(help="Kind of input.")] = Source.online_retail,
        config: Annotated[
            Optional[Path], typer.Option(help="Mapping file (YAML): which file is which table, column by column "
                                              "(see crmml init-config); replaces --source and FILES.")
        ] = None,
        customer_col: Annotated[Optional[str], typer.Option(help="transactions: customer column.")] = None,
        time_col: Annotated[Optional[str], typer.Option(help="Timestamp column.")] = None,
        amount_col: Annotated[Optional[str], typer.Option(help="transactions: line amount column.")] = None,
        item_col: Annotated[Optional[str], typer.Option(help="Item column.")] = None,
        quantity_col: Annotated[Optional[str], typer.Option(help="transactions: quantity column.")] = None,
        order_col: Annotated[Optional[str], typer.Option(help="transactions: order id column.")] = None,
        user_col: Annotated[Optional[str], typer.Option(help="interactions: user column.")] = None,
        weight_col: Annotated[Optional[str], typer.Option(help="interactions: weight (rating, clicks).")] = None,
        sep: Annotated[Optional[str], typer.Option(help="Separator: ',', '\\t', or 'whitespace'.")] = None,
        time_format: Annotated[Optional[str], typer.Option(help="strftime format, e.g. %Y%m%d.")] = None,
        names: Annotated[
            Optional[str], typer.Option(help="Comma-separated column names for files without a header.")
        ] = None,
        encoding: Annotated[
            Optional[str],
            typer.Option(help="Text encoding, e.g. latin-1. Default: UTF-8 (a BOM is skipped), a line that is "
                              "not UTF-8 read as Windows-1252 if it is text, else quarantined."),
        ] = None,
        max_line_length: Annotated[
            Optional[int],
            typer.Option(min=1, help="Longest line in bytes (default 1 MiB); a longer line is a rejected row."),
        ] = None,
        max_rejected: Annotated[
            Optional[float],
            typer.Option(min=0.0, max=1.0, help="Largest share of rows rejected as broken (default 0.10; "
                                                 "duplicates, guest lines and fees do not count) before the "
                                                 "ingestion fails and leaves the workspace as it was."),
        ] = None,
        allow_rejects: Annotated[
            bool, typer.Option("--allow-rejects", help="Write the tables even above --max-rejected.")
        ] = False,
        workspace: WorkspaceOption = None,
    ):
        """Read source files, validate every row, and write the canonical tables to the workspace."""
        from features import ingest as ing
        from features import mapping
        from features.contract import SchemaError
        from features.forget import forgotten_tokens
        from features.workspace import Workspace

        column_names = names.split(",") if names else None
        sep = "\t" if sep in ("\\t", "tab") else sep
        started = time.perf_counter()
        files = files or []
        ws = Workspace(workspace)
        try:
            read = {"encoding": encoding, "max_line_bytes": max_line_length or ing.MAX_LINE_BYTES,
                    "forget": forgotten_tokens(ws)}
            if config is not None:
                if files:
                    raise SchemaError(f"{config}: the mapping names its files; drop the FILES arguments")
                result = ing.read_mapping(mapping.load(config), source=config.stem, forget=read["forget"])
            elif not files:
                raise SchemaError("no input: give FILES (with --source) or --config MAPPING")
            elif source is Source.online_retail:
                result = ing.read_online_retail(files, **read)
            elif source is Source.transactions:
                _need(customer_col=customer_col, time_col=time_col)
                _single(files)
                result = ing.read_transactions(
                    files[0], customer_col, time_col, amount_col, item_col, quantity_col, order_col,
                    sep=sep, time_format=time_format, names=column_names, **read,
                )
            else:
                _need(user_col=user_col, item_col=item_col)
                _single(files)
                result = ing.read_interactions(
                    files[0], user_col, item_col, weight_col, time_col,
                    sep=sep, time_format=time_format, names=column_names, **read,
                )
        except SchemaError as exc:
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        print_ingestion(result, time.perf_counter() - started)
        try:
            limit = ing.MAX_REJECTED_SHARE if max_rejected is None else max_rejected
            ing.save(ws, result, max_rejected=limit, allow_rejects=allow_rejects)
        except ing.RejectedShareError as exc:
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            console.print(f"rejected rows: {ing.rejected_path(ws, result.source)}", soft_wrap=True)
            raise typer.Exit(1) from None
        console.print(f"workspace: {ws.root}")

    @app.command("init-config")
    def init_config(
        files: Annotated[list[Path], typer.Argument(help="The shop's export files (CSV, TSV, XLSX, gz, zip).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Mapping file to write.")] = Path("shop.yaml"),
        force: Annotated[bool, typer.Option("--force", help="Overwrite an existing mapping file.")] = False,
    ):
        """Write a commented starting mapping from the files' headers and first rows (roles are guesses)."""
        from features import mapping_draft
        from features.contract import SchemaError

        if out.exists() and not force:
            console.print(f"[red]error:[/red] {out}: exists (--force to overwrite)")
            raise typer.Exit(2)
        try:
            text = mapping_draft.draft(files, out)
        except SchemaError as exc:
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        out.write_text(text)
        console.print(f"wrote {out}: check the guessed roles, then crmml ingest --config {out}")

    @app.command()
    def forget(
        ids: Annotated[list[str], typer.Argument(help="Customer ids as in the shop's files.")],
        workspace: WorkspaceOption = None,
    ):
        """Erase customers from the workspace (tables, quarantine, features, outputs) and from future ingestions."""
        from features import forget as fg
        from features.contract import SchemaError
        from features.workspace import Workspace

        try:
            record = fg.forget(Workspace(workspace), ids)
        except SchemaError as exc:
            console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        total = sum(record["rows_removed"].values())
        console.print(f"forgot {record['customers']} customer(s): {total:,} rows removed from "
                      f"{len(record['rows_removed'])} file(s); future ingestions drop them")
        for name, n in record["rows_removed"].items():
            console.print(f"  {name}: {n:,}")
        console.print("models trained before still hold what they learned: retrain (crmml run) to remove it")

    @app.command()
    def generate(
        customers: Annotated[int, typer.Option(min=10, help="Number of customers.")] = 5000,
        seed: Annotated[int, typer.Option(help="Random seed (same seed, same data).")] = 0,
        experiments: Annotated[int, typer.Option(min=0, help="Randomised campaigns with planted effects "
                                                             "(control groups, ground truth of the effects).")] = 0,
        workspace: WorkspaceOption = None,
    ):
        """Generate the embedded synthetic shop (with its ground truth) into the workspace."""
        from features import ingest as ing
        from features import synthetic
        from features.workspace import Workspace

        ws = Workspace(workspace)
        started = time.perf_counter()
        tables = synthetic.generate(n_customers=customers, seed=seed, experiments=experiments)
        for name in ing.TABLES:  # replace whatever source was there before
            if name not in tables:
                ws.remove_table(name)
        record = synthetic.write(ws, tables, seed=seed, n_customers=customers)
        summary = Table(title=f"Synthetic shop, seed {seed} ({time.perf_counter() - started:.1f} s)")
        summary.add_column("table")
        summary.add_column("rows", justify="right")
        for name, n in record.get("tables", {}).items():
            summary.add_row(name, f"{n:,}")
        console.print(summary)
        console.print(f"workspace: {ws.root}")


def _need(**options) -> None:
    missing = [name for name, value in options.items() if value is None]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        console.print(f"[red]error:[/red] this source needs {flags}")
        raise typer.Exit(2)


def _single(files: list[Path]) -> None:
    if len(files) != 1:
        console.print(f"[red]error:[/red] this source reads one file, got {len(files)}")
        raise typer.Exit(2)
