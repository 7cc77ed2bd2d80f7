"""The MLflow registry and promotion gate, on a real SQLite store in a temporary workspace (no mocks)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pytest
import typer
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from typer.testing import CliRunner

from features.workspace import Workspace
from training import registry
from training.registry import CHURN, RECOMMENDER, RegistryError

FEATURES = ["recency_days", "frequency_90d"]


def _data(seed: int, n: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"recency_days": rng.exponential(40, n), "frequency_90d": rng.poisson(3, n).astype(float)})
    logit = 0.04 * X["recency_days"] - 0.5 * X["frequency_90d"]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


@pytest.fixture()
def ws(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workspace = Workspace(tmp_path / "ws")
    workspace.record_ingestion(
        {"source": "synthetic", "files": [{"path": "events.csv", "sha256": "ab" * 32}], "rows": {"events": 1234}}
    )
    yield workspace
    while mlflow.active_run():
        mlflow.end_run()


def train(ws, metrics: dict, name: str = CHURN, seed: int = 0, crash: str | None = None, tags: dict | None = None):
    """One training run of a tiny real model; ``crash`` = 'before' / 'after' register raises there;
    ``tags``: extra version tags (a rolling evaluation's grade)."""
    X, y = _data(seed)
    with registry.training_run(
        ws, name, params={"C": 1.0, "seed": seed}, lineage={"cutoff": "2011-09-01", "horizon_days": 90},
        feature_docs=[{"name": f, "meaning": f"test feature {f}"} for f in FEATURES],
    ) as run:
        model = LogisticRegression(C=1.0).fit(X, y)
        run.log_metrics(metrics)
        run.log_metrics({"auc": 0.5}, prefix="baseline.random")
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        run.log_figure(fig, "roc.png")
        plt.close(fig)
        info = mlflow.sklearn.log_model(
            model, name="model", signature=infer_signature(X, model.predict_proba(X)[:, 1]),
            pip_requirements=registry.pip_requirements("scikit-learn", "pandas"),
        )
        if crash == "before":
            raise RuntimeError("crash before register")
        run.register(info, metrics, tags=tags)
        if crash == "after":
            raise RuntimeError("crash after register, before the block ends")
    return run


def aliases(ws, name=CHURN) -> dict:
    return {k: str(v) for k, v in registry.client(ws).get_registered_model(name).aliases.items()}


def versions(ws, name=CHURN) -> list[str]:
    return sorted(str(v.version) for v in registry.client(ws).search_model_versions(f"name='{name}'"))


def vtags(ws, version, name=CHURN) -> dict:
    return registry.client(ws).get_model_version(name, str(version)).tags


def test_tracking_uri_is_absolute_per_workspace_and_env_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = Workspace(tmp_path / "a"), Workspace(tmp_path / "b")
    assert registry.configure(a) == f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    assert mlflow.get_tracking_uri() == registry.tracking_uri(a)
    # configuring one workspace must not turn into an "override" for the next one
    assert registry.tracking_uri(b) == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    assert os.environ.get("MLFLOW_TRACKING_URI") is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert registry.tracking_uri(b) == "http://127.0.0.1:5999"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel.db")
    assert registry.tracking_uri(b) == f"sqlite:///{tmp_path / 'rel.db'}"


def test_training_run_records_lineage_and_first_version_is_champion(ws):
    run = train(ws, {"auc": 0.80, "brier": 0.15})
    mlc = registry.client(ws)
    assert registry.tracking_uri(ws) == f"sqlite:///{ws.root / 'mlflow.db'}"
    assert registry.tracking_uri(ws).startswith("sqlite:////")
    r = mlc.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["C"] == "1.0"
    assert r.data.metrics["auc"] == pytest.approx(0.80)
    assert r.data.metrics["baseline.random.auc"] == pytest.approx(0.5)
    for tag in ("git_commit", "git_dirty", "lineage.cutoff", "lineage.horizon_days", "lineage.ingestions",
                "lineage.ingestion_summary", "mlflow.source.git.commit"):
        assert tag in r.data.tags, tag
    assert r.data.tags["lineage.cutoff"] == "2011-09-01"
    assert "abababababab" in r.data.tags["lineage.ingestion_summary"]
    assert r.info.artifact_uri.startswith((ws.mlflow_artifacts / "crmml").as_uri())
    files = {a.path for top in mlc.list_artifacts(run.run_id) for a in ([top] if not top.is_dir else mlc.list_artifacts(run.run_id, top.path))}
    for path in ("lineage/lineage.json", "features/features.json", "environment/versions.json",
                 "environment/requirements.txt", "plots/roc.png"):
        assert path in files, (path, files)
    lineage = json.loads(mlflow.artifacts.load_text(f"runs:/{run.run_id}/lineage/lineage.json"))
    assert lineage["ingestions"][0]["rows"] == {"events": 1234}
    assert lineage["horizon_days"] == 90
    versions_json = json.loads(mlflow.artifacts.load_text(f"runs:/{run.run_id}/environment/versions.json"))
    assert versions_json["mlflow"].startswith("3.")

    assert versions(ws) == ["1"]
    assert aliases(ws) == {"champion": "1"}
    tags = vtags(ws, 1)
    assert tags["promotion"] == "initial" and tags["gate.decision"] == "initial"
    assert float(tags["metric.auc"]) == pytest.approx(0.80)
    mv = mlc.get_model_version(CHURN, "1")
    assert mv.run_id == run.run_id
    model = mlflow.pyfunc.load_model(registry.model_uri(CHURN))
    assert model.metadata.signature is not None
    assert len(model.predict(_data(5)[0])) == 200


def test_gate_refuses_worse_promotes_better_and_rollback(ws):
    train(ws, {"auc": 0.80, "brier": 0.15})
    train(ws, {"auc": 0.70, "brier": 0.15}, seed=1)
    assert aliases(ws) == {"champion": "1", "challenger": "2"}
    assert vtags(ws, 2)["gate.decision"] == "pending"

    d = registry.promote(ws, CHURN)
    assert (d.decision, d.passed, d.promoted, d.challenger, d.champion) == ("refused", False, False, "2", "1")
    assert aliases(ws) == {"champion": "1", "challenger": "2"}
    t2, t1 = vtags(ws, 2), vtags(ws, 1)
    assert t2["gate.decision"] == "refused" and t2["gate.compared_with"] == "1" and t2["gate.forced"] == "false"
    assert float(t2["gate.challenger.auc"]) == pytest.approx(0.70)
    assert float(t2["gate.champion.auc"]) == pytest.approx(0.80)
    assert t1["challenged_by.version"] == "2" and t1["challenged_by.decision"] == "refused"
    assert float(t1["challenged_by.challenger.auc"]) == pytest.approx(0.70)

    train(ws, {"auc": 0.85, "brier": 0.14}, seed=2)
    assert aliases(ws) == {"champion": "1", "challenger": "3"}
    d = registry.promote(ws, CHURN)
    assert d.decision == "promoted" and d.promoted
    assert aliases(ws) == {"champion": "3"}
    assert vtags(ws, 3)["promotion"] == "gate"
    rm = registry.client(ws).get_registered_model(CHURN)
    assert rm.tags["previous_champion"] == "1"
    assert json.loads(rm.tags["champion_history"]) == ["1", "3"]

    back = registry.rollback(ws, CHURN)
    assert back == {"name": CHURN, "from": "3", "to": "1"}
    assert aliases(ws)["champion"] == "1"
    assert vtags(ws, 3)["rolled_back_to"] == "1"
    assert vtags(ws, 1)["promotion"] == "rollback"
    assert "3 -> 1" in registry.client(ws).get_registered_model(CHURN).tags["last_rollback"]
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback(ws, CHURN)


def test_guard_tolerance_and_force(ws):
    train(ws, {"auc": 0.80, "brier": 0.15})
    # better AUC but clearly worse calibration: the guard refuses
    train(ws, {"auc": 0.82, "brier": 0.20}, seed=1)
    d = registry.promote(ws, CHURN)
    assert d.decision == "refused"
    assert any("brier" in r and "WORSE" in r for r in d.reasons)
    # slightly lower AUC: inside a 0.01 tolerance, outside a zero one
    train(ws, {"auc": 0.795, "brier": 0.15}, seed=2)
    assert registry.promote(ws, CHURN, tolerance=0.0).decision == "refused"
    assert aliases(ws)["champion"] == "1"
    d = registry.promote(ws, CHURN, tolerance=0.01)
    assert d.decision == "promoted" and aliases(ws)["champion"] == "3"
    assert vtags(ws, 3)["gate.tolerance"] == "0.01"
    # --force on an explicit older, refused version: promoted and recorded as forced
    d = registry.promote(ws, CHURN, version=2, force=True)
    assert (d.decision, d.passed, d.promoted, d.forced) == ("forced", False, True, True)
    assert aliases(ws)["champion"] == "2"
    t = vtags(ws, 2)
    assert t["gate.forced"] == "true" and t["gate.decision"] == "forced" and t["promotion"] == "forced"
    assert registry.rollback(ws, CHURN)["to"] == "3"
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote(ws, CHURN, version=3)
    with pytest.raises(RegistryError, match="no version 42"):
        registry.promote(ws, CHURN, version=42)
    with pytest.raises(RegistryError, match="no registered model"):
        registry.promote(ws, "crmml-nope")


def _graded(letter: str) -> dict:
    """Version tags of a challenger graded ``letter`` by a rolling evaluation (as ``crmml train`` sets them)."""
    from training.grade import GRADE_REASON_TAG, GRADE_TAG

    return {GRADE_TAG: letter, GRADE_REASON_TAG: f"{letter}: graded by the test"}


def test_gate_refuses_a_challenger_graded_c_unless_forced(ws):
    train(ws, {"auc": 0.80, "brier": 0.15}, tags=_graded("B"))
    assert vtags(ws, 1)["grade"] == "B"
    # better on every gate metric, but graded C by its rolling evaluation: refused, the grade the first reason
    train(ws, {"auc": 0.85, "brier": 0.14}, seed=1, tags=_graded("C"))
    d = registry.promote(ws, CHURN)
    assert (d.decision, d.passed, d.promoted, d.grade) == ("refused", False, False, "C")
    assert d.reasons[0].startswith("grade C:") and "unless forced" in d.reasons[0]
    assert any("auc" in r and ": ok" in r for r in d.reasons[1:])  # the metric checks themselves passed
    assert aliases(ws)["champion"] == "1" and vtags(ws, 2)["gate.grade"] == "C"
    d = registry.promote(ws, CHURN, force=True)
    assert (d.decision, d.promoted, d.forced) == ("forced", True, True) and aliases(ws)["champion"] == "2"
    # graded B and better: the grade does not stand in the way
    train(ws, {"auc": 0.86, "brier": 0.14}, seed=2, tags=_graded("B"))
    assert registry.promote(ws, CHURN).decision == "promoted"
    # ungraded (trained without a backtest): only the metrics decide, as before
    train(ws, {"auc": 0.87, "brier": 0.14}, seed=3)
    d = registry.promote(ws, CHURN)
    assert d.decision == "promoted" and d.grade is None


def test_cli_promote_refuses_grade_c_with_a_reason_and_force_accepts(ws):
    train(ws, {"auc": 0.80, "brier": 0.15})
    train(ws, {"auc": 0.85, "brier": 0.14}, seed=1, tags=_graded("C"))
    app, pre = _cli_app()
    runner = CliRunner()
    w = ["--workspace", str(ws.root), "--recorded"]
    out = runner.invoke(app, pre + ["promote", CHURN, *w], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "grade C: a challenger graded C is refused unless forced" in out.output and "refused" in out.output
    assert aliases(ws) == {"champion": "1", "challenger": "2"}
    out = runner.invoke(app, pre + ["promote", CHURN, "--force", *w], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "forced" in out.output and aliases(ws) == {"champion": "2"}


def test_gate_evaluates_both_on_the_same_window(ws):
    train(ws, {"auc": 0.99, "brier": 0.01}, seed=0)  # recorded figures flatter v1 ...
    train(ws, {"auc": 0.50, "brier": 0.30}, seed=1)  # ... and understate v2
    X, y = _data(99, n=400)  # the newest window, same for both
    seen = []

    def evaluate(uri: str) -> dict:
        seen.append(uri)
        p = np.asarray(mlflow.pyfunc.load_model(uri).predict(X), dtype=float)
        return {"auc": roc_auc_score(y, p), "brier": brier_score_loss(y, p), "window": "test-window-99"}

    d = registry.promote(ws, CHURN, evaluate=evaluate, tolerance=0.05)
    assert seen == [f"models:/{CHURN}/2", f"models:/{CHURN}/1"]
    assert d.source == "evaluate" and d.window == "test-window-99"
    assert 0.5 < d.challenger_metrics["auc"] < 1 and 0.5 < d.champion_metrics["auc"] < 1
    assert d.promoted  # same model family on similar data: equal within 0.05
    t = vtags(ws, 2)
    assert t["gate.source"] == "evaluate" and t["gate.window"] == "test-window-99"
    assert float(t["gate.champion.auc"]) == pytest.approx(d.champion_metrics["auc"])


def test_recommender_policy_uses_safe_ndcg_key(ws):
    train(ws, {"ndcg@10": 0.30, "coverage": 0.50}, name=RECOMMENDER)
    train(ws, {"ndcg@10": 0.31, "coverage": 0.40}, name=RECOMMENDER, seed=1)
    assert float(vtags(ws, 1, RECOMMENDER)["metric.ndcg_at_10"]) == pytest.approx(0.30)
    d = registry.promote(ws, RECOMMENDER)
    assert d.decision == "refused" and any("coverage" in r and "WORSE" in r for r in d.reasons)
    rows = registry.list_models(ws)
    assert {r["metric"] for r in rows} == {"ndcg_at_10"}


@pytest.mark.parametrize("where", ["before", "after"])
def test_crash_halfway_leaves_registry_unchanged(ws, where):
    train(ws, {"auc": 0.80, "brier": 0.15})
    train(ws, {"auc": 0.70, "brier": 0.15}, seed=1)
    before = (versions(ws), aliases(ws), registry.client(ws).get_registered_model(CHURN).tags)
    with pytest.raises(RuntimeError, match="crash"):
        train(ws, {"auc": 0.95, "brier": 0.05}, seed=2, crash=where)
    assert (versions(ws), aliases(ws), registry.client(ws).get_registered_model(CHURN).tags) == before
    runs = mlflow.search_runs(experiment_names=["crmml"], output_format="list", order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.tags["crmml.registered"] == "false"
    assert "crash" in runs[0].data.tags["crmml.error"]
    # a crash on a model never registered before leaves no registered model behind
    with pytest.raises(RuntimeError):
        train(ws, {"ndcg@10": 0.3, "coverage": 0.5}, name=RECOMMENDER, crash=where)
    assert [m.name for m in registry.client(ws).search_registered_models()] == [CHURN]


def test_failure_while_registering_rolls_back(ws, monkeypatch):
    train(ws, {"auc": 0.80, "brier": 0.15})
    train(ws, {"auc": 0.70, "brier": 0.15}, seed=1)
    before = (versions(ws), aliases(ws))

    def broken(self, name, alias, version):  # the store fails right after the version was created
        raise OSError("store went away")

    with monkeypatch.context() as m:
        m.setattr(mlflow.MlflowClient, "set_registered_model_alias", broken)
        with pytest.raises(OSError):
            train(ws, {"auc": 0.95, "brier": 0.05}, seed=2)
    assert (versions(ws), aliases(ws)) == before
    runs = mlflow.search_runs(experiment_names=["crmml"], output_format="list", order_by=["attributes.start_time DESC"])
    assert runs[0].info.status == "FAILED"


def test_register_requires_signature_and_primary_metric(ws):
    X, y = _data(0)
    with pytest.raises(ValueError, match="primary metric"):
        with registry.training_run(ws, CHURN, params={}, lineage={}) as run:
            model = LogisticRegression().fit(X, y)
            info = mlflow.sklearn.log_model(model, name="model", signature=infer_signature(X, y),
                                            pip_requirements=["scikit-learn"])
            run.register(info, {"brier": 0.1})
    with pytest.raises(ValueError, match="signature"):
        with registry.training_run(ws, CHURN, params={}, lineage={}) as run:
            info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])
            run.register(info, {"auc": 0.8})
    assert registry.client(ws).search_registered_models() == []


def _cli_app() -> typer.Typer:
    try:
        from pipelines.cli import app

        return app, ["models"]
    except Exception:  # other areas' command modules are being written concurrently
        from pipelines.commands import models

        app = typer.Typer()
        models_app = typer.Typer()
        models.register(models_app)
        app.add_typer(models_app, name="models")
        return app, ["models"]


def test_cli_list_compare_promote_rollback(ws):
    train(ws, {"auc": 0.80, "brier": 0.15})
    train(ws, {"auc": 0.85, "brier": 0.14}, seed=1)
    app, pre = _cli_app()
    runner = CliRunner()
    w = ["--workspace", str(ws.root)]

    out = runner.invoke(app, pre + ["list", *w], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert CHURN in out.output and "champion" in out.output and "challenger" in out.output
    assert "0.8000" in out.output and "0.8500" in out.output

    out = runner.invoke(app, pre + ["compare", CHURN, *w], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "brier" in out.output and "+0.0500" in out.output and "would promote" in out.output

    # these test models are plain scikit-learn, not churn models: compare the metrics recorded at training
    out = runner.invoke(app, pre + ["promote", CHURN, "--recorded", *w], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "promoted" in out.output.lower()
    assert aliases(ws) == {"champion": "2"}

    out = runner.invoke(app, pre + ["rollback", CHURN, *w], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert aliases(ws) == {"champion": "1"}

    out = runner.invoke(app, pre + ["promote", CHURN, "--version", "2", "--force", "--recorded", *w],
                        env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert aliases(ws) == {"champion": "2"}

    for args, message in (
        (["promote", "crmml-nope"], "no registered model"),
        (["promote", CHURN, "--version", "9", "--recorded"], "no version 9"),
        (["compare", "crmml-nope"], "no registered model"),
        (["rollback", RECOMMENDER], "no registered model"),
    ):
        out = runner.invoke(app, pre + args + w, env={"COLUMNS": "200"})
        assert out.exit_code == 1, (args, out.output)
        assert message in out.output and "Traceback" not in out.output


def test_promotion_injects_each_models_evaluator(ws, monkeypatch):
    """training.promotion hands registry.promote the evaluator of the model (plain imports, no strings)."""
    from training import churn, promotion, recommender, uplift_training
    from training.names import MODEL_NAMES, UPLIFT

    assert promotion.GATE_EVALUATORS == {CHURN: churn.gate_evaluator, RECOMMENDER: recommender.gate_evaluator,
                                         UPLIFT: uplift_training.gate_evaluator}
    assert set(promotion.GATE_EVALUATORS) == {*MODEL_NAMES, UPLIFT}  # the uplift model is optional
    fn, note = promotion.gate_evaluator(ws, "crmml-nope")
    assert fn is None and "no evaluator" in note

    train(ws, {"auc": 0.80, "brier": 0.15})
    train(ws, {"auc": 0.70, "brier": 0.15}, seed=1)  # recorded figures would refuse it
    seen = []

    def factory(workspace):
        assert workspace is ws
        return lambda uri: seen.append(uri) or {"auc": 0.9 if uri.endswith("/2") else 0.8, "brier": 0.15,
                                                "window": "2011-09-09"}

    monkeypatch.setitem(promotion.GATE_EVALUATORS, CHURN, factory)
    out = promotion.promote_challengers(ws)
    assert seen == [f"models:/{CHURN}/2", f"models:/{CHURN}/1"]
    assert out[CHURN]["decision"] == "promoted" and out[CHURN]["champion"] == "2"
    assert out[RECOMMENDER]["decision"] == "initial"
    assert aliases(ws) == {"champion": "2"}
