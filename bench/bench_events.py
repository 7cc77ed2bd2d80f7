"""Online events benchmark: ``POST /events`` throughput and latency, and freshness (event -> changed answer).

    python -m bench.bench_events --workspace DIR [--requests 200] [--batch 100] [--threads 4] [--fresh 30]
    python -m bench.bench_events --prepare 5000          # a temporary workspace with champions first

Starts ``crmml serve`` (one worker, API key on, memory store; ``--store redis --redis-url URL`` for
Redis) on loopback, then measures

* **ingestion**: ``--requests`` POSTs of ``--batch`` purchase events each from ``--threads`` threads
  (events accepted per second, request p50/p99), and the same with one event per request;
* **freshness**: for ``--fresh`` customers, one purchase each, the time from sending the event to the
  first answers that show it: ``/churn/score`` with the customer's new as-of date and ``/recommend``
  without the bought item (polled back to back); p50/p99 over the customers.

Results go to ``BENCHMARKS.md`` (between the ``bench_events`` markers) and ``<workspace>/reports/bench_events.json``.
The events are appended to the workspace's event log (the next ingestion adds them to its data):
use a copy of a workspace you care about. Every process started here is stopped by killing its group.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from bench.bench_service import REPO, code_version, load_average, prepare, start_crmml, write_benchmarks

MARKS = ("<!-- bench_events:start -->", "<!-- bench_events:end -->")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def _purchase(cid: str, item: str, when: pd.Timestamp) -> dict:
    return {"event_id": uuid.uuid4().hex, "customer_id": cid, "event_type": "purchase", "item_id": item,
            "timestamp": when.isoformat(), "quantity": 1, "amount": 10.0}


def ingestion(url: str, key: str, customers: list[str], items: list[str], requests: int, batch: int,
              threads: int) -> dict:
    """``requests`` POSTs of ``batch`` events from ``threads`` threads: events/s and request latency."""
    import httpx

    rng = np.random.default_rng(0)
    when = pd.Timestamp.now().floor("s") - pd.Timedelta(minutes=10)
    bodies = [{"events": [_purchase(customers[rng.integers(len(customers))], items[rng.integers(len(items))], when)
                          for _ in range(batch)]} for _ in range(requests)]
    latencies: list[float] = []
    accepted = errors = 0
    lock = threading.Lock()
    todo = iter(bodies)

    def worker():
        nonlocal accepted, errors
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
            while True:
                with lock:
                    body = next(todo, None)
                if body is None:
                    return
                t = time.perf_counter()
                r = c.post("/events", json=body)
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    if r.status_code == 202:
                        accepted += r.json()["accepted"]
                    else:
                        errors += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - started
    return {"requests": requests, "batch": batch, "threads": threads, "seconds": round(seconds, 2),
            "events_per_s": round(accepted / seconds, 1), "requests_per_s": round(requests / seconds, 1),
            "p50_ms": round(_pct(latencies, 50), 1), "p99_ms": round(_pct(latencies, 99), 1),
            "accepted": accepted, "errors": errors}


def freshness(url: str, key: str, customers: list[str], timeout: float = 30.0) -> dict:
    """Per customer: one purchase of their top recommendation, then poll until both answers show it."""
    import httpx

    when = pd.Timestamp.now().floor("s") - pd.Timedelta(minutes=1)
    new_as_of = str((when.normalize() + pd.Timedelta(days=1)).date())
    times, failures = [], 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for cid in customers:
            top = c.post("/recommend", json={"customer_id": cid, "k": 10}).json()["items"][0]["item_id"]
            sent = time.perf_counter()
            r = c.post("/events", json={"events": [_purchase(cid, top, when)]})
            assert r.status_code == 202, r.text
            churn_ok = rec_ok = False
            while time.perf_counter() - sent < timeout and not (churn_ok and rec_ok):
                if not churn_ok:
                    s = c.post("/churn/score", json={"customer_ids": [cid]}).json()
                    churn_ok = s.get("scores") and s["scores"][0]["as_of"] == new_as_of
                if not rec_ok:
                    items = c.post("/recommend", json={"customer_id": cid, "k": 10}).json()["items"]
                    rec_ok = top not in [it["item_id"] for it in items]
            if churn_ok and rec_ok:
                times.append(time.perf_counter() - sent)
            else:
                failures += 1
    return {"customers": len(customers), "p50_ms": round(_pct(times, 50), 1), "p99_ms": round(_pct(times, 99), 1),
            "max_ms": round(max(times) * 1000, 1) if times else None,
            "mean_ms": round(statistics.mean(times) * 1000, 1) if times else None, "not_fresh": failures}


def markdown(res: dict) -> str:
    ing, one, fr = res["ingestion"], res["single"], res["freshness"]
    return "\n".join([
        MARKS[0],
        "## Online events: `POST /events` and freshness (bench/bench_events.py)",
        "",
        f"`.venv/bin/python -m bench.bench_events --workspace DIR` ({res['command']}). Date {res['date']}; machine: "
        f"2 cores, 24 GiB, Python 3.11, shared with other jobs (load average {res['load']}); commit {res['commit']}. "
        f"`crmml serve`, one worker, {res['store']} store, API key on; client threads on the same cores. Data: synthetic "
        f"shop, {res['customers']:,} customers. Every accepted event is appended to the event log and fsync'ed before its 202.",
        "",
        "| what | requests | events/request | client threads | events/s | requests/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| `POST /events`, batches | {ing['requests']} | {ing['batch']} | {ing['threads']} | {ing['events_per_s']} | "
        f"{ing['requests_per_s']} | {ing['p50_ms']} | {ing['p99_ms']} | {ing['errors']} |",
        f"| `POST /events`, single events | {one['requests']} | 1 | {one['threads']} | {one['events_per_s']} | "
        f"{one['requests_per_s']} | {one['p50_ms']} | {one['p99_ms']} | {one['errors']} |",
        "",
        f"Freshness, event sent -> `/churn/score` at the customer's new as-of date and `/recommend` without the "
        f"bought item (both polled back to back), {fr['customers']} customers one after the other: "
        f"**p50 {fr['p50_ms']} ms, p99 {fr['p99_ms']} ms** (max {fr['max_ms']} ms; not fresh within 30 s: {fr['not_fresh']}). "
        "The recomputation (the customer's feature row by the batch definitions, the champion's score with reasons, "
        "the profile) starts when the event is accepted; the first read waits for it.",
        MARKS[1],
    ])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path)
    ap.add_argument("--prepare", type=int, default=0, metavar="N")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--fresh", type=int, default=30)
    ap.add_argument("--store", default="memory")
    ap.add_argument("--redis-url")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args(argv)
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="crmml_bench_events_")) / "workspace"
    if args.prepare:
        prepare(ws, args.prepare)
    from features.workspace import Workspace

    w = Workspace(ws)
    ev = w.read_table("events", columns=["customer_id", "item_id", "event_type"])
    buyers = ev.loc[ev["event_type"] == "purchase", "customer_id"].astype(str).value_counts()
    customers = buyers.index.tolist()
    items = ev["item_id"].dropna().astype(str).unique().tolist()
    key = secrets.token_urlsafe(16)
    extra = {"CRMML_STORE": args.store, **({"CRMML_REDIS_URL": args.redis_url} if args.redis_url else {})}
    logdir = ws / "reports"
    logdir.mkdir(parents=True, exist_ok=True)
    srv, url = start_crmml(ws, key, logdir, extra)
    try:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the online side warm (serving.events.OnlineEvents.warm)
            meta = httpx.get(url + "/metadata", headers={"Authorization": f"Bearer {key}"}).json()
            if meta["data"]["store"].get("online", {}).get("warm_seconds") is not None:
                break
            time.sleep(0.5)
        fresh_customers = customers[: args.fresh]
        fr = freshness(url, key, fresh_customers)
        rest = customers[args.fresh:] or customers
        ing = ingestion(url, key, rest, items, args.requests, args.batch, args.threads)
        one = ingestion(url, key, rest, items, args.requests, 1, args.threads)
    finally:
        srv.stop()
    res = {"date": time.strftime("%Y-%m-%d"), "load": load_average(), "commit": code_version(),
           "store": args.store, "customers": int(ev["customer_id"].nunique()),
           "command": f"--requests {args.requests} --batch {args.batch} --threads {args.threads} --fresh {args.fresh}",
           "ingestion": ing, "single": one, "freshness": fr}
    (logdir / "bench_events.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    if not args.no_write:
        write_benchmarks(markdown(res), REPO / "BENCHMARKS.md", MARKS)
    return res


if __name__ == "__main__":
    main()
