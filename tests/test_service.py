"""The crmml HTTP service: started for real on loopback, called over HTTP.

* fast, in-process: the online store (memory, and the Redis layout against a fake client), route
  templates for metrics, the auth/size guard;
* the real service (``crmml serve`` -> ``bentoml serve``) on a free 127.0.0.1 port with a temporary
  workspace holding real registered champions trained on a small synthetic shop: every endpoint,
  the 4xx paths, a champion change picked up by ``POST /admin/reload`` while requests keep flowing
  and by polling, the registry-unreachable fallback, and the refusals to start.

Every process started here is stopped by killing its process group.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.processes import ServerProcess, free_port

# this process imports bentoml (serving.service) for the fast tests: never with the default ~/bentoml
os.environ.setdefault("BENTOML_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"crmml-test-bentoml-{os.getuid()}"))

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key-7f3a9c-0b5d2e"  # >= 16 characters (serving.auth.MIN_KEY_LENGTH)
N_CUSTOMERS = 400


# ============================================================================================
# fast, in-process
# ============================================================================================
def test_memory_store_lookup_and_missing():
    from serving.store import MemoryStore, dumps, join_records

    ids = ["a", "b", "c"]
    recs = {"churn": [dumps({"id": "a"}), b"", dumps({"id": "c", "x": [1, 2]})], "profile": [b"{}", b"{}", b"{}"]}
    store = MemoryStore(ids, recs, columns={"p": np.array([0.1, np.nan, 0.9], dtype=np.float32)})
    assert store.get("churn", "a") == b'{"id":"a"}'
    assert store.get("churn", "b") is None  # empty record = no record of this kind
    assert store.get("churn", "zz") is None
    assert store.get_many("churn", ["c", "zz", "a"]) == [b'{"id":"c","x":[1,2]}', None, b'{"id":"a"}']
    assert json.loads(join_records([store.get("churn", "a"), store.get("churn", "c")]))[1]["x"] == [1, 2]
    assert len(store) == 3 and "b" in store and "zz" not in store
    assert store.info()["record_bytes"] > 0
    with pytest.raises(ValueError):
        MemoryStore(["a", "a"], {"churn": [b"", b""]})


def test_customer_store_records_are_json_with_nan_as_null():
    from serving.store import build_customer_store

    scores = pd.DataFrame({
        "customer_id": ["C1", "C2"], "churn_probability": [0.8, np.nan], "risk_tier": ["high", None],
        "reasons": [[{"feature": "recency_days", "value": np.float64(143.0), "contribution": 0.5,
                      "sentence": "no purchase for 143 days"}], []],
        "value_at_stake": [80.0, np.nan], "clv_12m": [100.0, np.nan], "suggested_action": ["call", None],
    })
    c360 = pd.DataFrame({
        "customer_id": ["C1", "C3"], "as_of": ["2024-12-31"] * 2, "r_score": pd.array([1, None], dtype="Int64"),
        "rfm_segment": ["lost", None], "value_tier": ["A", "C"], "lifecycle_stage": ["lapsed", "prospect"],
        "tags": ["lost, top customer", ""], "recency_days": [143.0, np.nan], "country": ["UK", None],
    })
    store = build_customer_store(scores, c360, "7", "2024-12-31")
    c1 = json.loads(store.get("churn", "C1"))
    assert c1["segment"] == "lost" and c1["model_version"] == "7" and c1["reasons"][0]["value"] == 143.0
    assert json.loads(store.get("churn", "C2"))["churn_probability"] is None
    assert store.get("churn", "C3") is None  # a profile without a score has no churn record
    p1 = json.loads(store.get("profile", "C1"))
    assert p1["tags"] == ["lost", "top customer"] and p1["rfm"]["r_score"] == 1 and p1["churn"]["risk_tier"] == "high"
    assert p1["attributes"] == {"country": "UK"} and p1["clv_12m"] == 100.0
    assert json.loads(store.get("profile", "C3"))["churn"] is None


class _FakeRedis:
    """Just enough of redis-py for RedisStore (get, mget, set, expire, scan_iter, pipeline)."""

    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.expiring: set[str] = set()

    def get(self, key):
        return self.data.get(key)

    def mget(self, keys):
        return [self.data.get(k) for k in keys]

    def set(self, key, value):
        self.data[key] = value if isinstance(value, bytes) else str(value).encode()

    def expire(self, key, seconds):
        self.expiring.add(key)

    def scan_iter(self, match, count=None):
        prefix = match.rstrip("*")
        return [k for k in list(self.data) if k.startswith(prefix)]

    def pipeline(self, transaction=False):
        parent = self

        class Pipe:
            ops = []

            def set(self, key, value):
                self.ops.append((key, value))

            def execute(self):
                for key, value in self.ops:
                    parent.set(key, value)
                self.ops.clear()

        return Pipe()


def test_online_table_maps_rows_by_id(tmp_path):
    """serving.table: ids found by binary search (unknown and over-long ids are not), each customer's
    scoring and 360 rows (a customer may have only one of them), most recent buyers first."""
    from serving.table import OnlineTable, write_table

    frame = pd.DataFrame({"customer_id": ["b", "a", "c"], "x": [2.0, 1.0, np.nan], "cutoff": pd.Timestamp("2024-01-01")})
    c360 = pd.DataFrame({"customer_id": ["c", "a", "d"], "recency_days": [5.0, 1.0, np.nan],
                         "frequency": [2, 3, 0], "monetary": [10.0, 30.0, 0.0], "segment": ["x", "y", None]})
    write_table(tmp_path / "t", frame, c360, {"as_of": "2024-01-01", "horizon_days": 90})
    table = OnlineTable(tmp_path / "t")
    assert len(table) == 4 and table.meta["customers"] == 4
    pos = table.positions(["c", "zz", "a", "d", "a" * 100])
    assert (pos >= 0).tolist() == [True, False, True, True, False]
    assert "b" in table and "e" not in table and table.id_at(pos[[0, 2]]) == ["c", "a"]
    rows = table.scoring_rows(pos[[0, 2, 3]])  # d has no scoring row
    assert rows["customer_id"].tolist() == ["c", "a"] and rows["x"].isna().tolist() == [True, False]
    assert table.scoring_rows(pos[[2]], ["customer_id", "x", "nope"]).columns.tolist() == ["customer_id", "x"]
    assert table.c360_rows(table.positions(["b", "d"]))["customer_id"].tolist() == ["d"]
    assert table.warm_ids(10) == ["a", "c", "d"]  # by recency, unknown last
    assert sorted(table.population()["monetary"].tolist()) == [10.0, 30.0]  # buyers only


def test_redis_store_layout_against_a_fake_client():
    from serving.store import RedisStore

    client = _FakeRedis()
    gen1 = RedisStore.publish(client, ["a", "b"], {"churn": [b'{"v":1}', b'{"v":2}']}, generation="g1")
    assert gen1.get("churn", "a") == b'{"v":1}' and gen1.get_many("churn", ["b", "zz"]) == [b'{"v":2}', None]
    assert len(gen1) == 2 and "a" in gen1
    gen2 = RedisStore.publish(client, ["a"], {"churn": [b'{"v":3}']}, generation="g2")
    assert RedisStore(client).generation == "g2" and gen2.get("churn", "a") == b'{"v":3}'
    assert gen1.get("churn", "a") == b'{"v":1}'  # a reader keeps its generation until it is swapped
    assert all(k.startswith("crmml:g1:") for k in client.expiring)  # the old generation expires


def test_route_templates_keep_ids_out_of_metrics():
    from serving.bentoml_patches import route_template

    assert route_template("/customers/C0001/profile") == "/customers/{id}/profile"
    assert route_template("/items/I9/similar") == "/items/{id}/similar"
    assert route_template("/items/I9/bought-together") == "/items/{id}/bought-together"
    assert route_template("/churn/score") == "/churn/score"
    assert route_template("/some/C0001/thing") == "/{other}"


def test_schemas_limits():
    from pydantic import ValidationError

    from serving import schemas

    schemas.RecommendRequest(customer_id="C1", k=100)
    for bad in ({"customer_id": "C1", "k": 0}, {"customer_id": "C1", "k": 101}, {"customer_id": "a b"},
                {"customer_id": "x" * 65}, {"customer_id": "C1", "colour": "red"},
                # issue #16: JSON true/false/strings are not numbers (pydantic's lax mode reads true as 1)
                {"customer_id": "C1", "k": True}, {"customer_id": "C1", "k": "3"}, {"customer_id": "C1", "exclude_seen": 1},
                {"customer_id": "C1", "filters": {"max_price": False}}, {"customer_id": "C1", "filters": {"min_price": "1"}}):
        with pytest.raises(ValidationError):
            schemas.RecommendRequest(**bad)
    with pytest.raises(ValidationError):
        schemas.ChurnScoreRequest(customer_ids=["C"] * 10_001)
    with pytest.raises(ValidationError):
        schemas.BasketRequest(item_ids=["I"] * 201)


# ============================================================================================
# the real service
# ============================================================================================
def _base_env(ws: Path, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for k in ("CRMML_API_KEY", "CRMML_AUTH", "MLFLOW_TRACKING_URI", "CRMML_RELOAD_SECONDS"):
        env.pop(k, None)
    env.update({
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "BENTOML_DO_NOT_TRACK": "True",
        "MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_HOME": str(ws / "bentoml"), "PYTHONUNBUFFERED": "1",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    })
    env.update(extra or {})
    return env


class Server(ServerProcess):
    """``crmml serve`` on a free loopback port, in its own process group."""

    def __init__(self, ws: Path, log: Path, env: dict | None = None, args: tuple = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(self.port), "--workspace", str(ws), *args]
        super().__init__(cmd, _base_env(ws, env), log, cwd=REPO)

    def wait_ready(self, timeout: float = 240.0) -> "Server":
        try:
            self.wait_http(self.url + "/readyz", timeout, ok=lambda r: r.status_code == 200 and r.json().get("ready"))
        except RuntimeError as exc:
            self.stop()
            raise AssertionError(str(exc)) from None
        return self

    def refusal(self, timeout: float = 240.0) -> tuple[int, str, str]:
        """Wait for a start that must be refused: (exit code, the one-line reason, the output)."""
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        out = self.tail(100_000)
        lines = [line for line in out.splitlines() if "refusing to start:" in line]
        return code, (lines[-1].split("refusing to start:", 1)[1].strip() if lines else ""), out


# -- champions --------------------------------------------------------------------------------
# Both champions are trained with the real code and registered through training.registry:
# training.churn + training.churn_pyfunc, training.recommender + training.recommender_pyfunc.
def _train_recommender(ws) -> str:
    from features.interactions import load_interactions
    from training import registry
    from training.recommender import Recommender
    from training.recommender_pyfunc import log_recommender

    rec = Recommender(show_progress=False, als_iterations=3, als_factors=8, num_threads=1).fit(
        load_interactions(ws), items=ws.read_table("items"), users=ws.read_table("customers"))
    metrics = {"ndcg@10": 0.1, "coverage": 0.5}
    with registry.training_run(ws, registry.RECOMMENDER) as run:
        run.register(log_recommender(rec, metrics), metrics)
    return run.model_version


def _train_churn(ws, num_leaves: int = 15) -> str:
    """The real churn model (no tuning, small), logged with log_churn and registered via training.registry."""
    from training import registry
    from training.churn import train_final
    from training.churn_pyfunc import log_churn

    from training.grade import GRADE_REASON_TAG, GRADE_TAG

    model, info = train_final(ws, tune=False, model_kwargs={"params": {"num_leaves": num_leaves}, "n_jobs": 1})
    with registry.training_run(ws, registry.CHURN, params={"num_leaves": num_leaves}) as run:
        # a grade as `crmml train churn` records it from its rolling backtest (served in /metadata)
        run.register(log_churn(model, info["example"]), model.validation_metrics_,
                     tags={GRADE_TAG: "B", GRADE_REASON_TAG: "B: set by the test fixture"})
    return run.model_version


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A small synthetic shop with champions v1 of both models."""
    from features import synthetic
    from features.workspace import Workspace

    root = tmp_path_factory.mktemp("serving")
    ws = Workspace(root / "workspace")
    synthetic.write(ws, synthetic.generate(N_CUSTOMERS, seed=3), 3, N_CUSTOMERS)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    _train_churn(ws)
    _train_recommender(ws)
    events = ws.read_table("events")
    purchases = events[events["event_type"] == "purchase"]
    return {
        "ws": ws,
        "root": root,
        "customer": str(purchases["customer_id"].value_counts().index[0]),
        "item": str(purchases["item_id"].value_counts().index[0]),
        "customers": sorted(events["customer_id"].astype(str).unique()),
    }


