"""`crmml run` end to end on a small synthetic shop: models registered and promoted, scores, report, caching."""

from __future__ import annotations

import json
import re
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipelines.cli import app

pytestmark = pytest.mark.slow


#: a small shop with randomised campaigns, so the run trains all three models
SHOP = ["--customers", "800", "--seed", "3", "--experiments", "4"]


def status(output: str, step: str) -> str:
    """What the progress line of ``step`` says: done, cached or failed."""
    return re.search(rf"^\s+{step}\s+(done|cached|failed)", output, re.MULTILINE).group(1)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    ws = tmp_path_factory.mktemp("pipeline") / "workspace"
    runner = CliRunner()
    started = time.perf_counter()
    result = runner.invoke(app, ["run", *SHOP, "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    return ws, result.output, time.perf_counter() - started


def test_first_run_trains_registers_scores_and_reports(ran):
    from features.workspace import Workspace
    from training import registry

    ws, output, _ = ran
    assert "crmml run" in output and "batch scores" in output
    rows = registry.list_models(Workspace(ws))
    # a first version has nothing to be compared with: it is champion at once
    assert {(r["name"], r["version"], tuple(r["aliases"])) for r in rows} == {
        ("crmml-churn", "1", ("champion",)),
        ("crmml-recommender", "1", ("champion",)),
        ("crmml-uplift", "1", ("champion",)),  # learnt from the shop's randomised campaigns
    }
    assert re.search(r"uplift \(auuc\)\s+.\s+model: 0\.\d+", output)
    scores = pd.read_parquet(ws / "outputs" / "scores.parquet")
    assert len(scores) > 100
    assert scores["churn_probability"].between(0, 1).all()
    assert set(scores["risk_tier"]) <= {"high", "medium", "low"}
    assert scores["recommendations"].map(lambda s: len(json.loads(s))).gt(0).all()
    assert scores["reasons"].map(json.loads).map(len).gt(0).all()
    assert scores["nba_source"].eq("uplift model").all() and scores["next_best_action"].notna().all()
    assert (ws / "outputs" / "scores.csv").exists()
    assert (ws / "reports" / "report.html").stat().st_size > 10_000


def test_rerun_with_nothing_changed_is_cached_and_fast(ran):
    ws, _, first_seconds = ran
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["run", *SHOP, "--workspace", str(ws)])
    assert result.exit_code == 0, result.output
    assert {status(result.output, s) for s in ("ingest", "features", "train_churn", "train_uplift", "score", "report")} == {"cached"}
    assert time.perf_counter() - started < first_seconds / 5


def test_from_step_reruns_only_that_step_and_after(ran):
    ws, _, _ = ran
    result = CliRunner().invoke(app, ["run", *SHOP, "--workspace", str(ws),
                                      "--from", "score"])
    assert result.exit_code == 0, result.output
    assert status(result.output, "train_churn") == "cached"
    assert status(result.output, "score") == "done" and status(result.output, "report") == "done"


def test_a_failing_step_says_which_and_keeps_the_registry(ran, monkeypatch):
    from features.workspace import Workspace
    from pipelines import flow
    from training import registry

    ws, _, _ = ran
    before = registry.list_models(Workspace(ws))

    def broken(ctx):
        raise RuntimeError("disk full")

    monkeypatch.setattr(flow, "run_score", broken)
    result = CliRunner().invoke(app, ["run", *SHOP, "--workspace", str(ws),
                                      "--from", "score"])
    assert result.exit_code == 1
    assert "step 'score' failed: RuntimeError: disk full" in result.output
    assert registry.list_models(Workspace(ws)) == before
    assert (ws / "outputs" / "scores.parquet").exists()
