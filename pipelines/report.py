"""The insight report: one static HTML file with every plot embedded, for a shop's workspace.

``build_report(workspace, out_path=None, as_of=None) -> Path`` reads what the workspace holds and
writes ``<workspace>/reports/report.html`` (default) plus the plots as PNG files in
``<workspace>/reports/report_files/``. The HTML embeds the same PNGs as ``data:`` URIs, so the file
alone can be mailed or opened offline: no external CSS, JavaScript, fonts or images.

Sections, in order (a section whose input is missing says so in one line):

1. data summary (customers, orders, revenue, period);
2. revenue Pareto curve and value tiers (A: the customers who bring the first 80% of the last 365
   days' net revenue, B: the next 15%, C: the rest);
3. RFM segment map with sizes and revenue (``features.insight``'s customer 360);
4. cohort retention heatmap (first-purchase month x months since);
5. repeat-purchase and retention rates;
6. churn risk by segment (the churn scores);
7. the churn model's evaluation against its baselines;
8. recommendation metrics against baselines;
9. top association rules (support, confidence, lift);
10. the retention list's top customers by value at stake.

The always-available insight (2, 4, 5) is computed here from ``events`` with small pure functions;
what another module computes (RFM segments, value tiers, association rules, churn and recommender
evaluation) is taken from that module or from the files it wrote.

``log_report(workspace, path)`` logs the HTML and its PNG folder to MLflow (the active run, else a
run named ``report`` in the workspace's tracking store).
"""

from __future__ import annotations

import base64
import html
import importlib
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from features.dates import as_of_date
from features.numeric import finite_or_none as _finite
from features.workspace import Workspace, atomic_write
from training import names

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "report.html.j2"
REPORT_NAME = "report.html"

TIER_CUTS = (0.80, 0.95)  # A: first 80% of revenue, B: up to 95%, C: the rest
VALUE_WINDOW_DAYS = 365
TOP_RULES = 15
TOP_RETENTION = 20

# colours (colour-blind friendly where it matters)
BLUE, LIGHT_BLUE, ORANGE, GREY, DARK = "#2563eb", "#93c5fd", "#f59e0b", "#94a3b8", "#1e293b"
TIER_COLOURS = {"A": "#1d4ed8", "B": "#60a5fa", "C": "#cbd5e1"}
SEGMENT_COLOURS = {
    "champions": "#15803d",
    "loyal": "#22c55e",
    "potential_loyalists": "#86efac",
    "new": "#0ea5e9",
    "promising": "#7dd3fc",
    "need_attention": "#facc15",
    "about_to_sleep": "#fb923c",
    "at_risk": "#ef4444",
    "cannot_lose": "#b91c1c",
    "hibernating": "#a8a29e",
    "lost": "#57534e",
}
MODEL_COLOURS = [BLUE, ORANGE, "#10b981", "#a855f7", "#ef4444", GREY, "#14b8a6", "#eab308"]


# ================================================================================================
# the report's building blocks
# ================================================================================================
@dataclass
class Plot:
    name: str  # file stem, e.g. "pareto"
    caption: str
    png: bytes
    width: int = 0
    height: int = 0
    path: Path | None = None  # where the PNG file was written

    @property
    def half(self) -> bool:
        """Square or portrait plots (the churn evaluation's ROC, PR, calibration) go two per row."""
        return bool(self.width and self.height and self.width / self.height < 1.5)

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: list[bool] = field(default_factory=list)  # right-align these columns
    compact: bool = False  # a narrow key/value table

    def __post_init__(self):
        if not self.numeric:
            self.numeric = [False] * len(self.columns)


@dataclass
class Section:
    key: str
    title: str
    takeaway: str = ""
    plots: list[Plot] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: str = ""  # one line saying what input is absent (the section shows only this)
    source: str = ""  # where the numbers come from


@dataclass
class ReportContext:
    """What the sections share: the workspace, the cut date and the prepared tables."""

    workspace: Workspace
    as_of: pd.Timestamp
    events: pd.DataFrame  # canonical events before as_of, with order_key
    items: pd.DataFrame | None
    customers: pd.DataFrame | None
    cache: dict = field(default_factory=dict)

    @property
    def purchases(self) -> pd.DataFrame:
        if "purchases" not in self.cache:
            self.cache["purchases"] = self.events[self.events["event_type"] == "purchase"]
        return self.cache["purchases"]

    @property
    def has_amount(self) -> bool:
        return "amount" in self.events.columns and bool(self.purchases["amount"].notna().any())


# ================================================================================================
# pure insight functions (events in, numbers out)
# ================================================================================================
def prepare_events(events: pd.DataFrame, as_of=None) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Canonical events strictly before ``as_of`` (default: the day after the last event), with
    string ``customer_id``, float ``amount`` and an ``order_key`` (the order id, else one order per
    customer and timestamp)."""
    ev = events.copy()
    ev["timestamp"] = pd.to_datetime(ev["timestamp"])
    ev = ev[ev["timestamp"].notna() & ev["customer_id"].notna()]
    if as_of is None:
        as_of = as_of_date(ev["timestamp"]) if ev["timestamp"].notna().any() else pd.Timestamp.now().normalize()
    as_of = pd.Timestamp(as_of).normalize()  # a date, as for the customer 360 and the snapshots
    ev = ev[ev["timestamp"] < as_of]
    ev["customer_id"] = ev["customer_id"].astype(str)
    if "amount" in ev.columns:
        ev["amount"] = pd.to_numeric(ev["amount"], errors="coerce").astype(float)
    synthetic_key = ev["customer_id"] + "@" + ev["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    if "order_id" in ev.columns:
        oid = ev["order_id"].astype("string")
        ev["order_key"] = oid.where(oid.notna() & (oid != ""), synthetic_key).astype(str)
    else:
        ev["order_key"] = synthetic_key.astype(str)
    return ev.reset_index(drop=True), as_of


def data_summary(events: pd.DataFrame) -> dict:
    """Customers, orders, revenue and period of prepared events."""
    p = events[events["event_type"] == "purchase"]
    r = events[events["event_type"] == "return"]
    has_amount = "amount" in events.columns and p["amount"].notna().any()
    gross = float(p["amount"].sum()) if has_amount else math.nan
    returned = float(r["amount"].sum()) if has_amount else math.nan
    orders = int(p["order_key"].nunique())
    return {
        "customers": int(p["customer_id"].nunique()),
        "customers_any_event": int(events["customer_id"].nunique()),
        "orders": orders,
        "purchase_lines": int(len(p)),
        "items": int(p["item_id"].nunique()) if "item_id" in p.columns else 0,
        "revenue": gross,
        "returns": returned,
        "net_revenue": gross - returned if has_amount else math.nan,
        "avg_order_value": gross / orders if has_amount and orders else math.nan,
        "first": events["timestamp"].min(),
        "last": events["timestamp"].max(),
        "event_types": {str(k): int(v) for k, v in events["event_type"].value_counts().items()},
    }


def customer_revenue(events: pd.DataFrame, start=None, end=None) -> pd.Series:
    """Net revenue (purchases - returns) per customer who bought in ``[start, end)``."""
    ev = events
    if start is not None:
        ev = ev[ev["timestamp"] >= pd.Timestamp(start)]
    if end is not None:
        ev = ev[ev["timestamp"] < pd.Timestamp(end)]
    buyers = ev.loc[ev["event_type"] == "purchase", "customer_id"].unique()
    sign = np.where(ev["event_type"] == "purchase", 1.0, np.where(ev["event_type"] == "return", -1.0, 0.0))
    net = (ev["amount"].fillna(0.0) * sign).groupby(ev["customer_id"]).sum()
    return net.reindex(buyers).fillna(0.0).rename("revenue").rename_axis("customer_id")


def pareto_curve(revenue: pd.Series) -> pd.DataFrame:
    """Cumulative revenue share against customer share, customers sorted by revenue (descending);
    negative net revenue counts as 0. Starts at (0, 0)."""
    r = np.sort(np.clip(np.asarray(revenue, dtype=float), 0, None))[::-1]
    n, total = len(r), r.sum()
    if n == 0 or total <= 0:
        return pd.DataFrame({"customer_share": [0.0], "revenue_share": [0.0]})
    return pd.DataFrame(
        {"customer_share": np.r_[0.0, np.arange(1, n + 1) / n], "revenue_share": np.r_[0.0, np.cumsum(r) / total]}
    )


def share_of_revenue(curve: pd.DataFrame, customer_share: float) -> float:
    """Revenue share of the top ``customer_share`` of customers (interpolated on the curve)."""
    return float(np.interp(customer_share, curve["customer_share"], curve["revenue_share"]))


def customers_for_revenue(curve: pd.DataFrame, revenue_share: float) -> float:
    """Smallest customer share whose cumulative revenue reaches ``revenue_share``."""
    hit = curve.loc[curve["revenue_share"] >= revenue_share - 1e-12, "customer_share"]
    return float(hit.iloc[0]) if len(hit) else 1.0


def _month_number(ts: pd.Series) -> np.ndarray:
    return (ts.dt.year * 12 + ts.dt.month - 1).to_numpy()


def _month_label(number: int) -> str:
    return f"{number // 12}-{number % 12 + 1:02d}"


def cohort_retention(purchases: pd.DataFrame, before_month: int | None = None) -> tuple[pd.DataFrame, pd.Series]:
    """Share of each first-purchase-month cohort buying again k months later.

    Returns ``(shares, sizes)``: ``shares`` is indexed by cohort month ("2010-01") with columns
    k = 0, 1, ... (k = 0 is 1.0 by construction; NaN where the month has not happened);
    ``sizes`` the number of customers in each cohort. Only months ``< before_month`` (a month
    number ``year * 12 + month - 1``) count, to leave a partial last month out."""
    month = _month_number(purchases["timestamp"])
    active = pd.DataFrame({"customer_id": purchases["customer_id"].to_numpy(), "month": month}).drop_duplicates()
    if before_month is not None:
        active = active[active["month"] < before_month]
    if active.empty:
        return pd.DataFrame(), pd.Series(dtype=int)
    first = active.groupby("customer_id")["month"].min().rename("cohort")
    active = active.join(first, on="customer_id")
    active["k"] = active["month"] - active["cohort"]
    counts = active.groupby(["cohort", "k"]).size().unstack("k")
    sizes = counts[0]
    shares = counts.div(sizes, axis=0)
    last = active["month"].max()
    for cohort in shares.index:  # months that have not happened yet are NaN, not 0
        shares.loc[cohort, shares.columns[shares.columns > last - cohort]] = np.nan
        shares.loc[cohort, shares.columns[shares.columns <= last - cohort]] = shares.loc[
            cohort, shares.columns[shares.columns <= last - cohort]
        ].fillna(0.0)
    labels = [_month_label(c) for c in shares.index]
    shares.index, sizes.index = labels, labels
    shares.index.name = sizes.index.name = "cohort"
    return shares, sizes.astype(int)


def monthly_activity(purchases: pd.DataFrame, before_month: int | None = None) -> pd.DataFrame:
    """Per calendar month: buyers, new buyers (first purchase in the data), returning buyers, and
    the retention rate (share of the previous month's buyers who bought again this month)."""
    month = _month_number(purchases["timestamp"])
    active = pd.DataFrame({"customer_id": purchases["customer_id"].to_numpy(), "month": month}).drop_duplicates()
    if before_month is not None:
        active = active[active["month"] < before_month]
    if active.empty:
        return pd.DataFrame(columns=["month", "active", "new", "returning", "retained", "retention_rate"])
    first = active.groupby("customer_id")["month"].min()
    active["new"] = active["month"].to_numpy() == first.reindex(active["customer_id"]).to_numpy()
    months = np.arange(active["month"].min(), active["month"].max() + 1)
    by = active.groupby("month")
    out = pd.DataFrame({"month": months})
    out["active"] = by.size().reindex(months, fill_value=0).to_numpy()
    out["new"] = by["new"].sum().reindex(months, fill_value=0).to_numpy().astype(int)
    out["returning"] = out["active"] - out["new"]
    prev = active.assign(month=active["month"] + 1)[["customer_id", "month"]]
    retained = active.merge(prev, on=["customer_id", "month"]).groupby("month").size()
    out["retained"] = retained.reindex(months, fill_value=0).to_numpy()
    prev_active = out["active"].shift(1)
    out["retention_rate"] = np.where(prev_active > 0, out["retained"] / prev_active, np.nan)
    out.loc[0, "retention_rate"] = np.nan
    out["label"] = [_month_label(m) for m in out["month"]]
    return out


def repeat_rates(purchases: pd.DataFrame, as_of: pd.Timestamp, within_days: int = 90) -> dict:
    """Repeat-purchase figures: share of buyers with 2+ orders; share of those who bought first at
    least ``within_days`` before ``as_of`` who ordered again within ``within_days`` of the first
    order; orders per customer; median days between consecutive orders."""
    orders = purchases.groupby(["customer_id", "order_key"], sort=False)["timestamp"].min().reset_index()
    orders = orders.sort_values(["customer_id", "timestamp"], kind="stable")
    n_orders = orders.groupby("customer_id").size()
    rank = orders.groupby("customer_id").cumcount()
    first = orders[rank == 0].set_index("customer_id")["timestamp"]
    second = orders[rank == 1].set_index("customer_id")["timestamp"]
    mature = first[first <= as_of - pd.Timedelta(days=within_days)]
    gap2 = (second.reindex(mature.index) - mature).dt.total_seconds() / 86400
    again = (gap2 <= within_days).sum()
    gaps = orders.groupby("customer_id")["timestamp"].diff().dt.total_seconds().dropna() / 86400
    return {
        "buyers": int(len(n_orders)),
        "repeat_buyers": int((n_orders >= 2).sum()),
        "repeat_rate": float((n_orders >= 2).mean()) if len(n_orders) else math.nan,
        "within_days": within_days,
        "mature_buyers": int(len(mature)),
        "repeat_within": float(again / len(mature)) if len(mature) else math.nan,
        "orders_per_customer": float(n_orders.mean()) if len(n_orders) else math.nan,
        "median_days_between_orders": float(gaps.median()) if len(gaps) else math.nan,
    }


def dedupe_rule_pairs(rules: pd.DataFrame) -> pd.DataFrame:
    """Keep one direction of each item pair (the one with the higher confidence)."""
    if rules.empty:
        return rules
    a, b = rules["antecedent"].astype(str), rules["consequent"].astype(str)
    pair = np.where(a < b, a + "\x00" + b, b + "\x00" + a)
    return (
        rules.assign(_pair=pair)
        .sort_values(["confidence", "lift"], ascending=False, kind="stable")
        .drop_duplicates("_pair")
        .drop(columns="_pair")
        .sort_values(["lift", "confidence"], ascending=False, kind="stable")
    )


# ================================================================================================
# formatting helpers
# ================================================================================================
def _num(x, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:,.{digits}f}"


def _pct(x, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:.{digits}f}%"


def _money(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:,.2f}M"
    if ax >= 1e4:
        return f"{x / 1e3:,.0f}k"
    return f"{x:,.0f}"


def _date(ts) -> str:
    return "–" if ts is None or pd.isna(ts) else pd.Timestamp(ts).strftime("%Y-%m-%d")


def _label(name) -> str:
    return str(name).replace("_", " ")


# ================================================================================================
# plotting (matplotlib's object API on the Agg canvas: no pyplot, no global state)
# ================================================================================================
RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#64748b",
    "axes.labelcolor": DARK,
    "xtick.color": "#334155",
    "ytick.color": "#334155",
    "axes.grid": True,
    "grid.color": "#e2e8f0",
    "grid.linewidth": 0.8,
    "legend.frameon": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
DPI = 110


def _figure(width: float = 10.0, height: float = 4.2, ncols: int = 1, nrows: int = 1, **kw):
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def _png(fig, name: str, caption: str) -> Plot:
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="png", dpi=DPI)
    w, h = (int(round(v)) for v in fig.get_size_inches() * DPI)
    return Plot(name=name, caption=caption, png=buf.getvalue(), width=w, height=h)


