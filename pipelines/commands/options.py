"""Options shared by every command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

WorkspaceOption = Annotated[
    Optional[Path], typer.Option("--workspace", envvar="CRMML_WORKSPACE", help="Workspace folder.")
]
