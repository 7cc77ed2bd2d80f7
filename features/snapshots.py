"""Point-in-time customer snapshots and churn labels: one Ibis definition, run on DuckDB or PySpark.

``build_snapshots(source, cutoffs)`` returns one row per (customer, cutoff) with every feature of
``features.catalog`` computed from data strictly before the cutoff, plus the churn label computed
from data in ``[cutoff, cutoff + horizon)`` only.

Many cutoffs, one pass: the events are first reduced to small per-customer tables (orders,
return documents, purchase days with their gap to the previous one, first purchase per item,
category spend per day, views/carts per day). Every time condition is then an equi-join on ``day``
with a small calendar of (day, cutoff) pairs (``_calendar``; cutoffs are whole days), so both
engines run hash joins:

* all-history aggregates (recency, frequency, monetary, gaps, distinct items, category spend,
  last view) put each row in one bucket, the first cutoff after it (``_bucketed``), aggregate per
  (customer, bucket), and combine the buckets at or before each cutoff (``_accumulate``): rows are
  never copied per cutoff;
* window aggregates (7 to 365 days, trends, eligibility) join each row only to the cutoffs whose
  window holds it (``_windowed``) and use conditional sums;
* labels join each order to the cutoffs whose horizon holds it.

No Python loop runs over cutoffs or customers. The intermediate tables read more than once are
materialised so that each is computed once: on DuckDB as ``MATERIALIZED`` common table expressions
of the one query (``_fetch``), on Spark as cached frames.

The churn model reads these columns through ``features.churn_features.feature_matrix``, which adds
its further features and stores the result in the workspace.

Time is handled as float days since 1970-01-01 (``epoch_seconds / 86400``): window tests are plain
arithmetic, identical on both engines, and free of time-zone handling. Cutoffs are dates (00:00);
a calendar day lies wholly before or after a cutoff, so per-day pre-aggregation loses nothing.
An order whose lines span midnight counts once per day (an edge case that keeps truncation exact).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from contextlib import contextmanager

import ibis
import numpy as np
import pandas as pd

from features import catalog
from features.contract import TABLES
from features.engines import connect, engine_of, load_tables

KEYS = ["customer_id", "c"]
EPOCH = pd.Timestamp("1970-01-01")
DEFAULT_HORIZON = 90
DEFAULT_ELIGIBILITY = 365
OUTPUT_COLUMNS = ["customer_id", "cutoff", *catalog.feature_names(), "eligible", "label_available", "churned"]
# internal columns kept for the customer 360 (features.insight) when extras=True
EXTRA_COLUMNS = ["max_recent_gap", "first_purchase_days", "spend_365d_net"]


# ------------------------------------------------------------------------------------------- helpers
def _days(ts):
    """Float days since 1970-01-01 of a naive timestamp column."""
    return ts.epoch_seconds().cast("float64") / 86400.0


def _day(ts):
    """The day (as ``floor(_days(ts))``) of a timestamp, from its date: cheaper per row than ``_days``."""
    return ts.date().epoch_days().cast("float64")


def _cnt(cond):
    """Rows where ``cond`` holds (a filtered count: no per-row CASE and no wide integer sum)."""
    return cond.count(where=cond)


def _zero():
    return ibis.literal(0.0).cast("float64")  # a double on every engine (Spark reads a bare 0.0 as a decimal)


def _sum(cond, value):
    """Sum of ``value`` where ``cond`` holds; NULL where it holds on no row (callers fill 0 where needed)."""
    return value.cast("float64").sum(where=cond)


def _null():
    return ibis.null().cast("float64")


def _ratio(num, den):
    return num.cast("float64") / den.cast("float64").nullif(0.0)


NEG_INF_DAY = -1.0e9  # "before any data" for the first cutoff's bucket


def _of_types(ev, wanted: list[str], facts: dict):
    """The rows of ``ev`` whose ``event_type`` is in ``wanted``.

    Written as ``event_type <> x`` for each other type present in the data (``facts``, from the same
    table) where there are few: DuckDB pushes such a conjunction into the Parquet scan, where it
    tests the dictionary of the column rather than every row, and decodes the other columns for the
    rows kept only; an ``IN`` list is only used there to skip row groups, then tested row by row
    (10M events, 1 thread, by themselves: 0.63 -> 0.48 s for the purchase/return lines, 0.5 -> 0.31 s
    for views/carts; see also ``_joins_as_written``).
    """
    present = facts.get("event_types")
    others = sorted({str(k) for k in present if not pd.isna(k)} - set(wanted)) if present is not None else None
    if others is None or len(others) > 4:
        return ev.filter(ev.event_type.isin(wanted))
    cond = ev.event_type.notnull()
    for other in others:
        cond &= ev.event_type != other
    return ev.filter(cond)


def _windowed(x, cal: dict, days: float | None = None):
    """Rows (with a ``day`` column) joined to each cutoff they precede by at most ``days`` days
    (``c - days <= day < c``; every cutoff after them when ``days`` is None).

    An equi-join on ``day`` with the small calendar of (day, cutoff) pairs: a hash join on both
    engines, where an inequality join would sort or loop. Cutoffs are whole days, so for a time ``t``
    on ``day``: ``t < c`` exactly when ``day < c``.
    """
    pairs = cal["before"]
    if days is not None:
        pairs = pairs.filter(pairs.c - pairs.day <= days)
    return x.join(pairs, "day")


def _merge_buckets(tables: list, outer: list):
    """One row per (customer_id, c) from per-bucket tables with distinct value columns.

    The keys of each later table are among the first table's (a left join) unless it is in ``outer``
    (an outer join): joins of tables with the same keys cost less than a union and a group-by.
    """
    merged = tables[0]
    for table in tables[1:]:
        if any(table is x for x in outer):
            j = merged.outer_join(table, KEYS)
            keys = {k: ibis.coalesce(j[k], j[f"{k}_right"]) for k in KEYS}
        else:
            j = merged.left_join(table, KEYS)
            keys = {k: j[k] for k in KEYS}
        merged = j.select(**keys, **{n: j[n] for n in merged.columns + table.columns if n not in KEYS})
    return merged


def _bucketed(x, cal: dict):
    """Each row of ``x`` (with a ``day``) and its bucket ``c``: the first cutoff after it (rows after the last are dropped)."""
    return x.join(cal["bucket"], "day")


def _accumulate(per_bucket, cal: dict, keys: list[str], cum_aggs, earliest=()):
    """Combine per-bucket aggregates (``keys`` + ``c``) over the buckets at or before each cutoff.

    Running aggregates over each customer's buckets (a window ordered by bucket), then each running
    row is copied to the cutoffs from its bucket up to the customer's next bucket: one row per
    (customer, cutoff) with no second aggregation over the copies.

    ``earliest``: per-bucket columns whose running minimum is wanted, each value lying in its bucket
    (before its cutoff, after the previous one): the running minimum is then the customer's minimum
    where that is before the bucket's cutoff (NULL before), an aggregate over the whole partition,
    which DuckDB computes once per customer where a running one costs a lookup per row (about
    60 ms of 1-thread CPU per running aggregate on the 430k buckets of 10M events).
    """
    w = ibis.cumulative_window(group_by=keys, order_by="c")
    whole = ibis.window(group_by=keys, order_by="c", preceding=None, following=None)  # same sort as ``w``
    first = {k: per_bucket[k].min().over(whole) for k in earliest}
    run = per_bucket.select(*keys, "c", **{k: v.over(w) for k, v in cum_aggs(per_bucket).items()},
                            **{k: ibis.ifelse(v < per_bucket.c, v, _null()) for k, v in first.items()},
                            c_next=per_bucket.c.lead().over(group_by=keys, order_by="c"))
    acc = cal["acc"]
    jj = run.join(acc, [run.c == acc.c, run.c_next.isnull() | (acc.c_at < run.c_next)])
    return jj.select(*keys, c=jj.c_at, **{k: jj[k] for k in [*cum_aggs(per_bucket), *earliest]})


def _timestamp(day: float):
    """The timestamp literal of a (whole) day number."""
    return ibis.timestamp(EPOCH + pd.Timedelta(days=day))


def to_day(value) -> int:
    """Days since 1970-01-01 of the date of ``value`` (the cutoff is that date at 00:00)."""
    ts = pd.Timestamp(value).normalize()
    return int((ts - EPOCH) // pd.Timedelta(days=1))


def from_day(days) -> pd.Series:
    return (EPOCH + pd.to_timedelta(np.asarray(days, dtype="float64"), unit="D")).astype("datetime64[us]")


def parse_cutoffs(spec: str) -> list[pd.Timestamp]:
    """``START:END:STEP`` (STEP like ``30D``, ``30``, ``1M``/``MS`` month starts) -> dates from START to END."""
    start, end, step = (spec.split(":") + ["30D"])[:3]
    step = step.strip() or "30D"
    if step.isdigit():
        step = f"{step}D"
    if step.upper() in ("1M", "M", "MS", "1MS"):
        dates = pd.date_range(start, end, freq="MS")
    else:
        dates = pd.date_range(start, end, freq=step)
    return [pd.Timestamp(d).normalize() for d in dates]


def default_cutoffs(events: pd.DataFrame | None = None, horizon_days: int = DEFAULT_HORIZON, n: int = 24,
                    step_days: int = 30, *, max_timestamp=None, min_timestamp=None) -> list[pd.Timestamp]:
    """``n`` cutoffs ``step_days`` apart, the last one as late as the label horizon allows.

    Cutoffs before the first event are dropped. Pass ``events`` (a frame with ``timestamp``) or
    ``max_timestamp``/``min_timestamp``.
    """
    if events is not None:
        max_timestamp, min_timestamp = events["timestamp"].max(), events["timestamp"].min()
    last = pd.Timestamp(max_timestamp).normalize() - pd.Timedelta(days=horizon_days)
    dates = [last - pd.Timedelta(days=step_days * i) for i in range(n)][::-1]
    if min_timestamp is not None:
        dates = [d for d in dates if d > pd.Timestamp(min_timestamp)]
    return dates


# ------------------------------------------------------------------------------------------- query
def _data_facts(t: dict) -> dict:
    ev = t["events"]
    stats = ev.group_by("event_type").aggregate(n=ev.count()).to_pandas()
    types = dict(zip(stats["event_type"], stats["n"]))
    # the time span over all event types, by itself: DuckDB answers a bare min/max from the Parquet
    # statistics without reading the column (min/max first: _days is monotone)
    span = ev.aggregate(max_t=_days(ev.timestamp.max()), min_t=_days(ev.timestamp.min())).to_pandas()
    mins = [span["min_t"].iloc[0]]
    for name, col in (("tickets", "opened_at"), ("campaigns", "sent_at")):
        if name in t:
            mins.append(_days(t[name][col].min()).to_pandas())
    mins = [float(m) for m in mins if m is not None and not pd.isna(m)]
    return {
        "min_day": math.floor(min(mins)) if mins else 0.0,
        "max_day": float(span["max_t"].iloc[0]) if len(stats) else float("nan"),
        "has_views": types.get("view", 0) > 0,
        "has_carts": types.get("cart", 0) > 0,
        "event_types": {k: int(v) for k, v in types.items()},
    }


def snapshot_expr(t: dict, cuts, facts: dict, horizon_days: int, eligibility_days: int,
                  include_ineligible: bool, extras: bool = False, stage=None, stage_parts=None, cal=None):
    """The Ibis expression of the snapshot table (columns ``customer_id``, ``c`` (cutoff day) + features).

    ``stage(table)`` / ``stage_parts(table)`` may materialise an intermediate table (``Table.cache()``;
    ``stage_parts`` for the per-(customer, cutoff) parts read twice); identity by default.
    """
    stage = stage or (lambda x: x)
    stage_parts = stage_parts or (lambda x: x)
    el = float(eligibility_days)
    ev = t["events"]
    ev = ev.filter(ev.customer_id.notnull() & ev.timestamp.notnull())
    # times as float days are taken after min/max where possible (_days is monotone): fewer conversions
    ev = ev.select("customer_id", "item_id", "event_type", "quantity", "amount", "order_id", "timestamp")

    def per_order(lines, **aggs):
        secs = lines.timestamp.epoch_seconds().cast("string")
        okey = ibis.coalesce(lines.order_id, lines.customer_id.concat("@", secs))
        x = lines.group_by(["customer_id", okey.name("okey"), _day(lines.timestamp).name("day")]).aggregate(
            ts=lines.timestamp.min(), amount=lines.amount.sum(), lines=lines.count(), **aggs)
        return x.mutate(t=_days(x.ts)).drop("ts")

    # purchase and return lines, one table: one scan of the events for both
    lines = _of_types(ev, ["purchase", "return"], facts)
    lines = stage(lines.select("customer_id", "item_id", "quantity", "amount", "order_id", "timestamp",
                               is_return=lines.event_type == "return", day=_day(lines.timestamp)))
    purchases = lines.filter(~lines.is_return)

    # orders (per day, see module doc) and return documents
    orders = stage(per_order(purchases, units=purchases.quantity.sum()))
    returns = per_order(lines.filter(lines.is_return))

    # All-history aggregates: per (customer, bucket) first, then accumulated together (see _cumulative)
    # the first table has a row in every bucket with a purchase; only views may add buckets
    hist = []  # (per-bucket table keyed customer_id + c, function giving the accumulated aggregates)
    outer = []  # the per-bucket tables with buckets of their own

    earliest = []  # columns of the per-bucket tables accumulated as their earliest value (see _accumulate)

    def cumulative(x, bucket_aggs, cum_aggs, own_buckets=False):
        j = _bucketed(x, cal)
        hist.append((j.group_by(["customer_id", "c"]).aggregate(**bucket_aggs(j)), cum_aggs))
        if own_buckets:
            outer.append(hist[-1][0])

    # -- purchase days: orders per (customer, day), the gap to the previous purchase day; of the gaps
    # up to a cutoff only the sum of squares is accumulated: their number is the purchase days less
    # one, their sum the last purchase day less the first
    odays = orders.group_by(["customer_id", "day"]).aggregate(
        n=orders.count(), last_t=orders.t.max(), first_t=orders.t.min(), amount=orders.amount.sum(),
        units=orders.units.sum(), lines=orders.lines.sum(),
    )
    odays = odays.mutate(gap=odays.day - odays.day.lag().over(group_by="customer_id", order_by="day"))
    cumulative(
        odays,
        lambda x: dict(last_t=x.last_t.max(), first_t=x.first_t.min(), n_orders=x.n.sum(), amount_sum=x.amount.sum(),
                       units_sum=x.units.sum(), lines_sum=x.lines.sum(), n_days=x.count(),
                       gap_sq=(x.gap * x.gap).sum()),
        lambda x: dict(last_t=x.last_t.max(), n_orders=x.n_orders.sum(),
                       amount_sum=x.amount_sum.sum(), units_sum=x.units_sum.sum(), lines_sum=x.lines_sum.sum(),
                       n_days=x.n_days.sum(), gap_sq=x.gap_sq.sum()),
    )
    earliest.append("first_t")

    # -- orders: windowed aggregates and labels, one join with the (day, c) pairs of the windows
    # before each cutoff and of its label horizon (c <= day < c + h); an order in the horizon gets a
    # time since it that lies outside every window
    before = cal["before"]
    j = orders.join(before.filter(before.c - before.day <= max(365.0, el)).union(cal["after"]), "day")
    future = j.day >= j.c
    since = ibis.ifelse(future, ibis.literal(1.0e9).cast("float64"), j.c - j.t)
    agg = {
        "future_orders": _cnt(future),
        "spend_prev90": _sum((since > 90) & (since <= 180), j.amount),
        "n_last_year": _cnt((since > 275) & (since <= 365)),
        "n_elig": _cnt(since <= el),
        "lines_90": _sum(since <= 90, j.lines),
    }
    for w in catalog.WINDOWS:
        agg[f"n_{w}"] = _cnt(since <= w)
        agg[f"s_{w}"] = _sum(since <= w, j.amount)
    a_win = j.group_by(["customer_id", "c"]).aggregate(**agg)

    # -- return documents (a small table: one join)
    jr = _windowed(returns, cal)
    a_ret = jr.group_by(["customer_id", "c"]).aggregate(
        ret_lines=jr.lines.sum(),
        ret_amount=jr.amount.sum(),
        ret_docs=jr.count(),
        ret_90=_sum(jr.c - jr.t <= 90, jr.lines),
        ret_365_amount=_sum(jr.c - jr.t <= 365, jr.amount),
        ret_first_t=jr.t.min(),
    )

    a_recent = None
    if extras:  # the largest gap ending in the last 90 days (won back customers)
        jd = _windowed(odays, cal, 90.0)
        a_recent = jd.group_by(["customer_id", "c"]).aggregate(max_recent_gap=jd.gap.max())

    # -- distinct items: first purchase of each (customer, item)
    pi = purchases.filter(purchases.item_id.notnull())
    first_item = pi.group_by(["customer_id", "item_id"]).aggregate(ts=pi.timestamp.min())
    first_item = first_item.mutate(day=_day(first_item.ts))
    cumulative(first_item, lambda x: dict(distinct_items=x.count()), lambda x: dict(distinct_items=x.distinct_items.sum()))

    # -- categories: spend per (customer, category) up to each cutoff
    has_categories = "items" in t
    if has_categories:
        items = t["items"].select("item_id", "category")
        items = items.filter(items.category.notnull())
        pc = pi.select("customer_id", "item_id", "amount", "day").join(items, "item_id")
        # spend per (customer, category, bucket), accumulated over the buckets of the category;
        # spend never decreases, so the top category's spend at a cutoff is the largest running
        # spend of any category in any bucket up to it: everything accumulates per (customer, bucket)
        jb = _bucketed(pc, cal)
        cb = jb.group_by(["customer_id", "category", "c"]).aggregate(spend=jb.amount.sum())
        w = ibis.cumulative_window(group_by=["customer_id", "category"], order_by="c")
        cb = cb.mutate(run=cb.spend.sum().over(w), first=(ibis.row_number().over(w) == 0).cast("int64"))
        per_bucket = cb.group_by(["customer_id", "c"]).aggregate(
            top_b=cb.run.max(), spend_b=cb.spend.sum(), new_b=cb.first.sum()
        )
        hist.append((per_bucket,
                     lambda x: dict(n_cats=x.new_b.sum(), top_spend=x.top_b.max(), cat_spend=x.spend_b.sum())))

    # -- views and carts per day: 90-day windows, and the first/last view over all history
    a_views = None
    has_vc = facts["has_views"] or facts["has_carts"]
    if has_vc:
        # rows on or after the last cutoff serve no feature; rows more than 90 days before the first
        # cutoff serve only the first bucket's last/first view: their day becomes one day of that
        # bucket outside every window, so they form one group per customer (fewer groups than days)
        first_c, last_c = float(facts["first_cutoff"]), float(facts["last_cutoff"])
        vc = _of_types(ev, ["view", "cart"], facts)
        vc = vc.filter(vc.timestamp < _timestamp(last_c))
        date = ibis.ifelse(vc.timestamp >= _timestamp(first_c - 90.0), vc.timestamp.date(),
                           _timestamp(first_c - 91.0).date())
        is_v = vc.event_type == "view"
        vday = vc.group_by(["customer_id", date.name("date")]).aggregate(  # carts: all rows less the views
            nv=_cnt(is_v), n=vc.count(), last_v=vc.timestamp.max(where=is_v), first=vc.timestamp.min()
        )
        vday = stage(vday.select("customer_id", "nv", nk=vday.n - vday.nv, day=vday.date.epoch_days().cast("float64"),
                                 last_v=_days(vday.last_v), first=_days(vday.first)))
        jv = _windowed(vday, cal, 90.0)
        vsince = jv.c - jv.day
        a_views = jv.group_by(["customer_id", "c"]).aggregate(
            v_30=_sum(vsince <= 30, jv.nv),
            v_90=_sum(vsince <= 90, jv.nv),
            k_90=_sum(vsince <= 90, jv.nk),
        )
        cumulative(
            vday,
            lambda x: dict(v_last=x.last_v.max(), v_first=x.first.min()),
            lambda x: dict(v_last=x.v_last.max()),
            own_buckets=True,
        )
        earliest.append("v_first")

    # -- tickets and campaigns: their prepared rows are materialised because a small Parquet file
    # is often one row group, which one thread reads; from a table, both threads join and aggregate
    a_tix = None
    if "tickets" in t:
        tk = t["tickets"]
        tk = tk.filter(tk.customer_id.notnull() & tk.opened_at.notnull())
        tk = stage(tk.select("customer_id", "satisfaction", to=_days(tk.opened_at), tr=_days(tk.resolved_at),
                             is_c=(tk.kind == "complaint").fill_null(False), day=_day(tk.opened_at)))
        jt = _windowed(tk, cal)
        tsince = jt.c - jt.to
        rated = jt.satisfaction.notnull() & (jt.tr < jt.c) & (jt.c - jt.tr <= 365)
        a_tix = jt.group_by(["customer_id", "c"]).aggregate(
            t_365=_cnt(tsince <= 365),
            c_90=_cnt(jt.is_c & (tsince <= 90)),
            c_365=_cnt(jt.is_c & (tsince <= 365)),
            c_open=_cnt(jt.is_c & (jt.tr.isnull() | (jt.tr >= jt.c))),
            c_last=ibis.ifelse(jt.is_c, jt.to, _null()).max(),
            sat_sum=_sum(rated, jt.satisfaction),
            sat_n=_cnt(rated),
        )

    # -- campaigns (every campaign feature looks at most 365 days back)
    a_camp = None
    if "campaigns" in t:
        cm = t["campaigns"]
        cm = cm.filter(cm.customer_id.notnull() & cm.sent_at.notnull())
        if "group" in cm.columns:  # a control-group row is a customer held out, not a contact
            cm = cm.filter(cm["group"].isnull() | (cm["group"] != "control"))
        cm = stage(cm.select("customer_id", ts=_days(cm.sent_at), tr=_days(cm.responded_at), day=_day(cm.sent_at)))
        jm = _windowed(cm, cal, 365.0)
        msince = jm.c - jm.ts
        a_camp = jm.group_by(["customer_id", "c"]).aggregate(
            m_90=_cnt(msince <= 90),
            m_365=_cnt(msince <= 365),
            m_resp=_cnt((msince <= 365) & (jm.tr < jm.c)),
        )

    # the all-history parts: one table per (customer, bucket), accumulated once
    a_hist = _accumulate(_merge_buckets([table for table, _ in hist], outer), cal, ["customer_id"],
                         lambda x: {k: v for _, fn in hist for k, v in fn(x).items()}, earliest)

    # the per-(customer, cutoff) parts are read once, straight into the final joins (materialising
    # them costs a write and a scan each), except where the population reads them too
    if include_ineligible:
        a_hist, a_ret = stage_parts(a_hist), stage_parts(a_ret)
    a_orders = a_days = a_items = a_hist
    a_cat = a_hist if has_categories else None
    a_vhist = a_hist if has_vc else None
    parts = [x for x in (a_hist, a_win, a_ret, a_recent, a_views, a_tix, a_camp) if x is not None]

    # -- customers (current attributes; signup only when before the cutoff)
    cust = None
    if "customers" in t:
        cu = t["customers"]
        cust = cu.select(
            "customer_id", "country", "gender", "birth_year", "acquisition_channel", "membership_tier", "points",
            fs=_days(cu.first_seen),
        )

    # -- the population: eligible customers, or everyone seen before the cutoff
    if include_ineligible:
        key_sets = [a_orders.select(*KEYS), a_ret.select(*KEYS)]
        if a_vhist is not None:
            key_sets.append(a_vhist.select(*KEYS))
        if cust is not None:
            cs = cust.filter(cust.fs.notnull()).join(cuts, cust.fs < cuts.c)
            key_sets.append(cs.select("customer_id", "c"))
        base = ibis.union(*key_sets, distinct=True)
        base = base.join(cuts, "c").select(base.customer_id, base.c, cuts.cyear, cuts.avail)
        ow = a_win
    else:  # the eligible rows of the window part are the population: its columns come without a join
        elig = a_win.filter(a_win.n_elig > 0)
        base = elig.join(cuts, "c").select(elig, cuts.cyear, cuts.avail)
        parts = [x for x in parts if x is not a_win]
        ow = base

    joined = base
    for part in parts:
        joined = joined.left_join(part, KEYS)
    if cust is not None:
        joined = joined.left_join(cust, "customer_id")
    cols = {"customer_id": base.customer_id, "c": base.c}
    o, ret, d, it = a_orders, a_ret, a_days, a_items
    c = base.c
    z = _zero()

    def f(x):
        return x.cast("float64")

    freq = f(o.n_orders.fill_null(0))
    first_any = [o.first_t, ret.ret_first_t]
    if a_views is not None:
        first_any.append(a_vhist.v_first)
    if cust is not None:
        first_any.append(ibis.ifelse(cust.fs < c, cust.fs, _null()))
    first_seen = ibis.coalesce(*first_any) if len(first_any) == 1 else ibis.least(*first_any)
    gap_n = d.n_days - 1  # gaps between the purchase days (NULL without any)
    gap_sum = f(d.last_t.floor() - d.first_t.floor())  # whole days: exact
    gap_mean = _ratio(gap_sum, gap_n)
    gap_var = (f(d.gap_sq) - gap_sum * gap_sum / f(gap_n).nullif(0.0)) / (f(gap_n) - 1).nullif(0.0)
    recency = c - o.last_t
    feats = {
        "recency_days": recency,
        "frequency": freq,
        "monetary": ibis.ifelse(freq > 0, f(o.amount_sum).fill_null(0.0), z),
        "avg_order_value": _ratio(o.amount_sum, o.n_orders),
        "tenure_days": c - first_seen,
        "purchase_days": f(d.n_days.fill_null(0)),
    }
    for w in catalog.WINDOWS:
        feats[f"orders_{w}d"] = f(getattr(ow, f"n_{w}").fill_null(0))
    for w in catalog.WINDOWS:
        feats[f"spend_{w}d"] = f(getattr(ow, f"s_{w}").fill_null(0.0))
    feats |= {
        "orders_trend_90d": _ratio(ow.n_90, ow.n_180 - ow.n_90),  # orders 90-180 days back: exact, no aggregate of its own
        "spend_trend_90d": _ratio(ow.s_90.fill_null(0.0), ow.spend_prev90),
        "gap_mean_days": gap_mean,
        "gap_std_days": ibis.ifelse(f(gap_n) >= 2, ibis.greatest(gap_var, z).sqrt(), _null()),
        "recency_gap_ratio": recency / gap_mean.nullif(0.0),
        "basket_size": _ratio(o.units_sum, o.n_orders),
        "basket_lines": _ratio(o.lines_sum, o.n_orders),
        "distinct_items": f(it.distinct_items.fill_null(0)),
        "distinct_categories": f(a_cat.n_cats.fill_null(0)) if a_cat is not None else _null(),
        "top_category_share": _ratio(a_cat.top_spend, a_cat.cat_spend) if a_cat is not None else _null(),
        "return_rate": _ratio(ret.ret_lines.fill_null(0), o.lines_sum),
        "return_amount_rate": _ratio(ret.ret_amount.fill_null(0.0), o.amount_sum),
        "cancellation_rate": _ratio(ret.ret_docs.fill_null(0), o.n_orders),
        "returns_90d": f(ret.ret_90.fill_null(0)),
    }
    if a_tix is not None:
        feats |= {
            "tickets_365d": f(a_tix.t_365.fill_null(0)),
            "complaints_90d": f(a_tix.c_90.fill_null(0)),
            "complaints_365d": f(a_tix.c_365.fill_null(0)),
            "complaints_unresolved": f(a_tix.c_open.fill_null(0)),
            "days_since_complaint": c - a_tix.c_last,
            "satisfaction_mean": _ratio(a_tix.sat_sum, a_tix.sat_n),
        }
    else:
        feats |= {k: _null() for k in ("tickets_365d", "complaints_90d", "complaints_365d",
                                       "complaints_unresolved", "days_since_complaint", "satisfaction_mean")}
    if a_camp is not None:
        feats |= {
            "campaigns_90d": f(a_camp.m_90.fill_null(0)),
            "campaigns_365d": f(a_camp.m_365.fill_null(0)),
            "campaign_response_rate": _ratio(a_camp.m_resp, a_camp.m_365),
        }
    else:
        feats |= {k: _null() for k in ("campaigns_90d", "campaigns_365d", "campaign_response_rate")}
    lines_90 = f(ow.lines_90.fill_null(0.0))
    if a_views is not None:
        v_30 = f(a_views.v_30.fill_null(0)) if facts["has_views"] else _null()
        v_90 = f(a_views.v_90.fill_null(0)) if facts["has_views"] else _null()
        k_90 = f(a_views.k_90.fill_null(0)) if facts["has_carts"] else _null()
        feats |= {
            "views_30d": v_30,
            "views_90d": v_90,
            "carts_90d": k_90,
            "view_conversion_90d": lines_90 / v_90.nullif(0.0),
            "cart_conversion_90d": lines_90 / k_90.nullif(0.0),
            "days_since_view": c - a_vhist.v_last,
        }
    else:
        feats |= {k: _null() for k in ("views_30d", "views_90d", "carts_90d", "view_conversion_90d",
                                       "cart_conversion_90d", "days_since_view")}
    feats["orders_same_weeks_last_year"] = f(ow.n_last_year.fill_null(0))
    if cust is not None:
        feats |= {
            "membership_tier": cust.membership_tier,
            "points": f(cust.points),
            "country": cust.country,
            "gender": cust.gender,
            "age": f(base.cyear) - f(cust.birth_year),
            "acquisition_channel": cust.acquisition_channel,
        }
    else:
        null_s = ibis.null().cast("string")
        feats |= {"membership_tier": null_s, "points": _null(), "country": null_s, "gender": null_s,
                  "age": _null(), "acquisition_channel": null_s}
    missing = set(catalog.feature_names()) - set(feats)
    if missing:
        raise RuntimeError(f"catalog features without a definition: {sorted(missing)}")
    for name in catalog.feature_names():
        spec = catalog.FEATURES[name]
        cols[name] = feats[name].cast("string" if spec.dtype == "category" else "float64")
    cols["eligible"] = ow.n_elig.fill_null(0) > 0
    cols["label_available"] = base.avail == 1
    cols["churned"] = ibis.ifelse(base.avail == 1, ibis.ifelse(ow.future_orders.fill_null(0) > 0, _zero(), _zero() + 1.0), _null())
    if extras:
        cols["max_recent_gap"] = f(a_recent.max_recent_gap)
        cols["first_purchase_days"] = c - o.first_t
        cols["spend_365d_net"] = f(ow.s_365.fill_null(0.0)) - f(ret.ret_365_amount.fill_null(0.0))
    return joined.select(**cols)


def _cutoff_table(cutoffs: Iterable, facts: dict, horizon_days: int) -> pd.DataFrame:
    days = sorted({to_day(c) for c in cutoffs})
    if not days:
        raise ValueError("no cutoff dates given")
    max_day = facts["max_day"]
    return pd.DataFrame(
        {
            "c": np.array(days, dtype="float64"),
            "cprev": np.array([NEG_INF_DAY] + days[:-1], dtype="float64"),
            "cyear": [pd.Timestamp(EPOCH + pd.Timedelta(days=d)).year for d in days],
            "avail": [int(d + horizon_days <= max_day) for d in days],
        }
    )


def _calendar(cut_df: pd.DataFrame, facts: dict, horizon_days: int) -> dict[str, pd.DataFrame]:
    """Small tables of (day, cutoff) pairs that turn every time condition into an equi-join on ``day``.

    ``before``: every day from the first day of the data up to each cutoff (``day < c``);
    ``after``: the days of each cutoff's label horizon (``c <= day < c + h``); ``bucket``: each day
    and the first cutoff after it; ``acc``: bucket ``c`` and every cutoff ``c_at`` at or after it.
    """
    cs = cut_df["c"].to_numpy()
    lo = min(float(facts["min_day"]), cs.min() - 1)
    days = np.arange(lo, cs.max() + horizon_days, dtype="float64")
    d, c = np.meshgrid(days, cs, indexing="ij")
    d, c = d.ravel(), c.ravel()
    before = d < c
    after = (d >= c) & (d < c + horizon_days)
    nxt = np.searchsorted(cs, days, side="right")  # index of the first cutoff after each day
    ok = nxt < len(cs)
    ci, ca = np.meshgrid(cs, cs, indexing="ij")
    return {
        "before": pd.DataFrame({"day": d[before], "c": c[before]}),
        "after": pd.DataFrame({"day": d[after], "c": c[after]}),
        "bucket": pd.DataFrame({"day": days[ok], "c": cs[nxt[ok]]}),
        "acc": pd.DataFrame({"c": ci[ci <= ca], "c_at": ca[ci <= ca]}),
    }


def build_snapshots(source, cutoffs: list, horizon_days: int = DEFAULT_HORIZON,
                    eligibility_days: int = DEFAULT_ELIGIBILITY, engine: str = "duckdb",
                    include_ineligible: bool = False, *, con=None, extras: bool = False,
                    materialize: bool = True) -> pd.DataFrame:
    """Customer features at each cutoff date, with churn labels.

    ``source``: a ``Workspace``, a workspace path, or a dict of canonical DataFrames (``events``
    required; ``customers``, ``items``, ``tickets``, ``campaigns`` optional). Returns one row per
    (customer, cutoff) for customers eligible at that cutoff (purchased in the ``eligibility_days``
    before it), or for every customer seen before it with ``include_ineligible=True``. Columns:
    ``customer_id``, ``cutoff`` (datetime), the catalog features, ``eligible``, ``label_available``,
    ``churned`` (1.0 / 0.0, NaN where the horizon is not inside the data).

    ``materialize`` keeps the intermediate tables read more than once (the purchases, the orders,
    views per day, ...) as ``MATERIALIZED`` common table expressions of the one query (DuckDB) or
    cached frames (Spark) while the query runs: the engines would otherwise recompute shared
    sub-queries once per use (3x faster on 10M events).
    """
    con = con if con is not None else connect(engine)
    t = load_tables(con, source)
    facts = _data_facts(t)
    cut_df = _cutoff_table(cutoffs, facts, horizon_days)
    facts |= {"first_cutoff": float(cut_df["c"].min()), "last_cutoff": float(cut_df["c"].max())}
    cuts = _small_table(con, cut_df)
    cal = {name: _small_table(con, df) for name, df in _calendar(cut_df, facts, horizon_days).items()}
    cached = []  # Spark: the cached frames
    staged = []  # DuckDB: (name, expression) of the tables materialised inside the one query

    def stage(table):
        if not materialize:
            return table
        if engine_of(con) == "duckdb":  # a placeholder, a MATERIALIZED common table expression of the query
            name = f"crmml_stage_{len(staged)}"
            staged.append((name, table))
            return ibis.table(table.schema(), name=name)
        table = table.cache()
        cached.append(table)
        return table

    try:
        with _joins_as_written(con):
            expr = snapshot_expr(t, cuts, facts, horizon_days, eligibility_days, include_ineligible,
                                 extras=extras, stage=stage, stage_parts=stage, cal=cal)
            df, presorted = _fetch(con, expr, staged)
    finally:
        for table in cached:
            try:
                table.release()
            except Exception:  # noqa: BLE001, S110 - a failed release must not hide the result or the real error
                pass
    return _finish(df, extras, presorted)


@contextmanager
def _joins_as_written(con):
    """DuckDB: hash tables built on the right side of each join, as ``snapshot_expr`` writes them.

    The right side is the smaller or narrower one there (a calendar, the items, a part joined to the
    population). DuckDB swaps the sides on its size estimates, which are poor for aggregates: it built
    hash tables of the wide 684k-row population to probe them with 85k customers (10M events), and
    one of 1.7M purchase lines to probe it with 3,000 items.

    The CTE filter pusher is off too: it pushed the OR of its consumers' filters on the purchase/return
    lines (``NOT is_return`` / ``is_return``, a tautology it does not simplify) into their CTE, where
    it took the event type test out of the Parquet scan into a row-by-row filter of all events
    (10M events, 1 thread: scans and filters of the events 1.8 -> 1.0 s). The setting is restored
    afterwards.
    """
    if engine_of(con) != "duckdb":
        yield
        return
    old = con.raw_sql("SELECT current_setting('disabled_optimizers')").fetchone()[0]
    con.raw_sql(f"SET disabled_optimizers = '{','.join(filter(None, [old, 'build_side_probe_side', 'cte_filter_pusher']))}'")
    try:
        yield
    finally:
        con.raw_sql(f"SET disabled_optimizers = '{old}'")


def _fetch(con, expr, staged=()) -> tuple[pd.DataFrame, bool]:
    """The result as a pandas frame, and whether it is already in the output order (cutoff, customer).

    DuckDB: one query, sorted, fetched as Arrow (Ibis's own pandas conversion, and a pandas sort of
    the wide frame, each cost more than the sort in DuckDB); ``_finish`` sets the dtypes. The staged
    tables (``staged``: placeholder name, expression) are ``MATERIALIZED`` common table expressions
    of that query: computed once, kept in the query's memory, read in parallel; a temporary table
    costs more to write (about 1 s of CPU for the 1.9M purchase and return lines of 10M events).
    Floating columns come with NaN in place of NULL and convert one block per column
    (``split_blocks``): Arrow columns without NULLs become NumPy arrays without copies
    (about 1 s less on 10M events).
    """
    if engine_of(con) == "duckdb":
        sql, expr = _compile(con, expr, staged)
        return _run(con, sql, expr), True
    return expr.to_pandas(), False


def _run(con, sql: str, expr) -> pd.DataFrame:
    """A compiled DuckDB query's result as pandas (see :func:`_fetch`)."""
    from ibis.backends.duckdb.converter import DuckDBPyArrowData

    table = expr.__pyarrow_result__(con.con.sql(sql).to_arrow_table(), data_mapper=DuckDBPyArrowData)
    return table.to_pandas(split_blocks=True)


