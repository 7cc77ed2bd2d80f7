"""Campaigns: effect estimates (known answer, planted effects, the observational flag), the uplift
model against the synthetic shop's potential outcomes, the next best action, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from features import synthetic
from features.workspace import Workspace
from training import campaigns as cmp
from training import next_best_action as nba
from training import uplift as up


# -- pure estimators ---------------------------------------------------------------------------
def test_difference_in_means_known_answer():
    rng = np.random.default_rng(0)
    n = 4000
    t = rng.random(n) < 0.5
    x = rng.normal(size=(n, 2))
    y = 1.0 + 0.25 * t + 2.0 * x[:, 0] - x[:, 1] + rng.normal(0, 0.5, n)
    plain = cmp.difference_in_means(y, t)
    assert plain["effect"] == pytest.approx(y[t].mean() - y[~t].mean())
    adjusted = cmp.difference_in_means(y, t, x)
    assert adjusted["ci_low"] < 0.25 < adjusted["ci_high"]
    # the covariates explain most of the noise: a much narrower interval, same target
    assert adjusted["se"] < 0.5 * plain["se"]
    assert plain["ci_low"] < 0.25 < plain["ci_high"]
    with pytest.raises(ValueError, match="both a treated and a control"):
        cmp.difference_in_means(y, np.ones(n, bool))


def test_uplift_metrics_on_a_known_ranking():
    # effect only in the first quarter: a perfect score puts it first, its reverse last
    n = 2000
    t = np.arange(n) % 2 == 0
    effect = np.arange(n) < n // 4
    y = np.where(t & effect, 1.0, 0.0)
    perfect, reverse = -np.arange(n, dtype=float), np.arange(n, dtype=float)
    assert up.auuc(perfect, y, t) > up.auuc(reverse, y, t)
    frac, curve = up.uplift_curve(perfect, y, t)
    assert curve[-1] == pytest.approx(y[t].mean() - y[~t].mean())  # the whole population: the average effect
    y1, y0 = effect.astype(float), np.zeros(n)
    assert up.true_gain(perfect, y1, y0, 0.25) == n // 4
    assert up.true_gain(np.zeros(n), y1, y0, 0.25) == pytest.approx(n // 4 * 0.25)  # ties: expected value


def test_next_best_action_picks_the_highest_expected_value():
    uplift = pd.DataFrame({"uplift_discount": [0.30, 0.30, 0.001], "uplift_reminder": [0.05, 0.29, 0.0]})
    value = np.array([100.0, 100.0, 50.0])
    out = nba.next_best_actions(uplift, value, {"discount": 5.0, "reminder": 0.1})
    # 30 - 5 = 25 vs 5 - 0.1 = 4.9; 25 vs 29 - 0.1 = 28.9; nothing pays for the third
    assert out["next_best_action"].tolist() == ["discount", "reminder", "none"]
    assert out["nba_expected_value"].tolist() == pytest.approx([25.0, 28.9, 0.0])
    assert "discount" in out["nba_reason"][0] and "no action pays" in out["nba_reason"][2]


# -- the synthetic shop --------------------------------------------------------------------------
def test_default_shop_has_no_experiments_and_unchanged_history():
    plain = synthetic.generate(n_customers=300, seed=4)
    with_exp = synthetic.generate(n_customers=300, seed=4, experiments=3)
    assert "campaign_truth" not in plain and plain["campaigns"]["group"].isna().all()
    ct = with_exp["campaign_truth"]
    assert set(ct["group"]) == {"treatment", "control"} and ct["campaign_id"].nunique() == 3
    assert set(ct["y1"] - ct["y0"]) <= {-1, 0, 1}
    # the effect is planted where the story says: none for loyal, one-time or long-gone customers
    assert (ct.loc[ct["segment"].isin(["loyal", "one_time", "gone"]), "tau"] == 0).all()
    cp = with_exp["campaigns"]
    exp = cp[cp["group"].notna()]
    assert (exp.loc[exp["group"] == "control", "responded_at"].isna()).all()
    assert (exp.loc[exp["group"] == "control", "cost"] == 0).all()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A small synthetic shop with randomised campaigns (planted effects) and its truth."""
    ws = Workspace(tmp_path_factory.mktemp("campaigns") / "workspace")
    tables = synthetic.generate(n_customers=4000, seed=0, experiments=6)
    synthetic.write(ws, tables, seed=0, n_customers=4000)
    return ws


@pytest.mark.slow
def test_randomised_effects_cover_the_planted_effects(shop):
    truth = pd.read_parquet(synthetic.campaign_truth_path(shop))
    planted = (truth["y1"] - truth["y0"]).groupby(truth["campaign_id"]).mean()
    effects = cmp.evaluate_campaigns(shop, sorted(planted.index))
    assert [e.campaign_id for e in effects] == sorted(planted.index)
    for e in effects:
        r = e.metrics["retained"]
        assert e.design == "randomised" and not e.observational and not e.assumptions
        assert r["adjusted"] and r["n_treated"] + r["n_control"] == (truth["campaign_id"] == e.campaign_id).sum()
        assert r["ci_low"] <= planted[e.campaign_id] <= r["ci_high"], (e.campaign_id, r, planted[e.campaign_id])
        assert e.cost > 0 and e.incremental_revenue == pytest.approx(e.metrics["revenue"]["effect"] * e.n_contacted)


