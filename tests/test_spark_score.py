"""`crmml score --engine spark`: the registered churn champion as a Spark UDF gives the default path's scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from features import synthetic
from features.dates import workspace_as_of

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def champion_ws(tmp_path_factory):
    """A small synthetic shop with a churn champion registered in its MLflow store (no tuning)."""
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("no Java for PySpark")
    from features.churn_features import feature_matrix
    from features.workspace import Workspace
    from training import ChurnModel, registry
    from training.churn_pyfunc import log_churn

    ws = Workspace(tmp_path_factory.mktemp("spark_score") / "workspace")
    synthetic.write(ws, synthetic.generate(n_customers=600, seed=4), seed=4, n_customers=600)
    cutoffs = pd.date_range("2024-03-01", "2024-09-01", freq="MS")
    train = feature_matrix(ws, list(cutoffs), horizon_days=90)
    model = ChurnModel(horizon_days=90, tune=False, n_jobs=1).fit(train)
    with registry.training_run(ws, registry.CHURN, params={"tune": False}) as run:
        run.register(log_churn(model, train[train["cutoff"] == cutoffs[-1]].head(20)), model.validation_metrics_)
    yield ws
    from features.engines import stop_spark

    stop_spark()


def test_spark_udf_scores_equal_the_default_path(champion_ws):
    from pipelines.score import churn_scores

    as_of = workspace_as_of(champion_ws)
    duck = churn_scores(champion_ws, as_of, engine="duckdb")
    spark = churn_scores(champion_ws, as_of, engine="spark")
    assert len(duck) > 100 and duck["customer_id"].is_unique
    duck, spark = (f.sort_values("customer_id").reset_index(drop=True) for f in (duck, spark))
    assert list(spark.columns) == list(duck.columns)
    assert spark["customer_id"].tolist() == duck["customer_id"].tolist()
    np.testing.assert_allclose(spark["churn_probability"], duck["churn_probability"], rtol=0, atol=1e-9)
    assert duck["churn_probability"].nunique() > 10  # a real model, not a constant
    for col in ("risk_tier", "suggested_action", "action_text"):
        assert spark[col].tolist() == duck[col].tolist(), col
    np.testing.assert_allclose(spark["value_at_stake"], duck["value_at_stake"], rtol=1e-9, equal_nan=True)
    # the reasons come through the pyfunc as JSON; the same features and sentences either way
    assert [_named(r) for r in spark["reasons"]] == [_named(json.loads(json.dumps(r, default=str)))
                                                     for r in duck["reasons"]]


def _named(reasons: list[dict]) -> list[tuple]:
    return [(r["feature"], r.get("sentence")) for r in reasons]


def test_unknown_engine_is_refused(champion_ws):
    from pipelines.score import churn_scores

    with pytest.raises(ValueError, match="unknown engine"):
        churn_scores(champion_ws, workspace_as_of(champion_ws), engine="pandas")
