"""The sections computed from the shop's data alone: summary, revenue concentration, RFM segments,
cohorts, repeat-purchase rates and association rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from features.insight import SEGMENTS
from pipelines.report import insight
from pipelines.report.inputs import TOP_RULES, Found, ValueBasis
from pipelines.report.page import Section, SectionSpec, Table
from pipelines.report.plots import plot_activity, plot_cohorts, plot_pareto, plot_rules, plot_segments
from pipelines.report.text import date, label, money, num, pct

EVENTS_SOURCE = "data/events.parquet"


def summary(summary: dict) -> Section:
    s = Section()
    first, last = summary["first"], summary["last"]
    months = (last - first).days / 30.44 if pd.notna(first) and pd.notna(last) else math.nan
    s.takeaway = (
        f"{summary['customers']:,} customers placed {summary['orders']:,} orders"
        + (f" worth {money(summary['revenue'])}" if math.isfinite(summary["revenue"]) else "")
        + f" over {months:.0f} months ({date(first)} to {date(last)})."
    )
    rows = [
        ["customers with a purchase", num(summary["customers"])],
        ["customers with any event", num(summary["customers_any_event"])],
        ["orders", num(summary["orders"])],
        ["purchase lines", num(summary["purchase_lines"])],
        ["distinct items bought", num(summary["items"])],
        ["revenue (gross purchases)", num(summary["revenue"])],
        ["returns", num(summary["returns"])],
        ["net revenue", num(summary["net_revenue"])],
        ["average order value", num(summary["avg_order_value"], 2)],
        ["first event", date(first)],
        ["last event", date(last)],
        ["events by type", ", ".join(f"{k} {v:,}" for k, v in summary["event_types"].items())],
    ]
    s.tables.append(Table(["figure", "value"], rows, numeric=[False, True], compact=True))
    s.source = EVENTS_SOURCE
    return s


def pareto(events: pd.DataFrame, as_of: pd.Timestamp, value: Found[ValueBasis]) -> Section:
    s = Section()
    if not value.ok:
        s.missing = value.error or value.source
        return s
    window = insight.VALUE_WINDOW_DAYS
    start = as_of - pd.Timedelta(days=window)
    rev, tiers = value.value.revenue, value.value.tiers
    curve, curve_all = insight.pareto_curve(rev), insight.pareto_curve(insight.customer_revenue(events))
    table = insight.tier_table(rev, tiers)
    top20 = insight.share_of_revenue(curve, 0.2)
    top20_all = insight.share_of_revenue(curve_all, 0.2)
    a_share = table.loc["A", "customer_share"] if "A" in table.index else math.nan
    s.takeaway = (
        f"{pct(0.2)} of customers bring {pct(top20)} of the last {window} days' net revenue "
        f"({pct(top20_all)} over all history); tier A is {pct(a_share)} of customers "
        f"({table.loc['A', 'customers'] if 'A' in table.index else 0:,}) bringing "
        f"{pct(table.loc['A', 'revenue_share'] if 'A' in table.index else math.nan)} of revenue."
    )
    s.plots.append(plot_pareto(curve, curve_all, table))
    s.tables.append(Table(
        ["tier", "customers", "share of customers", f"net revenue ({window} d)", "share of revenue",
         "revenue per customer"],
        [[f"{t}", num(r.customers), pct(r.customer_share, 1), num(r.revenue), pct(r.revenue_share, 1),
          num(r.avg_revenue)] for t, r in table.iterrows()],
        numeric=[False, True, True, True, True, True],
    ))
    s.notes.append(
        f"Customers who bought in [{date(start)}, {date(as_of)}); net revenue = purchases - returns, "
        f"negative counts as 0. Tiers: {value.value.source}."
    )
    s.source = EVENTS_SOURCE
    return s


def rfm(customer360: Found[pd.DataFrame]) -> Section:
    s = Section()
    c360, src = customer360.value, customer360.source
    if c360 is None or "rfm_segment" not in c360.columns:
        s.missing = f"No RFM segments: the customer 360 is not available ({customer360.error or src})."
        return s
    seg = insight.segment_summary(c360, SEGMENTS)
    if seg.empty:
        s.missing = "The customer 360 has no customer with an RFM segment."
        return s
    has_rev = "revenue_share" in seg.columns and seg["revenue_share"].notna().any()
    lead = seg["revenue"].idxmax() if has_rev else seg["customers"].idxmax()
    text = f"{label(lead).capitalize()} are {pct(seg.loc[lead, 'customer_share'])} of customers"
    if has_rev:
        text += f" and bring {pct(seg.loc[lead, 'revenue_share'])} of the last 12 months' revenue"
        risky = [x for x in ("at_risk", "cannot_lose") if x in seg.index]
        if risky and "lifetime_share" in seg.columns:
            text += (f"; {' and '.join(label(x) for x in risky)} ({pct(seg.loc[risky, 'customer_share'].sum())} of "
                     f"customers) brought {pct(seg.loc[risky, 'lifetime_share'].sum())} of lifetime spend but only "
                     f"{pct(seg.loc[risky, 'revenue_share'].sum())} of the last 12 months' revenue")
    s.takeaway = text + "."
    s.plots.append(plot_segments(seg))
    cols, numeric = ["segment", "customers", "% customers"], [False, True, True]
    fields = []
    if has_rev:
        fields += [("revenue", "revenue 365 d", num), ("revenue_share", "% revenue", lambda v: pct(v, 1))]
    if "lifetime" in seg.columns:
        fields += [("lifetime", "lifetime spend", num), ("lifetime_share", "% lifetime", lambda v: pct(v, 1))]
    if "recency_days" in seg.columns:
        fields.append(("recency_days", "median days since last order", num))
    if "frequency" in seg.columns:
        fields.append(("frequency", "median orders", lambda v: num(v, 0)))
    cols += [f[1] for f in fields]
    numeric += [True] * len(fields)
    rows = [[label(name), num(r["customers"]), pct(r["customer_share"], 1)] + [fmt(r[c]) for c, _, fmt in fields]
            for name, r in seg.iterrows()]
    s.tables.append(Table(cols, rows, numeric=numeric))
    as_of = c360["as_of"].iloc[0] if "as_of" in c360.columns and len(c360) else None
    s.notes.append(f"Segments from {src}" + (f", as of {date(as_of)}" if as_of is not None else "")
                   + ": R and F quintile scores mapped to the classic RFM grid (features.insight). "
                   "Revenue = net revenue of the last 365 days (revenue_365d); lifetime spend = gross purchases.")
    s.source = src
    return s


def cohorts(purchases: pd.DataFrame, as_of: pd.Timestamp) -> Section:
    s = Section()
    if purchases.empty:
        s.missing = "No purchases in the data: no cohorts."
        return s
    # complete months only: the month of as_of is partial (or, when as_of is the 1st, still empty)
    before = int(as_of.year * 12 + as_of.month - 1)
    shares, sizes = insight.cohort_retention(purchases, before_month=before)
    if shares.empty or shares.shape[1] < 2:
        s.missing = "Less than two complete months of purchases: no cohort retention yet."
        return s
    m1 = shares[1].dropna() if 1 in shares.columns else pd.Series(dtype=float)
    m3 = shares[3].dropna() if 3 in shares.columns else pd.Series(dtype=float)
    m12 = shares[12].dropna() if 12 in shares.columns else pd.Series(dtype=float)
    w = sizes.reindex(m1.index)
    text = f"On average {pct(np.average(m1, weights=w))} of a cohort buys again in the month after its first purchase"
    later = []
    if len(m3):
        later.append(f"{pct(np.average(m3, weights=sizes.reindex(m3.index)))} in month 3")
    if len(m12):
        later.append(f"{pct(np.average(m12, weights=sizes.reindex(m12.index)))} in month 12")
    if later:
        text += ", " + " and ".join(later)
    s.takeaway = text + " (weighted by cohort size)."
    s.plots.append(plot_cohorts(shares, sizes))
    s.notes.append(
        f"Complete calendar months only (up to {insight.month_label(before - 1)}). The first cohort "
        f"({shares.index[0]}) also holds the customers who had bought before the data start, so it looks more "
        "loyal than a true first-purchase cohort."
    )
    s.source = EVENTS_SOURCE
    return s


def rates(purchases: pd.DataFrame, as_of: pd.Timestamp) -> Section:
    s = Section()
    if purchases.empty:
        s.missing = "No purchases in the data."
        return s
    as_of_month = int(as_of.year * 12 + as_of.month - 1)
    r = insight.repeat_rates(purchases, as_of)
    activity = insight.monthly_activity(purchases, before_month=as_of_month)
    rr = activity["retention_rate"].dropna()
    last3 = rr.tail(3).mean() if len(rr) else math.nan
    s.takeaway = (
        f"{pct(r['repeat_rate'])} of customers ordered more than once; "
        f"{pct(r['repeat_within'])} ordered again within {r['within_days']} days of their first order; "
        f"{pct(rr.mean() if len(rr) else math.nan)} of a month's buyers buy again the next month."
    )
    if len(activity) >= 2:
        s.plots.append(plot_activity(activity, r))
    rows = [
        ["buyers", num(r["buyers"])],
        ["repeat buyers (2+ orders)", f"{num(r['repeat_buyers'])} ({pct(r['repeat_rate'], 1)})"],
        [f"ordered again within {r['within_days']} days of the first order",
         f"{pct(r['repeat_within'], 1)} of {num(r['mature_buyers'])} customers whose first order is "
         f"{r['within_days']}+ days old"],
        ["orders per customer (mean)", num(r["orders_per_customer"], 2)],
        ["days between consecutive orders (median)", num(r["median_days_between_orders"], 0)],
        ["monthly retention (mean over months)", pct(rr.mean() if len(rr) else math.nan, 1)],
        ["monthly retention (last 3 complete months)", pct(last3, 1)],
    ]
    if len(activity):
        last = activity.iloc[-1]
        rows.append([f"buyers in {last['label']} (new / returning)",
                     f"{num(last['active'])} ({num(last['new'])} / {num(last['returning'])})"])
    s.tables.append(Table(["rate", "value"], rows, numeric=[False, True], compact=True))
    s.source = EVENTS_SOURCE
    return s


def rules(item_rules: Found[pd.DataFrame], items: pd.DataFrame | None) -> Section:
    s = Section()
    if not item_rules.ok:
        s.missing = item_rules.error or item_rules.source
        return s
    all_rules, src = item_rules.value, item_rules.source
    if all_rules.empty:
        s.missing = "No item pair is bought together often enough for a rule."
        return s
    pairs = insight.dedupe_rule_pairs(all_rules)
    # top by lift among the better-supported pairs (rare pairs have huge, unreliable lifts)
    pairs = pairs[pairs["lift"] > 1]  # bought together more often than by chance
    if pairs.empty:
        s.missing = "No item pair is bought together more often than by chance (every lift <= 1)."
        return s
    floor = float(pairs["support"].quantile(0.5)) if len(pairs) > 4 * TOP_RULES else 0.0
    top = pairs[pairs["support"] >= floor].head(TOP_RULES)
    names = {}
    if items is not None and "name" in items.columns:
        names = dict(zip(items["item_id"].astype(str), items["name"].astype(str)))

    def item(i) -> str:
        n = names.get(str(i))
        return f"{n} ({i})" if n and n != "<NA>" else str(i)

    best = top.iloc[0]
    s.takeaway = (f"{best['confidence']:.0%} of the orders with {item(best['antecedent'])} also hold "
                  f"{item(best['consequent'])}: {best['lift']:.1f}x more often than chance (lift).")
    s.plots.append(plot_rules(all_rules, top))
    cols = ["if a basket holds", "it also holds", "support", "confidence", "lift"]
    has_count = "count" in top.columns
    if has_count:
        cols.append("orders")
    rows = []
    for _, r in top.iterrows():
        row = [item(r["antecedent"]), item(r["consequent"]), pct(r["support"], 2), pct(r["confidence"], 1),
               num(r["lift"], 1)]
        if has_count:
            row.append(num(r["count"]))
        rows.append(row)
    s.tables.append(Table(cols, rows, numeric=[False, False, True, True, True, True][: len(cols)]))
    s.notes.append(f"Rules from {src}: {len(all_rules):,} rules; one direction per pair (the more confident), "
                   f"top {len(top)} by lift" + (f" among pairs in at least {floor:.2%} of orders (the better-supported "
                   "half; rare pairs have large but unreliable lifts)." if floor > 0 else ".")
                   + " Support: share of orders with both items; confidence: share of the orders with the first "
                   "item that also hold the second; lift: confidence / share of orders with the second item.")
    s.source = src
    return s


SUMMARY = SectionSpec("summary", "Data summary", ("summary",), summary)
PARETO = SectionSpec("pareto", "Revenue concentration and value tiers", ("events", "as_of", "value"), pareto)
RFM = SectionSpec("rfm", "RFM segments", ("customer360",), rfm)
COHORTS = SectionSpec("cohorts", "Cohort retention", ("purchases", "as_of"), cohorts)
RATES = SectionSpec("rates", "Repeat purchase and retention rates", ("purchases", "as_of"), rates)
RULES = SectionSpec("rules", "Items bought together: top association rules", ("item_rules", "items"), rules)
