"""The churn feature matrix: one function, stored per cutoff, read back exactly; one customer from the same definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import catalog
from features import churn_features as cf
from features.bgnbd import BGNBD, bgnbd_features, purchase_days, transaction_summary

CUTS = [pd.Timestamp(d) for d in ("2024-03-01", "2024-05-01", "2024-07-01")]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from features import synthetic
    from features.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("cf") / "workspace")
    tables = synthetic.generate(n_customers=500, seed=11)
    synthetic.write(ws, tables, seed=11, n_customers=500)
    return ws


@pytest.fixture(scope="module")
def computed(ws):
    """The matrix at CUTS as computed (and stored) by the first call."""
    assert cf.stored_cutoffs(ws) == []
    return cf.feature_matrix(ws, CUTS, include_ineligible=True)


def test_columns_are_the_catalog_labels_and_extras(computed):
    assert list(computed.columns) == ["customer_id", "cutoff", *catalog.feature_names(), "eligible",
                                      "label_available", "churned", *catalog.extra_feature_names()]
    assert cf.EXTRA_FEATURES == catalog.extra_feature_names()
    assert computed[cf.EXTRA_FEATURES].notna().any().all()
    assert list(computed["cutoff"].unique()) == CUTS
    keys = computed[["cutoff", "customer_id"]].astype(str).apply(tuple, axis=1)
    assert keys.is_monotonic_increasing and keys.is_unique


def test_reading_the_store_gives_exactly_what_computing_gave(ws, computed):
    assert cf.stored_cutoffs(ws) == CUTS
    again = cf.feature_matrix(ws, CUTS, include_ineligible=True, events=pd.DataFrame())  # nothing recomputed
    pd.testing.assert_frame_equal(again, computed, check_exact=True)


def test_eligible_rows_are_those_of_the_full_form(ws, computed):
    eligible = cf.feature_matrix(ws, CUTS)
    pd.testing.assert_frame_equal(eligible, computed[computed["eligible"]].reset_index(drop=True), check_exact=True)
    assert eligible["eligible"].all() and len(eligible) < len(computed)


def test_any_set_of_cutoffs_computes_only_the_missing_ones(ws, computed):
    before = {c: cf._Store(ws, 90, 365).part(c).stat().st_mtime_ns for c in CUTS}
    more = cf.feature_matrix(ws, [*CUTS, "2024-08-01"], include_ineligible=True)
    assert cf.stored_cutoffs(ws) == [*CUTS, pd.Timestamp("2024-08-01")]
    assert {c: cf._Store(ws, 90, 365).part(c).stat().st_mtime_ns for c in CUTS} == before
    old = more[more["cutoff"].isin(CUTS)].reset_index(drop=True)
    # the catalog features, labels and behaviour extras per cutoff do not depend on the other cutoffs
    cols = [c for c in computed.columns if c not in ("bg_p_alive", "bg_expected_purchases", "bg_p_no_purchase")]
    pd.testing.assert_frame_equal(old[cols], computed[cols], check_exact=True)
    # BG/NBD: each fit starts from the previous requested cutoff's parameters, which are the same here
    pd.testing.assert_frame_equal(old, computed, check_exact=True)


def test_computing_without_the_store_gives_the_same_matrix(ws, computed):
    fresh = cf.feature_matrix(ws, CUTS, include_ineligible=True, cache=False)
    pd.testing.assert_frame_equal(fresh.drop(columns=catalog.numeric_feature_names()),
                                  computed.drop(columns=catalog.numeric_feature_names()), check_exact=True)
    # DuckDB sums floats in parallel: the last bit of a sum may differ from run to run
    pd.testing.assert_frame_equal(fresh, computed, check_exact=False, rtol=1e-12)


def test_other_data_gets_another_store(ws, computed, tmp_path):
    import shutil

    from features.workspace import Workspace

    copy = Workspace(tmp_path / "copy")
    shutil.copytree(ws.root, copy.root, dirs_exist_ok=True)
    ev = copy.read_table("events")
    copy.write_table("events", ev[ev["timestamp"] < "2024-06-01"])
    assert cf.stored_cutoffs(copy) == []  # the stored matrix belongs to the old data
    cf.feature_matrix(copy, CUTS[:1])
    assert len([d for d in (copy.features_dir / cf.MATRIX_DIR).iterdir() if d.is_dir()]) == 1  # old one removed


def test_one_customer_from_the_same_definitions(ws, computed):
    """The behaviour extras and the BG/NBD values of one customer come from that customer's purchases
    (plus the shop-wide item seasonality and the stored BG/NBD parameters of the cutoff)."""
    events = ws.read_table("events")
    days = purchase_days(events)
    lines = cf.purchase_lines(events)
    c = CUTS[-1]
    row = computed[(computed["cutoff"] == c) & computed["bg_p_alive"].notna()].iloc[7]
    cid = row["customer_id"]
    own_days = days[days["customer_id"] == cid]
    one = cf.behaviour_at(own_days, lines, c).set_index("customer_id").loc[cid]
    behaviour = [n for n in cf.EXTRA_FEATURES if not n.startswith("bg_")]
    assert np.allclose(one[behaviour].to_numpy(float), row[behaviour].to_numpy(float), equal_nan=True, rtol=0, atol=0)
    params = cf.stored_bgnbd_params(ws, c)
    assert len(params) == 1 and {"r", "alpha", "a", "b"} <= set(params[0])
    model = BGNBD(**params[0])
    bg = bgnbd_features(model, transaction_summary(None, c, days=own_days), c, 90).iloc[0]
    for name in ("bg_p_alive", "bg_expected_purchases", "bg_p_no_purchase"):
        assert bg[name] == row[name]


def test_every_model_feature_has_its_meaning_in_the_catalog():
    from training import retention

    for name in catalog.extra_feature_names():
        f = catalog.lookup(name)
        assert f is not None and f.meaning and f.template
        assert retention.feature_meaning(name) == f.meaning
        assert retention.feature_direction(name) == f.direction
    assert catalog.lookup("history_days") is None  # documented once, never computed: gone
    assert not set(catalog.EXTRAS) & set(catalog.FEATURES)


def test_cutoffs_built_in_groups_give_the_same_matrix(ws, computed, tmp_path, monkeypatch):
    """A large shop's cutoffs go to the engine a few at a time (ROWS_PER_QUERY) and are stored one by one
    (store_matrix, what `crmml features` runs): the same matrix as one query for all of them."""
    import shutil

    from features.workspace import Workspace

    copy = Workspace(tmp_path / "grouped")
    shutil.copytree(ws.root, copy.root, dirs_exist_ok=True)
    shutil.rmtree(copy.features_dir / cf.MATRIX_DIR)
    customers = purchase_days(ws.read_table("events"))["customer_id"].nunique()
    assert cf._groups(CUTS, customers) == [CUTS]  # a small shop: one query, as before
    monkeypatch.setattr(cf, "ROWS_PER_QUERY", customers)  # one cutoff per query
    assert cf._groups(CUTS, customers) == [[c] for c in CUTS]
    summary = cf.store_matrix(copy, CUTS, include_ineligible=True)
    assert [len(s) for s in summary] == [int((computed["cutoff"] == c).sum()) for c in CUTS]
    assert cf.stored_cutoffs(copy) == CUTS
    grouped = cf.feature_matrix(copy, CUTS, include_ineligible=True, events=pd.DataFrame())  # read back only
    # DuckDB sums floats in parallel: the last bit of a sum may differ from run to run
    pd.testing.assert_frame_equal(grouped, computed, check_exact=False, rtol=1e-12)


def test_bgnbd_fitted_on_a_hash_sample_is_applied_to_everyone(ws):
    from features.bgnbd import fit_at
    from features.sampling import in_sample

    days = purchase_days(ws.read_table("events"))
    c = CUTS[-1]
    summary, full = fit_at(days, c)
    same_summary, same = fit_at(days, c, sample=len(summary))  # a sample as large as the shop: the same fit
    assert same.params == full.params and same_summary.equals(summary)
    _, sampled = fit_at(days, c, sample=len(summary) // 2)
    expected = int(in_sample(summary.index.to_numpy(), len(summary) // 2).sum())
    assert sampled.n_customers == expected < len(summary)
    assert abs(expected - len(summary) // 2) < 0.2 * len(summary)  # about the size asked for
    assert sampled.params != full.params
    values = bgnbd_features(sampled, summary, c, 90)
    assert len(values) == len(summary) and values["bg_p_alive"].between(0, 1).all()


def test_a_training_sample_keeps_the_same_customers_at_every_cutoff(ws, computed):
    from features.sampling import hash_unit, in_sample

    eligible = computed[computed["eligible"]].reset_index(drop=True)
    n = int(ws.read_table("events")["customer_id"].nunique())
    sample = cf.feature_matrix(ws, CUTS, sample=n // 3)
    assert 0 < sample["customer_id"].nunique() < eligible["customer_id"].nunique()
    keep = in_sample(eligible["customer_id"].to_numpy(), n // 3, n)
    pd.testing.assert_frame_equal(sample, eligible[keep].reset_index(drop=True), check_exact=True)
    assert (hash_unit(sample["customer_id"]) < (n // 3) / n).all()  # by id: whatever the cutoff
    pd.testing.assert_frame_equal(cf.feature_matrix(ws, CUTS, sample=n), eligible, check_exact=True)