@pytest.fixture(scope="module")
def server(shop):
    srv = Server(shop["ws"].root, shop["root"] / "server_a.log", {"CRMML_API_KEY": KEY}, ("--reload-seconds", "0"))
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    import httpx

    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as c:
        yield c


# -- endpoints --------------------------------------------------------------------------------
@pytest.mark.slow
def test_startup_scores_nobody_and_a_first_answer_equals_the_batch_score(shop, server, client):
    """Issue #17: start-up maps the online table and scores no one; a customer never asked before is
    scored on that request, with the champion, exactly as the batch scores the whole base."""
    from features.churn_features import feature_matrix
    from features.dates import workspace_as_of
    from training import registry
    from training.churn import score_customers
    from training.churn_pyfunc import load_churn
    from training.clv import clv_frame

    store = client.get("/metadata").json()["data"]["store"]
    assert store["scored_here"] == 0 and store["customers"] >= len(shop["customers"]) * 0.9
    ws = shop["ws"]
    registry.configure(ws)
    model = load_churn(registry.model_uri(registry.CHURN))
    as_of = workspace_as_of(ws)
    events = ws.read_table("events", columns=["customer_id", "event_type", "timestamp", "amount"])
    batch = score_customers(model, feature_matrix(ws, [as_of], horizon_days=int(model.horizon_days),
                                                  include_ineligible=True), clv_frame(events, as_of))
    batch = batch.set_index("customer_id")
    cids = [c for c in shop["customers"] if c != shop["customer"]][-2:]  # asked by no other test before
    got = client.post("/churn/score", json={"customer_ids": cids}).json()["scores"]
    assert [s["customer_id"] for s in got] == cids
    for s in got:
        want = batch.loc[s["customer_id"]]
        assert s["churn_probability"] == pytest.approx(float(want["churn_probability"]), abs=1e-12)
        assert (s["risk_tier"], s["suggested_action"]) == (want["risk_tier"], want["suggested_action"])
        assert s["value_at_stake"] == pytest.approx(float(want["value_at_stake"]), rel=1e-9)
        assert [r["feature"] for r in s["reasons"]] == [r["feature"] for r in want["reasons"]]
    store = client.get("/metadata").json()["data"]["store"]
    assert store["scored_here"] == len(cids)  # those two only
    client.post("/churn/score", json={"customer_ids": cids})
    assert client.get("/metadata").json()["data"]["store"]["scored_here"] == len(cids)  # kept, not rescored