def _styled(fn: Callable) -> Callable:
    """Run a plotting function under the report's rc settings (tick/label styles apply at draw)."""

    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_styled
def plot_pareto(curve_window: pd.DataFrame, curve_all: pd.DataFrame | None, tiers: pd.DataFrame) -> Plot:
    fig, (ax, bx) = _figure(11, 4.4, ncols=2, width_ratios=[1.35, 1])
    x, y = curve_window["customer_share"].to_numpy(), curve_window["revenue_share"].to_numpy()
    a_cut = tiers.loc["A", "customer_share_cum"] if "A" in tiers.index else None
    b_cut = tiers.loc["B", "customer_share_cum"] if "B" in tiers.index else None
    edges = [0.0] + [c for c in (a_cut, b_cut) if c is not None] + [1.0]
    for (lo, hi), tier in zip(zip(edges[:-1], edges[1:]), "ABC"):
        ax.axvspan(lo, hi, color=TIER_COLOURS[tier], alpha=0.18, lw=0)
        text = f"tier {tier}" + (f"\n{hi - lo:.0%} of customers" if hi - lo >= 0.16 else "")
        ax.text((lo + hi) / 2, 0.025, text, ha="center", va="bottom", fontsize=9, fontweight="bold",
                color=TIER_COLOURS[tier] if tier != "C" else "#64748b", linespacing=1.3)
    ax.plot([0, 1], [0, 1], ls=":", color=GREY, lw=1, label="equal revenue per customer")
    if curve_all is not None and len(curve_all) > 1:
        ax.plot(curve_all["customer_share"], curve_all["revenue_share"], color=ORANGE, lw=1.6, ls="--",
                label="all history")
    ax.plot(x, y, color=BLUE, lw=2.2, label=f"last {VALUE_WINDOW_DAYS} days (tiers)")
    for cut, level in ((a_cut, TIER_CUTS[0]), (b_cut, TIER_CUTS[1])):
        if cut is not None:
            ax.plot([cut, cut], [0, level], color=DARK, lw=0.8, ls="--")
            ax.plot([0, cut], [level, level], color=DARK, lw=0.8, ls="--")
            ax.plot([cut], [level], "o", color=DARK, ms=4)
            ax.text(0.01, level + 0.01, f"{level:.0%} of revenue", fontsize=8, color=DARK, va="bottom")
    top20 = share_of_revenue(curve_window, 0.2)
    ax.plot([0.2], [top20], "o", color=BLUE, ms=5)
    ax.annotate(f"top 20% of customers:\n{top20:.0%} of revenue", (0.2, top20), xytext=(0.21, top20 - 0.3),
                fontsize=9, color=BLUE, arrowprops={"arrowstyle": "->", "color": BLUE, "lw": 0.8})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("share of customers (highest revenue first)")
    ax.set_ylabel("cumulative share of net revenue")
    ax.set_title("Revenue Pareto curve")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.17), fontsize=8.5, frameon=True, facecolor="white",
              edgecolor="none", framealpha=0.9)

    names = list(tiers.index)
    pos = np.arange(len(names))
    cs, rs = tiers["customer_share"].to_numpy(), tiers["revenue_share"].to_numpy()
    bx.bar(pos - 0.2, cs, 0.38, color=GREY, label="share of customers")
    bx.bar(pos + 0.2, rs, 0.38, color=[TIER_COLOURS.get(t, BLUE) for t in names], label="share of revenue")
    for i in range(len(names)):
        bx.text(pos[i] - 0.2, cs[i] + 0.01, f"{cs[i]:.0%}", ha="center", va="bottom", fontsize=9)
        bx.text(pos[i] + 0.2, rs[i] + 0.01, f"{rs[i]:.0%}", ha="center", va="bottom", fontsize=9)
    bx.set_xticks(pos, [f"tier {t}" for t in names])
    bx.yaxis.set_major_formatter(_percent_formatter())
    bx.set_ylim(0, max(1.0, float(np.nanmax(np.r_[cs, rs])) + 0.1))
    bx.grid(axis="x", visible=False)
    bx.set_title("Value tiers: customers vs revenue")
    bx.legend(loc="upper right", fontsize=8.5)
    return _png(fig, "pareto", "Left: cumulative net revenue by customer share; shaded bands are the value tiers. "
                "Right: each tier's share of customers and of revenue.")


def _percent_formatter(digits: int = 0):
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=digits)


def squarify(values: Iterable[float], x: float, y: float, w: float, h: float) -> list[tuple[float, float, float, float]]:
    """Squarified treemap layout (Bruls, Huizing, van Wijk): rectangles ``(x, y, w, h)`` whose areas
    are proportional to ``values`` (sorted descending by the caller), filling the box."""
    vals = [float(v) for v in values]
    total = sum(vals)
    if total <= 0:
        return [(x, y, 0.0, 0.0) for _ in vals]
    vals = [v * w * h / total for v in vals]
    rects: list[tuple[float, float, float, float]] = []

    def worst(row: list[float], side: float) -> float:
        s = sum(row)
        return max(max(side * side * r / (s * s), s * s / (side * side * r)) for r in row if r > 0) if s > 0 else math.inf

    i = 0
    while i < len(vals):
        side = min(w, h)
        row = [vals[i]]
        j = i + 1
        while j < len(vals) and vals[j] > 0 and worst(row + [vals[j]], side) <= worst(row, side):
            row.append(vals[j])
            j += 1
        s = sum(row)
        if w >= h:  # a column on the left
            cw = s / h if h > 0 else 0.0
            yy = y
            for r in row:
                rh = r / cw if cw > 0 else 0.0
                rects.append((x, yy, cw, rh))
                yy += rh
            x, w = x + cw, w - cw
        else:  # a row at the bottom
            rh = s / w if w > 0 else 0.0
            xx = x
            for r in row:
                rw = r / rh if rh > 0 else 0.0
                rects.append((xx, y, rw, rh))
                xx += rw
            y, h = y + rh, h - rh
        i = j
    return rects


