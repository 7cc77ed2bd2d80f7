"""CLI commands for this area (not yet built)."""

import typer


def register(train_app: typer.Typer, evaluate_app: typer.Typer) -> None:
    pass
