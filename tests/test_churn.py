"""The churn model: API, calibration, reasons, tiers, planted drivers, baselines, CLV, protocol, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from training import churn_metrics as cm
from training import retention

EVAL_CUTOFF = "2024-09-01"
JSON_KEYS = ("auc", "pr_auc", "brier", "top_decile_lift")


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A synthetic shop (2,500 customers, 2023-2024) with its ground truth."""
    from features import synthetic
    from features.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("churn") / "workspace")
    tables = synthetic.generate(2500, seed=7)
    synthetic.write(ws, tables, 7, 2500)
    gt = tables["ground_truth"].copy()
    gt["customer_id"] = gt["customer_id"].astype(str)
    return ws, gt


@pytest.fixture(scope="module")
def evaluation(shop):
    """The evaluation protocol at 2024-09-01 (no tuning): model + baselines on the same customers."""
    from training import churn

    ws, _ = shop
    return churn.evaluate_protocol(ws, EVAL_CUTOFF, horizon_days=90, tune=False)


def _toy_frame(n_customers=600, cutoffs=("2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01",
                                         "2024-05-01", "2024-06-01"), seed=0) -> pd.DataFrame:
    """A small handmade stacked frame with two planted drivers (long absence, complaints)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in cutoffs:
        recency = rng.gamma(2.0, 30.0, n_customers)
        gap = rng.gamma(3.0, 12.0, n_customers)
        complaints = rng.poisson(0.3, n_customers).astype(float)
        frequency = rng.poisson(6, n_customers).astype(float) + 1
        logit = -1.0 + 0.025 * (recency - 60) + 1.3 * complaints - 0.08 * (frequency - 6)
        y = (rng.random(n_customers) < 1 / (1 + np.exp(-logit))).astype(float)
        rows.append(pd.DataFrame({
            "customer_id": [f"c{i}" for i in range(n_customers)],
            "cutoff": pd.Timestamp(c),
            "recency_days": recency,
            "gap_mean_days": gap,
            "recency_gap_ratio": recency / gap,
            "frequency": frequency,
            "complaints_90d": complaints,
            "country": rng.choice(["UK", "DE", "FR"], n_customers),
            "churned": y,
        }))
    return pd.concat(rows, ignore_index=True)


# ------------------------------------------------------------------------------------------ model API
def test_churn_model_api_on_a_handmade_frame(tmp_path):
    from sklearn.base import clone

    from training import ChurnModel

    df = _toy_frame()
    model = ChurnModel(horizon_days=30, tune=False, n_jobs=1, params={"min_child_samples": 50})
    assert clone(model).get_params()["horizon_days"] == 30
    model.fit(df)
    # time-based split: the newest cutoff validates, label windows do not overlap it
    assert model.validation_cutoff_ == "2024-06-01"
    assert model.train_cutoffs_ and max(model.train_cutoffs_) <= "2024-05-02"
    assert set(model.feature_names_) >= {"recency_days", "complaints_90d", "country"}
    assert model.categories_["country"]
    test = _toy_frame(seed=1, cutoffs=("2024-09-01",))
    proba = model.predict_proba(test)
    assert proba.shape == (len(test), 2)
    assert np.all((proba >= 0) & (proba <= 1)) and np.allclose(proba.sum(axis=1), 1)
    p = proba[:, 1]
    assert cm.roc_auc(test["churned"], p) > 0.75
    assert abs(p.mean() - test["churned"].mean()) < 0.08  # calibrated to the base rate
    # reasons: only risk-increasing drivers, strongest first, readable sentences
    reasons = model.explain(test.head(50), top_k=3)
    assert len(reasons) == 50
    for rs, prob in zip(reasons, p[:50]):
        # a customer may have no risk-increasing driver at all; one above the base rate always has one
        assert len(rs) <= 3 and (len(rs) >= 1 or prob < test["churned"].mean())
        contribs = [r["contribution"] for r in rs]
        assert all(c > 0 for c in contribs) and contribs == sorted(contribs, reverse=True)
        assert all(isinstance(r["sentence"], str) and r["sentence"] for r in rs)
    # the planted complaint driver shows up for customers with several complaints
    many = test[test["complaints_90d"] >= 2].head(40)
    top = model.explain(many, top_k=3)
    assert np.mean([any(r["feature"] == "complaints_90d" for r in rs) for rs in top]) > 0.8
    # persistence round trip
    model.save(tmp_path / "m")
    again = type(model).load(tmp_path / "m")
    assert np.allclose(again.predict_proba(test)[:, 1], p)
    assert json.loads((tmp_path / "m" / "model.json").read_text())["validation_cutoff"] == "2024-06-01"


def test_single_cutoff_falls_back_to_an_id_split_with_a_warning():
    from training import ChurnModel

    df = _toy_frame(cutoffs=("2024-03-01",), n_customers=1500)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = ChurnModel(tune=False, n_jobs=1).fit(df)
    assert any("single cutoff" in str(w.message) for w in caught)
    assert model.validation_cutoff_ is None


def test_tuning_runs_a_small_time_based_search():
    from training import ChurnModel

    model = ChurnModel(horizon_days=30, tune=True, n_trials=3, n_jobs=1).fit(_toy_frame(n_customers=300))
    assert model.study_summary_["n_trials"] == 3
    assert model.study_summary_["best_value_auc"] >= model.study_summary_["default_value_auc"]


def test_predictions_read_only_the_declared_inputs():
    """Extra columns never change a score; ``cutoff`` counts only when the model declares it."""
    from training import ChurnModel

    test = _toy_frame(seed=1, cutoffs=("2024-09-01",))
    extra = test.assign(churned=1.0 - test["churned"], note="x", spend_2025=123.0, eligible=False)
    # no cutoff one year before the validation cutoff: no seasonal shift, so the cutoff is no input
    plain = ChurnModel(horizon_days=30, tune=False, n_jobs=1, params={"min_child_samples": 50}).fit(_toy_frame())
    assert list(plain.feature_names_in_) == plain.feature_names_ and plain.n_features_in_ == len(plain.feature_names_)
    p = plain.predict_proba(test)
    assert np.array_equal(plain.predict_proba(test.drop(columns=["cutoff"])), p)
    assert np.array_equal(plain.predict_proba(extra), p)
    # cutoffs a year before the validation one and the scored one: the model declares ``cutoff``
    frame = _toy_frame(cutoffs=("2023-06-01", "2023-09-01", "2024-02-01", "2024-03-01", "2024-04-01",
                                "2024-05-01", "2024-06-01"))
    seasonal = ChurnModel(horizon_days=30, tune=False, n_jobs=1, params={"min_child_samples": 50},
                          blend="none", level="seasonal").fit(frame)
    assert list(seasonal.feature_names_in_) == seasonal.feature_names_ + ["cutoff"]
    delta = seasonal.season_offset(test["cutoff"])
    assert np.all(delta != 0)
    with pytest.raises(ValueError, match="cutoff"):
        seasonal.predict_proba(test.drop(columns=["cutoff"]))
    # the score is the calibrated probability shifted by the season offset of each row's cutoff
    q = seasonal.predict_proba(test)[:, 1]
    p0 = seasonal.calibrator_.predict(seasonal.decision_function(test))
    eps = seasonal.calibrator_.eps
    expected = np.clip(1 / (1 + np.exp(-(np.log(p0 / (1 - p0)) + delta))), eps, 1 - eps)
    assert np.allclose(q, expected)
    assert np.array_equal(seasonal.predict_proba(extra)[:, 1], q)
    # no seasonal shift asked for: the cutoff is no input either
    off = ChurnModel(horizon_days=30, tune=False, n_jobs=1, params={"min_child_samples": 50},
                     seasonal_shift=False).fit(frame)
    assert "cutoff" not in list(off.feature_names_in_)
    assert np.array_equal(off.predict_proba(test.drop(columns=["cutoff"])), off.predict_proba(test))


# ------------------------------------------------------------------------------------------ output stage
def _rfm_frame(n_customers=1500, cutoffs=("2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01",
                                          "2024-05-01", "2024-06-01"), seed=0) -> pd.DataFrame:
    """Churn driven by the RFM quintiles only; the model is given two noise columns and recency."""
    from training.churn_baselines import rfm_score

    rng = np.random.default_rng(seed)
    parts = []
    for c in cutoffs:
        f = pd.DataFrame({
            "customer_id": [f"c{i}" for i in range(n_customers)], "cutoff": pd.Timestamp(c),
            "recency_days": rng.gamma(2.0, 30.0, n_customers), "frequency": rng.poisson(6, n_customers) + 1.0,
            "monetary": rng.gamma(2.0, 200.0, n_customers), "noise_a": rng.normal(size=n_customers),
            "noise_b": rng.normal(size=n_customers)})
        logit = 0.9 * (rfm_score(f) - 6.0)
        f["churned"] = (rng.random(n_customers) < 1 / (1 + np.exp(-logit))).astype(float)
        parts.append(f)
    return pd.concat(parts, ignore_index=True)


def test_model_falls_back_to_a_baseline_that_is_clearly_better_and_says_so():
    """Churn follows the RFM score; the LightGBM part only sees noise and recency, so on the held-out
    cutoff RFM wins in both ROC-AUC and Brier: the model serves RFM's probabilities and records it."""
    from training import ChurnModel
    from training.churn_baselines import rfm_score

    frame = _rfm_frame()
    model = ChurnModel(horizon_days=30, tune=False, n_jobs=1, features=["noise_a", "noise_b", "recency_days"],
                       params={"min_child_samples": 50}).fit(frame)
    assert model.chosen_ == "rfm" and model.fallback_ == "rfm"
    scores = model.choice_scores_
    assert scores["rfm"]["auc"] > max(scores["lgbm"]["auc"], scores["stack"]["auc"]) + 0.05
    summary = model.summary()
    assert summary["chosen"] == "rfm" and summary["fallback"] == "rfm"
    # the served probability is the RFM score through a monotone calibrator: same ranking as RFM
    test = _rfm_frame(seed=1, cutoffs=("2024-08-01",))
    p = model.predict_proba(test)[:, 1]
    assert cm.roc_auc(test["churned"], p) == pytest.approx(cm.roc_auc(test["churned"], rfm_score(test)), abs=0.01)
    assert {"frequency", "monetary", "cutoff"} <= set(model.feature_names_in_)
    # reasons still come from the LightGBM part
    assert len(model.explain(test.head(5))) == 5
    # the same data with churn driven by the model's own features: no fallback
    own = _toy_frame()
    plain = ChurnModel(horizon_days=30, tune=False, n_jobs=1, params={"min_child_samples": 50}).fit(own)
    assert plain.fallback_ is None and plain.chosen_ in ("lgbm", "stack")


