"""Printing a rolling-origin evaluation (``training.rolling``): one table per metric, the scorers as rows,
the cutoffs as columns plus mean ± sd; then the grade. Used by ``crmml evaluate churn|recommender
--cutoffs N``."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

GRADE_STYLE = {"A": "bold green", "B": "bold yellow", "C": "bold red"}


def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def metric_table(result, view: str, metric: str, title: str, higher_is_better: bool = True, digits: int = 3) -> Table:
    """Scorers x cutoffs for one metric (the best of each cutoff in bold), with mean ± sd."""
    from training.rolling import series

    lines = series(result, view, metric)
    table = Table(title=title)
    table.add_column("scorer")
    for c in result.cutoffs:
        table.add_column(c, justify="right")
    table.add_column("mean ± sd", justify="right")
    best = []
    for j in range(len(result.cutoffs)):
        vals = [ys[j] for ys in lines.values() if ys[j] is not None]
        best.append((max if higher_is_better else min)(vals) if vals else None)
    for name, ys in lines.items():
        cells = [f"[bold]{_fmt(v, digits)}[/]" if v is not None and v == best[j] else _fmt(v, digits)
                 for j, v in enumerate(ys)]
        s = result.summary.get(view, {}).get(name, {}).get(metric, {})
        mean, sd = s.get("mean"), s.get("sd")
        cells.append(_fmt(mean, digits) + ("" if sd is None else f" ± {sd:.{digits}f}"))
        table.add_row(name, *cells, style="cyan" if name == "model" else None)
    return table


def print_rolling(console: Console, result, tables: list[tuple[str, str, str, bool, int]]) -> None:
    """The tables ``(view, metric, title, higher is better, digits)``, skipped cutoffs, then the grade."""
    wide = console if console.width >= 120 else Console(width=120)
    for view, metric, title, higher, digits in tables:
        wide.print(metric_table(result, view, metric, title, higher, digits))
    for s in result.skipped:
        console.print(f"[yellow]skipped {s['cutoff']}:[/] {s['reason']}")
    g = result.grade
    console.print(f"grade [{GRADE_STYLE.get(g.letter, 'bold')}]{g.letter}[/]: {g.reason.split(': ', 1)[-1]}")
    console.print(f"[dim]rule: {g.rule}[/]")


def evaluate_rolling(console: Console, say, ws, model_name: str, n: int, every: int | None,
                     tables: list[tuple[str, str, str, bool, int]], json_path: Path | None, mlflow: bool,
                     **options) -> None:
    """``crmml evaluate <model> --cutoffs N``: ``training.rolling.run_rolling``, its tables and where it went."""
    from features.workspace import atomic_write_json
    from training.rolling import run_rolling

    started = time.perf_counter()
    try:
        result, written, run_id = run_rolling(ws, model_name, n, every, mlflow=mlflow, progress=say, **options)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1)
    print_rolling(console, result, tables)
    if json_path is not None:
        atomic_write_json(json_path, result.to_json())
        console.print(f"metrics: {json_path}")
    console.print(f"report: {written['json']}")
    if run_id is not None:
        console.print(f"MLflow run {run_id} (rolling evaluation, not registered)")
    console.print(f"[dim]total {time.perf_counter() - started:.0f} s[/]")