def _segment_colour(name: str, i: int) -> str:
    return SEGMENT_COLOURS.get(str(name), MODEL_COLOURS[i % len(MODEL_COLOURS)])


def _text_colour(hex_colour: str) -> str:
    r, g, b = (int(hex_colour.lstrip("#")[k:k + 2], 16) for k in (0, 2, 4))
    return DARK if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "white"


@_styled
def plot_segments(seg: pd.DataFrame) -> Plot:
    """Treemap of RFM segments sized by customers (labelled with revenue share) + paired bars."""
    by_size = seg.sort_values("customers", ascending=False)
    fig, (ax, bx) = _figure(11, 5.0, ncols=2, width_ratios=[1.25, 1])
    rects = squarify(by_size["customers"], 0, 0, 100, 100)
    for i, ((name, row), (rx, ry, rw, rh)) in enumerate(zip(by_size.iterrows(), rects)):
        colour = _segment_colour(name, i)
        ax.add_patch(_rectangle(rx, ry, rw, rh, colour))
        lines = [_label(name), f"{row['customers']:,.0f} ({row['customer_share']:.0%})"]
        if "revenue_share" in row and pd.notna(row["revenue_share"]):
            lines.append(f"{row['revenue_share']:.0%} of revenue")
        fitted = _fit_label(lines, rw, rh)
        if fitted:
            text, size = fitted
            ax.text(rx + rw / 2, ry + rh / 2, text, ha="center", va="center", fontsize=size,
                    color=_text_colour(colour), linespacing=1.2)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_axis_off()
    ax.set_title("RFM segment map (area = customers)")

    from matplotlib.patches import Patch

    order = seg.iloc[::-1]  # the caller's order (RFM grid order), first at the top
    pos = np.arange(len(order))
    bx.barh(pos + 0.2, order["customer_share"], 0.4, color=GREY)
    handles = [Patch(color=GREY, label="share of customers")]
    for p_, v in zip(pos, order["customer_share"]):
        bx.text(v + 0.005, p_ + 0.2, f"{v:.0%}", va="center", fontsize=7.5, color="#475569")
    if "revenue_share" in order.columns and order["revenue_share"].notna().any():
        bx.barh(pos - 0.2, order["revenue_share"].fillna(0), 0.4,
                color=[_segment_colour(n, i) for i, n in enumerate(order.index)])
        handles.append(Patch(color=DARK, label="share of revenue (segment colour)"))
        for p_, v in zip(pos, order["revenue_share"].fillna(0)):
            bx.text(v + 0.005, p_ - 0.2, f"{v:.0%}", va="center", fontsize=8, fontweight="bold")
    bx.set_yticks(pos, [_label(n) for n in order.index])
    bx.xaxis.set_major_formatter(_percent_formatter())
    bx.grid(axis="y", visible=False)
    top = float(np.nanmax(np.r_[order["customer_share"].to_numpy(dtype=float),
                                order.get("revenue_share", order["customer_share"]).fillna(0).to_numpy(dtype=float)]))
    bx.set_xlim(0, top * 1.15 + 0.01)
    bx.set_title("Customers vs revenue (last 365 days)")
    bx.legend(handles=handles, loc="lower right", fontsize=8.5)
    return _png(fig, "rfm_segments", "Left: each RFM segment as an area proportional to its customers, labelled with "
                "its share of revenue. Right: share of customers (grey) against share of revenue (colour).")


def _fit_label(lines: list[str], w: float, h: float, box_px: tuple[float, float] = (5.6, 4.7)):
    """The largest font (<= 9.5 pt, >= 6 pt) at which ``lines`` fit a ``w`` x ``h`` treemap cell
    (axis units of ``box_px`` pixels each), dropping trailing lines when needed; None if nothing fits."""
    px_per_pt = DPI / 72
    for n in range(len(lines), 0, -1):
        part = lines[:n]
        longest = max(len(x) for x in part)
        size_w = (w * box_px[0] * 0.9) / (longest * 0.58 * px_per_pt)
        size_h = (h * box_px[1] * 0.85) / (n * 1.25 * px_per_pt)
        size = min(9.5, size_w, size_h)
        if size >= 6:
            return "\n".join(part), round(size, 1)
    return None


def _rectangle(x, y, w, h, colour):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=colour, edgecolor="white", linewidth=2)


@_styled
def plot_cohorts(shares: pd.DataFrame, sizes: pd.Series) -> Plot:
    n_rows, n_cols = shares.shape
    height = max(3.5, 0.27 * n_rows + 1.6)
    fig, ax = _figure(11, height)
    data = shares.to_numpy(dtype=float).copy()
    shown = data.copy()
    shown[:, 0] = np.nan  # month 0 is 100% by construction: leave it out of the colour scale
    finite = shown[np.isfinite(shown)]
    vmax = float(np.nanpercentile(finite, 98)) if finite.size else 1.0
    cmap = _cmap("Blues")
    cmap = cmap.with_extremes(bad="#f8fafc")
    im = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, vmin=0, vmax=max(vmax, 0.05),
                   interpolation="nearest")
    if n_rows <= 30 and n_cols <= 30:
        for i in range(n_rows):
            for j in range(1, n_cols):
                v = data[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.6 * vmax else DARK)
    for i in range(n_rows):
        ax.text(0, i, f"{sizes.iloc[i]:,}", ha="center", va="center", fontsize=7, color=DARK)
    step = 1 if n_cols <= 30 else max(1, n_cols // 24)
    ax.set_xticks(np.arange(0, n_cols, step), [str(c) for c in shares.columns[::step]])
    rstep = 1 if n_rows <= 36 else max(1, n_rows // 30)
    ax.set_yticks(np.arange(0, n_rows, rstep), list(shares.index[::rstep]))
    ax.set_xlabel("months since first purchase (column 0: cohort size)")
    ax.set_ylabel("first-purchase month")
    ax.grid(False)
    ax.set_title("Cohort retention: % of each cohort buying in month k")
    cb = fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, format=_percent_formatter())
    cb.outline.set_visible(False)
    return _png(fig, "cohort_retention", "Share of the customers who first bought in a month (rows) who bought "
                "again k months later (columns); column 0 holds the cohort's size.")


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].copy()


@_styled
def plot_activity(activity: pd.DataFrame, rates: dict) -> Plot:
    fig, (ax, bx) = _figure(11, 4.0, ncols=2)
    pos = np.arange(len(activity))
    ax.bar(pos, activity["returning"], color=BLUE, label="returning buyers")
    ax.bar(pos, activity["new"], bottom=activity["returning"], color=LIGHT_BLUE, label="new buyers")
    step = max(1, math.ceil(len(pos) / 12))
    ax.set_xticks(pos[::step], list(activity["label"].iloc[::step]), rotation=45, ha="right")
    ax.grid(axis="x", visible=False)
    ax.set_ylabel("customers with a purchase")
    ax.set_title("Buyers per month: new vs returning")
    ax.legend(loc="upper left", fontsize=8.5)

    rr = activity["retention_rate"].to_numpy(dtype=float)
    bx.plot(pos, rr, color=BLUE, lw=2, marker="o", ms=3, label="bought again the next month")
    mean = float(np.nanmean(rr)) if np.isfinite(rr).any() else math.nan
    if math.isfinite(mean):
        bx.axhline(mean, color=ORANGE, ls="--", lw=1.2, label=f"average {mean:.0%}")
    bx.set_xticks(pos[::step], list(activity["label"].iloc[::step]), rotation=45, ha="right")
    bx.yaxis.set_major_formatter(_percent_formatter())
    top = np.nanmax(rr) if np.isfinite(rr).any() else 1.0
    bx.set_ylim(0, min(1.0, top * 1.25 + 0.02))
    bx.set_title("Monthly retention rate")
    bx.legend(loc="lower right", fontsize=8.5)
    return _png(fig, "retention_rates", "Left: customers buying each month, split into first-time and returning "
                "buyers. Right: of the customers who bought in a month, the share who bought in the next one.")


@_styled
def plot_risk_by_segment(by_segment: pd.DataFrame | None, by_tier: pd.DataFrame | None, overall: float) -> Plot:
    panels = [(t, d) for t, d in (("RFM segment", by_segment), ("value tier", by_tier)) if d is not None and len(d)]
    fig, axes = _figure(11, max(3.6, 0.32 * max(len(d) for _, d in panels) + 1.5), ncols=len(panels),
                        width_ratios=[1.5, 1][: len(panels)] if len(panels) > 1 else None)
    axes = np.atleast_1d(axes)
    for ax, (title, d) in zip(axes, panels):
        d = d.sort_index(ascending=False) if title == "value tier" else d.sort_values("mean_risk")
        pos = np.arange(len(d))
        colours = [TIER_COLOURS.get(str(n)) or _segment_colour(n, i) for i, n in enumerate(d.index)]
        ax.barh(pos, d["mean_risk"], color=colours)
        for p_, (name, row) in zip(pos, d.iterrows()):
            extra = f"  {row['mean_risk']:.0%}  (n={row['customers']:,.0f}"
            if "value_at_risk" in row and pd.notna(row["value_at_risk"]):
                extra += f", {_money(row['value_at_risk'])} at stake"
            ax.text(row["mean_risk"], p_, extra + ")", va="center", fontsize=8)
        ax.axvline(overall, color=DARK, ls="--", lw=1)
        ax.text(overall, -0.55, f" overall {overall:.0%}", fontsize=8, color=DARK, va="top")
        ax.set_ylim(-0.9 if len(d) > 1 else -0.8, len(d) - 0.5)
        prefix = "tier " if title == "value tier" else ""
        ax.set_yticks(pos, [prefix + _label(n) for n in d.index])
        ax.set_xlim(0, max(1.0, float(d["mean_risk"].max()) + 0.45))  # room for the labels
        ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.xaxis.set_major_formatter(_percent_formatter())
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("mean churn probability")
        ax.set_title(f"Churn risk by {title}")
    return _png(fig, "churn_risk_by_segment", "Mean predicted churn probability of the customers in each group "
                "(n = customers scored; value at stake = sum of probability x customer value).")


