"""The insight report: every plot is a real PNG, every section is there, it renders offline in Chromium."""

from __future__ import annotations

import base64
import dataclasses
import html
import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines import report as rp
from training import rolling

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = [
    "Data summary",
    "Revenue concentration and value tiers",
    "RFM segments",
    "Cohort retention",
    "Repeat purchase and retention rates",
    "Churn risk by segment",
    "Churn model evaluation against baselines",
    "Recommendation metrics against baselines",
    "Models at several cutoffs: rolling evaluation and grade",
    "Items bought together: top association rules",
    "Retention list: top customers by value at stake",
    "Campaigns: measured effects, uplift targeting and the next campaign",
]
# the sections computed from events and the feature code alone: they must always have plots
ALWAYS = ["Revenue concentration and value tiers", "RFM segments", "Cohort retention",
          "Repeat purchase and retention rates", "Items bought together: top association rules"]
CHROMIUM = Path("/usr/bin/chromium")
IMG = re.compile(r'<img\b[^>]*\bsrc="data:image/png;base64,([^"]+)"')
H2 = re.compile(r'<section class="block" id="([^"]+)">\s*<h2><span class="num">\d+\.</span>(.*?)</h2>\s*(<p class="missing">)?',
                re.S)


def outline(path: Path) -> dict:
    """What a written report shows: ``sections`` (titles), ``missing`` (titles of the sections whose input
    was absent)."""
    text = Path(path).read_text(encoding="utf-8")
    sections = [(html.unescape(title), bool(miss)) for _, title, miss in H2.findall(text)]
    return {"sections": [t for t, _ in sections], "missing": [t for t, m in sections if m]}


def embedded_pngs(path: Path) -> list[bytes]:
    """The PNG bytes of every ``<img>`` embedded in a report."""
    return [base64.b64decode(b) for b in IMG.findall(Path(path).read_text(encoding="utf-8"))]


def check_images(html_path: Path, min_images: int) -> list[bytes]:
    """Every <img> is an embedded, decodable, non-trivial PNG, also saved in the report's folder."""
    text = html_path.read_text(encoding="utf-8")
    tags = re.findall(r"<img\b[^>]*>", text)
    pngs = embedded_pngs(html_path)
    assert len(tags) == len(pngs) >= min_images, "an <img> without an embedded PNG"
    assert not re.search(r'(src|href)="(https?:)?//', text), "the report must not load anything from the network"
    files = sorted(rp.report_files(html_path).glob("*.png"))
    assert len(files) == len(pngs)
    for tag, data in zip(tags, pngs):
        assert data.startswith(PNG_SIGNATURE)
        assert len(data) > 1024
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 200 and height > 150
        saved = html_path.parent / re.search(r'data-file="([^"]+)"', tag).group(1)
        assert saved.read_bytes() == data
    return pngs


def sections_with_plots(html_path: Path) -> dict[str, int]:
    text = html_path.read_text(encoding="utf-8")
    out = {}
    for block in re.findall(r'<section class="block".*?</section>', text, re.S):
        title = re.search(r"</span>(.*?)</h2>", block).group(1)
        out[title.replace("&amp;", "&")] = len(re.findall(r"<img\b", block))
    return out


# ------------------------------------------------------------------------------------------------
# pure functions
# ------------------------------------------------------------------------------------------------
def handmade_events() -> pd.DataFrame:
    rows = [
        # customer, item, type, time, amount, order
        ("a", "i1", "purchase", "2024-01-05", 100.0, "o1"),
        ("a", "i2", "purchase", "2024-01-05", 50.0, "o1"),
        ("a", "i1", "purchase", "2024-02-10", 100.0, "o2"),
        ("a", "i2", "return", "2024-02-12", 50.0, "r1"),
        ("b", "i1", "purchase", "2024-01-20", 30.0, "o3"),
        ("b", "i2", "purchase", "2024-03-03", 20.0, "o4"),
        ("c", "i3", "purchase", "2024-02-01", 10.0, "o5"),
        ("d", "i3", "view", "2024-02-01", None, None),
    ]
    df = pd.DataFrame(rows, columns=["customer_id", "item_id", "event_type", "timestamp", "amount", "order_id"])
    df["timestamp"] = pd.to_datetime(df["timestamp"])
    return df