def _bg_frame(n_customers=2000, cutoffs=("2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01",
                                         "2024-05-01", "2024-06-01"), seed=0) -> pd.DataFrame:
    """Churn = a weak signal the model's features see + a strong BG/NBD-like signal they do not."""
    rng = np.random.default_rng(seed)
    parts = []
    for c in cutoffs:
        weak = rng.normal(size=n_customers)
        strong = rng.normal(size=n_customers)
        logit = 0.5 * weak + 2.0 * strong
        parts.append(pd.DataFrame({
            "customer_id": [f"c{i}" for i in range(n_customers)], "cutoff": pd.Timestamp(c), "weak": weak,
            "bg_p_no_purchase": 1 / (1 + np.exp(-2.0 * strong)),
            "churned": (rng.random(n_customers) < 1 / (1 + np.exp(-logit))).astype(float)}))
    return pd.concat(parts, ignore_index=True)


def test_stack_with_bgnbd_improves_brier_over_lightgbm_alone():
    from training import ChurnModel

    frame = _bg_frame()
    kw = {"horizon_days": 30, "tune": False, "n_jobs": 1, "features": ["weak"], "params": {"min_child_samples": 50}}
    stacked = ChurnModel(blend="stack", **kw).fit(frame)
    alone = ChurnModel(blend="none", **kw).fit(frame)
    auto = ChurnModel(**kw).fit(frame)
    assert alone.chosen_ == "lgbm" and stacked.chosen_ == "stack"
    assert auto.choice_scores_["stack"]["brier"] < auto.choice_scores_["lgbm"]["brier"]
    assert auto.chosen_ in ("stack", "bgnbd")  # stack, or BG/NBD when it is better in AUC and Brier
    assert stacked.output_.coef_[1] > 0 and stacked.output_.coef_[2] > 0  # trusts both parts
    test = _bg_frame(seed=3, cutoffs=("2024-08-01",))
    y = test["churned"]
    b_stack = cm.brier(y, stacked.predict_proba(test)[:, 1])
    b_alone = cm.brier(y, alone.predict_proba(test)[:, 1])
    assert b_stack < b_alone - 0.03
    assert "bg_p_no_purchase" in list(stacked.feature_names_in_)
    with pytest.raises(ValueError, match="bg_p_no_purchase"):
        stacked.predict_proba(test.drop(columns=["bg_p_no_purchase"]))


