"""Locust users for the serving benchmark (run by ``bench/bench_service.py``; loopback only).

    locust -f bench/locustfile.py RecommendUser --headless -u 32 -r 32 -t 30s --host http://127.0.0.1:3000

Configuration comes from the environment (the benchmark script sets it):

* ``CRMML_BENCH_DATA``: a JSON file with ``customer_ids`` (known customers to pick from) and
  ``mlflow_payload`` (the ``/invocations`` body for one customer: the same features the churn
  pyfunc scores);
* ``CRMML_BENCH_KEY``: the API key (sent as ``Authorization: Bearer``);
* ``CRMML_BENCH_RATE``: requests per second per user; ``0`` (default) means no wait at all, so
  32 users saturate the server (throughput); a rate gives a paced load (latency at that load):
  each user waits an exponentially distributed time (mean ``1 / rate``) between requests, so the
  users are independent, as page views are (a fixed pace, ``constant_throughput``, keeps all 32 users
  in step: they fire together every ``1 / rate`` seconds and the latency measured is that burst's queue).

* ``CRMML_BENCH_RAW``: a file to write every request's ``[unix time, response ms, ok]`` to when the
  run stops (the benchmark computes steady-state percentiles from it, without the first seconds).

Users: ``RecommendUser`` (POST /recommend, k=10), ``ChurnUser`` (POST /churn/score with one
customer), ``MlflowUser`` (POST /invocations of ``mlflow models serve`` with one customer).
"""

from __future__ import annotations

import json
import os
import random

import time

from locust import FastHttpUser, constant, events, task

_DATA = json.loads(open(os.environ["CRMML_BENCH_DATA"]).read()) if os.environ.get("CRMML_BENCH_DATA") else {}
_IDS = _DATA.get("customer_ids") or ["C0000001"]
_MLFLOW = json.dumps(_DATA.get("mlflow_payload") or {}).encode()
_KEY = os.environ.get("CRMML_BENCH_KEY", "")
_RATE = float(os.environ.get("CRMML_BENCH_RATE", "0") or 0)
_HEADERS = {"Content-Type": "application/json", **({"Authorization": f"Bearer {_KEY}"} if _KEY else {})}


_RAW = os.environ.get("CRMML_BENCH_RAW")
_SAMPLES: list = []


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception=None, **kwargs):
    if _RAW:
        _SAMPLES.append((time.time(), response_time, exception is None))


@events.test_stop.add_listener
def _dump(environment, **kwargs):
    if _RAW:
        with open(_RAW, "w") as fh:
            json.dump(_SAMPLES, fh)


def _poisson(user) -> float:
    return random.expovariate(_RATE)


def _wait():
    return _poisson if _RATE > 0 else constant(0)


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