def _compile(con, expr, staged=()):
    """The DuckDB SQL of ``_fetch`` (NaN for NULL floats, sorted, staged tables as MATERIALIZED CTEs)
    and the final expression (it maps the result's types)."""
    import sqlglot as sg
    import sqlglot.expressions as sge

    nan = float("nan")
    expr = expr.mutate(**{n: expr[n].fill_null(nan) for n, dt in expr.schema().items() if dt.is_floating()})
    expr = expr.order_by(["c", "customer_id"])
    ctes = []
    for name, table in staged:
        con._run_pre_execute_hooks(table)  # registers the in-memory tables it reads, as Ibis's execute does
        ctes.append(sge.CTE(this=con.compiler.to_sqlglot(table), materialized=True,
                            alias=sge.TableAlias(this=sg.to_identifier(name, quoted=True))))
    con._run_pre_execute_hooks(expr)
    query = con.compiler.to_sqlglot(expr)
    if ctes:
        with_ = query.args.get("with_")
        query.set("with_", sge.With(expressions=ctes + (list(with_.expressions) if with_ else [])))
    sql = query.sql(dialect=con.dialect, copy=False, unsupported_level=sg.ErrorLevel.RAISE)
    return sql, expr


class SnapshotQuery:
    """:func:`build_snapshots` for many small calls on one shop (serving: a few customers at a time).

    The query of a cutoff is built and compiled once (building and compiling cost ~0.5 s per call,
    running it on a few customers milliseconds) against placeholder tables of a DuckDB connection
    kept open; each call binds the given frames to the placeholders and runs it. The data facts the
    query depends on (time span, whether the shop has views and carts, which tables exist) are the
    shop's, given once (``facts_of``): a customer's row is the row the shop's batch query gives them.
    Not thread-safe: one caller at a time.
    """

    def __init__(self, facts: dict, tables: tuple[str, ...], horizon_days: int = DEFAULT_HORIZON,
                 eligibility_days: int = DEFAULT_ELIGIBILITY):
        self.facts = facts
        self.tables = tables
        self.horizon_days = horizon_days
        self.eligibility_days = eligibility_days
        self.con = connect("duckdb")
        self.con.raw_sql("SET threads = 1")  # a few customers' rows: threads cost more than they bring
        self._compiled: dict[float, tuple[str, object]] = {}
        self._names = {name: f"crmml_q_{name}_{uuid.uuid4().hex[:8]}" for name in tables}

    @staticmethod
    def facts_of(source) -> tuple[dict, tuple[str, ...]]:
        """The data facts and the table names of a workspace (what its batch query sees)."""
        con = connect("duckdb")
        t = load_tables(con, source)
        return _data_facts(t), tuple(t)

    def _placeholders(self, frames: dict[str, pd.DataFrame]) -> dict:
        from features.engines import _conformed

        out = {}
        for name in self.tables:
            df = _conformed(name, frames[name])
            out[name] = ibis.table(ibis.memtable(df).schema(), name=self._names[name])
        return out

    def __call__(self, frames: dict[str, pd.DataFrame], cutoff, include_ineligible: bool = True) -> pd.DataFrame:
        """Rows of the customers in ``frames`` (canonical frames; every table of the shop, maybe empty) at ``cutoff``."""
        from features.engines import _conformed

        frames = {name: _conformed(name, frames[name] if name in frames
                                   else pd.DataFrame(columns=TABLES[name].column_names)) for name in self.tables}
        day = float(to_day(cutoff))
        if day not in self._compiled:
            cut_df = _cutoff_table([cutoff], self.facts, self.horizon_days)
            facts = self.facts | {"first_cutoff": day, "last_cutoff": day}
            cuts = ibis.memtable(cut_df)
            cal = {name: ibis.memtable(df) for name, df in _calendar(cut_df, facts, self.horizon_days).items()}
            staged = []

            def stage(table):
                name = f"crmml_stage_{len(staged)}"
                staged.append((name, table))
                return ibis.table(table.schema(), name=name)

            expr = snapshot_expr(self._placeholders(frames), cuts, facts, self.horizon_days, self.eligibility_days,
                                 include_ineligible, extras=False, stage=stage, stage_parts=stage, cal=cal)
            self._compiled[day] = _compile(self.con, expr, staged)
        sql, expr = self._compiled[day]
        for name in self.tables:
            self.con.con.register(self._names[name], frames[name])
        with _joins_as_written(self.con):
            df = _run(self.con, sql, expr)
        return _finish(df, False, True)