@_styled
def plot_metric_bars(tables: dict[str, pd.DataFrame], title: str, name: str, caption: str,
                     model_row: str | None = None, lower_better: Iterable[str] = ()) -> Plot:
    """Horizontal bars: one panel per metric (columns), one bar per model/baseline (rows, the model on
    top, in blue); one row of panels per view (``tables``: view name -> table)."""
    lower = set(lower_better)
    views = [(v, t) for v, t in tables.items() if len(t.columns) and len(t)]
    n_metrics = max(len(t.columns) for _, t in views)
    heights = [0.3 * len(t) + 0.9 for _, t in views]
    fig, axes = _figure(11, sum(heights) + 0.5, ncols=n_metrics, nrows=len(views), squeeze=False,
                        gridspec_kw={"height_ratios": heights})
    for r, (view, table) in enumerate(views):
        names = list(table.index)
        pos = np.arange(len(names))[::-1]  # first row on top
        for c in range(n_metrics):
            ax = axes[r][c]
            if c >= len(table.columns):
                ax.set_axis_off()
                continue
            metric = table.columns[c]
            vals = table[metric].astype(float).to_numpy()
            finite = vals[np.isfinite(vals)]
            best = None
            others = [i for i, n in enumerate(names) if n != model_row and np.isfinite(vals[i])]
            if others:
                best = (min if metric in lower else max)(others, key=lambda i: vals[i])
            colours = [BLUE if n == model_row else (ORANGE if i == best else GREY) for i, n in enumerate(names)]
            ax.barh(pos, np.nan_to_num(vals), color=colours, height=0.7)
            top = float(finite.max()) if len(finite) and finite.max() > 0 else 1.0
            for p_, v in zip(pos, vals):
                if math.isfinite(v):
                    ax.text(v + top * 0.02, p_, f"{v:.3f}" if abs(v) < 10 else f"{v:,.0f}", va="center", fontsize=7.5)
            ax.set_xlim(0, top * 1.3)
            ax.set_yticks(pos, [_label(n) for n in names] if c == 0 else [""] * len(names), fontsize=8.5)
            ax.tick_params(axis="x", labelsize=7.5)
            ax.grid(axis="y", visible=False)
            arrow = "↓ lower is better" if metric in lower else "↑"
            ax.set_title(f"{metric} {arrow}" + (f"  ({view})" if view else ""), fontsize=9.5)
    fig.suptitle(title, x=0.01, ha="left", fontsize=11, fontweight="bold")
    return _png(fig, name, caption)


@_styled
def plot_rules(rules: pd.DataFrame, top: pd.DataFrame) -> Plot:
    fig, ax = _figure(11, 4.2)
    sc = ax.scatter(rules["support"], rules["confidence"], c=np.log10(rules["lift"].clip(lower=1e-3)), s=14,
                    cmap="viridis", alpha=0.7, linewidths=0)
    ax.scatter(top["support"], top["confidence"], s=60, facecolors="none", edgecolors=ORANGE, linewidths=1.5,
               label=f"top {len(top)} by lift (table below)")
    ax.set_xscale("log")
    ax.set_xlabel("support (share of orders with both items, log scale)")
    ax.set_ylabel("confidence")
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_title(f"Association rules: {len(rules):,} item pairs")
    cb = fig.colorbar(sc, ax=ax, fraction=0.03, pad=0.01)
    cb.set_label("lift (log10)")
    cb.outline.set_visible(False)
    ax.legend(loc="lower right", fontsize=8.5)
    return _png(fig, "association_rules", "Each point is a rule A → B: how often both are bought together "
                "(support), how often B follows A (confidence), coloured by lift.")


@_styled
def plot_value_at_stake(top: pd.DataFrame, id_col: str, stake_col: str, prob_col: str | None) -> Plot:
    d = top.head(TOP_RETENTION).iloc[::-1]
    fig, ax = _figure(11, max(3.0, 0.22 * len(d) + 1.1))
    pos = np.arange(len(d))
    ax.barh(pos, d[stake_col], color="#ef4444")
    for p_, (_, row) in zip(pos, d.iterrows()):
        txt = f" {_money(row[stake_col])}"
        if prob_col:
            txt += f"  (p={row[prob_col]:.0%})"
        ax.text(row[stake_col], p_, txt, va="center", fontsize=8)
    ax.set_yticks(pos, [str(c) for c in d[id_col]], fontsize=8)
    ax.set_xlim(0, float(d[stake_col].max()) * 1.25 if len(d) else 1)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("value at stake")
    ax.set_title(f"Retention list: top {len(d)} customers by value at stake")
    return _png(fig, "retention_list", "The customers whose expected loss (churn probability x value) is largest.")


# ================================================================================================
# finding what other modules produced
# ================================================================================================
def _optional_module(module: str):
    try:
        return importlib.import_module(module)
    except Exception:  # noqa: BLE001
        return None


def _optional(module: str, *names: str):
    """The first attribute of ``module`` among ``names`` (None when the module or names are absent)."""
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a half-written module must not break the report
        return None
    for name in names:
        fn = getattr(mod, name, None)
        if fn is not None:
            return fn
    return None


def _read_any(ws: Workspace, candidates: Iterable[tuple[str, str]]) -> tuple[pd.DataFrame | None, str]:
    """The first table present among ``(name, kind)`` candidates (kind: data, features, outputs, ...)."""
    for name, kind in candidates:
        path = ws.root / kind / f"{name}.parquet"
        if path.exists():
            try:
                return pd.read_parquet(path), str(path.relative_to(ws.root))
            except Exception:  # noqa: BLE001
                continue
    return None, ""


def _json_any(ws: Workspace, candidates: Iterable[str]) -> tuple[dict | None, Path | None]:
    for rel in candidates:
        path = ws.root / rel
        if path.exists():
            try:
                return json.loads(path.read_text()), path
            except Exception:  # noqa: BLE001
                continue
    return None, None


def load_customer360(ctx: ReportContext, as_of=None) -> tuple[pd.DataFrame | None, str]:
    """The customer 360 (RFM segment, value tier, ...) at ``as_of`` (default: the report's date): the
    rows of the workspace's ``features/customer360`` with that ``as_of``, else
    ``features.insight.build_customer360`` computed now (about 10 s on the UCI data)."""
    when = ctx.as_of if as_of is None else pd.Timestamp(as_of).normalize()
    key = ("c360", str(when.date()))
    if key in ctx.cache:
        return ctx.cache[key]
    df, src = None, ""
    saved, saved_src = _read_any(ctx.workspace, [("customer360", "features")])
    if saved is not None and "as_of" in saved.columns:
        rows = saved[pd.to_datetime(saved["as_of"], errors="coerce").dt.normalize() == when]
        if len(rows):
            df, src = rows, saved_src
    if df is None:
        try:
            from features import insight

            df = insight.build_customer360(ctx.workspace, as_of=when)
            src = "features.insight.build_customer360 (computed for this report)"
        except Exception as exc:  # noqa: BLE001 - the report shows what it can
            df, src = None, f"features.insight.build_customer360 failed: {type(exc).__name__}: {exc}"
    if df is not None:
        df = df.copy()
        df["customer_id"] = df["customer_id"].astype(str)
    ctx.cache[key] = (df, src)
    return df, src


def load_churn_scores(ctx: ReportContext) -> tuple[pd.DataFrame | None, str]:
    """Per-customer churn probabilities (the latest batch scores)."""
    if "scores" in ctx.cache:
        return ctx.cache["scores"]
    # outputs/scores.parquet: pipelines.score (crmml score / crmml run), one row per eligible customer
    df, src = _read_any(ctx.workspace, [("scores", "outputs"), ("churn_scores", "outputs")])
    if df is not None:
        df = _lists(df.copy())
        df["customer_id"] = df["customer_id"].astype(str)
    ctx.cache["scores"] = (df, src)
    return df, src


def _prob_column(df: pd.DataFrame) -> str | None:
    for col in ("churn_probability", "probability", "churn_prob", "p_churn", "risk", "score"):
        if col in df.columns:
            return col
    return None


def _as_list(value):
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _lists(df: pd.DataFrame) -> pd.DataFrame:
    """Reasons as lists: parquet gives list columns back as numpy arrays, the pyfunc gives JSON text."""
    for col in ("reasons", "top_reasons"):
        if col in df.columns:
            df[col] = df[col].map(_as_list)
    return df


def load_retention_list(ctx: ReportContext) -> tuple[pd.DataFrame | None, str]:
    df, src = _read_any(ctx.workspace, [("retention_list", "outputs"), ("retention", "outputs")])
    return (_lists(df), src) if df is not None else (None, "")


# ================================================================================================
# sections
# ================================================================================================
def section_summary(ctx: ReportContext, summary: dict) -> Section:
    s = Section("summary", "Data summary")
    first, last = summary["first"], summary["last"]
    months = (last - first).days / 30.44 if pd.notna(first) and pd.notna(last) else math.nan
    s.takeaway = (
        f"{summary['customers']:,} customers placed {summary['orders']:,} orders"
        + (f" worth {_money(summary['revenue'])}" if math.isfinite(summary["revenue"]) else "")
        + f" over {months:.0f} months ({_date(first)} to {_date(last)})."
    )
    rows = [
        ["customers with a purchase", _num(summary["customers"])],
        ["customers with any event", _num(summary["customers_any_event"])],
        ["orders", _num(summary["orders"])],
        ["purchase lines", _num(summary["purchase_lines"])],
        ["distinct items bought", _num(summary["items"])],
        ["revenue (gross purchases)", _num(summary["revenue"])],
        ["returns", _num(summary["returns"])],
        ["net revenue", _num(summary["net_revenue"])],
        ["average order value", _num(summary["avg_order_value"], 2)],
        ["first event", _date(first)],
        ["last event", _date(last)],
        ["events by type", ", ".join(f"{k} {v:,}" for k, v in summary["event_types"].items())],
    ]
    s.tables.append(Table(["figure", "value"], rows, numeric=[False, True], compact=True))
    s.source = "data/events.parquet"
    return s


def section_pareto(ctx: ReportContext) -> Section:
    s = Section("pareto", "Revenue concentration and value tiers")
    if not ctx.has_amount:
        s.missing = "No purchase amounts in the events: revenue concentration cannot be computed."
        return s
    start = ctx.as_of - pd.Timedelta(days=VALUE_WINDOW_DAYS)
    c360, c360_src = load_customer360(ctx)
    if c360 is not None and {"value_tier", "revenue_365d"} <= set(c360.columns):
        # the customer 360's own revenue basis and tiers (features.insight.value_tiers)
        active = c360["active_365d"].astype(bool) if "active_365d" in c360.columns else c360["revenue_365d"] > 0
        pop = c360[active].set_index("customer_id")
        rev = pop["revenue_365d"].astype(float).rename("revenue")
        tiers = pop["value_tier"].astype(str)
        tier_source = f"value_tier of the customer 360 ({c360_src})"
    else:
        from features.insight import value_tiers

        rev = customer_revenue(ctx.events, start, ctx.as_of)
        tiers = value_tiers(rev, TIER_CUTS[0], TIER_CUTS[1]).astype(str)
        tier_source = "features.insight.value_tiers on net revenue computed from events"
    if rev.empty or rev.clip(lower=0).sum() <= 0:
        s.missing = f"No revenue in the last {VALUE_WINDOW_DAYS} days before {_date(ctx.as_of)}."
        return s
    rev_all = customer_revenue(ctx.events)
    curve, curve_all = pareto_curve(rev), pareto_curve(rev_all)

    pos_rev = rev.clip(lower=0)
    table = (
        pd.DataFrame({"tier": tiers.reindex(rev.index).to_numpy(), "revenue": pos_rev.to_numpy(), "net": rev.to_numpy()})
        .groupby("tier")
        .agg(customers=("revenue", "size"), revenue=("net", "sum"), positive=("revenue", "sum"))
        .reindex([t for t in "ABC" if t in set(tiers)])
    )
    table["customer_share"] = table["customers"] / table["customers"].sum()
    table["revenue_share"] = table["positive"] / table["positive"].sum()
    table["customer_share_cum"] = table["customer_share"].cumsum()
    table["avg_revenue"] = table["revenue"] / table["customers"]

    top20 = share_of_revenue(curve, 0.2)
    top20_all = share_of_revenue(curve_all, 0.2)
    a_share = table.loc["A", "customer_share"] if "A" in table.index else math.nan
    s.takeaway = (
        f"{_pct(0.2)} of customers bring {_pct(top20)} of the last {VALUE_WINDOW_DAYS} days' net revenue "
        f"({_pct(top20_all)} over all history); tier A is {_pct(a_share)} of customers "
        f"({table.loc['A', 'customers'] if 'A' in table.index else 0:,}) bringing "
        f"{_pct(table.loc['A', 'revenue_share'] if 'A' in table.index else math.nan)} of revenue."
    )
    s.plots.append(plot_pareto(curve, curve_all, table))
    s.tables.append(Table(
        ["tier", "customers", "share of customers", f"net revenue ({VALUE_WINDOW_DAYS} d)", "share of revenue",
         "revenue per customer"],
        [[f"{t}", _num(r.customers), _pct(r.customer_share, 1), _num(r.revenue), _pct(r.revenue_share, 1),
          _num(r.avg_revenue)] for t, r in table.iterrows()],
        numeric=[False, True, True, True, True, True],
    ))
    s.notes.append(
        f"Customers who bought in [{_date(start)}, {_date(ctx.as_of)}); net revenue = purchases - returns, "
        f"negative counts as 0. Tiers: {tier_source}."
    )
    s.source = "data/events.parquet"
    ctx.cache["tiers"] = tiers
    ctx.cache["revenue_365d"] = rev
    return s