def test_prepare_and_summary():
    ev, as_of = rp.prepare_events(handmade_events())
    assert as_of == pd.Timestamp("2024-03-04")
    s = rp.data_summary(ev)
    assert s["customers"] == 3 and s["customers_any_event"] == 4
    assert s["orders"] == 5
    assert s["revenue"] == pytest.approx(310.0) and s["net_revenue"] == pytest.approx(260.0)
    ev2, _ = rp.prepare_events(handmade_events(), as_of="2024-02-01")
    assert ev2["timestamp"].max() < pd.Timestamp("2024-02-01")


def test_revenue_and_pareto():
    ev, _ = rp.prepare_events(handmade_events())
    rev = rp.customer_revenue(ev)
    assert rev.to_dict() == {"a": 200.0, "b": 50.0, "c": 10.0}
    curve = rp.pareto_curve(rev)
    assert curve["revenue_share"].iloc[0] == 0 and curve["revenue_share"].iloc[-1] == pytest.approx(1.0)
    assert np.all(np.diff(curve["revenue_share"]) >= 0)
    assert rp.share_of_revenue(curve, 1 / 3) == pytest.approx(200 / 260)
    assert rp.customers_for_revenue(curve, 0.8) == pytest.approx(2 / 3)
    assert len(rp.pareto_curve(pd.Series(dtype=float))) == 1


def test_cohorts_activity_and_repeat_rates():
    ev, as_of = rp.prepare_events(handmade_events())
    p = ev[ev["event_type"] == "purchase"]
    shares, sizes = rp.cohort_retention(p)
    assert list(shares.index) == ["2024-01", "2024-02"]
    assert sizes.to_dict() == {"2024-01": 2, "2024-02": 1}
    assert shares.loc["2024-01", 0] == 1.0
    assert shares.loc["2024-01", 1] == 0.5  # a bought in February, b did not
    assert shares.loc["2024-01", 2] == 0.5  # b bought in March
    assert np.isnan(shares.loc["2024-02", 2])  # April has not happened
    # leaving out March (a partial month)
    shares2, _ = rp.cohort_retention(p, before_month=2024 * 12 + 2)
    assert 2 not in shares2.columns
    act = rp.monthly_activity(p)
    assert act["active"].tolist() == [2, 2, 1]
    assert act["new"].tolist() == [2, 1, 0]
    assert act["retained"].tolist() == [0, 1, 0]
    assert act["retention_rate"].iloc[1] == pytest.approx(0.5)
    rates = rp.repeat_rates(p, as_of, within_days=30)
    assert rates["repeat_rate"] == pytest.approx(2 / 3)
    assert rates["mature_buyers"] == 3  # first orders on or before 2024-02-03
    assert rates["repeat_within"] == pytest.approx(0.0)  # a: 36 days, b: 43 days, c: none


def test_squarify_fills_the_box():
    vals = [50, 25, 12, 8, 5]
    rects = rp.squarify(vals, 0, 0, 100, 60)
    areas = [w * h for _, _, w, h in rects]
    assert sum(areas) == pytest.approx(6000)
    assert np.allclose(np.array(areas) / 6000, np.array(vals) / 100)
    for x, y, w, h in rects:
        assert x >= -1e-9 and y >= -1e-9 and x + w <= 100 + 1e-9 and y + h <= 60 + 1e-9


def test_dedupe_rule_pairs():
    rules = pd.DataFrame({"antecedent": ["x", "y", "x"], "consequent": ["y", "x", "z"],
                          "support": [0.1, 0.1, 0.05], "confidence": [0.5, 0.8, 0.3], "lift": [2.0, 2.0, 1.5]})
    out = rp.dedupe_rule_pairs(rules)
    assert len(out) == 2
    assert out.iloc[0]["antecedent"] == "y"  # the more confident direction of x-y


def test_evaluation_rows_formats():
    rec = {"all": {"model": {"ndcg@10": 0.2}, "popular": {"ndcg@10": 0.1}}, "new": {"model": {"ndcg@10": 0.05}},
           "n_users": 10, "k": 10}
    views = rp.evaluation_views(rec)
    assert set(views) == {"all", "new"}
    assert views["all"]["popular"]["ndcg@10"] == 0.1
    churn = {"model": {"auc": 0.8}, "baselines": {"recency": {"auc": 0.7}}}
    assert rp.evaluation_views(churn)[""] == {"model": {"auc": 0.8}, "recency": {"auc": 0.7}}