def test_fit_leaves_params_unchanged_and_search_runs_on_a_sample():
    from sklearn.base import clone

    from training import ChurnModel

    model = ChurnModel(horizon_days=30, tune=True, n_trials=3, n_jobs=1, tune_sample=200)
    before = clone(model).get_params()
    model.fit(_toy_frame(n_customers=600))
    assert model.get_params() == before
    assert model.study_summary_["n_trials"] == 3
    assert 100 < model.study_summary_["customers"] < 320  # about 200 of the 600 customers
    assert "pruned_trials" in model.study_summary_


def test_level_offset_combines_the_rate_forecasts():
    from training import ChurnModel

    model = ChurnModel()
    model.validation_cutoff_ = "2011-06-11"
    model.cutoff_rates_ = {"2010-06-16": 0.5, "2010-09-14": 0.4, "2011-03-13": 0.6, "2011-04-12": 0.6,
                           "2011-05-12": 0.6, "2011-06-11": 0.64}

    def logit(p):
        return np.log(p / (1 - p))

    f = model.level_forecasts()
    assert f == pytest.approx({"last": 0.64, "last4": 0.61, "pooled": np.mean([0.5, 0.4, 0.6, 0.6, 0.6, 0.64])})
    # no rate one year before the scored cutoff: the three rate forecasts only
    off = model.level_offset(["2012-08-01"])[0]
    assert off == pytest.approx(np.mean([logit(v) for v in f.values()]) - logit(0.64))
    # one year before is known: last year's seasonal change joins the combination
    f9 = model.level_forecasts("2011-09-09")
    assert f9["seasonal"] == pytest.approx(1 / (1 + np.exp(-(logit(0.64) + logit(0.4) - logit(0.5)))))
    assert model.level_offset(["2011-09-09"])[0] == pytest.approx(
        np.mean([logit(v) for v in f9.values()]) - logit(0.64))
    model.level = "validation"
    assert model.level_offset(["2011-09-09"])[0] == 0.0
    model.level = "seasonal"
    assert model.level_offset(["2011-09-09"])[0] == pytest.approx(model.season_offset(["2011-09-09"])[0])