def _small_table(con, df: pd.DataFrame):
    """A small pandas frame as an Ibis table of ``con`` (Spark: a temp view; its cache path skips memtables)."""
    if engine_of(con) == "spark":
        name = f"crmml_tmp_{uuid.uuid4().hex}"
        con._session.createDataFrame(df).createOrReplaceTempView(name)
        return con.table(name)
    return ibis.memtable(df)


def _finish(df: pd.DataFrame, extras: bool = False, presorted: bool = False) -> pd.DataFrame:
    df.insert(1, "cutoff", from_day(df.pop("c").to_numpy()))
    string, double, boolean = (pd.api.types.pandas_dtype(x) for x in ("string", "float64", "bool"))
    dtypes = {"customer_id": string, "eligible": boolean, "label_available": boolean, "churned": double}
    for name in catalog.feature_names():
        dtypes[name] = string if catalog.FEATURES[name].dtype == "category" else double
    for name, dtype in dtypes.items():  # only the columns that need it (replacing a column copies);
        if repr(df[name].dtype) != repr(dtype):  # repr: "str" == "string" for pandas, not for us
            df[name] = df[name].astype(dtype)
    cols = OUTPUT_COLUMNS + (EXTRA_COLUMNS if extras else [])
    if list(df.columns) != cols:
        df = df[cols]
    if not presorted:
        df = df.sort_values(["cutoff", "customer_id"], kind="stable")
    return df.reset_index(drop=True)


def summary(snap: pd.DataFrame) -> dict:
    """Per-cutoff counts and churn rates of a snapshot table (for the CLI and the JSON summary)."""
    rows = []
    for cutoff, g in snap.groupby("cutoff", sort=True):
        lab = g.loc[g["eligible"] & g["label_available"], "churned"]
        rows.append({
            "cutoff": str(pd.Timestamp(cutoff).date()),
            "customers": int(len(g)),
            "eligible": int(g["eligible"].sum()),
            "labelled": int(lab.notna().sum()),
            "churn_rate": float(lab.mean()) if lab.notna().any() else None,
        })
    return {"cutoffs": rows}
