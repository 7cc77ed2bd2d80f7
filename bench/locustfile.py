"""Locust users for the serving benchmark (run by ``bench/bench_service.py``; loopback only).

    locust -f bench/locustfile.py RecommendUser --headless -u 32 -r 32 -t 30s --host http://127.0.0.1:3000

Configuration comes from the environment (the benchmark script sets it):

* ``CRMML_BENCH_DATA``: a JSON file with ``customer_ids`` (known customers to pick from) and
  ``mlflow_payload`` (the ``/invocations`` body for one customer: the same features the churn
  pyfunc scores);
* ``CRMML_BENCH_KEY``: the API key (sent as ``Authorization: Bearer``);
* ``CRMML_BENCH_RATE``: requests per second per user; ``0`` (default) means no wait at all, so
  32 users saturate the server (throughput); a rate gives a paced load (latency at that load).

Users: ``RecommendUser`` (POST /recommend, k=10), ``ChurnUser`` (POST /churn/score with one
customer), ``MlflowUser`` (POST /invocations of ``mlflow models serve`` with one customer).
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, constant, constant_throughput, task

_DATA = json.loads(open(os.environ["CRMML_BENCH_DATA"]).read()) if os.environ.get("CRMML_BENCH_DATA") else {}
_IDS = _DATA.get("customer_ids") or ["C0000001"]
_MLFLOW = json.dumps(_DATA.get("mlflow_payload") or {}).encode()
_KEY = os.environ.get("CRMML_BENCH_KEY", "")
_RATE = float(os.environ.get("CRMML_BENCH_RATE", "0") or 0)
_HEADERS = {"Content-Type": "application/json", **({"Authorization": f"Bearer {_KEY}"} if _KEY else {})}


def _wait():
    return constant_throughput(_RATE) if _RATE > 0 else constant(0)


class RecommendUser(FastHttpUser):
    wait_time = _wait()

    @task
    def recommend(self):
        body = json.dumps({"customer_id": random.choice(_IDS), "k": 10, "exclude_seen": True})
        with self.client.post("/recommend", data=body, headers=_HEADERS, name="/recommend", catch_response=True) as r:
            if r.status_code != 200 or b'"items"' not in (r.content or b""):
                r.failure(f"status {r.status_code}")


class ChurnUser(FastHttpUser):
    wait_time = _wait()

    @task
    def churn(self):
        body = json.dumps({"customer_ids": [random.choice(_IDS)]})
        with self.client.post("/churn/score", data=body, headers=_HEADERS, name="/churn/score", catch_response=True) as r:
            if r.status_code != 200 or b'"churn_probability"' not in (r.content or b""):
                r.failure(f"status {r.status_code}")


class MlflowUser(FastHttpUser):
    wait_time = _wait()

    @task
    def invocations(self):
        with self.client.post(
            "/invocations", data=_MLFLOW, headers={"Content-Type": "application/json"}, name="/invocations",
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