def segment_summary(c360: pd.DataFrame, order: Iterable[str] = ()) -> pd.DataFrame:
    """Customers, revenue (``revenue_365d``), lifetime spend (``monetary``) and median recency /
    frequency per ``rfm_segment`` of a customer 360 table; rows in ``order`` first."""
    d = c360[c360["rfm_segment"].notna()].copy()
    d["rfm_segment"] = d["rfm_segment"].astype(str)
    agg: dict[str, tuple[str, str]] = {"customers": ("customer_id", "size")}
    if "revenue_365d" in d.columns:
        agg["revenue"] = ("revenue_365d", "sum")
    if "monetary" in d.columns:
        agg["lifetime"] = ("monetary", "sum")
    for col in ("recency_days", "frequency"):
        if col in d.columns:
            agg[col] = (col, "median")
    out = d.groupby("rfm_segment").agg(**agg)
    out["customer_share"] = out["customers"] / out["customers"].sum()
    for col, share in (("revenue", "revenue_share"), ("lifetime", "lifetime_share")):
        if col in out.columns:
            pos = out[col].clip(lower=0)
            out[share] = pos / pos.sum() if pos.sum() > 0 else np.nan
    known = [x for x in order if x in out.index]
    return out.reindex(known + [x for x in out.index if x not in known])


def section_rfm(ctx: ReportContext) -> Section:
    s = Section("rfm", "RFM segments")
    c360, src = load_customer360(ctx)
    if c360 is None or "rfm_segment" not in c360.columns:
        s.missing = f"No RFM segments: the customer 360 is not available ({src or 'features/customer360.parquet'})."
        return s
    try:
        from features.insight import SEGMENTS
    except Exception:  # noqa: BLE001
        SEGMENTS = tuple(SEGMENT_COLOURS)
    seg = segment_summary(c360, SEGMENTS)
    if seg.empty:
        s.missing = "The customer 360 has no customer with an RFM segment."
        return s
    has_rev = "revenue_share" in seg.columns and seg["revenue_share"].notna().any()
    lead = seg["revenue"].idxmax() if has_rev else seg["customers"].idxmax()
    text = f"{_label(lead).capitalize()} are {_pct(seg.loc[lead, 'customer_share'])} of customers"
    if has_rev:
        text += f" and bring {_pct(seg.loc[lead, 'revenue_share'])} of the last 12 months' revenue"
        risky = [x for x in ("at_risk", "cannot_lose") if x in seg.index]
        if risky and "lifetime_share" in seg.columns:
            text += (f"; {' and '.join(_label(x) for x in risky)} ({_pct(seg.loc[risky, 'customer_share'].sum())} of "
                     f"customers) brought {_pct(seg.loc[risky, 'lifetime_share'].sum())} of lifetime spend but only "
                     f"{_pct(seg.loc[risky, 'revenue_share'].sum())} of the last 12 months' revenue")
    s.takeaway = text + "."
    s.plots.append(plot_segments(seg))
    cols, num = ["segment", "customers", "% customers"], [False, True, True]
    fields = []
    if has_rev:
        fields += [("revenue", "revenue 365 d", _num), ("revenue_share", "% revenue", lambda v: _pct(v, 1))]
    if "lifetime" in seg.columns:
        fields += [("lifetime", "lifetime spend", _num), ("lifetime_share", "% lifetime", lambda v: _pct(v, 1))]
    if "recency_days" in seg.columns:
        fields.append(("recency_days", "median days since last order", _num))
    if "frequency" in seg.columns:
        fields.append(("frequency", "median orders", lambda v: _num(v, 0)))
    cols += [f[1] for f in fields]
    num += [True] * len(fields)
    rows = [[_label(name), _num(r["customers"]), _pct(r["customer_share"], 1)] + [fmt(r[c]) for c, _, fmt in fields]
            for name, r in seg.iterrows()]
    s.tables.append(Table(cols, rows, numeric=num))
    as_of = c360["as_of"].iloc[0] if "as_of" in c360.columns and len(c360) else None
    s.notes.append(f"Segments from {src}" + (f", as of {_date(as_of)}" if as_of is not None else "")
                   + ": R and F quintile scores mapped to the classic RFM grid (features.insight). "
                   "Revenue = net revenue of the last 365 days (revenue_365d); lifetime spend = gross purchases.")
    s.source = src
    return s


def section_cohorts(ctx: ReportContext) -> Section:
    s = Section("cohorts", "Cohort retention")
    p = ctx.purchases
    if p.empty:
        s.missing = "No purchases in the data: no cohorts."
        return s
    # complete months only: the month of as_of is partial (or, when as_of is the 1st, still empty)
    before = int(ctx.as_of.year * 12 + ctx.as_of.month - 1)
    shares, sizes = cohort_retention(p, before_month=before)
    if shares.empty or shares.shape[1] < 2:
        s.missing = "Less than two complete months of purchases: no cohort retention yet."
        return s
    m1 = shares[1].dropna() if 1 in shares.columns else pd.Series(dtype=float)
    m3 = shares[3].dropna() if 3 in shares.columns else pd.Series(dtype=float)
    m12 = shares[12].dropna() if 12 in shares.columns else pd.Series(dtype=float)
    w = sizes.reindex(m1.index)
    text = f"On average {_pct(np.average(m1, weights=w))} of a cohort buys again in the month after its first purchase"
    later = []
    if len(m3):
        later.append(f"{_pct(np.average(m3, weights=sizes.reindex(m3.index)))} in month 3")
    if len(m12):
        later.append(f"{_pct(np.average(m12, weights=sizes.reindex(m12.index)))} in month 12")
    if later:
        text += ", " + " and ".join(later)
    s.takeaway = text + " (weighted by cohort size)."
    s.plots.append(plot_cohorts(shares, sizes))
    first_label = shares.index[0]
    s.notes.append(
        f"Complete calendar months only (up to {_month_label(before - 1)}). The first cohort ({first_label}) also holds "
        "the customers who had bought before the data start, so it looks more loyal than a true first-purchase cohort."
    )
    s.source = "data/events.parquet"
    return s


def section_rates(ctx: ReportContext) -> Section:
    s = Section("rates", "Repeat purchase and retention rates")
    p = ctx.purchases
    if p.empty:
        s.missing = "No purchases in the data."
        return s
    as_of_month = int(ctx.as_of.year * 12 + ctx.as_of.month - 1)
    rates = repeat_rates(p, ctx.as_of)
    activity = monthly_activity(p, before_month=as_of_month)
    rr = activity["retention_rate"].dropna()
    last3 = rr.tail(3).mean() if len(rr) else math.nan
    s.takeaway = (
        f"{_pct(rates['repeat_rate'])} of customers ordered more than once; "
        f"{_pct(rates['repeat_within'])} ordered again within {rates['within_days']} days of their first order; "
        f"{_pct(rr.mean() if len(rr) else math.nan)} of a month's buyers buy again the next month."
    )
    if len(activity) >= 2:
        s.plots.append(plot_activity(activity, rates))
    rows = [
        ["buyers", _num(rates["buyers"])],
        ["repeat buyers (2+ orders)", f"{_num(rates['repeat_buyers'])} ({_pct(rates['repeat_rate'], 1)})"],
        [f"ordered again within {rates['within_days']} days of the first order",
         f"{_pct(rates['repeat_within'], 1)} of {_num(rates['mature_buyers'])} customers whose first order is "
         f"{rates['within_days']}+ days old"],
        ["orders per customer (mean)", _num(rates["orders_per_customer"], 2)],
        ["days between consecutive orders (median)", _num(rates["median_days_between_orders"], 0)],
        ["monthly retention (mean over months)", _pct(rr.mean() if len(rr) else math.nan, 1)],
        ["monthly retention (last 3 complete months)", _pct(last3, 1)],
    ]
    if len(activity):
        last = activity.iloc[-1]
        rows.append([f"buyers in {last['label']} (new / returning)",
                     f"{_num(last['active'])} ({_num(last['new'])} / {_num(last['returning'])})"])
    s.tables.append(Table(["rate", "value"], rows, numeric=[False, True], compact=True))
    s.source = "data/events.parquet"
    ctx.cache["rates"] = rates
    return s


