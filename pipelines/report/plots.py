"""The report's plots: matplotlib's object API on the Agg canvas (no pyplot, no global state).

Each ``plot_*`` function takes computed tables (see :mod:`pipelines.report.insight`) and returns a
:class:`Plot`: the PNG bytes, its size and a caption. :func:`png_file` reads a PNG another step
wrote (the churn backtest's plots, an MLflow run's ``plots/``) as a :class:`Plot`.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from pipelines.report.insight import TIER_CUTS, VALUE_WINDOW_DAYS, share_of_revenue
from pipelines.report.text import label as _label
from pipelines.report.text import money as _money

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
    d = top.iloc[::-1]  # the first customer on top
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



def png_file(path: Path) -> Plot | None:
    """A PNG file as a Plot named after the file (None when it is not a real, non-trivial PNG)."""
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 1024:
        return None
    w = int.from_bytes(data[16:20], "big")
    h = int.from_bytes(data[20:24], "big")
    return Plot(name=path.stem, caption=_label(path.stem), png=data, width=w, height=h)