# ------------------------------------------------------------------------------------------ calibration
def test_seasonal_shift_uses_last_years_rates():
    from training import ChurnModel

    model = ChurnModel()
    model.validation_cutoff_ = "2011-06-11"
    model.cutoff_rates_ = {"2010-06-16": 0.5, "2010-09-14": 0.4, "2011-06-11": 0.64}
    delta = model.season_offset(["2011-09-09", "2011-06-11", "2012-03-01"])
    assert delta[0] == pytest.approx(np.log(0.4 / 0.6) - 0.0)  # logit(0.4) - logit(0.5)
    assert delta[1] == 0.0  # the validation season itself
    assert delta[2] == 0.0  # no rate known one year before: no shift
    model.cutoff_rates_["2010-09-14"] = 0.01
    assert model.season_offset(["2011-09-09"])[0] == -1.0  # capped


def test_centered_isotonic_calibrator_keeps_the_ranking():
    from training.churn_baselines import Calibrator

    rng = np.random.default_rng(0)
    s = rng.normal(size=5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-2 * s))).astype(float)
    iso = Calibrator("isotonic").fit(s, y)
    p = iso.predict(s)
    assert np.all(np.diff(iso.knots_x_) > 0) and np.all(np.diff(iso.knots_y_) >= 0)
    assert cm.roc_auc(y, p) == pytest.approx(cm.roc_auc(y, s), abs=2e-3)
    assert cm.ece(y, p) < 0.03
    platt = Calibrator("sigmoid").fit(s, y)
    assert cm.ece(y, platt.predict(s)) < 0.03
    assert np.all((p > 0) & (p < 1))


