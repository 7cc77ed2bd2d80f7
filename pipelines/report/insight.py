"""The insight the report computes from events: pure functions, tables in, numbers out.

Events are the workspace's canonical events (``data/events``) cut at the report's date by
:func:`prepare_events`; nothing here reads files, draws or formats.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from features.dates import as_of_date
from features.insight import TIER_A_SHARE, TIER_B_SHARE

TIER_CUTS = (TIER_A_SHARE, TIER_B_SHARE)  # A: first 80% of revenue, B: up to 95%, C: the rest
VALUE_WINDOW_DAYS = 365


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


def month_number(ts: pd.Series) -> np.ndarray:
    return (ts.dt.year * 12 + ts.dt.month - 1).to_numpy()


def month_label(number: int) -> str:
    return f"{number // 12}-{number % 12 + 1:02d}"


def cohort_retention(purchases: pd.DataFrame, before_month: int | None = None) -> tuple[pd.DataFrame, pd.Series]:
    """Share of each first-purchase-month cohort buying again k months later.

    Returns ``(shares, sizes)``: ``shares`` is indexed by cohort month ("2010-01") with columns
    k = 0, 1, ... (k = 0 is 1.0 by construction; NaN where the month has not happened);
    ``sizes`` the number of customers in each cohort. Only months ``< before_month`` (a month
    number ``year * 12 + month - 1``) count, to leave a partial last month out."""
    month = month_number(purchases["timestamp"])
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
    labels = [month_label(c) for c in shares.index]
    shares.index, sizes.index = labels, labels
    shares.index.name = sizes.index.name = "cohort"
    return shares, sizes.astype(int)


def monthly_activity(purchases: pd.DataFrame, before_month: int | None = None) -> pd.DataFrame:
    """Per calendar month: buyers, new buyers (first purchase in the data), returning buyers, and
    the retention rate (share of the previous month's buyers who bought again this month)."""
    month = month_number(purchases["timestamp"])
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
    out["label"] = [month_label(m) for m in out["month"]]
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



def has_amount(events: pd.DataFrame) -> bool:
    """Whether the purchases carry amounts (revenue figures need them)."""
    if "amount" not in events.columns:
        return False
    return bool(events.loc[events["event_type"] == "purchase", "amount"].notna().any())


def tier_table(revenue: pd.Series, tiers: pd.Series) -> pd.DataFrame:
    """Customers, net revenue and their shares per value tier (A, B, C); negative revenue counts as 0
    in the shares. ``customer_share_cum`` is where each tier ends on the Pareto curve."""
    pos_rev = revenue.clip(lower=0)
    table = (
        pd.DataFrame({"tier": tiers.reindex(revenue.index).to_numpy(), "revenue": pos_rev.to_numpy(),
                      "net": revenue.to_numpy()})
        .groupby("tier")
        .agg(customers=("revenue", "size"), revenue=("net", "sum"), positive=("revenue", "sum"))
        .reindex([t for t in "ABC" if t in set(tiers)])
    )
    table["customer_share"] = table["customers"] / table["customers"].sum()
    table["revenue_share"] = table["positive"] / table["positive"].sum()
    table["customer_share_cum"] = table["customer_share"].cumsum()
    table["avg_revenue"] = table["revenue"] / table["customers"]
    return table
