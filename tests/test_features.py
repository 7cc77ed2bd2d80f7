"""Features, labels and customer insight: hand-computed values on a tiny shop, rules, the CLI, the real data."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from features import catalog
from features.insight import (
    build_customer360,
    lifecycle_stages,
    quintile_score,
    records,
    rfm_segment,
    segment_sizes,
    value_tiers,
)
from features.snapshots import OUTPUT_COLUMNS, build_snapshots, default_cutoffs, parse_cutoffs

C = pd.Timestamp("2024-07-01")  # the cutoff of the tiny shop
DAY = pd.Timedelta(days=1)


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s)


def days_before(t: str, cutoff=C) -> float:
    return (cutoff - ts(t)) / DAY


@pytest.fixture(scope="module")
def tiny() -> dict[str, pd.DataFrame]:
    """A shop small enough to compute every feature by hand (see the comments)."""
    ev = [
        # customer a: four orders before C, one return, views and a cart; buys again 31 days after C
        ("a", "x", "purchase", "2023-07-15 10:00", 1, 10.0, "o1", "web"),
        ("a", "y", "purchase", "2023-07-15 10:00", 2, 20.0, "o1", "web"),
        ("a", "x", "purchase", "2024-03-01 12:00", 3, 30.0, "o2", "app"),
        ("a", "z", "purchase", "2024-05-01 00:00", 1, 40.0, "o3", "web"),
        ("a", "y", "purchase", "2024-06-25 06:00", 2, 50.0, "o4", "web"),
        ("a", "x", "return", "2024-06-28 09:00", 1, 10.0, "r1", "web"),
        ("a", "x", "view", "2024-06-20 00:00", None, None, None, "web"),
        ("a", "y", "view", "2024-04-05 00:00", None, None, None, "web"),
        ("a", "y", "cart", "2024-06-20 00:00", None, None, None, "web"),
        ("a", "y", "purchase", "2024-08-01 10:00", 1, 25.0, "o5", "web"),
        # b: one purchase 427 days before C: not eligible (365 days)
        ("b", "x", "purchase", "2023-05-01 00:00", 1, 5.0, "o6", "store"),
        # c: one purchase a minute before C, one exactly at C (label window, not a feature)
        ("c", "x", "purchase", "2024-06-30 23:59", 1, 7.0, "o7", "web"),
        ("c", "z", "purchase", "2024-07-01 00:00", 1, 9.0, "o8", "web"),
        # d: one purchase 30.5 days before C, nothing after: churned
        ("d", "z", "purchase", "2024-05-31 12:00", 2, 12.0, "o9", "app"),
        # e: first purchase after C (not in the snapshot at C); its purchase sets the end of the data
        ("e", "x", "purchase", "2024-10-15 12:00", 1, 3.0, "o10", "web"),
    ]
    events = pd.DataFrame(ev, columns=["customer_id", "item_id", "event_type", "timestamp", "quantity", "amount",
                                       "order_id", "channel"])
    events["timestamp"] = pd.to_datetime(events["timestamp"])
    items = pd.DataFrame({"item_id": ["x", "y", "z"], "category": ["A", "B", "A"], "price": [10.0, 10.0, 40.0]})
    tickets = pd.DataFrame(
        [
            ("a", "2024-06-01 10:00", "complaint", "2024-07-05 10:00", 2.0),  # unresolved at C
            ("a", "2024-01-10 10:00", "complaint", "2024-01-12 10:00", 4.0),
            ("a", "2024-05-01 10:00", "inquiry", "2024-05-02 10:00", 5.0),
            ("a", "2024-07-10 10:00", "complaint", None, 1.0),  # after C
        ],
        columns=["customer_id", "opened_at", "kind", "resolved_at", "satisfaction"],
    )
    campaigns = pd.DataFrame(
        [
            ("a", "k1", "2024-06-15 09:00", "2024-06-16 09:00"),
            ("a", "k2", "2024-05-01 09:00", None),
            ("a", "k3", "2024-06-28 09:00", "2024-07-02 09:00"),  # answered after C: not known at C
            ("a", "k0", "2023-01-01 09:00", "2023-01-02 09:00"),  # older than 365 days
        ],
        columns=["customer_id", "campaign_id", "sent_at", "responded_at"],
    )
    customers = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d", "e"],
            "first_seen": pd.to_datetime(["2023-06-01", "2023-05-01", "2024-06-30", "2024-05-31", "2024-10-15"]),
            "country": ["United Kingdom", "France", "Germany", "Spain", "Ireland"],
            "birth_year": [1980, None, 1990, None, None],
            "membership_tier": ["gold", "none", "none", "silver", "none"],
            "points": [120.0, 0, 0, 10, 0],
        }
    )
    return {"events": events, "items": items, "tickets": tickets, "campaigns": campaigns, "customers": customers}


@pytest.fixture(scope="module")
def snap_c(tiny) -> pd.DataFrame:
    return build_snapshots(tiny, [C]).set_index("customer_id")


# -------------------------------------------------------------------------------------------- catalog
def test_catalog_is_complete_and_readable():
    names = catalog.feature_names()
    assert len(names) == len(set(names)) >= 50
    for f in catalog.FEATURES.values():
        assert f.meaning and f.window and f.unit and f.group
        assert f.direction in (catalog.MORE_RISK, catalog.LESS_RISK, catalog.NEUTRAL)
        sentence = f.sentence("gold" if f.dtype == "category" else 3.0)
        assert "{" not in sentence and sentence
    assert catalog.reason("recency_days", 143.2) == "no purchase for 143 days"
    assert catalog.reason("recency_gap_ratio", 2.54) == "2.5x the usual gap between purchases"
    assert catalog.reason("complaints_unresolved", 2) == "2 unresolved complaints"
    assert catalog.reason("recency_days", float("nan")).endswith("unknown")
    assert catalog.reason("recency_days", pd.NA).endswith("unknown")
    assert catalog.FEATURES["recency_days"].higher_means == "more risk"
    assert catalog.FEATURES["orders_90d"].higher_means == "less risk"


def test_snapshot_columns_follow_the_catalog(snap_c):
    assert list(snap_c.reset_index().columns) == OUTPUT_COLUMNS
    for name in catalog.categorical_feature_names():
        assert snap_c[name].dtype == "string"
    for name in catalog.numeric_feature_names():
        assert snap_c[name].dtype == "float64"


# -------------------------------------------------------------------------------------------- features
def test_population_is_the_eligible_customers(snap_c):
    # b bought 427 days before C; e only after C
    assert sorted(snap_c.index) == ["a", "c", "d"]
    assert snap_c["eligible"].all()


def test_recency_frequency_monetary_tenure(snap_c):
    a = snap_c.loc["a"]
    assert a.recency_days == pytest.approx(5.75)  # 2024-06-25 06:00
    assert a.frequency == 4
    assert a.monetary == pytest.approx(150.0)
    assert a.avg_order_value == pytest.approx(37.5)
    assert a.tenure_days == pytest.approx(days_before("2023-06-01"))  # signup before the first order
    assert a.purchase_days == 4
    c = snap_c.loc["c"]
    assert c.recency_days == pytest.approx(1 / 1440)  # one minute; the purchase at C is not a feature
    assert c.frequency == 1 and c.monetary == pytest.approx(7.0)


def test_windows_and_trends(snap_c):
    a = snap_c.loc["a"]
    # orders 352, 122, 61 and 5.75 days before C
    assert [a[f"orders_{w}d"] for w in catalog.WINDOWS] == [1, 1, 2, 3, 4]
    assert [a[f"spend_{w}d"] for w in catalog.WINDOWS] == pytest.approx([50, 50, 90, 120, 150])
    # last 90 days: 2 orders, 90 spend; the 90 before: 1 order (2024-03-01), 30 spend
    assert a.orders_trend_90d == pytest.approx(2.0)
    assert a.spend_trend_90d == pytest.approx(3.0)
    # d has nothing in the 90 days before the last 90: no trend
    assert math.isnan(snap_c.loc["d"].orders_trend_90d)
    # same weeks last year: [C-365d, C-275d) = [2023-07-02, 2023-09-30) holds o1
    assert a.orders_same_weeks_last_year == 1


def test_purchase_gaps(snap_c):
    a = snap_c.loc["a"]
    gaps = np.diff([ts(d).toordinal() for d in ("2023-07-15", "2024-03-01", "2024-05-01", "2024-06-25")])
    assert list(gaps) == [230, 61, 55]
    assert a.gap_mean_days == pytest.approx(gaps.mean())
    assert a.gap_std_days == pytest.approx(gaps.std(ddof=1))
    assert a.recency_gap_ratio == pytest.approx(5.75 / gaps.mean())
    d = snap_c.loc["d"]
    assert math.isnan(d.gap_mean_days) and math.isnan(d.gap_std_days) and math.isnan(d.recency_gap_ratio)


def test_baskets_items_categories_returns(snap_c):
    a = snap_c.loc["a"]
    assert a.basket_size == pytest.approx(9 / 4)
    assert a.basket_lines == pytest.approx(5 / 4)
    assert a.distinct_items == 3
    assert a.distinct_categories == 2
    assert a.top_category_share == pytest.approx(80 / 150)  # A: 10 + 30 + 40
    assert a.return_rate == pytest.approx(1 / 5)
    assert a.return_amount_rate == pytest.approx(10 / 150)
    assert a.cancellation_rate == pytest.approx(1 / 4)
    assert a.returns_90d == 1
    assert snap_c.loc["d"].return_rate == 0


def test_tickets_campaigns_views(snap_c):
    a = snap_c.loc["a"]
    assert a.tickets_365d == 3
    assert a.complaints_90d == 1
    assert a.complaints_365d == 2
    assert a.complaints_unresolved == 1  # resolved only after C
    assert a.days_since_complaint == pytest.approx(days_before("2024-06-01 10:00"))
    assert a.satisfaction_mean == pytest.approx(4.5)  # tickets resolved before C: 4 and 5
    assert a.campaigns_90d == 3 and a.campaigns_365d == 3
    assert a.campaign_response_rate == pytest.approx(1 / 3)
    assert a.views_30d == 1 and a.views_90d == 2 and a.carts_90d == 1
    assert a.view_conversion_90d == pytest.approx(2 / 2)  # two purchase lines in 90 days
    assert a.cart_conversion_90d == pytest.approx(2 / 1)
    assert a.days_since_view == pytest.approx(11.0)
    d = snap_c.loc["d"]
    assert d.complaints_365d == 0 and math.isnan(d.days_since_complaint) and math.isnan(d.satisfaction_mean)
    assert d.campaigns_365d == 0 and math.isnan(d.campaign_response_rate)
    assert d.views_90d == 0 and math.isnan(d.view_conversion_90d)


def test_customer_attributes(snap_c):
    a = snap_c.loc["a"]
    assert a.membership_tier == "gold" and a.points == 120 and a.country == "United Kingdom"
    assert a.age == 2024 - 1980
    assert pd.isna(snap_c.loc["d"].age)


# -------------------------------------------------------------------------------------------- labels
def test_labels(tiny, snap_c):
    assert snap_c["label_available"].all()
    assert snap_c.loc["a", "churned"] == 0  # buys 31 days after C
    assert snap_c.loc["c", "churned"] == 0  # buys at C itself: [C, C + 90)
    assert snap_c.loc["d", "churned"] == 1
    short = build_snapshots(tiny, [C], horizon_days=30).set_index("customer_id")
    assert short.loc["a", "churned"] == 1  # 31 days is outside a 30-day horizon


def test_label_null_when_horizon_exceeds_data(tiny):
    # the data ends 2024-10-15 12:00: cutoff + 90 days must not pass it
    snap = build_snapshots(tiny, ["2024-07-17", "2024-07-18"], horizon_days=90)
    by_cut = snap.groupby("cutoff")
    assert by_cut["label_available"].all().to_dict() == {ts("2024-07-17"): True, ts("2024-07-18"): False}
    late = snap[snap.cutoff == ts("2024-07-18")]
    assert late["churned"].isna().all() and len(late) > 0


def test_eligibility_window_is_configurable(tiny):
    snap = build_snapshots(tiny, [C], eligibility_days=30)
    assert sorted(snap.customer_id) == ["a", "c"]  # d bought 30.5 days before C
    snap = build_snapshots(tiny, [C], eligibility_days=31)
    assert sorted(snap.customer_id) == ["a", "c", "d"]


def test_include_ineligible(tiny):
    snap = build_snapshots(tiny, [C], include_ineligible=True).set_index("customer_id")
    assert sorted(snap.index) == ["a", "b", "c", "d"]  # e signs up after C
    assert not snap.loc["b", "eligible"]
    assert snap.loc["b", "recency_days"] == pytest.approx(days_before("2023-05-01"))


def test_many_cutoffs_in_one_pass_equal_single_runs(tiny):
    cutoffs = [ts("2024-01-01"), ts("2024-04-01"), C]
    many = build_snapshots(tiny, cutoffs, include_ineligible=True)
    one_by_one = pd.concat([build_snapshots(tiny, [c], include_ineligible=True) for c in cutoffs],
                           ignore_index=True)
    pd.testing.assert_frame_equal(many, one_by_one)


def test_events_only_data_gives_null_optional_features(tiny):
    snap = build_snapshots({"events": tiny["events"]}, [C]).set_index("customer_id")
    for name in ("complaints_unresolved", "satisfaction_mean", "campaigns_90d", "distinct_categories",
                 "top_category_share", "membership_tier", "points", "country", "age"):
        assert snap[name].isna().all(), name
    assert snap.loc["a", "frequency"] == 4
    assert snap.loc["a", "tenure_days"] == pytest.approx(days_before("2023-07-15 10:00"))
    purchases = tiny["events"][tiny["events"].event_type == "purchase"]
    snap = build_snapshots({"events": purchases}, [C])
    assert snap["views_30d"].isna().all() and snap["carts_90d"].isna().all()


def test_cutoff_helpers():
    assert parse_cutoffs("2010-01-01:2010-03-02:30D") == [ts("2010-01-01"), ts("2010-01-31"), ts("2010-03-02")]
    assert parse_cutoffs("2010-01-01:2010-03-01:1M") == [ts("2010-01-01"), ts("2010-02-01"), ts("2010-03-01")]
    ev = pd.DataFrame({"timestamp": pd.to_datetime(["2019-01-01 00:00", "2021-12-31 15:00"])})
    cuts = default_cutoffs(ev, horizon_days=90, n=24, step_days=30)
    assert cuts[-1] == ts("2021-12-31") - 90 * DAY and len(cuts) == 24
    assert all(b - a == 30 * DAY for a, b in zip(cuts, cuts[1:]))


# -------------------------------------------------------------------------------------------- insight rules
def test_quintile_scores_share_ties():
    s = quintile_score(pd.Series([1, 1, 1, 1, 2, 3, 4, 5, 6, 7]))
    assert list(s) == [1, 1, 1, 1, 3, 3, 4, 4, 5, 5]
    r = quintile_score(pd.Series([1.0, 50, 100, 200, 400]), higher_is_better=False)
    assert list(r) == [5, 4, 3, 2, 1]


def test_rfm_segment_rules():
    assert rfm_segment(5, 5) == "champions"
    assert rfm_segment(5, 4) == "champions"
    assert rfm_segment(4, 5) == "loyal"
    assert rfm_segment(3, 4) == "loyal"
    assert rfm_segment(5, 1) == "new"
    assert rfm_segment(4, 1) == "promising"
    assert rfm_segment(5, 2) == "potential_loyalists"
    assert rfm_segment(3, 3) == "need_attention"
    assert rfm_segment(3, 1) == "about_to_sleep"
    assert rfm_segment(2, 3) == "at_risk"
    assert rfm_segment(1, 5) == "cannot_lose"
    assert rfm_segment(2, 2) == "hibernating"
    assert rfm_segment(1, 1) == "lost"
    assert rfm_segment(float("nan"), 3) is None


def test_value_tiers_on_a_pareto_example():
    # 10 customers: two bring 80% of revenue, the next two 15%, the rest 5%; one has nothing
    rev = pd.Series([500, 300, 100, 50, 20, 10, 10, 5, 5, 0], index=list("abcdefghij"), dtype=float)
    tiers = value_tiers(rev)
    assert tiers.to_dict() == {"a": "A", "b": "A", "c": "B", "d": "B", "e": "C", "f": "C", "g": "C", "h": "C",
                               "i": "C", "j": "C"}
    assert value_tiers(pd.Series([0.0, 0.0])).tolist() == ["C", "C"]
    # one customer above 80% on their own is tier A alone
    assert value_tiers(pd.Series([900.0, 50, 50])).tolist() == ["A", "B", "C"]


def test_lifecycle_rules():
    df = pd.DataFrame(
        {
            "frequency": [0, 3, 1, 5, 5, 5, 5],
            "recency_days": [np.nan, 200, 20, 40, 100, 10, 10],
            "recency_gap_ratio": [np.nan, 3, np.nan, 1, 1, 0.5, 0.5],
            "first_purchase_days": [np.nan, 400, 20, 300, 300, 300, 300],
            "max_recent_gap": [np.nan, np.nan, np.nan, np.nan, np.nan, 200, 30],
        }
    )
    assert list(lifecycle_stages(df)) == ["prospect", "lapsed", "new", "active", "at_risk", "won_back", "active"]
    df.loc[3, "recency_gap_ratio"] = 2.5  # 40 days and 2.5x the usual gap
    assert lifecycle_stages(df)[3] == "at_risk"


def test_customer360_tiny(tiny):
    c360 = build_customer360(tiny, as_of=C).set_index("customer_id")
    assert sorted(c360.index) == ["a", "b", "c", "d"]
    a = c360.loc["a"]
    assert a.favourite_category == "A"
    assert a.preferred_channel == "web"
    assert a.preferred_weekday in ("Monday", "Saturday", "Wednesday", "Friday", "Tuesday", "Sunday", "Thursday")
    assert a.discount_affinity == pytest.approx(0.0)  # paid 10/unit for x and y, 40 for z
    assert c360.loc["d", "discount_affinity"] == pytest.approx(1.0)  # 6 per unit of a 40 item
    assert a.lifecycle_stage == "active" and a.value_tier == "A"
    assert c360.loc["b", "lifecycle_stage"] == "lapsed"
    assert c360.loc["c", "lifecycle_stage"] == "new"
    recs = records(c360.reset_index())
    json.dumps(recs, allow_nan=False)
    assert isinstance(recs[0]["tags"], list)


# -------------------------------------------------------------------------------------------- synthetic + CLI
@pytest.fixture(scope="module")
def synthetic_ws(tmp_path_factory):
    from features import synthetic
    from features.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("syn") / "workspace")
    tables = synthetic.generate(n_customers=600, seed=3)
    synthetic.write(ws, tables, seed=3, n_customers=600)
    return ws


def test_cli_writes_tables_and_summary(synthetic_ws):
    from typer.testing import CliRunner

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["features", "--workspace", str(synthetic_ws.root), "--cutoff", "2024-06-01",
                                      "--cutoffs", "2024-01-01:2024-05-01:1M", "--horizon", "60"])
    assert result.exit_code == 0, result.output
    assert "churn rate" in result.output and "champions" in result.output.lower() or "loyal" in result.output
    from features.churn_features import feature_matrix, stored_cutoffs

    wanted = [pd.Timestamp(d) for d in ("2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01", "2024-05-01",
                                        "2024-06-01")]
    assert set(wanted) <= set(stored_cutoffs(synthetic_ws, horizon_days=60))  # stored by `crmml features`
    snap = feature_matrix(synthetic_ws, wanted, horizon_days=60)
    assert snap["cutoff"].nunique() == 6
    assert snap["churned"].notna().all()
    c360 = synthetic_ws.read_table("customer360", kind="features")
    assert c360["customer_id"].is_unique and len(c360) > 500
    assert set(c360["value_tier"]) == {"A", "B", "C"}
    summary = json.loads((synthetic_ws.features_dir / "features_summary.json").read_text())
    assert summary["focus_cutoff"] == "2024-06-01" and summary["customer360"]["customers"] == len(c360)
    assert 0.1 < [r for r in summary["cutoffs"] if r["cutoff"] == "2024-06-01"][0]["churn_rate"] < 0.9

    result = CliRunner().invoke(app, ["features", "--catalog"])
    assert result.exit_code == 0 and "recency_days" in result.output


# -------------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_data_cutoff_2011_09_09(real_workspace):
    snap = build_snapshots(real_workspace, ["2011-09-09"], horizon_days=90, eligibility_days=365)
    assert 4000 <= len(snap) <= 4600
    assert snap["label_available"].all()
    assert 0.40 <= snap["churned"].mean() <= 0.60
    assert snap["complaints_unresolved"].isna().all()  # no tickets in this source: NULL, not 0
    c360 = build_customer360(real_workspace, as_of="2011-09-09")
    sizes = segment_sizes(c360)
    assert sum(sizes["value_tier"].values()) == len(c360)
    assert sizes["revenue_share_by_tier"]["A"] == pytest.approx(0.80, abs=0.01)
    assert sizes["value_tier"]["A"] < 0.3 * len(c360)  # the few who bring most of the revenue
    assert {"champions", "lost", "at_risk"} <= set(sizes["rfm_segment"])


def test_duckdb_features_equal_an_independent_pandas_implementation():
    """bench/bench_features.py holds a plain pandas version of every feature: both must agree."""
    from bench.bench_features import compare, pandas_snapshots
    from features import synthetic

    tables = synthetic.generate(n_customers=500, seed=9)
    tables.pop("ground_truth", None)
    cutoffs = [pd.Timestamp("2023-09-01"), pd.Timestamp("2024-05-01"), pd.Timestamp("2024-12-01")]
    for include, once in ((False, False), (True, True)):
        ours = build_snapshots(tables, cutoffs, include_ineligible=include)
        ref = pandas_snapshots(tables, cutoffs, include_ineligible=include, reduce_once=once)
        result = compare(ref, ours)
        assert result["same_keys"] and result["equal"], result