@pytest.mark.slow
def test_health_is_open_and_everything_else_needs_the_key(server, client):
    import httpx

    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["ready"] is True and set(ready["models"]) == {"crmml-churn", "crmml-recommender"}
    assert httpx.get(server.url + "/metrics").status_code == 200
    for method, path, body in (("POST", "/churn/score", {"customer_ids": ["C1"]}), ("GET", "/metadata", None),
                               ("POST", "/recommend", {"customer_id": "C1"}), ("GET", "/items/I1/similar", None),
                               ("POST", "/admin/reload", None), ("GET", "/openapi.json", None)):
        r = httpx.request(method, server.url + path, json=body)
        assert r.status_code == 401, (path, r.text)
        assert "API key" in r.json()["detail"] and r.headers["www-authenticate"].startswith("Bearer")
        r = httpx.request(method, server.url + path, json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403 and r.json()["detail"] == "invalid API key"
    assert httpx.get(server.url + "/metadata", headers={"X-API-Key": KEY}).status_code == 200


@pytest.mark.slow
def test_churn_score(shop, client):
    cid = shop["customer"]
    r = client.post("/churn/score", json={"customer_ids": [cid, cid, "NOBODY-1"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 1 and body["unknown_ids"] == ["NOBODY-1"] and body["model_version"] == "1"
    score = body["scores"][0]
    assert score["customer_id"] == cid and 0.0 <= score["churn_probability"] <= 1.0
    assert score["risk_tier"] in ("high", "medium", "low") and score["suggested_action"] and score["segment"]
    assert score["as_of"] == body["as_of"] and score["model_version"] == "1"
    assert "value_at_stake" in score and "clv_12m" in score and "action_text" in score
    # the whole base at once
    everyone = client.post("/churn/score", json={"customer_ids": shop["customers"]}).json()
    assert everyone["count"] >= len(shop["customers"]) * 0.9
    risky = [s for s in everyone["scores"] if s["risk_tier"] == "high"]
    assert risky and all(s["reasons"] for s in risky)
    assert {"feature", "value", "contribution", "sentence"} <= set(risky[0]["reasons"][0])
    assert all(isinstance(r["sentence"], str) and r["sentence"] for r in risky[0]["reasons"])
    r = client.post("/churn/score", json={"customer_ids": ["NOBODY-1", "NOBODY-2"]})
    assert r.status_code == 404 and "none of the 2" in r.json()["detail"]


@pytest.mark.slow
def test_profile(shop, client):
    cid = shop["customer"]
    p = client.get(f"/customers/{cid}/profile").json()
    assert p["customer_id"] == cid and p["segment"] and p["value_tier"] in ("A", "B", "C") and p["lifecycle_stage"]
    assert {"recency_days", "frequency", "monetary", "r_score", "f_score", "m_score"} <= set(p["rfm"])
    assert isinstance(p["tags"], list) and p["churn"]["model_version"] == "1" and "clv_12m" in p
    r = client.get("/customers/NOBODY-1/profile")
    assert r.status_code == 404 and "unknown customer" in r.json()["detail"]
    r = client.get("/customers/bad%20id/profile")
    assert r.status_code == 422 and "1-64 characters" in r.json()["detail"]


# -- next best action ---------------------------------------------------------------------------
def _train_uplift(ws) -> str:
    """An uplift model fitted with the real code on a random assignment of this shop's customers
    (the effects are noise here: the route is under test), logged and registered via training.registry."""
    from features.churn_features import feature_matrix
    from features.dates import workspace_as_of
    from training import campaigns as cmp
    from training import registry
    from training.names import UPLIFT
    from training.uplift import UpliftModel
    from training.uplift_training import log_uplift

    cutoff = workspace_as_of(ws) - pd.Timedelta(days=120)
    frame = feature_matrix(ws, [cutoff], horizon_days=60, include_ineligible=True)
    rng = np.random.default_rng(0)
    rows = frame[["customer_id"]].assign(sent_at=cutoff + pd.Timedelta(hours=10), treated=rng.random(len(frame)) < 0.5,
                                         action=rng.choice(["discount", "reminder"], len(frame)))
    data = cmp.outcomes(rows, ws.read_table("events"), 60).join(frame.drop(columns=["customer_id"]))
    model = UpliftModel(params={"min_child_samples": 5, "n_estimators": 20}).fit(
        data, data["retained"], data["treated"], data["action"])
    with registry.training_run(ws, UPLIFT) as run:
        run.register(log_uplift(model, data), {"auuc": 0.01})
    return run.model_version


@pytest.mark.slow
def test_next_best_action(shop, server, client):
    cid = shop["customer"]
    r = client.get(f"/customers/{cid}/next-best-action")
    body = r.json()
    # no uplift model registered: the rule-based action, flagged, with the reason
    assert r.status_code == 200 and body["source"] == "rules", body
    assert "no crmml-uplift champion" in body["reason"] and body["expected_value"] is None and body["action"]
    r = client.get("/customers/NOBODY-1/next-best-action")
    assert r.status_code == 404 and "unknown customer" in r.json()["detail"]
    assert client.get("/customers/bad%20id/next-best-action").status_code == 422
    assert client.get(f"/customers/{cid}/next-best-action", headers={"Authorization": ""}).status_code in (401, 403)

    version = _train_uplift(shop["ws"])
    assert client.post("/admin/reload", params={"force": "true"}).status_code == 200
    r = client.get(f"/customers/{cid}/next-best-action")
    body = r.json()
    assert r.status_code == 200 and body["source"] == "uplift model" and body["uplift_model_version"] == version
    alternatives = {a["action"]: a for a in body["alternatives"]}
    assert set(alternatives) == {"discount", "reminder"}
    for a in alternatives.values():  # expected value = uplift x value if retained - cost
        assert a["expected_value"] == pytest.approx(a["uplift"] * body["value_if_retained"] - a["cost"], abs=1e-6)
    best = max(alternatives.values(), key=lambda a: a["expected_value"])
    if best["expected_value"] > 0:
        assert body["action"] == best["action"] and body["expected_value"] == pytest.approx(best["expected_value"])
    else:
        assert body["action"] == "none" and body["expected_value"] == 0.0
    assert body["reason"] and body["as_of"]


@pytest.mark.slow
def test_recommend(shop, client):
    cid = shop["customer"]
    r = client.post("/recommend", json={"customer_id": cid, "k": 5, "exclude_seen": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] is False and len(body["items"]) == 5 and body["model_version"] == "1"
    assert all(it["source"] and it["item_id"] for it in body["items"])
    assert [it["rank"] for it in body["items"]] == [1, 2, 3, 4, 5]
    again = client.post("/recommend", json={"customer_id": cid, "k": 3, "exclude_seen": True}).json()
    assert [it["item_id"] for it in again["items"]] == [it["item_id"] for it in body["items"]][:3]  # cached prefix
    cold = client.post("/recommend", json={"customer_id": "NEW-CUSTOMER-1", "k": 4}).json()
    assert cold["cold_start"] is True and len(cold["items"]) == 4
    assert all(it["source"].startswith(("popular", "catalogue", "trending")) for it in cold["items"])
    filtered = client.post("/recommend", json={"customer_id": cid, "k": 5, "filters": {"exclude_items": [shop["item"]]}})
    assert filtered.status_code == 200 and shop["item"] not in [it["item_id"] for it in filtered.json()["items"]]


@pytest.mark.slow
def test_basket_and_items(shop, client):
    item = shop["item"]
    r = client.post("/recommend/basket", json={"item_ids": [item, "NO-SUCH-ITEM"], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cold_start"] is False and body["unknown_item_ids"] == ["NO-SUCH-ITEM"] and len(body["items"]) == 5
    assert item not in [it["item_id"] for it in body["items"]]
    cold = client.post("/recommend/basket", json={"item_ids": ["NO-SUCH-ITEM"], "k": 3}).json()
    assert cold["cold_start"] is True and len(cold["items"]) == 3
    sim = client.get(f"/items/{item}/similar", params={"k": 4}).json()
    assert sim["kind"] == "similar" and 0 < len(sim["items"]) <= 4 and item not in [i["item_id"] for i in sim["items"]]
    bt = client.get(f"/items/{item}/bought-together", params={"k": 4}).json()
    assert bt["kind"] == "bought_together" and bt["items"]
    if bt["cold_start"]:  # no positively associated item: the popular fallback, flagged, without rule figures
        assert all(i["source"] != "cooc" and i["lift"] is None for i in bt["items"])
    else:  # only items bought with it more often than chance
        assert all(i["source"] == "cooc" and i["confidence"] is not None and i["lift"] > 1 for i in bt["items"])
    for path in ("/items/NO-SUCH-ITEM/similar", "/items/NO-SUCH-ITEM/bought-together"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["detail"] == "unknown item"


@pytest.mark.slow
def test_every_response_matches_its_declared_model(shop, server, client):
    """The routes write their JSON by hand (pre-encoded records, no pydantic on the hot path): check the shapes."""
    import httpx

    from serving import schemas

    cid, item = shop["customer"], shop["item"]
    cases = [
        (schemas.ChurnScoreResponse, client.post("/churn/score", json={"customer_ids": [cid, "NOBODY-1"]})),
        (schemas.ChurnScoreResponse, client.post("/churn/score", json={"customer_ids": shop["customers"]})),
        (schemas.CustomerProfile, client.get(f"/customers/{cid}/profile")),
        (schemas.RecommendResponse, client.post("/recommend", json={"customer_id": cid, "k": 5})),
        (schemas.RecommendResponse, client.post("/recommend", json={"customer_id": cid, "k": 3})),  # cached
        (schemas.RecommendResponse, client.post("/recommend", json={"customer_id": "NEW-CUSTOMER-1", "k": 4})),
        (schemas.BasketResponse, client.post("/recommend/basket", json={"item_ids": [item, "NO-SUCH-ITEM"], "k": 5})),
        (schemas.ItemListResponse, client.get(f"/items/{item}/similar", params={"k": 4})),
        (schemas.ItemListResponse, client.get(f"/items/{item}/bought-together", params={"k": 4})),
        (schemas.Metadata, client.get("/metadata")),
        (schemas.Health, httpx.get(server.url + "/healthz")),
        (schemas.Readiness, httpx.get(server.url + "/readyz")),
        (schemas.ChurnNotFound, client.post("/churn/score", json={"customer_ids": ["NOBODY-1"]})),
        (schemas.ErrorResponse, client.get("/customers/NOBODY-1/profile")),
        (schemas.ErrorResponse, client.get("/items/NO-SUCH-ITEM/similar")),
        (schemas.ErrorResponse, client.post("/recommend", json={"customer_id": "C1", "k": 0})),
        (schemas.ErrorResponse, httpx.get(server.url + "/metadata")),
    ]
    for model, r in cases:
        assert r.headers["content-type"].startswith("application/json"), (model.__name__, r.headers)
        body = r.json()
        model.model_validate(body)  # raises on a missing field or a wrong type
        if isinstance(body, dict) and model is not schemas.Readiness:  # /readyz adds models and as_of
            assert set(body) <= set(model.model_fields), (model.__name__, set(body) - set(model.model_fields))
    for score in cases[1][1].json()["scores"]:
        assert set(score) <= set(schemas.ChurnScore.model_fields), set(score) - set(schemas.ChurnScore.model_fields)
    reload_answer = client.post("/admin/reload")
    schemas.ReloadResponse.model_validate(reload_answer.json())


@pytest.mark.slow
def test_bad_requests_get_4xx_with_a_reason(server, client):
    cases = [
        ("/recommend", {"customer_id": "C1", "k": 0}, 422, "k"),
        ("/recommend", {"customer_id": "C1", "k": 101}, 422, "k"),
        ("/recommend", {"customer_id": "C 1"}, 422, "customer_id"),
        ("/recommend", {"customer_id": "C1", "filters": {"colour": "red"}}, 422, "unknown field"),
        ("/recommend", {"req": {"customer_id": "C1"}}, 422, "top level"),
        ("/churn/score", {"customer_ids": []}, 422, "customer_ids"),
        ("/churn/score", {"customer_ids": ["C1"] * 10_001}, 422, "at most 10000"),
        ("/churn/score", {"customer_ids": ["ok", "not/ok"]}, 422, "customer_ids.1"),
        ("/churn/score", {"customer_ids": "C1"}, 422, "customer_ids"),
        ("/recommend/basket", {"item_ids": ["I1"] * 201}, 422, "item_ids"),
    ]
    for path, body, status, words in cases:
        r = client.post(path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert words in r.json()["detail"], (path, r.json())
    r = client.post("/recommend", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = client.post("/churn/score", content=b"[" + b'"C1",' * 500_000 + b'"C1"]', headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    chunks = (b'"C1",' * 100_000 for _ in range(6))  # no Content-Length: counted while read
    r = client.post("/churn/score", content=(c for part in ([b"["], chunks, [b'"C1"]']) for c in part),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert client.get("/items/I1/similar", params={"k": 500}).status_code == 422
    assert client.get("/recommend").status_code == 405


@pytest.mark.slow
def test_issue_16_odds(shop, server, client):
    """Finding 7: k: true, TRACE on the probes, the id pattern in OpenAPI, ids with a newline."""
    import httpx

    from serving.schemas import ID_PATTERN

    for path, body in (("/recommend", {"customer_id": shop["customer"], "k": True}),
                       ("/recommend/basket", {"item_ids": [shop["item"]], "k": True}),
                       ("/recommend", {"customer_id": shop["customer"], "k": 3.0})):
        r = client.post(path, json=body)
        assert r.status_code == 422 and r.json()["detail"].startswith("k:"), (path, body, r.text)
    for path in ("/healthz", "/readyz"):
        for method in ("TRACE", "POST", "DELETE"):
            r = httpx.request(method, server.url + path)
            assert r.status_code == 405 and "GET" in r.headers["allow"] and r.json()["detail"], (method, path)
        assert httpx.head(server.url + path).status_code == 200
    spec = client.get("/openapi.json").json()
    for path, param in (("/customers/{customer_id}/profile", "customer_id"), ("/items/{item_id}/similar", "item_id"),
                        ("/items/{item_id}/bought-together", "item_id")):
        (p,) = [p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == param]
        assert p["in"] == "path" and p["schema"]["pattern"] == ID_PATTERN and p["schema"]["maxLength"] == 64
    for url in ("/customers/C1%0A/profile", "/customers/%0A/profile", "/customers/a%0Ab/profile",
                "/items/I1%0A/similar", "/items/%0D%0A/bought-together", f"/customers/{shop['customer']}%0A/profile"):
        r = client.get(url)
        assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith("application/json"), (url, r.text)
        assert r.json()["detail"], url
    r = client.post("/recommend", json={"customer_id": shop["customer"] + "\n"})
    assert r.status_code == 422 and "customer_id" in r.json()["detail"]


def _example_values(obj):
    """(column, value) pairs of every ``{"columns": [...], "data": [[...]]}`` table inside an MLflow example."""
    if isinstance(obj, dict):
        if isinstance(obj.get("columns"), list) and isinstance(obj.get("data"), list):
            for row in obj["data"]:
                yield from zip(obj["columns"], row if isinstance(row, list) else [row])
        for value in obj.values():
            yield from _example_values(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _example_values(value)


@pytest.mark.slow
def test_input_examples_hold_no_personal_rows(shop, server):
    """Finding 7: MLflow's and BentoML's copies of the input examples are synthetic."""
    customers = set(shop["customers"])
    files = [p for p in shop["ws"].root.rglob("*.json") if p.name in ("input_example.json", "serving_input_example.json")]
    assert {p.name for p in files} == {"input_example.json", "serving_input_example.json"}
    assert any("bentoml" in p.parts for p in files) and any("bentoml" not in p.parts for p in files)
    seen = 0
    for path in files:
        for column, value in _example_values(json.loads(path.read_text())):
            seen += 1
            assert value not in customers, (path, column)
            if column in ("customer_id", "user_id"):
                assert str(value).startswith("example-"), (path, column, value)
            elif column != "cutoff" and isinstance(value, str):
                assert value == "example", (path, column, value)  # no country, gender... of a real row
            elif column not in ("cutoff", "k", "exclude_seen"):
                assert value is None or value != value, (path, column, value)  # numeric features: missing
    assert seen > 10


@pytest.mark.slow
def test_metadata_metrics_and_openapi(shop, server, client):
    meta = client.get("/metadata").json()
    for name in ("crmml-churn", "crmml-recommender"):
        m = meta["models"][name]
        assert m["version"] == "1" and m["source"] == "registry" and m["bentoml_tag"].startswith(f"{name}:v1-")
        assert m["run_id"] and m["lineage"]["data_fingerprint"]
    # the grade of the version's rolling backtest, read from the registry tag; the recommender here has none
    assert meta["models"]["crmml-churn"]["grade"] == "B" and meta["models"]["crmml-recommender"]["grade"] is None
    assert meta["data"]["as_of"] and meta["data"]["customers"] >= len(shop["customers"]) * 0.9 and meta["auth"] is True
    spec = client.get("/openapi.json").json()
    for path in ("/churn/score", "/customers/{customer_id}/profile", "/recommend", "/recommend/basket",
                 "/items/{item_id}/similar", "/items/{item_id}/bought-together", "/metadata", "/admin/reload"):
        assert path in spec["paths"], path
    assert "bearer" in spec["components"]["securitySchemes"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    client.get(f"/customers/{shop['customer']}/profile")
    metrics = client.get("/metrics").text
    assert 'endpoint="/customers/{id}/profile"' in metrics
    assert shop["customer"] not in metrics and "NOBODY" not in metrics
    assert shop["customer"] not in server.tail(200_000)  # no ids in the service log


#: the schemathesis checks that must pass (``--checks all`` adds heuristics such as
#: positive_data_acceptance, which counts the documented 404 of an unknown id as a failure)
FUZZ_CHECKS = ("not_a_server_error", "response_schema_conformance", "status_code_conformance",
               "content_type_conformance", "negative_data_rejection", "unsupported_method", "ignored_auth")


def run_schemathesis(url: str, key: str, max_examples: int, max_time: int, log: Path) -> tuple[int, str]:
    """``schemathesis run`` against the served ``/openapi.json``; returns (exit code, output).

    ``/admin/reload`` is left out: a forced reload rebuilds the whole state (tested on its own).
    """
    exe = Path(sys.executable).parent / "schemathesis"
    cmd = [str(exe), "run", f"{url}/openapi.json", "-H", f"X-API-Key: {key}", "-H", f"Authorization: Bearer {key}",
           "--checks", ",".join(FUZZ_CHECKS),
           "--max-examples", str(max_examples), "--max-time", str(max_time), "--seed", "16", "--workers", "1",
           "--generation-database", "none", "--exclude-path", "/admin/reload", "--no-color",
           "--request-timeout", "30", "--suppress-health-check", "all"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=max_time + 120, cwd=log.parent)
    out = r.stdout + r.stderr
    log.write_text(out)
    return r.returncode, out


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(shop, server):
    """Issue #16 item 5: fuzzing the real service from its own OpenAPI document (bounded: ~1 min)."""
    import httpx

    code, out = run_schemathesis(server.url, KEY, max_examples=15, max_time=90, log=shop["root"] / "schemathesis.log")
    tail = out[-4000:]
    assert code == 0, tail
    found = re.search(r"(\d+) generated, (\d+) passed", out)
    assert found and int(found[1]) == int(found[2]) >= 500, tail
    spec = httpx.get(f"{server.url}/openapi.json", headers={"X-API-Key": KEY}, timeout=10).json()
    operations = sum(len(ops) for path, ops in spec["paths"].items() if path != "/admin/reload")
    # every operation exercised, with the key, and no schema the service is stricter than
    assert f"{operations} selected" in out and "Authentication failed" not in out, tail
    assert "Schema validation mismatch" not in out, tail


@pytest.mark.slow
def test_admin_reload_picks_up_a_new_champion_without_dropping_requests(shop, server, client):
    import httpx

    from training import registry

    version = _train_churn(shop["ws"], num_leaves=7)
    registry.promote(shop["ws"], registry.CHURN, version=version, force=True)
    before = client.get("/metadata").json()
    assert before["models"]["crmml-churn"]["version"] == "1"  # polling is off here
    reloads_before = before["reload"]["reloads"]  # the shared server: earlier tests may have reloaded

    failures, done = [], threading.Event()
    count = [0]

    def hammer():
        with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=30) as c:
            while not done.is_set():
                for r in (c.post("/recommend", json={"customer_id": shop["customer"], "k": 5}),
                          c.post("/churn/score", json={"customer_ids": [shop["customer"]]})):
                    count[0] += 1
                    if r.status_code != 200:
                        failures.append(r.status_code)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(0.5)
        r = client.post("/admin/reload")
        time.sleep(0.5)
    finally:
        done.set()
        thread.join()
    assert r.status_code == 200 and r.json()["reloaded"] is True, r.text
    assert r.json()["models"]["crmml-churn"] == version
    assert failures == [] and count[0] > 10
    meta = client.get("/metadata").json()
    assert meta["models"]["crmml-churn"]["version"] == version and meta["reload"]["reloads"] == reloads_before + 1
    score = client.post("/churn/score", json={"customer_ids": [shop["customer"]]}).json()
    assert score["model_version"] == version and score["scores"][0]["model_version"] == version
    assert client.post("/admin/reload").json()["reloaded"] is False  # nothing changed since


@pytest.mark.slow
def test_polling_picks_up_a_champion_change(shop, server):
    import httpx

    from training import registry

    server.stop()  # one service at a time on this small machine
    poller = Server(shop["ws"].root, shop["root"] / "server_poll.log", {"CRMML_API_KEY": KEY}, ("--reload-seconds", "1"))
    try:
        poller.wait_ready()
        h = {"X-API-Key": KEY}
        before = httpx.get(poller.url + "/metadata", headers=h).json()["models"]["crmml-churn"]["version"]
        moved = registry.rollback(shop["ws"], registry.CHURN)
        assert moved["from"] == before
        deadline = time.time() + 60
        while time.time() < deadline:
            now = httpx.get(poller.url + "/metadata", headers=h).json()["models"]["crmml-churn"]["version"]
            if now == moved["to"]:
                break
            time.sleep(0.5)
        assert now == moved["to"], poller.tail()
    finally:
        poller.stop()


@pytest.mark.slow
def test_registry_unreachable_serves_the_last_imported_versions(shop):
    import httpx

    # make sure this workspace's BentoML store holds imports of the champions (as any earlier start does)
    subprocess.run(
        [sys.executable, "-c", "from features.workspace import Workspace; from serving.champions import resolve_champions; "
         f"resolve_champions(Workspace({str(shop['ws'].root)!r}))"],
        cwd=REPO, env=_base_env(shop["ws"].root), check=True, capture_output=True, timeout=300,
    )
    dead = free_port()  # a loopback port with nothing listening
    srv = Server(shop["ws"].root, shop["root"] / "server_offline.log",
                 {"CRMML_API_KEY": KEY, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{dead}"}, ("--reload-seconds", "0"))
    try:
        srv.wait_ready()
        meta = httpx.get(srv.url + "/metadata", headers={"X-API-Key": KEY}).json()
        assert {m["source"] for m in meta["models"].values()} == {"last_imported"}
        assert any("registry unreachable" in w for w in meta["warnings"])
        assert meta["reload"]["registry_reachable"] is False
        r = httpx.post(srv.url + "/recommend", json={"customer_id": shop["customer"]}, headers={"X-API-Key": KEY})
        assert r.status_code == 200
    finally:
        srv.stop()


@pytest.mark.slow
def test_refuses_to_start_without_models(shop, tmp_path):
    from features.workspace import Workspace

    ws = Workspace(tmp_path / "empty")
    ws.write_table("events", shop["ws"].read_table("events"))
    srv = Server(ws.root, tmp_path / "refuse.log", {"CRMML_API_KEY": KEY})
    try:
        code = srv.proc.wait(timeout=120)
    finally:
        srv.stop()
    out = srv.tail()
    assert code != 0 and "refusing to start" in out and "no earlier import of crmml-churn" in out, out


@pytest.mark.slow
def test_service_refuses_to_start_without_a_key(shop, tmp_path):
    """``bentoml serve`` directly, no CRMML_API_KEY and no CRMML_AUTH=off: the service stops itself."""
    env = _base_env(shop["ws"].root, {"CRMML_WORKSPACE": str(shop["ws"].root)})
    log = tmp_path / "nokey.log"
    srv = ServerProcess([str(Path(sys.executable).parent / "bentoml"), "serve", "serving.service:CrmmlService",
                         "--host", "127.0.0.1", "--port", str(free_port())], env, log, cwd=REPO)
    try:
        srv.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pass
    finally:
        srv.stop()
    text = srv.tail(100_000)
    assert "refusing to start" in text and "CRMML_API_KEY" in text, text[-3000:]


@pytest.mark.slow
def test_truncated_model_file_refuses_with_a_reason_and_a_non_zero_exit(shop, tmp_path):
    """Issue #16, finding 3: a truncated churn_model.joblib in the BentoML store."""
    import shutil

    from features.workspace import Workspace

    subprocess.run(  # this workspace's store holds imports of the champions (as any earlier start does)
        [sys.executable, "-c", "from features.workspace import Workspace; from serving.champions import resolve_champions; "
         f"resolve_champions(Workspace({str(shop['ws'].root)!r}))"],
        cwd=REPO, env=_base_env(shop["ws"].root), check=True, capture_output=True, timeout=300,
    )
    root = tmp_path / "broken"
    shutil.copytree(shop["ws"].root, root)
    ws = Workspace(root)
    broken = list((root / "bentoml" / "models" / "crmml-churn").rglob("*.joblib"))
    assert broken, "no churn model file in the copied BentoML store"
    for path in broken:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    srv = Server(ws.root, tmp_path / "broken.log", {"CRMML_API_KEY": KEY}, ("--reload-seconds", "0"))
    code, reason, out = srv.refusal()  # found by crmml serve's pre-flight (the content hash) before BentoML starts
    assert code == 3, out[-3000:]
    assert "crmml-churn" in reason and "content hash mismatch" in reason, reason
