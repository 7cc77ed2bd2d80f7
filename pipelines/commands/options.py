"""Options shared by every command."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

WorkspaceOption = Annotated[
    Optional[Path], typer.Option("--workspace", envvar="CRMML_WORKSPACE", help="Workspace folder.")
]


class Engine(str, Enum):
    """Where the batch work runs: DuckDB embedded in this process, or PySpark (local, or a cluster's session)."""

    duckdb = "duckdb"
    spark = "spark"