def section_churn_risk(ctx: ReportContext) -> Section:
    s = Section("churn-risk", "Churn risk by segment")
    scores, src = load_churn_scores(ctx)
    if scores is None:
        scores, src = _scores_from_retention_list(ctx)
    prob = _prob_column(scores) if scores is not None else None
    if scores is None or prob is None:
        s.missing = "No churn scores: run `crmml score` (outputs/scores.parquet) to see the churn risk by segment."
        return s
    d = scores[["customer_id", prob] + [c for c in ("rfm_segment", "value_tier", "value_at_stake", "value")
                                        if c in scores.columns]].copy()
    scored_at = _score_date(scores)
    # segments and tiers of the customers when they were scored
    c360, _ = load_customer360(ctx, scored_at if scored_at is not None and scored_at < ctx.as_of else None)
    if c360 is not None:
        for col in ("rfm_segment", "value_tier"):
            if col not in d.columns and col in c360.columns:
                d = d.merge(c360[["customer_id", col]], on="customer_id", how="left")
    if "value_tier" not in d.columns and "tiers" in ctx.cache:
        d["value_tier"] = d["customer_id"].map(ctx.cache["tiers"])
    stake = "value_at_stake" if "value_at_stake" in d.columns else None
    if stake is None and "revenue_365d" in ctx.cache:
        d["value_at_stake"] = d[prob] * d["customer_id"].map(ctx.cache["revenue_365d"]).fillna(0).clip(lower=0)
        stake = "value_at_stake"

    def group(col):
        if col not in d.columns or d[col].isna().all():
            return None
        agg = {"customers": (prob, "size"), "mean_risk": (prob, "mean")}
        if stake:
            agg["value_at_risk"] = (stake, "sum")
        return d.dropna(subset=[col]).groupby(col).agg(**agg)

    by_seg, by_tier = group("rfm_segment"), group("value_tier")
    overall = float(d[prob].mean())
    if by_seg is None and by_tier is None:
        s.missing = "Churn scores found, but no RFM segment or value tier to group them by."
        return s
    lead = by_seg if by_seg is not None else by_tier
    worst = lead["mean_risk"].idxmax()
    parts = [f"{_label(worst)} customers have the highest churn risk ({_pct(lead.loc[worst, 'mean_risk'])} "
             f"vs {_pct(overall)} overall)"]
    if by_tier is not None and "A" in by_tier.index:
        parts.append(f"tier A customers average {_pct(by_tier.loc['A', 'mean_risk'])}")
        if stake:
            share = by_tier.loc["A", "value_at_risk"] / by_tier["value_at_risk"].sum() if by_tier["value_at_risk"].sum() else math.nan
            parts[-1] += f" and carry {_pct(share)} of the value at stake"
    s.takeaway = "; ".join(parts) + "."
    s.plots.append(plot_risk_by_segment(by_seg, by_tier, overall))
    if by_seg is not None:
        tab = by_seg.sort_values("mean_risk", ascending=False)
        cols = ["segment", "customers", "mean churn probability"] + (["value at stake"] if stake else [])
        rows = [[_label(n), _num(r["customers"]), _pct(r["mean_risk"], 1)] + ([_num(r["value_at_risk"])] if stake else [])
                for n, r in tab.iterrows()]
        s.tables.append(Table(cols, rows, numeric=[False] + [True] * (len(cols) - 1)))
    s.notes.append(f"{len(d):,} customers scored ({src}" + (f", as of {_date(scored_at)}" if scored_at is not None else "")
                   + "); segments and tiers at that date; value at stake = churn probability x the customer's "
                   "12-month value.")
    s.source = src
    return s


def _score_date(scores: pd.DataFrame) -> pd.Timestamp | None:
    for col in ("as_of", "cutoff", "scored_at"):
        if col in scores.columns and scores[col].notna().any():
            when = pd.to_datetime(scores[col], errors="coerce").dropna()
            if len(when):
                return pd.Timestamp(when.max()).normalize()
    return None


def _scores_from_retention_list(ctx: ReportContext) -> tuple[pd.DataFrame | None, str]:
    df, src = load_retention_list(ctx)
    if df is None or _prob_column(df) is None:
        return None, ""
    df = df.copy()
    df["customer_id"] = df["customer_id"].astype(str)
    return df, src


def _numeric_metrics(d: Any) -> dict[str, float]:
    if not isinstance(d, dict):
        return {}
    return {str(k): float(v) for k, v in d.items() if not isinstance(v, bool) and _finite(v) is not None}


def _evaluation_rows(obj: Any) -> dict[str, dict[str, float]]:
    """``{model_or_baseline: {metric: value}}`` from one evaluation: ``{"model": {..}, "baselines":
    {name: {..}}}``, ``{name: {..}}`` or a flat ``{metric: value}`` (the model alone)."""
    rows: dict[str, dict[str, float]] = {}
    if not isinstance(obj, dict):
        return rows
    for key, value in obj.items():
        if key == "baselines" and isinstance(value, dict):
            rows.update({str(n): _numeric_metrics(m) for n, m in value.items() if _numeric_metrics(m)})
        elif key == "baselines" and isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and (item.get("name") or item.get("baseline")):
                    m = _numeric_metrics(item.get("metrics", item))
                    if m:
                        rows[str(item.get("name") or item.get("baseline"))] = m
        elif isinstance(value, dict) and _numeric_metrics(value):
            rows["model" if key == "metrics" else str(key)] = _numeric_metrics(value)
    if not rows and _numeric_metrics(obj):
        rows["model"] = _numeric_metrics(obj)
    # keep the rows that are evaluations like the model's (not timings, model info, ...)
    model = next((r for r in MODEL_ROWS if r in rows), None)
    if model is not None and len(rows) > 1:
        keys = set(rows[model])
        rows = {n: m for n, m in rows.items()
                if n == model or (n not in NOT_MODELS and len(keys & set(m)) >= min(2, len(keys)))}
    return rows


def evaluation_views(obj: Any) -> dict[str, dict[str, dict[str, float]]]:
    """An evaluation JSON as ``{view: {model_or_baseline: {metric: value}}}``.

    Several views (the recommender's ``{"all": {name: metrics}, "new": {...}, "k": 10}``) keep their
    names; a single evaluation (``{"model": {...}, "baselines": {...}}``) is the view ``""``."""
    if not isinstance(obj, dict):
        return {}
    views: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in obj.items():
        if key in ("baselines", "models", "model", "metrics") or not isinstance(value, dict) or not value:
            continue
        if all(isinstance(v, dict) for v in value.values()):
            rows = _evaluation_rows(value)
            if rows:
                views[str(key)] = rows
    if views:
        return views
    if isinstance(obj.get("models"), dict):
        obj = {**obj["models"], **{k: v for k, v in obj.items() if k != "models"}}
    rows = _evaluation_rows(obj)
    return {"": rows} if rows else {}


def _churn_display() -> tuple:
    """``training.churn_metrics.DISPLAY``: (key, header, format, higher is better) per metric column."""
    display = getattr(_optional_module("training.churn_metrics"), "DISPLAY", None)
    return tuple(display) if display else (
        ("auc", "ROC-AUC", "{:.3f}", True), ("pr_auc", "PR-AUC", "{:.3f}", True), ("brier", "Brier", "{:.4f}", False),
        ("log_loss", "log loss", "{:.4f}", False), ("ece", "ECE", "{:.4f}", False),
        ("top_decile_lift", "lift@10%", "{:.2f}", True), ("top_decile_capture", "capture@10%", "{:.1%}", True),
    )


CHURN_PLOTTED = ["auc", "pr_auc", "brier", "top_decile_lift"]
REC_METRICS = ["ndcg@10", "recall@10", "precision@10", "map@10", "hit_rate@10", "coverage", "novelty"]
REC_PLOTTED = ["ndcg@10", "recall@10", "hit_rate@10", "coverage"]
NOT_MODELS = ("protocol", "model_info", "timings_s", "timings", "calibration_curve", "tiers", "notes", "params")
MODEL_ROWS = ("model", "champion", "challenger", "lightgbm", "recommender")


def _model_row(table: pd.DataFrame) -> str:
    return next((r for r in MODEL_ROWS if r in table.index), table.index[0])


def _versus(table: pd.DataFrame, metric: str, model: str, higher_better: bool = True) -> str:
    """'0.812 against 0.744 for the best baseline (recency)'."""
    if metric not in table.columns or model not in table.index or not _finite(table.loc[model, metric]):
        return ""
    base = table.drop(index=model)[metric].dropna()
    text = f"{table.loc[model, metric]:.3f}"
    if len(base):
        best = base.idxmax() if higher_better else base.idxmin()
        text += f" against {base.loc[best]:.3f} for the best baseline ({_label(best)})"
    return text


def _view_tables(views: dict, preferred: list[str]) -> dict[str, pd.DataFrame]:
    out = {}
    for view, rows in views.items():
        df = pd.DataFrame(rows).T
        cols = [c for c in preferred if c in df.columns] or list(df.columns)[:6]
        model = _model_row(df)
        out[view] = df.loc[[model] + [i for i in df.index if i != model], cols]
    return out


def metric_key(name: str) -> str:
    """MLflow-safe metric names back to their usual spelling: ``ndcg_at_10`` -> ``ndcg@10``."""
    return re.sub(r"_at_(\d+)", r"@\1", str(name))


