"""Customer insight: RFM scores and segments, Pareto value tiers, lifecycle stage, profile tags, customer 360.

``build_customer360(source, as_of)`` returns one row per customer seen before ``as_of`` with plain,
JSON-friendly values (strings, floats, ints; ``tags`` a comma-separated string). Use
:func:`records` to get JSON-serialisable dicts (NaN -> None, tags as a list) for serving.

The features come from :func:`features.snapshots.build_snapshots` (one definition on DuckDB or
Spark); the profile (favourite category, price, channel, weekday, discount) is one more small
Ibis query per field; scores, segments, tiers and stages are simple rules on one row per customer,
applied in pandas. The field meanings are listed in ``features.catalog.INSIGHT_FIELDS``.
"""

from __future__ import annotations

import math

import ibis
import numpy as np
import pandas as pd

from features import catalog
from features.dates import as_of_date
from features.engines import connect, load_tables
from features.snapshots import _days, build_snapshots, to_day

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SEGMENTS = ("champions", "loyal", "potential_loyalists", "new", "promising", "need_attention",
            "about_to_sleep", "at_risk", "cannot_lose", "hibernating", "lost")
STAGES = ("prospect", "new", "active", "at_risk", "lapsed", "won_back")
TIER_A_SHARE, TIER_B_SHARE = 0.80, 0.95
DISCOUNT_BELOW = 0.95  # a line is "discounted" below 95% of the item's typical price
CUSTOMER360 = "customer360"  # features/customer360.parquet: build_customer360's table as `crmml features` writes it
CUSTOMER360_FEATURES = (
    "recency_days", "frequency", "monetary", "avg_order_value", "tenure_days", "orders_90d", "orders_365d",
    "spend_90d", "spend_365d", "orders_trend_90d", "gap_mean_days", "recency_gap_ratio", "return_rate",
    "complaints_unresolved", "satisfaction_mean", "campaign_response_rate", "views_30d", "membership_tier",
    "points", "country", "gender", "age", "acquisition_channel",
)


# ------------------------------------------------------------------------------------------- rules
def quintile_score(values: pd.Series, higher_is_better: bool = True) -> pd.Series:
    """Scores 1-5 by quintile of rank; ties share a score (their lowest rank); NaN stays NaN."""
    v = values.astype("float64") if higher_is_better else -values.astype("float64")
    ranks = v.rank(method="min")
    n = v.notna().sum()
    if n == 0:
        return pd.Series(np.nan, index=values.index)
    return (1 + np.floor(5 * (ranks - 1) / n)).clip(1, 5)


def quintile_in(value: float, population: np.ndarray, higher_is_better: bool = True) -> float:
    """The :func:`quintile_score` one more value would get within a scored population (NaN stays NaN):
    its rank is one plus the number of population values ranked strictly before it."""
    pop = np.asarray(population, dtype="float64")
    pop = pop[~np.isnan(pop)]
    if value is None or not np.isfinite(value) or not len(pop):
        return np.nan
    before = int((pop > value).sum() if not higher_is_better else (pop < value).sum())
    return float(min(5, max(1, 1 + math.floor(5 * before / len(pop)))))


# (r, f) -> segment: the classic RFM grid on recency and frequency scores
_GRID = {
    5: ("new", "potential_loyalists", "potential_loyalists", "champions", "champions"),
    4: ("promising", "potential_loyalists", "potential_loyalists", "loyal", "loyal"),
    3: ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"),
    2: ("hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose"),
    1: ("lost", "lost", "at_risk", "at_risk", "cannot_lose"),
}


def rfm_segment(r, f) -> str | None:
    """Named segment from the recency and frequency scores (1-5)."""
    if r is None or f is None or (isinstance(r, float) and math.isnan(r)) or (isinstance(f, float) and math.isnan(f)):
        return None
    return _GRID[int(r)][int(f) - 1]


def value_tiers(revenue: pd.Series, a_share: float = TIER_A_SHARE, b_share: float = TIER_B_SHARE) -> pd.Series:
    """A/B/C from the Pareto curve: A = the fewest top customers bringing ``a_share`` of revenue,
    B = the next ones up to ``b_share``, C = the rest (and everyone without positive revenue)."""
    rev = revenue.astype("float64").fillna(0.0).clip(lower=0.0)
    total = rev.sum()
    tiers = pd.Series("C", index=revenue.index, dtype="object")
    if total <= 0:
        return tiers
    order = rev.sort_values(ascending=False, kind="stable")
    before = (order.cumsum() - order) / total  # share brought by the customers ranked above
    positive = order > 0
    tiers[order.index[(before < a_share) & positive]] = "A"
    tiers[order.index[(before >= a_share) & (before < b_share) & positive]] = "B"
    return tiers


