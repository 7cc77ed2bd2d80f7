"""Rolling-origin evaluation and the A/B/C grade: the cutoff rule, mean ± sd, the grade's boundaries on
constructed inputs, and `crmml evaluate churn|recommender --cutoffs 2` on a small synthetic shop (real
models, a real MLflow store in the workspace, the report's section read from what the CLI wrote)."""

from __future__ import annotations

import json
import math
import os
import statistics

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pandas as pd
import pytest
from typer.testing import CliRunner

from features import dates
from training.grade import RULES, GradeRule, grade
from training.names import CHURN, RECOMMENDER
from training.rolling import summarize

AUC_BRIER = RULES[CHURN]


# -- the cutoff sequence ---------------------------------------------------------------------------------
def test_rolling_cutoffs_go_back_from_the_newest_labelled_one():
    newest = dates.newest_labelled_cutoff(pd.Timestamp("2011-12-10"), 90)  # UCI: last event 2011-12-09
    cuts = dates.rolling_cutoffs(newest, 4, 91)
    assert [str(c.date()) for c in cuts] == ["2010-12-11", "2011-03-12", "2011-06-11", "2011-09-10"]
    assert all((b - a).days == 91 for a, b in zip(cuts, cuts[1:])) and cuts[-1] == newest
    assert dates.rolling_cutoffs("2024-10-01 13:45", 1, 30) == [pd.Timestamp("2024-10-01")]
    for n, every in ((0, 30), (3, 0)):
        with pytest.raises(ValueError, match="at least 1"):
            dates.rolling_cutoffs(newest, n, every)


# -- mean ± sd -------------------------------------------------------------------------------------------
def test_summarize_gives_mean_and_sample_sd_per_view_scorer_metric():
    aucs, briers = [0.71, 0.78, 0.74], [0.20, 0.18, float("nan")]
    per_cutoff = [{"cutoff": f"c{i}", "metrics": {"all": {"model": {"auc": a, "brier": b}, "rfm": {"auc": a - 0.02}}}}
                  for i, (a, b) in enumerate(zip(aucs, briers))]
    s = summarize(per_cutoff)["all"]
    assert s["model"]["auc"]["mean"] == pytest.approx(statistics.fmean(aucs))
    assert s["model"]["auc"]["sd"] == pytest.approx(statistics.stdev(aucs)) and s["model"]["auc"]["n"] == 3
    assert s["model"]["brier"] == {"mean": pytest.approx(0.19), "sd": pytest.approx(statistics.stdev([0.2, 0.18])),
                                   "n": 2}  # the non-finite value is left out
    assert s["rfm"]["auc"]["mean"] == pytest.approx(statistics.fmean(aucs) - 0.02)
    one = summarize(per_cutoff[:1])["all"]["model"]["auc"]
    assert one["mean"] == pytest.approx(0.71) and one["sd"] is None and one["n"] == 1


# -- the grade -------------------------------------------------------------------------------------------
def _cuts(*rows):
    """``rows``: per cutoff, (model auc, model brier, {baseline: (auc, brier)})."""
    return {f"2011-0{i + 1}-01": {"model": {"auc": a, "brier": b}, **{n: {"auc": x, "brier": y} for n, (x, y) in bl.items()}}
            for i, (a, b, bl) in enumerate(rows)}


def test_grade_a_needs_the_margin_at_every_cutoff_against_that_cutoffs_best_baseline():
    m = AUC_BRIER.margin
    # the best baseline changes between cutoffs (bgnbd, then rfm); the model leads each by exactly the margin
    per = _cuts((0.80 + m, 0.20, {"bgnbd": (0.80, 0.20), "rfm": (0.70, 0.25)}),
                (0.75 + m, 0.18, {"bgnbd": (0.70, 0.19), "rfm": (0.75, 0.18)}))
    g = grade(per, AUC_BRIER)
    assert g.letter == "A" and g.reason.startswith("A: ")
    assert [c["best_baseline"] for c in g.cutoffs] == ["bgnbd", "rfm"]
    assert [c["gap"] for c in g.cutoffs] == pytest.approx([m, m]) and g.mean_gap == pytest.approx(m)
    assert str(m) in g.rule and "every cutoff" in g.rule