def test_isotonic_blocks_are_those_of_pool_adjacent_violators():
    from training.churn_baselines import _pava

    def textbook(y, w):  # pool adjacent blocks while the left one is not below the right one
        blocks = []
        for i, (v, wt) in enumerate(zip(y, w)):
            blocks.append([i, i, float(v), float(wt)])
            while len(blocks) > 1 and blocks[-2][2] >= blocks[-1][2]:
                a, b = blocks[-2], blocks.pop()
                a[1], a[2], a[3] = b[1], (a[2] * a[3] + b[2] * b[3]) / (a[3] + b[3]), a[3] + b[3]
        return blocks

    rng = np.random.default_rng(1)
    for y in (rng.random(300), (rng.random(300) < 0.3).astype(float), np.sort(rng.random(50)), np.ones(4)):
        w = rng.integers(1, 5, len(y)).astype(float)
        starts, ends, values = _pava(y, w)
        want = textbook(y, w)
        assert starts.tolist() == [b[0] for b in want] and ends.tolist() == [b[1] for b in want]
        assert np.allclose(values, [b[2] for b in want], rtol=0, atol=1e-12)
        assert np.all(np.diff(values) > 0)  # strictly increasing blocks: equal neighbours were pooled


# ------------------------------------------------------------------------------------------ BG/NBD, CLV
def test_bgnbd_matches_lifetimes_and_its_limits(shop):
    from lifetimes import BetaGeoFitter

    from features import bgnbd
    from training import clv

    ws, _ = shop
    events = ws.read_table("events")
    summary = bgnbd.transaction_summary(events, EVAL_CUTOFF)
    assert (summary["recency"] <= summary["T"]).all() and (summary["frequency"] >= 0).all()
    model = bgnbd.BGNBD().fit(summary)
    ref = BetaGeoFitter()
    ref.params_ = pd.Series(model.params)
    f, r, T = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    assert np.allclose(model.p_alive(summary), ref.conditional_probability_alive(f, r, T), atol=1e-8)
    assert np.allclose(model.expected_purchases(90, summary),
                       ref.conditional_expected_number_of_purchases_up_to_time(90, f, r, T), rtol=1e-6, atol=1e-8)
    p0 = model.p_no_purchase(90, summary)
    assert np.all((p0 >= 0) & (p0 <= 1))
    assert np.allclose(model.p_no_purchase(1e-9, summary), 1.0, atol=1e-6)
    assert np.all(model.p_no_purchase(180, summary) <= p0 + 1e-12)  # longer window, fewer silent customers
    values = clv.clv_frame(events, EVAL_CUTOFF)
    assert {"customer_id", "clv_12m", "expected_purchases_12m", "p_alive"} <= set(values.columns)
    assert (values["clv_12m"] >= 0).all() and values["clv_12m"].median() > 0