def lifecycle_stages(df: pd.DataFrame) -> pd.Series:
    """prospect, new, active, at_risk, lapsed or won_back for each row (rules in catalog.INSIGHT_FIELDS).

    Needs ``frequency``, ``recency_days``, ``recency_gap_ratio``, ``first_purchase_days`` (days since the
    first purchase) and ``max_recent_gap`` (largest gap between purchase days ending in the last 90 days).
    """
    rec = df["recency_days"].astype("float64")
    ratio = df["recency_gap_ratio"].astype("float64")
    conditions = [
        (df["frequency"].fillna(0) <= 0) | rec.isna(),
        rec >= 180,
        df["first_purchase_days"].astype("float64") < 90,
        df["max_recent_gap"].astype("float64") >= 180,
        (rec >= 90) | ((ratio >= 2) & (rec >= 30)),
    ]
    choices = ["prospect", "lapsed", "new", "won_back", "at_risk"]
    return pd.Series(np.select(conditions, choices, default="active"), index=df.index)


def _tags(row) -> str:
    tags = []
    if row.get("rfm_segment"):
        tags.append(str(row["rfm_segment"]).replace("_", " "))
    if row.get("value_tier") == "A":
        tags.append("top customer")
    if row.get("lifecycle_stage") in ("at_risk", "lapsed", "won_back", "new"):
        tags.append(str(row["lifecycle_stage"]).replace("_", " "))
    if isinstance(row.get("favourite_category"), str):
        tags.append(f"likes {row['favourite_category'].lower()}")
    if isinstance(row.get("price_band"), str):
        tags.append(f"{row['price_band']} price")
    if isinstance(row.get("preferred_channel"), str):
        tags.append(f"{row['preferred_channel']} buyer")
    if isinstance(row.get("preferred_weekday"), str):
        tags.append(f"buys on {row['preferred_weekday']}")
    da = row.get("discount_affinity")
    if da is not None and pd.notna(da) and da >= 0.3:
        tags.append("discount hunter")
    return ", ".join(tags)


# ------------------------------------------------------------------------------------------- profile
def _top(table, key: str, weight):
    """Per customer, the value of ``key`` with the largest ``weight`` (ties: smallest key)."""
    g = table.group_by(["customer_id", key]).aggregate(w=weight)
    g = g.mutate(rn=ibis.row_number().over(group_by="customer_id", order_by=[ibis.desc("w"), key]))
    return g.filter(g.rn == 0).select("customer_id", key)


def profile(t: dict, as_of_day: int) -> pd.DataFrame:
    """favourite_category, mean_unit_price, preferred_channel, preferred_weekday, discount_affinity."""
    ev = t["events"]
    ev = ev.filter((ev.event_type == "purchase") & ev.customer_id.notnull() & ev.timestamp.notnull())
    ev = ev.mutate(t=_days(ev.timestamp))
    p = ev.filter(ev.t < float(as_of_day))
    base = p.group_by("customer_id").aggregate(
        unit_num=p.amount.sum(), unit_den=p.quantity.sum()
    )
    out = base.to_pandas()
    out["mean_unit_price"] = out["unit_num"] / out["unit_den"].where(out["unit_den"] > 0)
    out = out[["customer_id", "mean_unit_price"]]

    def merge(df):
        nonlocal out
        out = out.merge(df, on="customer_id", how="left")

    ch = p.filter(p.channel.notnull())
    merge(_top(ch, "channel", ch.count()).rename(preferred_channel="channel").to_pandas())
    okey = ibis.coalesce(p.order_id, p.customer_id.concat("@", p.timestamp.epoch_seconds().cast("string")))
    orders = p.mutate(okey=okey, wd=((p.t.floor() + 3) % 7).cast("int64")).select("customer_id", "okey", "wd").distinct()
    wd = _top(orders, "wd", orders.count()).to_pandas()
    wd["preferred_weekday"] = wd.pop("wd").map(lambda i: WEEKDAYS[int(i)])
    merge(wd)
    if "items" in t:
        items = t["items"].select("item_id", "category", "price")
        pi = p.join(items, p.item_id == items.item_id)
        pc = pi.filter(pi.category.notnull())
        merge(_top(pc, "category", pc.amount.sum()).rename(favourite_category="category").to_pandas())
        priced = pi.filter(pi.price.notnull() & (pi.price > 0) & pi.quantity.notnull() & (pi.quantity > 0)
                           & pi.amount.notnull())
        disc = priced.group_by("customer_id").aggregate(
            discount_affinity=ibis.ifelse(priced.amount / priced.quantity < DISCOUNT_BELOW * priced.price, 1, 0)
            .cast("float64").mean()  # an integer flag: a bare 1.0 would be a decimal on Spark
        )
        merge(disc.to_pandas())
    for col in ("preferred_channel", "preferred_weekday", "favourite_category", "discount_affinity"):
        if col not in out:
            out[col] = np.nan
    return out


# ------------------------------------------------------------------------------------------- 360
def default_as_of(t: dict) -> pd.Timestamp:
    """The day after the last event: the customer 360 then uses all the data."""
    ev = t["events"]
    return as_of_date([ev.timestamp.max().to_pandas()])


