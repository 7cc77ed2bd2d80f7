"""CLI commands for this area (not yet built)."""

import typer


def register(app: typer.Typer) -> None:
    pass