# ------------------------------------------------------------------------------------------ protocol
def test_protocol_uses_only_labels_that_end_before_the_cutoff(evaluation):
    cutoff = pd.Timestamp(EVAL_CUTOFF)
    assert all(c + pd.Timedelta(days=90) <= cutoff for c in evaluation.train_cutoffs)
    assert max(evaluation.train_cutoffs) == cutoff - pd.Timedelta(days=90)  # most recent fully-labelled
    assert evaluation.model.validation_cutoff_ == str((cutoff - pd.Timedelta(days=90)).date())
    assert (evaluation.scored["cutoff"] == cutoff).all()


def test_model_beats_the_baselines_and_is_calibrated(evaluation):
    m = evaluation.metrics
    assert set(m) == {"model", "recency", "rfm", "bgnbd"}
    for name in ("recency", "rfm", "bgnbd"):
        assert m["model"]["auc"] > m[name]["auc"], name
    assert m["model"]["auc"] > 0.8
    assert m["model"]["ece"] < 0.08
    assert abs(m["model"]["mean_predicted"] - m["model"]["churn_rate"]) < 0.08
    for name, s in evaluation.scores.items():
        assert np.all((s["proba"] >= 0) & (s["proba"] <= 1)), name
    assert m["model"]["top_decile_lift"] > 1.5


def test_json_has_the_promised_keys(evaluation):
    data = json.loads(json.dumps(evaluation.to_json()))
    for name in ("model", "recency", "rfm", "bgnbd"):
        for key in JSON_KEYS:
            assert isinstance(data[name][key], float), (name, key)
    assert data["n_customers"] == len(evaluation.y) and 0 < data["churn_rate"] < 1
    assert data["cutoff"] == EVAL_CUTOFF and data["horizon_days"] == 90


def test_reasons_tiers_actions_for_every_customer(evaluation):
    scored = evaluation.scored
    assert len(scored) == len(evaluation.y) and scored["customer_id"].is_unique
    assert set(scored["risk_tier"]) <= {"high", "medium", "low"}
    expected = retention.risk_tier(scored["churn_probability"])
    assert (scored["risk_tier"].to_numpy() == expected).all()
    assert scored["reasons"].map(len).between(1, 3).all()
    for rs in scored["reasons"].head(200):
        for r in rs:
            assert set(r) == {"feature", "value", "contribution", "sentence"} and r["contribution"] > 0
    assert np.allclose(scored["value_at_stake"], scored["churn_probability"] * scored["clv_12m"].fillna(0))
    assert set(scored["suggested_action"]) <= set(retention.ACTIONS)
    assert (scored.loc[scored["risk_tier"] == "low", "suggested_action"] == "none").all()
    assert (scored.loc[scored["risk_tier"] != "low", "suggested_action"] != "none").all()
    work = retention.retention_list(scored)
    assert (work["risk_tier"] != "low").all()
    assert work["value_at_stake"].is_monotonic_decreasing and work["rank"].tolist() == list(range(1, len(work) + 1))
    # observed churn rises with the tier
    rate = scored.groupby("risk_tier")["churned"].mean()
    assert rate["high"] > rate["medium"] > rate["low"]


def test_planted_complaint_driver_is_recovered(evaluation, shop):
    """Customers whose ground truth lapse driver is complaints get complaint reasons; others do not."""
    _, gt = shop
    s = evaluation.scored.merge(gt[["customer_id", "lapse_driver", "lapse_at"]], on="customer_id", how="left")
    end = pd.Timestamp(EVAL_CUTOFF) + pd.Timedelta(days=90)
    lapsed = s[s["lapse_at"] < end]
    has_complaint_reason = lapsed["reasons"].map(
        lambda rs: any(r["feature"] in retention.COMPLAINT_FEATURES for r in rs))
    by_driver = has_complaint_reason.groupby(lapsed["lapse_driver"]).mean()
    n = lapsed["lapse_driver"].value_counts()
    assert n["complaints"] >= 100
    assert by_driver["complaints"] > 0.6, by_driver.to_dict()
    for other in ("baseline", "early"):
        if other in by_driver:
            assert by_driver[other] < 0.15, by_driver.to_dict()