# ------------------------------------------------------------------------------------------------
# the report on the synthetic shop
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_workspace(tmp_path_factory):
    from features import synthetic
    from features.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("report") / "workspace")
    synthetic.write(ws, synthetic.generate(n_customers=300, seed=3), seed=3, n_customers=300)
    return ws


@pytest.fixture(scope="module")
def synthetic_report(synthetic_workspace):
    return rp.build_report(synthetic_workspace)


def test_report_images_and_sections(synthetic_report, synthetic_workspace):
    path = synthetic_report
    assert path == synthetic_workspace.reports_dir / "report.html"
    check_images(path, min_images=len(ALWAYS))
    info = outline(path)
    assert info["sections"] == SECTIONS
    plots = sections_with_plots(path)
    for title in ALWAYS:
        assert plots[title] >= 1, f"{title} has no plot"
    text = path.read_text(encoding="utf-8")
    assert "As of <b>2024-12-31</b>" in text
    assert re.search(r"20% of customers bring \d+% of the last 365 days", text)


def test_missing_inputs_are_one_line(synthetic_report):
    text = synthetic_report.read_text(encoding="utf-8")
    missing = re.findall(r'<p class="missing">(.*?)</p>', text, re.S)
    info = outline(synthetic_report)
    assert len(missing) == len(info["missing"])
    for line in missing:
        assert "\n" not in line.strip() and len(line) < 300
        assert "failed" not in line  # absent inputs are reported, not crashes


def test_sections_from_model_outputs(synthetic_workspace, tmp_path):
    """Churn scores, retention list and evaluation files in the workspace turn into plots and tables."""
    from features.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(synthetic_workspace.data_dir, ws.data_dir)
    customers = ws.read_table("customers")["customer_id"].astype(str)
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.95, len(customers))
    clv = rng.gamma(2.0, 100.0, len(customers))
    reasons = [{"feature": "recency_days", "value": 143.0, "contribution": 0.8, "sentence": "no purchase for 143 days"},
               {"feature": "complaints_90d", "value": 2.0, "contribution": 0.3,
                "sentence": "2 complaints in the last 90 days"}]
    scores = pd.DataFrame({  # the columns of the churn model's score_customers
        "customer_id": customers, "churn_probability": p,
        "risk_tier": np.where(p >= 0.6, "high", np.where(p >= 0.3, "medium", "low")),
        "reasons": [reasons] * len(customers), "clv_12m": clv,
    })
    ws.outputs_dir.mkdir(parents=True)
    # scores only: the retention list is made with training.retention.retention_list
    scores.to_parquet(ws.outputs_dir / "scores.parquet", index=False)
    ws.reports_dir.mkdir(parents=True)
    (ws.reports_dir / "churn_evaluation.json").write_text(json.dumps({
        "model": {"auc": 0.81, "pr_auc": 0.62, "brier": 0.15},
        "baselines": {"recency": {"auc": 0.74, "pr_auc": 0.5, "brier": 0.19},
                      "rfm": {"auc": 0.72, "pr_auc": 0.48, "brier": 0.2}},
    }))
    (ws.reports_dir / "recommender_evaluation.json").write_text(json.dumps({
        "all": {"model": {"ndcg@10": 0.21, "recall@10": 0.18, "hit_rate@10": 0.5, "coverage": 0.3},
                "popular": {"ndcg@10": 0.08, "recall@10": 0.07, "hit_rate@10": 0.3, "coverage": 0.01}},
        "new": {"model": {"ndcg@10": 0.05, "recall@10": 0.04, "hit_rate@10": 0.2, "coverage": 0.3},
                "popular": {"ndcg@10": 0.03, "recall@10": 0.03, "hit_rate@10": 0.15, "coverage": 0.01}},
        "n_users": 120, "k": 10,
    }))
    rolling_churn = _rolling_churn([(0.80, 0.17, 0.79, 0.18), (0.78, 0.18, 0.76, 0.18)])
    rolling.write(rolling_churn, ws.reports_dir)  # what `crmml evaluate churn --cutoffs 2` writes
    path = rp.build_report(ws, tmp_path / "out" / "insight.html")
    assert path == (tmp_path / "out" / "insight.html").resolve()
    check_images(path, min_images=len(ALWAYS) + 5)
    assert outline(path)["missing"] == [SECTIONS[-1]]  # no campaign results here: tests/test_campaigns.py
    plots = sections_with_plots(path)
    for title in SECTIONS[1:-1]:
        assert plots[title] >= 1, f"{title} has no plot"
    text = path.read_text(encoding="utf-8")
    assert "0.810" in text and "recency" in text  # model vs baseline table
    assert f"churn model graded {rolling_churn.grade.letter} over 2 cutoffs" in text
    assert "0.790 ± 0.014" in text and "2011-03-01" in text  # the model's AUC per cutoff and mean ± sd
    assert "no purchase for 143 days; 2 complaints in the last 90 days" in text  # retention list reasons
    top = scores.assign(v=p * clv)[p >= 0.3].sort_values("v", ascending=False)["customer_id"].iloc[0]
    assert f"<td class=\"n\">1</td><td>{top}</td>" in text  # ranked by value at stake