def test_grade_b_is_ahead_on_average_but_not_at_every_cutoff():
    m = AUC_BRIER.margin
    short = _cuts((0.80 + m, 0.20, {"bgnbd": (0.80, 0.20)}), (0.80 + m - 1e-4, 0.20, {"bgnbd": (0.80, 0.20)}))
    g = grade(short, AUC_BRIER)
    assert g.letter == "B" and "2011-02-01" in g.reason  # names the cutoff that missed the margin
    behind_once = _cuts((0.83, 0.20, {"bgnbd": (0.80, 0.20)}), (0.79, 0.20, {"bgnbd": (0.80, 0.20)}))
    assert grade(behind_once, AUC_BRIER).letter == "B"  # +0.03 and -0.01: ahead on average
    # Brier worse at one cutoff, better at the other: not A, still B (not worse on average)
    guard_once = _cuts((0.90, 0.21, {"bgnbd": (0.80, 0.20)}), (0.90, 0.17, {"bgnbd": (0.80, 0.20)}))
    g = grade(guard_once, AUC_BRIER)
    assert g.letter == "B" and "brier" in g.reason


def test_grade_c_when_not_ahead_on_average_or_the_guard_is_worse_on_average_or_values_are_missing():
    level = _cuts((0.81, 0.20, {"bgnbd": (0.80, 0.20)}), (0.79, 0.20, {"bgnbd": (0.80, 0.20)}))
    g = grade(level, AUC_BRIER)
    assert g.letter == "C" and g.mean_gap == pytest.approx(0.0, abs=1e-12)  # level is not ahead
    calib = _cuts((0.90, 0.22, {"bgnbd": (0.80, 0.20)}), (0.90, 0.20, {"bgnbd": (0.80, 0.20)}))
    g = grade(calib, AUC_BRIER)
    assert g.letter == "C" and "brier worse" in g.reason
    missing = _cuts((0.90, 0.20, {"bgnbd": (0.80, 0.21)}), (float("nan"), 0.20, {"bgnbd": (0.80, 0.21)}))
    assert grade(missing, AUC_BRIER).letter == "C"
    assert grade({"2011-01-01": {"model": {"auc": 0.9, "brier": 0.1}}}, AUC_BRIER).letter == "C"  # no baseline
    assert grade({}, AUC_BRIER).letter == "C"


def test_grade_rule_for_a_lower_is_better_metric_and_the_recommender_rule():
    rule = GradeRule("rmse", 0.1, higher_is_better=False)
    per = {"a": {"model": {"rmse": 1.0}, "mean": {"rmse": 1.2}}, "b": {"model": {"rmse": 1.0}, "mean": {"rmse": 1.1}}}
    g = grade(per, rule)
    assert g.letter == "A" and g.cutoffs[0]["gap"] == pytest.approx(0.2)
    rec = RULES[RECOMMENDER]
    assert rec.metric == "ndcg@10" and rec.guard is None
    per = {"a": {"model": {"ndcg@10": 0.20}, "ease": {"ndcg@10": 0.21}, "popularity": {"ndcg@10": 0.10}},
           "b": {"model": {"ndcg@10": 0.25}, "ease": {"ndcg@10": 0.22}, "popularity": {"ndcg@10": 0.10}}}
    assert grade(per, rec).letter == "B"


# -- the CLI on a small synthetic shop -------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    from features import synthetic
    from features.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("rolling") / "workspace")
    synthetic.write(ws, synthetic.generate(n_customers=500, seed=4), seed=4, n_customers=500)
    return ws


def _cli(ws, *args):
    from pipelines.cli import app

    env = {"COLUMNS": "200"}
    return CliRunner().invoke(app, [*args, "--workspace", str(ws.root)], env=env)


def _run(ws, run_id: str):
    from training import registry

    mlc = registry.client(ws)
    return mlc, mlc.get_run(run_id)