@pytest.mark.slow
def test_campaign_without_control_group_is_flagged_observational(shop):
    listing = cmp.campaign_list(shop.read_table("campaigns"))
    regular = listing.loc[~listing["randomised"], "campaign_id"].iloc[10]
    (e,) = cmp.evaluate_campaigns(shop, [regular], contact_cost=0.5)
    assert e.design == "observational" and e.observational
    assert e.assumptions and any("unmeasured confounding" in a for a in e.assumptions)
    assert 0.5 < e.diagnostics["matched_share"] <= 1.0 and e.n_contacted > 0
    assert e.cost == pytest.approx(0.5 * e.n_contacted)
    assert e.to_json()["observational"] is True


@pytest.mark.slow
def test_uplift_targeting_beats_churn_risk_against_the_truth(shop):
    from training import registry
    from training.names import UPLIFT
    from training.uplift_training import train_uplift_model

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    result = train_uplift_model(shop)
    m = result["metrics"]
    assert result["holdout"] and set(result["holdout"]).isdisjoint(result["train_campaigns"])
    # incremental retention of the top 20% against the potential outcomes, and AUUC against the truth
    # (the 1.5x of the issue is measured on larger shops over seeds: bench/bench_campaigns.py, BENCHMARKS.md)
    assert m["true_gain_top20"] >= 1.3 * m["true_gain_top20_churn_risk"] > 0
    assert m["true_auuc"] > max(m["true_auuc_churn_risk"], m["true_auuc_random"])
    assert m["auuc"] > m["auuc_random"]
    mv = registry.client(shop).get_model_version(UPLIFT, result["version"])
    assert float(mv.tags["metric.auuc"]) == pytest.approx(m["auuc"])
    # the registered model answers the next best action of every scored customer
    from features.churn_features import feature_matrix

    model, version = nba.uplift_champion(shop)
    assert version == result["version"] and set(model.actions_) == {"discount", "reminder", "service_call"}
    frame = feature_matrix(shop, ["2024-12-01"], horizon_days=60)
    scored = frame[["customer_id"]].assign(clv_12m=frame["spend_365d"].fillna(0) * 0.8, suggested_action="none")
    out = nba.for_customers(scored, frame, model, shop.read_table("campaigns"), version)
    assert out["next_best_action"].isin(["none", "discount", "reminder", "service_call"]).all()
    assert (out["nba_expected_value"] >= 0).all() and out["nba_reason"].str.len().gt(10).all()
    assert (out["nba_source"] == "uplift model").all() and out["next_best_action"].ne("none").any()
    json.dumps(out[["next_best_action", "nba_reason"]].to_dict("records"))
    # a second version is a challenger, put through the gate on the newest held-out campaigns
    from training import promotion

    second = train_uplift_model(shop, mlflow=True)
    evaluate, note = promotion.gate_evaluator(shop, UPLIFT)
    assert evaluate is not None and "uplift_training" in note
    decision = registry.promote(shop, UPLIFT, evaluate=evaluate)
    assert decision.challenger == second["version"] and decision.decision in ("promoted", "refused")
    assert any(r.startswith("auuc (primary") for r in decision.reasons), decision.reasons


@pytest.mark.slow
def test_cli_and_report_section(shop, tmp_path):
    """`crmml evaluate campaign` prints and writes the effects; the report's section reads them."""
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.report.campaign_sections import CAMPAIGNS
    from pipelines.report.inputs import _load_campaigns

    listing = cmp.campaign_list(shop.read_table("campaigns"))
    regular = str(listing.loc[~listing["randomised"], "campaign_id"].iloc[12])
    out = tmp_path / "effects.json"
    res = CliRunner().invoke(app, ["evaluate", "campaign", "EXP03", regular, "--json", str(out),
                                   "--workspace", str(shop.root)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "OBSERVATIONAL" in res.output and "EXP03" in res.output and "unmeasured confounding" in res.output
    data = json.loads(out.read_text())
    assert [d["campaign_id"] for d in data] == sorted(["EXP03", regular])
    assert cmp.effects_json(shop.reports_dir).exists()
    bad = CliRunner().invoke(app, ["evaluate", "campaign", "NOPE", "--workspace", str(shop.root)])
    assert bad.exit_code == 1 and "unknown campaign" in bad.output

    class Inputs:  # the section reads only what it declares
        campaigns = _load_campaigns(shop)

    section = CAMPAIGNS.run(Inputs)
    assert not section.missing and section.tables and section.takeaway
    assert [t.rows[0][0] for t in section.tables][0] in ("EXP03", regular)
