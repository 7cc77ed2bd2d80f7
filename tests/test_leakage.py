"""Proof against leakage: features see only the past of a cutoff, labels only its future."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import catalog, synthetic
from features.snapshots import build_snapshots

CUTOFFS = [pd.Timestamp("2024-03-01"), pd.Timestamp("2024-07-15")]
FEATURES = catalog.feature_names()
KEYS = ["customer_id", "cutoff"]


@pytest.fixture(scope="module")
def shop() -> dict[str, pd.DataFrame]:
    tables = synthetic.generate(n_customers=800, seed=11)
    tables.pop("ground_truth", None)
    return tables


def truncate(tables: dict[str, pd.DataFrame], cutoff: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """The shop as it was known at ``cutoff``: nothing from ``cutoff`` on (open tickets, unanswered campaigns)."""
    out = dict(tables)
    ev = tables["events"]
    out["events"] = ev[ev["timestamp"] < cutoff].reset_index(drop=True)
    tk = tables["tickets"]
    tk = tk[tk["opened_at"] < cutoff].copy()
    tk.loc[tk["resolved_at"] >= cutoff, "resolved_at"] = pd.NaT
    out["tickets"] = tk.reset_index(drop=True)
    cm = tables["campaigns"]
    cm = cm[cm["sent_at"] < cutoff].copy()
    cm.loc[cm["responded_at"] >= cutoff, "responded_at"] = pd.NaT
    out["campaigns"] = cm.reset_index(drop=True)
    return out


def assert_same_features(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = KEYS + FEATURES + ["eligible"]
    a = a[cols].sort_values(KEYS).reset_index(drop=True)
    b = b[cols].sort_values(KEYS).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-10, atol=1e-9)


@pytest.fixture(scope="module")
def full(shop) -> pd.DataFrame:
    return build_snapshots(shop, CUTOFFS, include_ineligible=True)


@pytest.mark.parametrize("cutoff", CUTOFFS)
def test_features_equal_on_data_cut_at_the_cutoff(shop, full, cutoff):
    """Recompute from the raw data cut at the cutoff: identical features (and the multi-cutoff run agrees)."""
    cut = build_snapshots(truncate(shop, cutoff), [cutoff], include_ineligible=True)
    assert len(cut) > 300
    assert_same_features(full[full["cutoff"] == cutoff], cut)
    # the truncated data has no future: no label
    assert not cut["label_available"].any() and cut["churned"].isna().all()


def test_future_changes_do_not_move_features(shop, full):
    """Rewrite everything after the first cutoff: features at that cutoff do not move, labels do."""
    c = CUTOFFS[0]
    ev = shop["events"]
    rng = np.random.default_rng(0)
    future = ev[ev["timestamp"] >= c]
    future = future[rng.random(len(future)) < 0.5].copy()  # drop half of the future
    future["amount"] = future["amount"] * 3
    extra = ev[ev["timestamp"] < c].drop_duplicates("customer_id").copy()  # everyone buys the day after c
    extra["event_type"] = "purchase"
    extra["timestamp"] = c + pd.Timedelta(hours=30)
    extra["order_id"] = "future-" + extra["customer_id"].astype(str)
    events = pd.concat([ev[ev["timestamp"] < c], future, extra], ignore_index=True)
    changed = {**shop, "events": events}
    after = build_snapshots(changed, [c], include_ineligible=True)
    assert_same_features(full[full["cutoff"] == c], after)
    labelled = after[after["label_available"] & after["eligible"]]
    assert (labelled["churned"] == 0).all()  # the future purchase is seen by the labels
    assert (full.loc[(full["cutoff"] == c) & full["eligible"], "churned"] == 1).any()


def test_labels_never_read_before_the_cutoff(shop, full):
    """Rewrite everything before the last cutoff: labels at that cutoff do not move."""
    c = CUTOFFS[1]
    rng = np.random.default_rng(1)
    ev = shop["events"]
    past, future = ev[ev["timestamp"] < c].copy(), ev[ev["timestamp"] >= c]
    past = past[past["event_type"] == "purchase"]  # no more views, carts, returns
    past = past[rng.random(len(past)) < 0.7].copy()  # a third of the purchase lines gone
    past["amount"] = past["amount"] * 7
    past["item_id"] = rng.permutation(past["item_id"].to_numpy())
    past["timestamp"] = past["timestamp"] - pd.to_timedelta(rng.integers(0, 3, len(past)), unit="D")
    changed = {
        **shop,
        "events": pd.concat([past, future], ignore_index=True),
        "tickets": shop["tickets"][shop["tickets"]["opened_at"] >= c],
        "campaigns": shop["campaigns"][shop["campaigns"]["sent_at"] >= c],
    }
    after = build_snapshots(changed, [c], include_ineligible=True)
    before = full[full["cutoff"] == c]
    both = before.merge(after, on=KEYS, suffixes=("_before", "_after"))
    assert len(both) > 0.6 * len(before)
    assert both["label_available_before"].all()
    pd.testing.assert_series_equal(both["churned_before"], both["churned_after"], check_names=False)
    # the features did change (the test would prove nothing otherwise)
    assert not np.allclose(both["monetary_before"], both["monetary_after"])


def test_label_window_bounds():
    """churned looks at [cutoff, cutoff + horizon): a purchase at cutoff counts, one at cutoff + horizon does not."""
    c = pd.Timestamp("2024-03-01")
    rows = [
        ("in_at_cutoff", "2024-02-01 10:00"), ("in_at_cutoff", "2024-03-01 00:00"),
        ("out_at_end", "2024-02-01 10:00"), ("out_at_end", "2024-05-30 00:00"),  # c + 90 days
        ("in_before_end", "2024-02-01 10:00"), ("in_before_end", "2024-05-29 23:59"),
        ("tail", "2024-07-01 00:00"),
    ]
    events = pd.DataFrame(rows, columns=["customer_id", "timestamp"])
    events["timestamp"] = pd.to_datetime(events["timestamp"])
    events["event_type"] = "purchase"
    events["amount"] = 1.0
    events["order_id"] = [f"o{i}" for i in range(len(events))]
    snap = build_snapshots({"events": events}, [c], horizon_days=90).set_index("customer_id")
    assert snap["churned"].to_dict() == {"in_at_cutoff": 0.0, "in_before_end": 0.0, "out_at_end": 1.0}
    assert snap.loc["in_at_cutoff", "frequency"] == 1  # the purchase at the cutoff is not a feature