def views_from_metrics(metrics: dict[str, float]) -> dict[str, dict[str, dict[str, float]]]:
    """An MLflow run's metrics as evaluation views. Keys: ``auc`` (the model), ``baseline.<name>.<metric>``
    (a baseline), ``<view>.<name>.<metric>`` (``new.popular.ndcg_at_10``) and ``<view>.<metric>`` (the
    model in another view). The unnamed view is called ``all`` when other views exist."""
    views: dict[str, dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        if _finite(value) is None:
            continue
        parts = str(key).split(".")
        if parts[0] == "baseline" and len(parts) >= 3:
            view, name = ".".join(parts[2:-1]), parts[1]
        elif len(parts) == 3:
            view, name = parts[0], parts[1]
        elif len(parts) == 2:
            view, name = parts[0], "model"
        else:
            view, name = "", "model"
        views.setdefault(view, {}).setdefault(name, {})[metric_key(parts[-1])] = float(value)
    # a view holding the model alone (e.g. training-time figures) is no comparison: keep views with baselines
    compared = {v: rows for v, rows in views.items() if len(rows) > 1} or views
    if "" in compared and len(compared) > 1 and "all" not in compared:
        compared = {("all" if v == "" else v): rows for v, rows in compared.items()}
    return compared


def mlflow_evaluation(ws: Workspace, model_name: str) -> tuple[dict, list[Plot], str] | None:
    """Evaluation views and ``plots/*.png`` of the champion's training run of ``model_name`` (else
    the newest finished run tagged with it) in the workspace's MLflow store; None without a store.
    The views come from the run's ``evaluation/*.json`` artifact when it has one, else its metrics."""
    uri = ws.mlflow_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None  # never create an MLflow store just to look into it
    import tempfile

    from mlflow import MlflowClient

    mlc = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run, label = None, ""
    try:
        mv = mlc.get_model_version_by_alias(model_name, "champion")
        run = mlc.get_run(mv.run_id)
        label = f"MLflow: {model_name} champion, version {mv.version} (run {run.info.run_id[:8]})"
    except Exception:  # noqa: BLE001 - no registered champion: fall back to the newest run
        experiments = [e.experiment_id for e in mlc.search_experiments()]
        if experiments:
            runs = mlc.search_runs(experiments, f"tags.model_name = '{model_name}' and attributes.status = 'FINISHED'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
            if runs:
                run = runs[0]
                label = f"MLflow: newest {model_name} run {run.info.run_name} ({run.info.run_id[:8]})"
    if run is None:
        return None
    run_id = run.info.run_id
    views: dict = {}
    plots: list[Plot] = []
    quiet = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for art in mlc.list_artifacts(run_id, "evaluation"):
                if art.path.endswith(".json") and not views:
                    try:
                        views = evaluation_views(json.loads(Path(mlc.download_artifacts(run_id, art.path, tmp)).read_text()))
                    except Exception:  # noqa: BLE001
                        views = {}
            for art in mlc.list_artifacts(run_id, "plots"):
                if art.path.endswith(".png"):
                    plot = _existing_png(Path(mlc.download_artifacts(run_id, art.path, tmp)))
                    if plot is not None:
                        plots.append(plot)
    except Exception:  # noqa: BLE001 - artifacts are a bonus; the metrics remain
        pass
    finally:
        if quiet is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = quiet
    if not views:
        views = views_from_metrics(run.data.metrics)
    short = model_name.removeprefix("crmml-")
    plots = _ordered_plots(plots, short, CHURN_PLOT_CAPTIONS if short == "churn" else {})
    return views, plots, label


def _ordered_plots(plots: list[Plot], prefix: str, captions: dict[str, str]) -> list[Plot]:
    """Known plots first (in ``captions`` order, with those captions), names prefixed for the folder."""
    order = list(captions)
    plots = sorted(plots, key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    for plot in plots:
        plot.caption = captions.get(plot.name, plot.caption)
        plot.name = f"{prefix}_{plot.name}"
    return plots


def section_churn_eval(ctx: ReportContext) -> Section:
    s = Section("churn-eval", "Churn model evaluation against baselines")
    obj, path = _json_any(ctx.workspace, [
        "reports/churn_evaluation.json", "reports/churn/evaluation.json", "outputs/churn_evaluation.json",
    ])
    views = evaluation_views(obj) if obj else {}
    extra: list[Plot] = []
    if views:
        src = str(path.relative_to(ctx.workspace.root))
        extra = churn_evaluation_plots(path)
    else:
        found = mlflow_evaluation(ctx.workspace, names.CHURN)
        if found:
            views, extra, src = found
    if not views:
        s.missing = ("No churn evaluation: train or evaluate the churn model (`crmml train churn`, "
                     "`crmml evaluate churn`) to compare it with its baselines.")
        return s
    display = _churn_display()
    keys = [d[0] for d in display]
    tables = _view_tables(views, keys)
    first = next(iter(tables.values()))
    model = _model_row(first)
    vs = _versus(first, "auc", model)
    s.takeaway = (f"The churn model's ROC-AUC is {vs}." if vs else f"{len(first)} models and baselines evaluated.")
    if "brier" in first.columns and len(first) > 1:
        s.takeaway += f" Brier score (lower is better): {_versus(first, 'brier', model, higher_better=False)}."
    headers = {d[0]: d[1] for d in display}
    lower = [headers.get(k, k) for k, *_, better in display if not better]
    plotted = {v: t[[c for c in CHURN_PLOTTED if c in t.columns] or list(t.columns)[:4]].rename(columns=headers)
               for v, t in tables.items()}
    s.plots.append(plot_metric_bars(plotted, "Churn model vs baselines", "churn_metrics",
                                    "The churn model (blue) and each baseline on the evaluation window; "
                                    "the best baseline of each metric in orange.", model_row=model, lower_better=lower))
    s.plots.extend(p for p in extra if p is not None)
    formats = {d[0]: d[2] for d in display}
    for view, table in tables.items():
        s.tables.append(_df_table(table, caption=view, headers=headers, formats=formats))
    if isinstance(obj, dict) and isinstance(obj.get("tiers"), list) and obj["tiers"]:
        s.tables.append(Table(
            ["risk tier", "customers", "mean churn probability", "observed churn rate", "value at stake"],
            [[_label(t.get("tier", "")), _num(_finite(t.get("customers"))), _pct(_finite(t.get("mean_probability")), 1),
              _pct(_finite(t.get("observed_churn_rate")), 1), _num(_finite(t.get("value_at_stake")))]
             for t in obj["tiers"] if isinstance(t, dict)],
            caption="risk tiers on the evaluation window: predicted against observed churn",
            numeric=[False, True, True, True, True]))
    facts = []
    if isinstance(obj, dict):
        if obj.get("cutoff"):
            facts.append(f"evaluation cutoff {obj['cutoff']}")
        if obj.get("horizon_days"):
            facts.append(f"horizon {obj['horizon_days']} days")
        if _finite(obj.get("n_customers")):
            facts.append(f"{int(obj['n_customers']):,} customers")
        if _finite(obj.get("churn_rate")):
            facts.append(f"churn rate {_pct(float(obj['churn_rate']), 1)}")
    s.source = src
    s.notes.append(f"From {src}" + (f": {', '.join(facts)}" if facts else "") + ". The model is trained only on "
                   "labels that end on or before the evaluation cutoff; baselines are scored on the same customers.")
    return s


CHURN_PLOT_CAPTIONS = {  # training.churn.write_report's plots, in the order shown
    "roc": "ROC curve of the model and the baselines on the evaluation window.",
    "precision_recall": "Precision-recall: the churn rate among the customers flagged, against the share of "
                        "churners caught.",
    "calibration": "Calibration: predicted probability against the observed churn rate.",
    "gains_lift": "Cumulative gains and lift: churners caught when calling the riskiest customers first.",
    "tiers": "Risk tiers: customers and value at stake.",
    "shap_summary": "What drives the model's scores (SHAP contributions).",
}


def churn_evaluation_plots(json_path: Path) -> list[Plot]:
    """The PNGs ``training.churn.write_report`` wrote beside the JSON (``<name>_plots/``), known ones first."""
    folder = json_path.parent / f"{json_path.stem}_plots"
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files and json_path.parent.name != "reports":
        files = sorted(json_path.parent.glob("*.png"))
    plots = [p for p in (_existing_png(f) for f in files) if p is not None]
    return _ordered_plots(plots, "churn", CHURN_PLOT_CAPTIONS)


def _existing_png(path: Path) -> Plot | None:
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 1024:
        return None
    w = int.from_bytes(data[16:20], "big")
    h = int.from_bytes(data[20:24], "big")
    return Plot(name=path.stem, caption=_label(path.stem), png=data, width=w, height=h)


def _df_table(table: pd.DataFrame, index_name: str = "model / baseline", caption: str = "",
              headers: dict | None = None, formats: dict | None = None) -> Table:
    headers, formats = headers or {}, formats or {}
    cols = [index_name] + [headers.get(c, str(c)) for c in table.columns]
    rows = [[_label(i)] + [("–" if not math.isfinite(float(v)) else formats.get(c, "{:.4f}").format(float(v)))
                           for c, v in r.items()]
            for i, r in table.iterrows()]
    return Table(cols, rows, caption=caption, numeric=[False] + [True] * len(table.columns))


REC_VIEW_CAPTIONS = {
    "all": "all items (repeat purchases count)",
    "new": "items new to the customer (already-bought items excluded)",
}


def section_rec_eval(ctx: ReportContext) -> Section:
    s = Section("rec-eval", "Recommendation metrics against baselines")
    obj, path = _json_any(ctx.workspace, [
        "reports/recommender_evaluation.json", "reports/recommender/evaluation.json",
        "outputs/recommender_evaluation.json",
    ])
    views = evaluation_views(obj) if obj else {}
    extra: list[Plot] = []
    if views:
        src = str(path.relative_to(ctx.workspace.root))
    else:
        found = mlflow_evaluation(ctx.workspace, names.RECOMMENDER)
        if found:
            views, extra, src = found
    if not views:
        s.missing = ("No recommender evaluation: train or evaluate the recommender (`crmml train recommender`, "
                     "`crmml evaluate recommender`) to compare it with its baselines.")
        return s
    tables = _view_tables(views, REC_METRICS)
    parts = []
    for view, table in tables.items():
        model = _model_row(table)
        key = next((c for c in ("ndcg@10", "recall@10") if c in table.columns), table.columns[0])
        vs = _versus(table, key, model)
        if vs:
            parts.append(f"{key}{f' ({view} items)' if view else ''} is {vs}")
    s.takeaway = ("The recommender's " + "; ".join(parts) + ".") if parts else "Recommender evaluation."
    plotted = {v: t[[c for c in REC_PLOTTED if c in t.columns] or list(t.columns)[:4]] for v, t in tables.items()}
    model = _model_row(next(iter(tables.values())))
    s.plots.append(plot_metric_bars(plotted, "Recommender vs baselines", "recommender_metrics",
                                    "Ranking metrics of the recommender (blue) and its baselines on held-out purchases; "
                                    "the best baseline of each metric in orange.",
                                    model_row=model))
    s.plots.extend(extra)
    for view, table in tables.items():
        s.tables.append(_df_table(table, caption=REC_VIEW_CAPTIONS.get(view, view)))
    facts = [f"{k.replace('_', ' ')}: {obj[k]}" for k in ("cutoff", "window_days", "k", "n_users", "n_users_new")
             if isinstance(obj, dict) and k in obj]
    s.source = src
    s.notes.append(f"From {src}" + (f" ({', '.join(facts)})" if facts else "") + ".")
    return s


def section_rules(ctx: ReportContext) -> Section:
    s = Section("rules", "Items bought together: top association rules")
    rules, src = _read_any(ctx.workspace, [("item_rules", "features"), ("association_rules", "features")])
    if rules is None:
        fn = _optional("features.interactions", "association_rules")
        if fn is None:
            s.missing = "No association rules: features.interactions.association_rules is not available."
            return s
        p = ctx.purchases
        if "item_id" not in p.columns or p["item_id"].isna().all():
            s.missing = "No item ids in the purchases: no association rules."
            return s
        n_orders = p["order_key"].nunique()
        rules = pd.DataFrame()
        for support in (0.005, 0.002, 0.001):
            min_count = max(5, int(math.ceil(support * n_orders)))
            rules = fn(ctx.events, min_support=support, min_count=min_count)
            if len(dedupe_rule_pairs(rules)) >= TOP_RULES:
                break
        src = f"features.interactions.association_rules (min support {support:g}, computed now)"
    if rules.empty:
        s.missing = "No item pair is bought together often enough for a rule."
        return s
    rules = rules.copy()
    pairs = dedupe_rule_pairs(rules)
    # top by lift among the better-supported pairs (rare pairs have huge, unreliable lifts)
    pairs = pairs[pairs["lift"] > 1]  # bought together more often than by chance
    if pairs.empty:
        s.missing = "No item pair is bought together more often than by chance (every lift <= 1)."
        return s
    floor = float(pairs["support"].quantile(0.5)) if len(pairs) > 4 * TOP_RULES else 0.0
    top = pairs[pairs["support"] >= floor].head(TOP_RULES)
    names = {}
    if ctx.items is not None and "name" in ctx.items.columns:
        names = dict(zip(ctx.items["item_id"].astype(str), ctx.items["name"].astype(str)))

    def item(i) -> str:
        n = names.get(str(i))
        return f"{n} ({i})" if n and n != "<NA>" else str(i)

    best = top.iloc[0]
    s.takeaway = (f"{best['confidence']:.0%} of the orders with {item(best['antecedent'])} also hold "
                  f"{item(best['consequent'])}: {best['lift']:.1f}x more often than chance (lift).")
    s.plots.append(plot_rules(rules, top))
    cols = ["if a basket holds", "it also holds", "support", "confidence", "lift"]
    has_count = "count" in top.columns
    if has_count:
        cols.append("orders")
    rows = []
    for _, r in top.iterrows():
        row = [item(r["antecedent"]), item(r["consequent"]), _pct(r["support"], 2), _pct(r["confidence"], 1),
               _num(r["lift"], 1)]
        if has_count:
            row.append(_num(r["count"]))
        rows.append(row)
    s.tables.append(Table(cols, rows, numeric=[False, False, True, True, True, True][: len(cols)]))
    s.notes.append(f"Rules from {src}: {len(rules):,} rules; one direction per pair (the more confident), "
                   f"top {len(top)} by lift" + (f" among pairs in at least {floor:.2%} of orders (the better-supported "
                   "half; rare pairs have large but unreliable lifts)." if floor > 0 else ".")
                   + " Support: share of orders with both items; confidence: share of the orders with the first "
                   "item that also hold the second; lift: confidence / share of orders with the second item.")
    s.source = src
    return s


def reason_text(value) -> str:
    """Reasons as one readable string: a list of sentences or of ``{"sentence": ...}`` records."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        parsed = _as_list(value)
        return value if isinstance(parsed, str) else reason_text(parsed)
    if isinstance(value, dict):
        return str(value.get("sentence") or value.get("text") or value.get("feature") or "")
    try:
        return "; ".join(t for t in (reason_text(v) for v in value) if t)
    except TypeError:
        return str(value)


RETENTION_COLUMNS = [  # (column, header, kind) shown when present, in this order
    ("rank", "#", "int"),
    ("customer_id", "customer", "text"),
    ("churn_probability", "churn risk", "pct"),
    ("risk_tier", "risk tier", "label"),
    ("clv_12m", "12-month value", "money"),
    ("value_at_stake", "value at stake", "money"),
    ("rfm_segment", "RFM segment", "label"),
    ("value_tier", "tier", "text"),
    ("suggested_action", "suggested action", "label"),
    ("why", "why", "text"),
]


def section_retention(ctx: ReportContext) -> Section:
    s = Section("retention-list", "Retention list: top customers by value at stake")
    df, src = load_retention_list(ctx)
    if df is None:
        scores, score_src = load_churn_scores(ctx)
        make = _optional("training.retention", "retention_list")
        needed = {"churn_probability", "risk_tier", "reasons", "clv_12m"}
        if scores is not None and make is not None and (needed <= set(scores.columns)):
            df, src = make(scores), f"training.retention.retention_list on {score_src}"
    if df is None:
        s.missing = ("No retention list: run `crmml score` (outputs/scores.parquet) to rank the customers at risk "
                     "by value at stake.")
        return s
    stake = next((c for c in ("value_at_stake", "expected_loss", "value_at_risk") if c in df.columns), None)
    if stake is None:
        s.missing = f"The retention list ({src}) has no value-at-stake column."
        return s
    df = df.copy()
    df["customer_id"] = df["customer_id"].astype(str)
    df = df.sort_values(stake, ascending=False, kind="stable")
    reasons = next((c for c in ("reasons", "top_reasons") if c in df.columns), None)
    if reasons and ("why" not in df.columns or not df["why"].astype(str).str.len().any()):
        df["why"] = df[reasons].map(reason_text)
    c360, _ = load_customer360(ctx)
    top = df.head(TOP_RETENTION)
    if c360 is not None:
        extra = [c for c in ("rfm_segment", "value_tier") if c in c360.columns and c not in top.columns]
        if extra:
            top = top.merge(c360[["customer_id"] + extra], on="customer_id", how="left")
    prob = _prob_column(df)
    total = float(df[stake].sum())
    top_sum = float(top[stake].sum())
    s.takeaway = (f"The top {len(top)} customers hold {_money(top_sum)} of value at stake: "
                  f"{_pct(top_sum / total if total else math.nan)} of the {_money(total)} at stake across the "
                  f"{len(df):,} customers on the list.")
    s.plots.append(plot_value_at_stake(top, "customer_id", stake, prob))
    cols = [(c, h, k) for c, h, k in RETENTION_COLUMNS if c in top.columns]
    if prob and prob != "churn_probability":
        cols.insert(2, (prob, "churn risk", "pct"))
    fmt = {
        "int": lambda v: _num(float(v)),
        "pct": lambda v: _pct(float(v), 0),
        "money": lambda v: _num(float(v)),
        "label": lambda v: _label(v),
        "text": lambda v: str(v),
    }
    rows = []
    for _, r in top.iterrows():
        rows.append(["" if _is_missing(r[c]) else fmt[k](r[c]) for c, _, k in cols])
    s.tables.append(Table([h for _, h, _ in cols], rows, numeric=[k in ("int", "pct", "money") for _, _, k in cols]))
    s.notes.append(f"From {src}. Value at stake = churn probability x the customer's expected value over the next "
                   "12 months.")
    s.source = src
    return s


def _is_missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


SECTIONS: list[Callable[[ReportContext], Section]] = [
    section_pareto, section_rfm, section_cohorts, section_rates, section_churn_risk, section_churn_eval,
    section_rec_eval, section_rules, section_retention,
]


# ================================================================================================
# the report
# ================================================================================================
def _workspace(workspace) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace(workspace)


def collect(workspace, as_of=None) -> tuple[ReportContext, dict, list[Section]]:
    """Compute every section (no file is written)."""
    ws = _workspace(workspace)
    events, as_of = prepare_events(ws.read_table("events"), as_of)
    items = ws.read_table("items") if ws.has_table("items") else None
    customers = ws.read_table("customers") if ws.has_table("customers") else None
    ctx = ReportContext(ws, as_of, events, items, customers)
    summary = data_summary(events)
    sections = [section_summary(ctx, summary)]
    for build in SECTIONS:
        try:
            section = build(ctx)
            section.takeaway = section.takeaway[:1].upper() + section.takeaway[1:]
            sections.append(section)
        except Exception as exc:  # noqa: BLE001 - one broken input must not sink the whole report
            name = build.__name__.removeprefix("section_").replace("_", "-")
            sections.append(Section(name, name.replace("-", " ").capitalize(),
                                    missing=f"This section failed: {type(exc).__name__}: {exc}"))
    return ctx, summary, sections


def render(ctx: ReportContext, summary: dict, sections: list[Section], files_dir: str | None) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    template = env.get_template(TEMPLATE_NAME)
    sources = [r.get("source") for r in ctx.workspace.ingestions() if isinstance(r, dict)]
    first, last = summary["first"], summary["last"]
    months = (last - first).days / 30.44 if pd.notna(first) and pd.notna(last) else math.nan
    cards = [
        ("customers", _num(summary["customers"]), "with a purchase"),
        ("orders", _num(summary["orders"]), f"average order {_num(summary['avg_order_value'], 0)}"),
        ("revenue", _money(summary["revenue"]), f"net of returns {_money(summary['net_revenue'])}"),
        ("period", f"{months:.0f} months", f"{_date(first)} – {_date(last)}"),
    ]
    return template.render(
        title="Customer insight report",
        as_of=_date(ctx.as_of),
        generated=datetime.now().strftime("%Y-%m-%d %H:%M"),
        workspace=ctx.workspace.root.name,
        workspace_path=str(ctx.workspace.root),
        source=", ".join(dict.fromkeys(str(s) for s in sources if s)) or "unknown",
        cards=cards,
        sections=sections,
        files_dir=files_dir,
    )


def build_report(workspace, out_path: str | Path | None = None, as_of=None) -> Path:
    """Write the HTML report (plots embedded) and its PNG folder ``<stem>_files/``; returns the HTML path."""
    ws = _workspace(workspace)
    out = Path(out_path) if out_path is not None else ws.reports_dir / REPORT_NAME
    out = out.resolve()
    ctx, summary, sections = collect(ws, as_of)
    files = out.parent / f"{out.stem}_files"
    files.mkdir(parents=True, exist_ok=True)
    written = set()
    for section in sections:
        for i, plot in enumerate(section.plots):
            name = plot.name if plot.name not in written else f"{plot.name}_{i}"
            written.add(name)
            plot.name = name
            plot.path = files / f"{name}.png"
            atomic_write(plot.path, lambda tmp, data=plot.png: tmp.write_bytes(data))
    for stale in files.glob("*.png"):
        if stale.stem not in written:
            stale.unlink(missing_ok=True)
    text = render(ctx, summary, sections, files.name)
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out


def report_files(path: str | Path) -> Path:
    """The PNG folder that belongs to a report HTML file."""
    path = Path(path)
    return path.parent / f"{path.stem}_files"


_IMG = re.compile(r'<img\b[^>]*\bsrc="data:image/png;base64,([^"]+)"')
_H2 = re.compile(r'<section class="block" id="([^"]+)">\s*<h2><span class="num">\d+\.</span>(.*?)</h2>\s*(<p class="missing">)?', re.S)


def outline(path: str | Path) -> dict:
    """What a written report holds: ``images`` (count of embedded PNGs), ``sections`` (titles),
    ``missing`` (titles of the sections whose input was absent)."""
    text = Path(path).read_text(encoding="utf-8")
    sections = [(key, html.unescape(title), bool(miss)) for key, title, miss in _H2.findall(text)]
    return {
        "images": len(_IMG.findall(text)),
        "sections": [t for _, t, _ in sections],
        "keys": [k for k, _, _ in sections],
        "missing": [t for _, t, m in sections if m],
    }


def embedded_pngs(path: str | Path) -> list[bytes]:
    """The PNG bytes of every ``<img>`` embedded in a report."""
    text = Path(path).read_text(encoding="utf-8")
    return [base64.b64decode(b) for b in _IMG.findall(text)]


def log_report(workspace, path: str | Path, artifact_path: str = "report") -> str:
    """Log the report HTML and its PNG folder to MLflow; returns the run id.

    Into the active run when there is one, else into a new run named ``report`` in the
    workspace's tracking store (experiment ``crmml``)."""
    import mlflow

    ws = _workspace(workspace)
    path = Path(path)
    files = report_files(path)

    def log() -> str:
        mlflow.log_artifact(str(path), artifact_path)
        if files.is_dir() and any(files.iterdir()):
            mlflow.log_artifacts(str(files), f"{artifact_path}/{files.name}")
        return mlflow.active_run().info.run_id

    if mlflow.active_run() is not None:
        return log()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    configure = _optional("training.registry", "configure")
    ensure = _optional("training.registry", "ensure_experiment")
    if configure is not None and ensure is not None:
        configure(ws)
        experiment_id = ensure(ws)
    else:
        mlflow.set_tracking_uri(ws.mlflow_uri)
        experiment_id = None
    with mlflow.start_run(run_name="report", experiment_id=experiment_id, tags={"crmml.kind": "report"}):
        return log()


__all__ = [
    "build_report", "collect", "log_report", "outline", "embedded_pngs", "render", "report_files", "prepare_events", "data_summary",
    "customer_revenue", "pareto_curve", "share_of_revenue", "cohort_retention", "monthly_activity",
    "repeat_rates", "dedupe_rule_pairs", "squarify", "segment_summary",
]