def test_score_customers_and_report(evaluation, shop, tmp_path):
    from training import churn
    from training.clv import clv_frame

    ws, _ = shop
    test = evaluation.X_eval.drop(columns=[c for c in evaluation.X_eval.columns if c.startswith("bg_")])
    clv = clv_frame(ws.read_table("events"), EVAL_CUTOFF, horizon_days=90)
    scored = churn.score_customers(evaluation.model, test, clv)  # bg_* features come from the CLV frame
    assert list(scored.columns[:7]) == ["customer_id", "churn_probability", "risk_tier", "reasons", "value_at_stake",
                                        "clv_12m", "suggested_action"]
    assert np.allclose(np.sort(scored["churn_probability"]), np.sort(evaluation.scores["model"]["proba"]))
    from features.workspace import Workspace
    from pipelines.report import inputs, model_sections
    from training import names

    reports = Workspace(tmp_path / "ws")
    written = churn.write_report(evaluation, reports.reports_dir)
    assert set(written) == {"json", "figures"}  # no page of its own: crmml report's churn section shows them
    section = model_sections.churn_evaluation(inputs.load_evaluation(reports, names.CHURN))
    shown = [row[0] for table in section.tables for row in table.rows]
    assert "bgnbd" in shown and "recency" in shown and len(section.plots) == 1 + len(written["figures"])
    assert {"roc", "precision_recall", "calibration", "gains_lift", "shap_summary"} <= set(written["figures"])
    assert all(p.stat().st_size > 10_000 for p in written["figures"].values())


# ------------------------------------------------------------------------------------------ other sources
def test_transactions_source_without_items_or_orders(tmp_path, shop):
    """A bare purchase log (customer, date, amount) ingested with --source transactions is enough."""
    from features import ingest
    from features.workspace import Workspace
    from training import churn

    src, _ = shop
    ev = src.read_table("events")
    ev = ev[ev["event_type"] == "purchase"].sample(frac=0.6, random_state=0)
    path = tmp_path / "log.csv"
    pd.DataFrame({"cust": ev["customer_id"], "when": ev["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S"),
                  "value": ev["amount"].round(2)}).to_csv(path, index=False)
    ws = Workspace(tmp_path / "ws")
    ingest.save(ws, ingest.read_transactions(path, "cust", "when", amount_col="value"))
    result = churn.evaluate_protocol(ws, "2024-06-01", horizon_days=60, tune=False, step_days=45)
    data = result.to_json()
    for name in ("model", "recency", "rfm", "bgnbd"):
        assert set(JSON_KEYS) <= set(data[name])
    assert data["model"]["auc"] > 0.7
    assert result.scored["reasons"].map(len).ge(1).all()


