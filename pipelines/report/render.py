"""The page: built sections rendered with the Jinja template ``pipelines/templates/report.html.j2``."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipelines.report.page import Section
from pipelines.report.text import date, money, num

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
TEMPLATE_NAME = "report.html.j2"


def cards(summary: dict) -> list[tuple[str, str, str]]:
    """The headline figures above the sections: (name, value, detail)."""
    first, last = summary["first"], summary["last"]
    months = (last - first).days / 30.44 if pd.notna(first) and pd.notna(last) else math.nan
    return [
        ("customers", num(summary["customers"]), "with a purchase"),
        ("orders", num(summary["orders"]), f"average order {num(summary['avg_order_value'], 0)}"),
        ("revenue", money(summary["revenue"]), f"net of returns {money(summary['net_revenue'])}"),
        ("period", f"{months:.0f} months", f"{date(first)} – {date(last)}"),
    ]


def render(sections: list[Section], *, summary: dict, as_of: pd.Timestamp, workspace_root: Path,
           sources: list[str], files_dir: str) -> str:
    """The HTML page: the sections in order, every plot embedded (``files_dir``: the PNG folder's name,
    recorded on each image as ``data-file``)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE_NAME).render(
        title="Customer insight report",
        as_of=date(as_of),
        generated=datetime.now().strftime("%Y-%m-%d %H:%M"),
        workspace=workspace_root.name,
        workspace_path=str(workspace_root),
        source=", ".join(dict.fromkeys(str(s) for s in sources if s)) or "unknown",
        cards=cards(summary),
        sections=sections,
        files_dir=files_dir,
    )