def build_customer360(source, as_of=None, engine: str = "duckdb", *, con=None,
                      eligibility_days: int = 365) -> pd.DataFrame:
    """One record per customer seen before ``as_of`` (default: the day after the last event)."""
    con = con if con is not None else connect(engine)
    t = load_tables(con, source)
    as_of = default_as_of(t) if as_of is None else pd.Timestamp(as_of).normalize()
    snap = build_snapshots(source, [as_of], include_ineligible=True, extras=True, con=con,
                           eligibility_days=eligibility_days)
    prof = profile(t, to_day(as_of))
    return assemble(snap, prof, as_of)


def assemble(snap: pd.DataFrame, prof: pd.DataFrame, as_of) -> pd.DataFrame:
    """Scores, segments, tiers, stages and tags from one snapshot row per customer and the profile."""
    df = snap.merge(prof, on="customer_id", how="left")
    buyers = df["frequency"] > 0
    df["r_score"] = np.nan
    df["f_score"] = np.nan
    df["m_score"] = np.nan
    df.loc[buyers, "r_score"] = quintile_score(df.loc[buyers, "recency_days"], higher_is_better=False)
    df.loc[buyers, "f_score"] = quintile_score(df.loc[buyers, "frequency"])
    df.loc[buyers, "m_score"] = quintile_score(df.loc[buyers, "monetary"])
    df["rfm_score"] = [
        f"{int(r)}{int(f)}{int(m)}" if pd.notna(r) else None for r, f, m in zip(df.r_score, df.f_score, df.m_score)
    ]
    df["rfm_segment"] = [rfm_segment(r, f) if pd.notna(r) else None for r, f in zip(df.r_score, df.f_score)]
    df["revenue_365d"] = df["spend_365d_net"].clip(lower=0.0)
    total = df["revenue_365d"].sum()
    df["revenue_share"] = df["revenue_365d"] / total if total > 0 else 0.0
    df["value_tier"] = value_tiers(df["revenue_365d"])
    df["lifecycle_stage"] = lifecycle_stages(df)
    prices = df.loc[buyers, "mean_unit_price"].dropna()
    df["price_band"] = None
    if len(prices) >= 3:
        lo, hi = prices.quantile([1 / 3, 2 / 3])
        band = np.where(df["mean_unit_price"] <= lo, "low", np.where(df["mean_unit_price"] <= hi, "mid", "high"))
        df["price_band"] = pd.Series(band, index=df.index).where(df["mean_unit_price"].notna(), None)
    df["active_365d"] = df["eligible"]
    df["as_of"] = str(pd.Timestamp(as_of).date())
    df["tags"] = df.apply(_tags, axis=1)
    cols = [
        "customer_id", "as_of", "r_score", "f_score", "m_score", "rfm_score", "rfm_segment", "revenue_365d",
        "revenue_share", "value_tier", "lifecycle_stage", "active_365d", "favourite_category", "price_band",
        "mean_unit_price", "preferred_channel", "preferred_weekday", "discount_affinity", "tags",
        *CUSTOMER360_FEATURES,
    ]
    out = df[cols].copy()
    for col in ("r_score", "f_score", "m_score"):
        out[col] = out[col].astype("Int64")
    for col in ("rfm_score", "rfm_segment", "value_tier", "lifecycle_stage", "favourite_category", "price_band",
                "preferred_channel", "preferred_weekday", "tags", "as_of"):
        out[col] = out[col].astype("string")
    return out.sort_values("customer_id", kind="stable").reset_index(drop=True)


def records(df: pd.DataFrame) -> list[dict]:
    """JSON-serialisable dicts of customer 360 rows (NaN/NA -> None, numpy -> Python, tags -> list)."""
    out = []
    for row in df.to_dict("records"):
        rec = {}
        for key, value in row.items():
            if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
                rec[key] = None
            elif isinstance(value, np.generic):
                rec[key] = value.item()
            elif isinstance(value, pd.Timestamp):
                rec[key] = value.isoformat()
            else:
                rec[key] = value
        if "tags" in rec:
            rec["tags"] = [t for t in (rec["tags"] or "").split(", ") if t]
        out.append(rec)
    return out


def segment_sizes(c360: pd.DataFrame) -> dict:
    """Customers per RFM segment, value tier and lifecycle stage (for the CLI and the report)."""
    def counts(col, order):
        vc = c360[col].value_counts()
        return {k: int(vc.get(k, 0)) for k in order if vc.get(k, 0)}

    return {
        "rfm_segment": counts("rfm_segment", SEGMENTS),
        "value_tier": counts("value_tier", ("A", "B", "C")),
        "lifecycle_stage": counts("lifecycle_stage", STAGES),
        "revenue_share_by_tier": {
            k: float(v) for k, v in c360.groupby("value_tier")["revenue_share"].sum().items()
        },
    }


def describe_fields() -> dict[str, str]:
    return dict(catalog.INSIGHT_FIELDS)