@pytest.mark.slow
def test_cli_evaluate_writes_the_json(shop, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app

    ws, _ = shop
    out = tmp_path / "out.json"
    result = CliRunner().invoke(app, ["evaluate", "churn", "--workspace", str(ws.root), "--cutoff", EVAL_CUTOFF,
                                               "--horizon", "90", "--json", str(out), "--no-tune", "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert "BG/NBD" in result.output and "ROC-AUC" in result.output
    data = json.loads(out.read_text())
    assert all(set(JSON_KEYS) <= set(data[k]) for k in ("model", "recency", "rfm", "bgnbd"))
    assert (ws.reports_dir / "churn_evaluation.json").exists() and (ws.reports_dir / "churn_evaluation_plots").is_dir()
    bad = CliRunner().invoke(app, ["evaluate", "churn", "--workspace", str(ws.root), "--cutoff", "2024-12-01",
                                            "--no-tune", "--no-mlflow"])
    assert bad.exit_code == 1 and "no labels" in bad.output


# ------------------------------------------------------------------------------------------ real data
@pytest.mark.realdata
def test_real_data_protocol_at_2011_09_09(real_workspace):
    """UCI Online Retail, cutoff 2011-09-09, horizon 90, no tuning (the CLI's default tunes)."""
    from training import churn

    ev = churn.evaluate_protocol(real_workspace, "2011-09-09", horizon_days=90, tune=False)
    m = ev.metrics
    data = ev.to_json()
    for name in ("model", "recency", "rfm", "bgnbd"):
        assert set(JSON_KEYS) <= set(data[name])
    assert 4000 < data["n_customers"] < 4700
    for name in ("recency", "rfm", "bgnbd"):
        assert m["model"]["auc"] > m[name]["auc"], name
    # the reference figures of the issue for this protocol: recency 0.707, BG/NBD 0.761
    assert m["recency"]["auc"] == pytest.approx(0.707, abs=0.01)
    assert m["bgnbd"]["auc"] == pytest.approx(0.761, abs=0.01)
    # honest figure: 0.771 without tuning (the target of 0.80 is not reached; see the report)
    assert m["model"]["auc"] >= 0.765
    assert m["model"]["top_decile_lift"] > 1.4


# ------------------------------------------------------------------------------------------ MLflow
def test_pyfunc_logs_registers_and_loads(tmp_path):
    import mlflow

    from features.workspace import Workspace
    from training import ChurnModel, registry
    from training.churn_pyfunc import load_churn, log_churn

    ws = Workspace(tmp_path / "ws")
    df = _toy_frame(n_customers=300)
    model = ChurnModel(horizon_days=30, tune=False, n_jobs=1).fit(df)
    example = df[df["cutoff"] == df["cutoff"].max()].head(20)
    with registry.training_run(ws, registry.CHURN, params={"tune": False}) as run:
        info = log_churn(model, example)
        assert info.signature is not None
        run.register(info, model.validation_metrics_)
    assert run.model_version == "1"
    uri = registry.model_uri(registry.CHURN, registry.CHAMPION)
    loaded = load_churn(uri)
    assert np.allclose(loaded.predict_proba(example)[:, 1], model.predict_proba(example)[:, 1])
    out = mlflow.pyfunc.load_model(uri).predict(example)
    assert list(out.columns) == ["customer_id", "churn_probability", "risk_tier", "reasons"]
    assert all(isinstance(json.loads(r), list) for r in out["reasons"])
    # the gate evaluator offered to `crmml models promote` scores a model URI
    from training.churn import gate_evaluator

    assert callable(gate_evaluator(ws))


def test_pyfunc_passes_the_declared_cutoff_through(tmp_path):
    """A model that reads ``cutoff`` logs it in its signature, so the pyfunc scores like the model."""
    import mlflow

    from features.workspace import Workspace
    from training import ChurnModel, registry
    from training.churn_pyfunc import log_churn

    ws = Workspace(tmp_path / "ws")
    frame = _toy_frame(n_customers=300, cutoffs=("2023-06-01", "2023-09-01", "2024-02-01", "2024-03-01",
                                                 "2024-04-01", "2024-05-01", "2024-06-01"))
    model = ChurnModel(horizon_days=30, tune=False, n_jobs=1).fit(frame)
    assert "cutoff" in list(model.feature_names_in_)
    example = _toy_frame(n_customers=20, seed=2, cutoffs=("2024-09-01",))
    with registry.training_run(ws, registry.CHURN, params={"tune": False}) as run:
        info = log_churn(model, example)
    assert "cutoff" in info.signature.inputs.input_names()
    out = mlflow.pyfunc.load_model(info.model_uri).predict(example.assign(unrelated=1.0))
    assert np.allclose(out["churn_probability"], model.predict_proba(example)[:, 1])
    assert run.run_id
