"""One definition, two engines: the full feature table (and the customer 360) equal on DuckDB and PySpark."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from features import catalog, synthetic
from features.engines import connect, engine_of
from features.insight import build_customer360
from features.snapshots import build_snapshots, default_cutoffs

KEYS = ["customer_id", "cutoff"]


def test_duckdb_is_the_default_engine():
    con = connect()
    assert engine_of(con) == "duckdb"
    with pytest.raises(ValueError, match="unknown engine"):
        connect("pandas")


def assert_frames_close(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    a = a.sort_values(keys).reset_index(drop=True)
    b = b.sort_values(keys).reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-9, check_dtype=True)


@pytest.fixture(scope="module")
def shop_tables():
    tables = synthetic.generate(n_customers=800, seed=5)
    tables.pop("ground_truth", None)
    return tables


@pytest.fixture(scope="module")
def shop_ws(tmp_path_factory, shop_tables):
    from features.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("engines") / "workspace")
    synthetic.write(ws, shop_tables, seed=5, n_customers=800)
    return ws


@pytest.fixture(scope="module")
def spark_con():
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("no Java for PySpark")
    from features.engines import stop_spark

    con = connect("spark")
    yield con
    stop_spark()


@pytest.mark.spark
@pytest.mark.slow
def test_full_feature_table_equal_on_duckdb_and_spark(shop_ws, spark_con):
    ev = shop_ws.read_table("events", columns=["timestamp"])
    cutoffs = default_cutoffs(ev, horizon_days=90, n=3, step_days=120)
    cutoffs.append(ev["timestamp"].max().normalize())  # a cutoff without labels too
    duck = build_snapshots(shop_ws, cutoffs, include_ineligible=True, engine="duckdb")
    spark = build_snapshots(shop_ws, cutoffs, include_ineligible=True, engine="spark", con=spark_con)
    assert len(duck) > 1500 and duck["cutoff"].nunique() == 4
    # every catalog feature is exercised by the synthetic shop (tickets, campaigns, views, carts, attributes)
    for name in catalog.feature_names():
        assert duck[name].notna().any(), name
    assert duck["churned"].notna().any() and duck["churned"].isna().any()
    assert_frames_close(duck, spark, KEYS)


@pytest.mark.spark
@pytest.mark.slow
def test_customer360_equal_on_duckdb_and_spark(shop_tables, spark_con):
    """From DataFrames (no workspace): on Spark they go through Parquet; the profile uses window functions."""
    duck = build_customer360(shop_tables, as_of="2024-10-01", engine="duckdb")
    spark = build_customer360(shop_tables, as_of="2024-10-01", engine="spark", con=spark_con)
    assert len(duck) > 700 and duck["favourite_category"].notna().any()
    assert_frames_close(duck, spark, ["customer_id"])