def test_evaluation_from_mlflow_runs(synthetic_workspace, tmp_path):
    """Without evaluation files, the champion's (else the newest) training run in MLflow is used:
    model metrics, ``baseline.<name>.<metric>`` and the run's ``plots/*.png``."""
    from matplotlib.figure import Figure

    from features.workspace import Workspace
    from training import registry

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(synthetic_workspace.data_dir, ws.data_dir)
    with registry.training_run(ws, registry.CHURN, params={"horizon_days": 90}) as run:
        run.log_metrics({"auc": 0.8, "brier": 0.15, "pr_auc": 0.6, "top_decile_lift": 2.5})
        run.log_metrics({"auc": 0.7, "brier": 0.2, "pr_auc": 0.5, "top_decile_lift": 2.0}, prefix="baseline.recency")
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        ax.plot([0, 0.2, 1], [0, 0.7, 1])
        ax.set_title("ROC")
        run.log_figure(fig, "roc.png")
    with registry.training_run(ws, registry.RECOMMENDER) as run:
        run.log_metrics({"ndcg@10": 0.2, "recall@10": 0.15})
        run.log_metrics({"ndcg@10": 0.1, "recall@10": 0.08}, prefix="baseline.popular")
    path = rp.build_report(ws, tmp_path / "r.html")
    check_images(path, min_images=len(ALWAYS) + 3)
    plots = sections_with_plots(path)
    assert plots["Churn model evaluation against baselines"] == 2  # the comparison + the run's roc.png
    assert plots["Recommendation metrics against baselines"] == 1
    text = path.read_text(encoding="utf-8")
    assert "ROC-AUC is 0.800 against 0.700 for the best baseline (recency)" in text
    assert "ndcg@10 is 0.200 against 0.100" in text


@pytest.mark.slow
def test_report_reads_the_churn_evaluation_and_scores(synthetic_workspace, tmp_path):
    """What training.churn writes (evaluation JSON + plots, score_customers output) lands in the report."""
    from features.workspace import Workspace
    from training import churn

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(synthetic_workspace.data_dir, ws.data_dir)
    ev = churn.evaluate_protocol(ws, "2024-09-01", tune=False)
    written = churn.write_report(ev, ws.reports_dir)
    ws.outputs_dir.mkdir(parents=True)
    scores = ev.scored.drop(columns=["churned"])
    # reasons hold values of mixed types (numbers, categories): stored as JSON text, as the pyfunc returns them
    scores["reasons"] = scores["reasons"].map(lambda r: json.dumps(r, default=str))
    scores.to_parquet(ws.outputs_dir / "scores.parquet", index=False)
    path = rp.build_report(ws)
    check_images(path, min_images=len(ALWAYS) + 3)
    plots = sections_with_plots(path)
    assert plots["Churn model evaluation against baselines"] == 1 + len(written["figures"])
    assert plots["Churn risk by segment"] == 1 and plots["Retention list: top customers by value at stake"] == 1
    text = path.read_text(encoding="utf-8")
    auc = ev.metrics["model"]["auc"]
    assert f"ROC-AUC is {auc:.3f} against" in text
    assert "evaluation cutoff 2024-09-01" in text


