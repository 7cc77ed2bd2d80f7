"""The synthetic shop: schema, integrity, time bounds and the planted behaviour."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import contract, synthetic
from features.workspace import Workspace

START, END = "2023-01-01", "2024-12-31"
CANONICAL = ("events", "customers", "items", "tickets", "campaigns")


@pytest.fixture(scope="module")
def shop() -> dict[str, pd.DataFrame]:
    return synthetic.generate(n_customers=1000, seed=11, start=START, end=END)


@pytest.fixture(scope="module")
def purchases(shop) -> pd.DataFrame:
    ev = shop["events"]
    return ev[ev.event_type == "purchase"]


def _lapsed(gt: pd.DataFrame) -> pd.Series:
    return gt.set_index("customer_id").lapse_at.notna()


def test_deterministic():
    a = synthetic.generate(n_customers=300, seed=5)
    b = synthetic.generate(n_customers=300, seed=5)
    assert set(a) == {*CANONICAL, "ground_truth", "tastes", "favourites"}
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    c = synthetic.generate(n_customers=300, seed=6)
    assert not a["events"].equals(c["events"])


def test_tables_conform_unchanged(shop):
    expected = {"string": "string", "category": "string", "datetime": "datetime64[us]", "float": "float64"}
    for name in CANONICAL:
        df = shop[name]
        spec = contract.TABLES[name]
        assert list(df.columns) == spec.column_names, name
        pd.testing.assert_frame_equal(contract.conform(name, df, source="synthetic"), df)
        for col in spec.columns:
            assert str(df[col.name].dtype) == expected[col.dtype], (name, col.name, df[col.name].dtype)
        for col in spec.required_columns:
            assert df[col].notna().all(), (name, col)
        assert len(df) > 0, name


def test_row_checks_pass(shop):
    now = pd.Timestamp(END)
    for name in ("events", "tickets", "campaigns"):
        contract.row_schema(name, now).validate(shop[name], lazy=True)


def test_referential_integrity(shop):
    ev, cu, it = shop["events"], shop["customers"], shop["items"]
    assert cu.customer_id.is_unique and it.item_id.is_unique
    assert ev.item_id.notna().all()
    assert ev.customer_id.isin(cu.customer_id).all()
    assert ev.item_id.isin(it.item_id).all()
    assert shop["tickets"].customer_id.isin(cu.customer_id).all()
    assert shop["campaigns"].customer_id.isin(cu.customer_id).all()
    gt = shop["ground_truth"]
    assert list(gt.customer_id) == list(cu.customer_id)
    assert set(ev.event_type.unique()) == set(contract.EVENT_TYPES)
    assert set(shop["tickets"].kind.unique()) <= set(contract.TICKET_KINDS)


def test_time_bounds(shop):
    start, end = pd.Timestamp(START), pd.Timestamp(END)
    ev, cu = shop["events"], shop["customers"]
    assert ev.timestamp.min() >= start and ev.timestamp.max() <= end
    assert ev.timestamp.is_monotonic_increasing
    signup = cu.set_index("customer_id").first_seen
    assert (ev.timestamp >= signup.loc[ev.customer_id].to_numpy()).all()
    assert (cu.first_seen < start).mean() > 0.1  # some customers signed up before the period
    assert (cu.first_seen >= start).mean() > 0.5
    tk, cp = shop["tickets"], shop["campaigns"]
    assert tk.opened_at.between(start, end).all()
    assert (tk.opened_at >= signup.loc[tk.customer_id].to_numpy()).all()
    assert (tk.resolved_at.dropna() <= end).all()
    assert (tk.resolved_at.dropna() >= tk.opened_at[tk.resolved_at.notna()]).all()
    assert cp.sent_at.between(start, end).all()
    assert (cp.sent_at >= signup.loc[cp.customer_id].to_numpy()).all()
    responded = cp[cp.responded_at.notna()]
    assert len(responded) > 0 and (responded.responded_at > responded.sent_at).all()
    assert (responded.responded_at <= end).all()


def test_no_purchase_after_lapse(shop, purchases):
    gt = shop["ground_truth"].set_index("customer_id")
    lapse = gt.lapse_at.loc[purchases.customer_id].to_numpy()
    after = (~pd.isna(lapse)) & (purchases.timestamp.to_numpy() >= lapse)
    assert not after.any()
    # lapse moments lie in the period and drivers are consistent with them
    assert gt.lapse_at.dropna().between(pd.Timestamp(START), pd.Timestamp(END)).all()
    assert ((gt.lapse_driver == "none") == gt.lapse_at.isna()).all()
    assert set(gt.lapse_driver.unique()) <= {"none", "baseline", "complaints", "early"}
    assert (gt.loc[gt.lapse_driver == "complaints", "n_complaints_before_lapse"] >= 1).all()
    # a lapsed customer has no complaint ticket after the lapse
    tk = shop["tickets"]
    comp = tk[tk.kind == "complaint"]
    lapse_c = gt.lapse_at.loc[comp.customer_id].to_numpy()
    assert not ((~pd.isna(lapse_c)) & (comp.opened_at.to_numpy() >= lapse_c)).any()
    counts = comp.groupby("customer_id").size().reindex(gt.index, fill_value=0)
    assert (counts == gt.n_complaints_before_lapse).all()


def test_orders_and_returns(shop, purchases):
    items = shop["items"].set_index("item_id")
    lines = purchases.groupby("order_id").size()
    assert lines.min() >= 1 and lines.max() <= 8 and 1.5 < lines.mean() < 3.5
    assert (purchases.groupby("order_id").customer_id.nunique() == 1).all()
    assert (purchases.groupby("order_id").timestamp.nunique() == 1).all()
    assert not purchases.duplicated(["order_id", "item_id"]).any()
    assert (purchases.quantity >= 1).all() and (purchases.amount > 0).all()
    ratio = purchases.amount / (purchases.quantity * items.price.loc[purchases.item_id].to_numpy())
    discounted = ~np.isclose(ratio, 1.0, atol=0.01)
    assert 0.03 < discounted.mean() < 0.25  # occasional discounts
    assert ratio.between(0.69, 1.01).all()
    ev = shop["events"]
    assert ev.loc[ev.event_type.isin(["view", "cart"]), "order_id"].isna().all()
    assert ev.loc[ev.event_type.isin(["purchase", "return"]), "order_id"].notna().all()
    returns = ev[ev.event_type == "return"]
    assert 0.01 < len(returns) / len(purchases) < 0.10
    matched = returns.merge(purchases, on=["order_id", "item_id"], suffixes=("", "_p"), validate="one_to_one")
    assert len(matched) == len(returns)
    assert (matched.customer_id == matched.customer_id_p).all()
    assert (matched.timestamp > matched.timestamp_p).all()
    assert ((matched.quantity > 0) & (matched.quantity <= matched.quantity_p)).all()
    assert ((matched.amount > 0) & (matched.amount <= matched.amount_p + 0.01)).all()
    assert set(ev.channel.unique()) == {"web", "app", "store"}


def test_funnel(shop):
    counts = shop["events"].event_type.value_counts()
    assert counts["view"] > counts["cart"] > counts["purchase"] > counts["return"]
    assert counts["view"] >= 2.5 * counts["purchase"]  # views several times the purchases
    # roughly 100 events per customer at the default density
    assert 60_000 < counts.sum() < 150_000


def test_unresolved_complaints_raise_lapse_rate(shop):
    gt, tk = shop["ground_truth"], shop["tickets"]
    lapsed = _lapsed(gt)
    complaints = tk[tk.kind == "complaint"]
    assert complaints.resolved_at.notna().any() and complaints.resolved_at.isna().any()
    unresolved = lapsed.index.isin(complaints[complaints.resolved_at.isna()].customer_id)
    assert unresolved.sum() >= 100
    with_rate, without_rate = lapsed[unresolved].mean(), lapsed[~unresolved].mean()
    assert with_rate > without_rate + 0.12 and with_rate > 1.4 * without_rate, (with_rate, without_rate)
    # a noticeable share of the churners is complaint-driven
    drivers = gt.lapse_driver[gt.lapse_at.notna()]
    assert (drivers == "complaints").mean() >= 0.15
    # unresolved complaints are rated worse
    sat = complaints.dropna(subset=["satisfaction"])
    assert sat.satisfaction.between(1, 5).all()
    assert sat[sat.resolved_at.isna()].satisfaction.mean() < sat[sat.resolved_at.notna()].satisfaction.mean() - 0.8


def test_members_lapse_less(shop):
    gt, cu = shop["ground_truth"], shop["customers"]
    assert 0.22 < gt.is_member.mean() < 0.38
    assert ((cu.membership_tier != "none").to_numpy() == gt.is_member.to_numpy()).all()
    assert (cu.loc[cu.membership_tier == "none", "points"] == 0).all()
    assert (cu.loc[cu.membership_tier != "none", "points"] > 0).mean() > 0.9
    lapsed = _lapsed(gt).to_numpy()
    member = gt.is_member.to_numpy()
    assert lapsed[member].mean() < lapsed[~member].mean() - 0.06


def test_churn_rate_at_cutoff(purchases):
    cutoff = pd.Timestamp(END) - pd.DateOffset(months=9)
    ts = purchases.timestamp
    prior = purchases[(ts < cutoff) & (ts >= cutoff - pd.Timedelta(days=365))].customer_id.unique()
    later = purchases[(ts >= cutoff) & (ts < cutoff + pd.Timedelta(days=90))].customer_id.unique()
    churn = 1.0 - pd.Index(prior).isin(later).mean()
    assert len(prior) > 400
    assert 0.30 <= churn <= 0.50, churn


def test_heterogeneous_customers(shop, purchases):
    cu, gt = shop["customers"], shop["ground_truth"]
    per_customer = purchases.groupby("customer_id").order_id.nunique().sort_values(ascending=False)
    top = per_customer.head(len(cu) // 10).sum() / per_customer.sum()
    assert top > 0.3  # heavy buyers
    assert gt.base_rate.max() > 5 * gt.base_rate.median() and (gt.base_rate > 0).all()
    assert cu.country.value_counts(normalize=True).iloc[0] > 0.5 and cu.country.nunique() >= 4
    assert cu.gender.nunique() >= 2 and cu.acquisition_channel.nunique() >= 4
    assert cu.birth_year.dropna().between(1930, 2010).all()
    # a customer buying more often has more orders
    orders = per_customer.reindex(gt.customer_id, fill_value=0).to_numpy()
    assert np.corrcoef(gt.base_rate.to_numpy(), orders)[0, 1] > 0.4


def test_catalogue(shop, purchases):
    it = shop["items"]
    assert len(it) == 300  # max(300, n_customers // 5)
    assert 10 <= it.category.nunique() <= 20
    assert (it.price > 0).all() and it.name.notna().all()
    # long tail: the top 10% of items get a large share of the purchases
    sold = purchases.item_id.value_counts()
    assert sold.head(len(it) // 10).sum() / sold.sum() > 0.3
    assert synthetic.generate(50, seed=1, n_items=120)["items"].shape[0] == 120


def test_co_purchase_structure(shop, purchases):
    cat = shop["items"].set_index("item_id").category
    lines = purchases[["order_id", "item_id"]].assign(category=cat.loc[purchases.item_id].to_numpy())
    pairs = lines.merge(lines, on="order_id")
    pairs = pairs[pairs.item_id_x < pairs.item_id_y]
    assert len(pairs) > 1000
    same = (pairs.category_x == pairs.category_y).mean()
    chance = (lines.category.value_counts(normalize=True) ** 2).sum()
    assert same > 3 * chance, (same, chance)


def test_planted_tastes_explain_the_purchases(shop, purchases):
    """The tastes and favourites of the ground truth are the ones the purchases were drawn from."""
    tastes, fav, items = shop["tastes"], shop["favourites"], shop["items"]
    assert list(tastes.columns) == ["customer_id", "category", "style", "weight"]
    per = tastes.groupby("customer_id", sort=False)
    assert per.size().between(1, 3).all() and set(per.size().index) == set(shop["customers"].customer_id)
    assert np.allclose(per.weight.sum(), 1.0) and not tastes.duplicated(["customer_id", "category"]).any()
    assert (per.weight.diff().dropna() <= 0).all()  # heaviest taste first
    assert set(tastes["style"]) <= set(synthetic.ADJECTIVES) and tastes["category"].isin(items.category).all()
    assert (fav.groupby("customer_id").size() == synthetic.N_FAVOURITES).all() and fav.item_id.isin(items.item_id).all()
    it = items.assign(style=items.name.str.split(" ").str[0])
    lines = purchases[["customer_id", "item_id"]].merge(it, on="item_id")
    liked = lines.merge(tastes, on=["customer_id", "category", "style"], how="left").weight.notna().mean()
    catalogue = it.groupby(["category", "style"]).size() / len(it)
    chance = tastes.join(catalogue.rename("share"), on=["category", "style"]).groupby("customer_id").share.sum().mean()
    assert liked > 0.5 > 3 * chance  # most lines lie in the planted tastes, a few percent of the catalogue
    bought_fav = lines[["customer_id", "item_id"]].merge(fav.drop_duplicates(), on=["customer_id", "item_id"])
    assert len(bought_fav) / len(lines) > 0.1  # favourites are rebought


def test_repeat_purchases(purchases):
    per_customer = purchases.groupby("customer_id")
    frequent = per_customer.order_id.nunique() >= 5
    rebought = per_customer.item_id.agg(lambda s: s.duplicated().any())
    assert rebought[frequent].mean() > 0.6


def test_campaigns(shop):
    cp, gt = shop["campaigns"], shop["ground_truth"]
    assert cp.campaign_id.nunique() >= 20
    assert 0.01 < cp.responded_at.notna().mean() < 0.2
    # lapsed customers respond far less after their lapse
    lapse = gt.set_index("customer_id").lapse_at.loc[cp.customer_id].to_numpy()
    after = (~pd.isna(lapse)) & (cp.sent_at.to_numpy() >= lapse)
    assert after.sum() > 100
    assert cp.responded_at.notna()[after].mean() < 0.5 * cp.responded_at.notna()[~after].mean()


def test_light_shop_keeps_the_same_orders_without_browsing(shop):
    """Large shops get lighter histories (purchases and returns only); the orders are those of the full shop."""
    light = synthetic.generate(n_customers=1000, seed=11, start=START, end=END, light=True)
    ev, full = light["events"], shop["events"]
    assert set(ev.event_type.unique()) == {"purchase", "return"}
    kept = full[full.event_type.isin(["purchase", "return"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(ev.reset_index(drop=True), kept)
    assert len(ev) / 1000 < 30 < len(full) / 1000  # about 21 events per customer instead of about 107
    for name in ("customers", "tickets", "campaigns", "ground_truth"):
        pd.testing.assert_frame_equal(light[name], shop[name])
    assert synthetic.LIGHT_ABOVE >= 100_000  # the shops of the tests and the demo stay full


def test_small_and_short_shop():
    tables = synthetic.generate(n_customers=7, seed=3, start="2024-01-01 08:30", end="2024-03-01")
    ev = tables["events"]
    assert len(tables["customers"]) == 7 and len(tables["ground_truth"]) == 7
    assert ev.timestamp.between(pd.Timestamp("2024-01-01 08:30"), pd.Timestamp("2024-03-01")).all()
    for name in CANONICAL:
        pd.testing.assert_frame_equal(contract.conform(name, tables[name], source="synthetic"), tables[name])


def test_write(tmp_path):
    tables = synthetic.generate(n_customers=300, seed=2)
    ws = Workspace(tmp_path / "ws")
    ws.write_table("interactions", pd.DataFrame({"customer_id": ["x"], "item_id": ["y"]}))
    record = synthetic.write(ws, tables, seed=2, n_customers=300)
    assert record["source"] == "synthetic" and record["seed"] == 2 and record["n_customers"] == 300
    assert record["tables"] == {name: len(tables[name]) for name in CANONICAL}
    assert ws.ingestions()[-1]["tables"] == record["tables"]
    for name in CANONICAL:
        pd.testing.assert_frame_equal(ws.read_table(name), tables[name])
    assert not ws.has_table("interactions")  # one shop per workspace
    assert not ws.has_table("ground_truth")
    gt = pd.read_parquet(tmp_path / "ws" / "synthetic" / "ground_truth.parquet")
    assert len(gt) == 300 and list(gt.columns) == [
        "customer_id", "lapse_at", "lapse_driver", "base_rate", "is_member", "n_complaints_before_lapse"
    ]  # fmt: skip
    for name in ("tastes", "favourites"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ws" / "synthetic" / f"{name}.parquet"), tables[name])
        assert record[name] == str(tmp_path / "ws" / "synthetic" / f"{name}.parquet")