def test_evaluate_churn_cutoffs_cli_writes_json_logs_mlflow_and_feeds_the_report(shop, monkeypatch):
    from pipelines.report.inputs import load_rolling
    from pipelines.report.model_sections import rolling_evaluation
    from training.rolling import rolling_json

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = _cli(shop, "evaluate", "churn", "--cutoffs", "2", "--every", "60", "--no-tune", "--step-days", "60")
    assert out.exit_code == 0, out.output
    data = json.loads(rolling_json(shop.reports_dir, CHURN).read_text())
    newest = dates.newest_labelled_cutoff(dates.workspace_as_of(shop), 90)
    assert data["cutoffs"] == [str((newest - pd.Timedelta(days=60)).date()), str(newest.date())]
    for cut in data["per_cutoff"]:
        assert set(cut["metrics"]["all"]) == {"model", "recency", "rfm", "bgnbd"}
        assert max(pd.Timestamp(t) for t in cut["train_cutoffs"]) + pd.Timedelta(days=90) <= pd.Timestamp(cut["cutoff"])
    aucs = [c["metrics"]["all"]["model"]["auc"] for c in data["per_cutoff"]]
    assert data["summary"]["all"]["model"]["auc"]["mean"] == pytest.approx(statistics.fmean(aucs))
    letter = data["grade"]["letter"]
    assert letter in "ABC" and f"grade {letter}" in out.output
    for c in data["cutoffs"]:
        assert c in out.output
    assert "ROC-AUC per cutoff" in out.output and "Brier" in out.output and "mean ± sd" in out.output

    run_id = out.output.split("MLflow run ")[1].split()[0]
    mlc, run = _run(shop, run_id)
    assert run.data.tags["grade"] == letter and run.data.tags["kind"] == "rolling_evaluation"
    history = mlc.get_metric_history(run_id, "rolling.all.model.auc")
    assert [h.step for h in sorted(history, key=lambda h: h.step)] == [0, 1]
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(aucs)
    assert run.data.metrics["rolling.mean.all.model.auc"] == pytest.approx(statistics.fmean(aucs))
    assert "plots/per_cutoff.png" in {a.path for a in mlc.list_artifacts(run_id, "plots")}

    section = rolling_evaluation(load_rolling(shop, CHURN), load_rolling(shop, RECOMMENDER))
    assert not section.missing and f"graded {letter}" in section.takeaway
    assert section.plots and section.plots[0].png.startswith(b"\x89PNG")
    auc_table = section.tables[0]
    assert auc_table.columns == ["scorer", *data["cutoffs"], "mean ± sd"] and len(auc_table.rows) == 4
    assert any("Recommender: no rolling evaluation" in n for n in section.notes)


def test_recommender_rolling_compares_every_generator_and_grades(shop):
    from pipelines.commands.rolling import print_rolling
    from rich.console import Console
    from training import rolling
    from training.candidates import OWN_ITEM_GENERATORS
    from training.recommender import BASELINE_NAMES, Recommender

    # small settings keep the test quick; the CLI passes the defaults through the same function
    small = {"als_factors": 8, "als_iterations": 3, "ranker_n_estimators": 30, "num_threads": 1}
    result = rolling.evaluate_recommender_rolling(shop, 2, 45, params=small)
    data = result.to_json()
    assert len(data["per_cutoff"]) == 2 and data["every_days"] == 45
    # every generator of the model alone (data-driven: whatever Recommender() has) plus popularity
    expected = {"model"} | {BASELINE_NAMES.get(g, g) for g in (*Recommender().generators, "popular")}
    for cut in data["per_cutoff"]:
        assert set(cut["metrics"]["all"]) == expected
        assert set(cut["metrics"]["new"]) == expected - {BASELINE_NAMES.get(g, g) for g in OWN_ITEM_GENERATORS}
    console = Console(width=200, record=True)
    print_rolling(console, result, [("all", "ndcg@10", "nDCG@10 per cutoff", True, 3)])
    out = console.export_text()
    g = data["grade"]
    assert g["metric"] == "ndcg@10" and g["letter"] in "ABC" and f"grade {g['letter']}" in out
    assert "nDCG@10 per cutoff" in out and all(c in out for c in data["cutoffs"])
    best = [max(v["ndcg@10"] for n, v in c["metrics"]["all"].items() if n != "model") for c in data["per_cutoff"]]
    gaps = [c["metrics"]["all"]["model"]["ndcg@10"] - b for c, b in zip(data["per_cutoff"], best)]
    assert g["mean_gap"] == pytest.approx(statistics.fmean(gaps))
    assert all(math.isfinite(x) for x in gaps)


def test_evaluate_needs_a_cutoff_or_cutoffs(shop):
    out = _cli(shop, "evaluate", "churn")
    assert out.exit_code == 2 and "--cutoffs N" in out.output


def test_rolling_metrics_in_a_training_run_do_not_leak_into_the_single_evaluation_views():
    from pipelines.report.evaluations import views_from_metrics

    views = views_from_metrics({"auc": 0.80, "baseline.rfm.auc": 0.70, "rolling.all.bgnbd.auc": 0.95,
                                "rolling.mean.all.model.auc": 0.5, "rolling.gap.mean": 0.01})
    assert views == {"": {"model": {"auc": 0.80}, "rfm": {"auc": 0.70}}}