def test_log_report_to_mlflow(synthetic_workspace, synthetic_report):
    import mlflow

    run_id = rp.log_report(synthetic_workspace, synthetic_report)
    client = mlflow.MlflowClient(tracking_uri=synthetic_workspace.mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "report"
    names = [a.path for a in client.list_artifacts(run_id, "report")]
    assert "report/report.html" in names
    pngs = client.list_artifacts(run_id, "report/report_files")
    assert len(pngs) == len(list(rp.report_files(synthetic_report).glob("*.png")))
    # into the active run when there is one
    with mlflow.start_run(run_name="outer") as outer:
        assert rp.log_report(synthetic_workspace, synthetic_report) == outer.info.run_id


def test_cli_report(synthetic_workspace, tmp_path):
    import typer
    from typer.testing import CliRunner

    from pipelines.commands import report as command

    app = typer.Typer()

    @app.callback()
    def main():
        pass

    command.register(app)
    out = tmp_path / "cli.html"
    result = CliRunner().invoke(app, ["report", "--workspace", str(synthetic_workspace.root), "--out", str(out),
                                      "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert out.exists() and "plots" in result.output
    empty = CliRunner().invoke(app, ["report", "--workspace", str(tmp_path / "empty"), "--no-mlflow"])
    assert empty.exit_code == 2


def chromium_check(report: Path, tmp_path: Path) -> None:
    """Open the report in headless Chromium, offline, as a user would: every image decodes and is laid out."""
    probe = tmp_path / "probe.html"
    text = report.read_text(encoding="utf-8")
    script = ("<script>window.addEventListener('load', function () {"
              "var r = Array.prototype.map.call(document.images, function (i) {"
              "return [i.complete, i.naturalWidth, i.naturalHeight, Math.round(i.getBoundingClientRect().width)]; });"
              "document.body.setAttribute('data-probe', JSON.stringify(r)); });</script>")
    probe.write_text(text.replace("</body>", script + "</body>"), encoding="utf-8")
    args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,4000", "--virtual-time-budget=10000"]
    dom = subprocess.run(args + ["--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180).stdout
    found = re.search(r"data-probe=\"([^\"]*)\"", dom)
    assert found, "the page did not finish loading"
    images = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(images) == len(embedded_pngs(report))
    for complete, width, height, shown in images:
        assert complete and width > 200 and height > 150 and shown > 200
    shot = tmp_path / "shot.png"
    subprocess.run(args + [f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=180)
    assert shot.read_bytes().startswith(PNG_SIGNATURE) and shot.stat().st_size > 50_000


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium (/usr/bin/chromium)")
def test_chromium_renders_every_plot(synthetic_report, tmp_path):
    chromium_check(synthetic_report, tmp_path)


# ------------------------------------------------------------------------------------------------
# the real data
# ------------------------------------------------------------------------------------------------
@pytest.mark.realdata
def test_report_on_real_data(real_workspace, tmp_path):
    path = rp.build_report(real_workspace, tmp_path / "real.html")
    check_images(path, min_images=len(ALWAYS))
    info = outline(path)
    assert info["sections"] == SECTIONS
    plots = sections_with_plots(path)
    for title in ALWAYS:
        assert plots[title] >= 1, f"{title} has no plot"
    text = path.read_text(encoding="utf-8")
    assert "As of <b>2011-12-10</b>" in text
    assert "5,853 customers placed" in text  # customers with a product purchase, free items too (docs/data.md)
    # the UCI shop is concentrated: the top fifth brings about three quarters of the revenue
    top20 = int(re.search(r"20% of customers bring (\d+)% of the last 365 days", text).group(1))
    assert 65 <= top20 <= 85
    if CHROMIUM.exists():
        chromium_check(path, tmp_path)


def test_reason_text_formats():
    as_json = json.dumps([{"feature": "recency_days", "sentence": "no purchase for 143 days"},
                          {"feature": "complaints_90d", "sentence": "2 complaints in the last 90 days"}])
    assert rp.reason_text(as_json) == "no purchase for 143 days; 2 complaints in the last 90 days"
    assert rp.reason_text(np.array([{"sentence": "a"}, {"sentence": "b"}], dtype=object)) == "a; b"
    assert rp.reason_text(["x", "y"]) == "x; y"
    assert rp.reason_text(None) == "" and rp.reason_text("plain words") == "plain words"


def test_views_from_mlflow_metrics():
    """The metric keys the trainers log: model, baseline.<name>.<m>, <view>.<name>.<m> (safe keys)."""
    views = rp.views_from_metrics({"ndcg_at_10": 0.2, "baseline.popular.ndcg_at_10": 0.1,
                                   "new.model.ndcg_at_10": 0.05, "new.popular.ndcg_at_10": 0.03})
    assert views == {"all": {"model": {"ndcg@10": 0.2}, "popular": {"ndcg@10": 0.1}},
                     "new": {"model": {"ndcg@10": 0.05}, "popular": {"ndcg@10": 0.03}}}
    churn = rp.views_from_metrics({"auc": 0.8, "baseline.recency.auc": 0.7, "baseline.rfm.auc": 0.72})
    assert churn == {"": {"model": {"auc": 0.8}, "recency": {"auc": 0.7}, "rfm": {"auc": 0.72}}}


# ------------------------------------------------------------------------------------------------
# the structure: declared inputs, no order between sections
# ------------------------------------------------------------------------------------------------
def test_sections_declare_their_inputs():
    """Each section receives exactly the inputs it declares (fields of ReportInputs), as keyword arguments."""
    from pipelines.report.inputs import ReportInputs

    fields = {f.name for f in dataclasses.fields(ReportInputs)}
    assert [spec.title for spec in rp.SECTIONS] == SECTIONS
    for spec in rp.SECTIONS:
        assert set(spec.inputs) <= fields, spec.key
        assert list(inspect.signature(spec.build).parameters) == list(spec.inputs), spec.key


def test_sections_do_not_depend_on_their_order(synthetic_workspace):
    loaded, sections = rp.collect(synthetic_workspace)
    backwards = [spec.run(loaded) for spec in reversed(rp.SECTIONS)][::-1]

    def shown(s):
        return s.key, s.title, s.takeaway, s.missing, [p.name for p in s.plots], [t.rows for t in s.tables]

    assert [shown(s) for s in backwards] == [shown(s) for s in sections]


def test_inputs_are_read_where_their_writers_put_them(tmp_path):
    """Scores are read at pipelines.score.scores_path only: a table elsewhere is not guessed at."""
    from features.workspace import Workspace
    from pipelines import score
    from pipelines.report import inputs, model_sections

    assert inputs.PROBABILITY in score.OUTPUT_COLUMNS
    ws = Workspace(tmp_path / "ws")
    ws.outputs_dir.mkdir(parents=True)
    scores = pd.DataFrame({"customer_id": ["a", "b"], "churn_probability": [0.2, 0.7], "rfm_segment": ["new", "lost"]})
    scores.to_parquet(ws.outputs_dir / "churn_scores.parquet", index=False)
    found = inputs.load_scores(ws)
    assert not found.ok
    absent = inputs.Found(None, "absent")
    section = model_sections.CHURN_RISK.run(dataclasses.replace(
        _empty_inputs(ws), scores=found, customer360_at_scoring=absent, value=absent))
    assert section.missing.startswith("No churn scores: run `crmml score`") and not section.plots
    scores.to_parquet(score.scores_path(ws), index=False)
    found = inputs.load_scores(ws)
    assert found.ok and found.source == "outputs/scores.parquet"
    section = model_sections.CHURN_RISK.run(dataclasses.replace(
        _empty_inputs(ws), scores=found, customer360_at_scoring=absent, value=absent))
    assert not section.missing and len(section.plots) == 1


def _rolling_churn(rows):
    """A churn rolling evaluation of constructed figures: per cutoff (model auc, brier, bgnbd auc, brier)."""
    from training.grade import RULES, grade
    from training.names import CHURN

    per = [{"cutoff": f"2011-0{2 * i + 1}-01", "metrics": {"all": {"model": {"auc": a, "brier": b},
                                                                  "bgnbd": {"auc": x, "brier": y}}}}
           for i, (a, b, x, y) in enumerate(rows)]
    return rolling.RollingResult(CHURN, [c["cutoff"] for c in per], 59, {"horizon_days": 90}, per,
                                 rolling.summarize(per), grade({c["cutoff"]: c["metrics"]["all"] for c in per}, RULES[CHURN]))


def _empty_inputs(ws):
    from pipelines.report.inputs import Found, ReportInputs

    absent = Found(None, "absent")
    ev, as_of = rp.prepare_events(handmade_events())
    return ReportInputs(workspace=ws, as_of=as_of, events=ev, purchases=ev[ev["event_type"] == "purchase"],
                        summary=rp.data_summary(ev), items=None, customer360=absent, value=absent, scores=absent,
                        customer360_at_scoring=absent, churn_evaluation=absent, recommender_evaluation=absent,
                        churn_rolling=absent, recommender_rolling=absent, item_rules=absent)
