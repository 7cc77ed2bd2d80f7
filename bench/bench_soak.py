"""Sustained mixed load on the crmml service, with a forced reload in the middle (issue #16, item 6).

    python -m bench.bench_soak --workspace DIR [--minutes 10] [--rate 100] [--nice 10]

The workspace must hold champions of both models (``python -m bench.bench_service --prepare N``
builds one; see ``bench.bench_service.prepare``). One ``crmml serve`` (one BentoML worker, API key
on) is started on a free loopback port, warmed, then driven for ``--minutes`` at a fixed mean rate
(open loop: Poisson arrivals, each request sent at its time whatever the others do) by a bounded
asyncio/httpx client in this process. The mix (shares of the requests):

    POST /recommend (k=10, a known customer)          50 %
    POST /recommend/basket (3 known items)            15 %
    POST /churn/score (1 id)                          15 %
    GET  /customers/{id}/profile                      19 %
    POST /churn/score (1,000 ids)                      1 %

At the middle of the run ``POST /admin/reload?force=true`` rebuilds the whole state under the load;
a second one follows at three quarters with the data changed (the workspace's ``customers`` table
rewritten: a data reload). Recorded: every request (time, endpoint, ms, status), the worker's RSS
every 5 s, the reload windows. Reported (``BENCHMARKS.md`` between the ``bench_soak`` markers; raw
JSON in ``<workspace>/reports/bench_soak.json``): requests, rate, errors, p50/p99 per endpoint per
minute, p99 of ``/recommend`` over the whole run and from each reload's start to 10 s after its
end, RSS over time. Targets: p99 ``/recommend`` < 25 ms under the mixed load, < 50 ms during a reload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.bench_service import base_env, code_version, load_average, start_crmml, wait_warm, write_benchmarks
from pipelines.processes import ServerProcess

REPO = Path(__file__).resolve().parents[1]
MARKS = ("<!-- bench_soak:start -->", "<!-- bench_soak:end -->")
MIX = (("recommend", 0.50), ("basket", 0.15), ("churn_1", 0.15), ("profile", 0.19), ("churn_1000", 0.01))
REC_TARGET_MS, RELOAD_TARGET_MS = 25.0, 50.0


def inputs(ws_root: Path) -> dict:
    """Known customers and items of the workspace (what real clients would send)."""
    from features.workspace import Workspace

    ws = Workspace(ws_root)
    events = ws.read_table("events")
    buys = events[events["event_type"] == "purchase"] if "event_type" in events.columns else events
    return {
        "customers": sorted(events["customer_id"].astype(str).unique().tolist()),
        "items": buys["item_id"].astype(str).value_counts().index[:500].tolist(),
    }


def request_for(kind: str, rng: random.Random, data: dict) -> tuple[str, str, dict | None]:
    customers, items = data["customers"], data["items"]
    if kind == "recommend":
        return "POST", "/recommend", {"customer_id": rng.choice(customers), "k": 10}
    if kind == "basket":
        return "POST", "/recommend/basket", {"item_ids": rng.sample(items, 3), "k": 10}
    if kind == "churn_1":
        return "POST", "/churn/score", {"customer_ids": [rng.choice(customers)]}
    if kind == "churn_1000":
        return "POST", "/churn/score", {"customer_ids": rng.sample(customers, min(1000, len(customers)))}
    return "GET", f"/customers/{rng.choice(customers)}/profile", None


async def drive(url: str, key: str, data: dict, seconds: float, rate: float, events: list, seed: int = 16) -> dict:
    """Open-loop Poisson load for ``seconds``; appends (t, kind, ms, status) to ``events``."""
    import httpx

    rng = random.Random(seed)
    kinds, weights = zip(*MIX)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    lag_max = 0.0
    skipped = 0  # sends more than 1 s behind their schedule: the client itself is starved
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=30, limits=limits) as client:
        async def one(kind: str) -> None:
            method, path, body = request_for(kind, rng, data)
            started = time.perf_counter()
            try:
                r = await client.request(method, path, json=body)
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            events.append((time.time(), kind, (time.perf_counter() - started) * 1000, status))

        tasks = set()
        t0 = time.perf_counter()
        due = 0.0
        while due < seconds:
            due += rng.expovariate(rate)
            wait = t0 + due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                lag_max = max(lag_max, -wait)
                if -wait > 1.0:  # never pile up a backlog: a starved client would measure its own queue
                    skipped += 1
                    continue
            task = asyncio.create_task(one(rng.choices(kinds, weights)[0]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    return {"client_lag_max_s": round(lag_max, 3), "skipped_sends": skipped}


def worker_rss(server: ServerProcess) -> float:
    """RSS (MB) of the biggest process of the tree: the BentoML worker holding the state."""
    sizes = []
    for p in server.tree():
        try:
            sizes.append(p.memory_info().rss)
        except Exception:  # noqa: BLE001, S112 - a process that ended between listing and reading
            continue
    return round(max(sizes, default=0) / 2**20, 1)


def pct(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def summarise(events: list, reloads: list, rss: list, t0: float, minutes: float) -> dict:
    arr = [(t - t0, k, ms, st) for t, k, ms, st in events]
    kinds = [k for k, _ in MIX]
    window = 60.0 if minutes >= 5 else 30.0
    n_windows = int(np.ceil(minutes * 60 / window))
    per_window = []
    for w in range(n_windows):
        lo, hi = w * window, (w + 1) * window
        row = {"from_s": int(lo)}
        for k in kinds:
            ms = [m for (t, kk, m, st) in arr if kk == k and lo <= t < hi and st == 200]
            row[k] = {"n": len(ms), "p50": pct(ms, 50), "p99": pct(ms, 99)}
        per_window.append(row)
    overall = {}
    for k in kinds:
        ms = [m for (_, kk, m, st) in arr if kk == k and st == 200]
        errors = sum(1 for (_, kk, _, st) in arr if kk == k and st != 200)
        overall[k] = {"n": len(ms), "errors": errors, "p50": pct(ms, 50), "p99": pct(ms, 99)}
    reload_rows = []
    for r in reloads:
        lo, hi = r["start"] - t0, r["end"] - t0 + 10
        ms = [m for (t, kk, m, st) in arr if kk == "recommend" and lo <= t < hi and st == 200]
        quiet = [m for (t, kk, m, st) in arr if kk == "recommend" and st == 200 and not any(
            x["start"] - t0 <= t < x["end"] - t0 + 10 for x in reloads)]
        reload_rows.append({**{k: v for k, v in r.items() if k not in ("start", "end")},
                            "at_s": round(lo), "seconds": round(r["end"] - r["start"], 1),
                            "recommend_n": len(ms), "recommend_p50": pct(ms, 50), "recommend_p99": pct(ms, 99),
                            "recommend_p99_outside_reloads": pct(quiet, 99)})
    return {"per_window": per_window, "window_s": window, "overall": overall, "reloads": reload_rows,
            "rss_mb": [(round(t - t0), v) for t, v in rss],
            "requests": len(arr), "errors": sum(1 for a in arr if a[3] != 200)}


def touch_data(ws_root: Path) -> None:
    """Rewrite the ``customers`` table unchanged but new on disk: the data stamp changes (a data reload)."""
    from features.workspace import Workspace

    ws = Workspace(ws_root)
    ws.write_table("customers", ws.read_table("customers"))


def markdown(res: dict) -> str:
    s = res["summary"]
    lines = [
        "## Sustained mixed load with reloads (bench/bench_soak.py, issue #16)",
        "",
        f"Machine: 2 cores, 24 GiB, Python 3.11 (shared with other jobs: load average {res['load_before']} before the run). "
        f"Date {res['date']}, commit {res['code']}. Workspace: synthetic shop, {res['customers']:,} customers. "
        f"`python -m bench.bench_soak --workspace DIR --minutes {res['minutes']:g} --rate {res['rate']:g} --nice {res['nice']}`: "
        f"one `crmml serve` worker, open-loop Poisson load from one asyncio/httpx client on the same machine, "
        f"a forced reload at the middle and a data reload at three quarters.",
        "",
        f"**{s['requests']:,} requests in {res['minutes']:g} min ({s['requests'] / (res['minutes'] * 60):.0f}/s), "
        f"{s['errors']} errors.** Client lag (worst delay of a send behind its schedule): {res['client']['client_lag_max_s']} s; "
        f"sends skipped for lagging more than 1 s: {res['client']['skipped_sends']} (more than a few: the run measured a starved machine).",
        "",
        "| endpoint | requests | errors | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for k, v in s["overall"].items():
        lines.append(f"| {k} | {v['n']:,} | {v['errors']} | {v['p50']} | {v['p99']} |")
    lines += ["", f"p50 / p99 (ms) per {s['window_s']:.0f} s window (successful requests):", "",
              "| from s | " + " | ".join(k for k, _ in MIX) + " | worker RSS MB |",
              "|---:|" + "---:|" * (len(MIX) + 1)]
    for row in s["per_window"]:
        near = [v for t, v in s["rss_mb"] if row["from_s"] <= t < row["from_s"] + s["window_s"]]
        cells = [f"{row[k]['p50']} / {row[k]['p99']}" if row[k]["n"] else "-" for k, _ in MIX]
        lines.append(f"| {row['from_s']} | " + " | ".join(cells) + f" | {max(near) if near else '-'} |")
    lines += ["", "Reloads (p99 of `/recommend` from the reload's start to 10 s after its end):", "",
              "| reload | at s | took s | answer | /recommend n | p50 ms | p99 ms | p99 outside reloads |",
              "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in s["reloads"]:
        lines.append(f"| {r['kind']} | {r['at_s']} | {r['seconds']} | {r['answer']} | {r['recommend_n']} | "
                     f"{r['recommend_p50']} | {r['recommend_p99']} | {r['recommend_p99_outside_reloads']} |")
    rec = s["overall"]["recommend"]["p99"]
    worst_reload = max((r["recommend_p99"] or 0) for r in s["reloads"]) if s["reloads"] else None
    lines += ["", f"Targets: p99 `/recommend` under the mixed load {rec} ms (target < {REC_TARGET_MS:g}: "
              f"{'met' if rec is not None and rec < REC_TARGET_MS else 'NOT met'}); during a reload {worst_reload} ms "
              f"(target < {RELOAD_TARGET_MS:g}: "
              f"{'met' if worst_reload is not None and worst_reload < RELOAD_TARGET_MS else 'NOT met'})."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=100.0, help="mean requests per second (all endpoints)")
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    import bench.bench_service as bs

    bs.NICE = args.nice
    ws = args.workspace.resolve()
    os.environ.update({k: v for k, v in base_env(ws).items() if k in ("BENTOML_HOME", "MLFLOW_DISABLE_TELEMETRY")})
    data = inputs(ws)
    key = secrets.token_urlsafe(24)
    logdir = Path(tempfile.mkdtemp(prefix="crmml_soak_"))
    load_before = load_average()
    server, url = start_crmml(ws, key, logdir)
    events: list = []
    reloads: list = []
    rss: list = []
    stop = threading.Event()
    try:
        wait_warm(url, key)
        seconds = args.minutes * 60

        def sample() -> None:
            while not stop.wait(5):
                rss.append((time.time(), worker_rss(server)))

        def reload_at(delay: float, kind: str) -> None:
            import httpx

            if stop.wait(delay):
                return
            if kind == "data":
                touch_data(ws)
            start = time.time()
            r = httpx.post(url + "/admin/reload", params={"force": "true"}, headers={"X-API-Key": key}, timeout=600)
            answer = r.json() if r.status_code == 200 else {"reloaded": False, "detail": r.text[:200]}
            reloads.append({"kind": kind, "start": start, "end": time.time(),
                            "answer": "reloaded" if answer.get("reloaded") else f"refused: {answer.get('detail')}"})

        threads = [threading.Thread(target=sample, daemon=True),
                   threading.Thread(target=reload_at, args=(seconds / 2, "forced"), daemon=True),
                   threading.Thread(target=reload_at, args=(seconds * 3 / 4, "data"), daemon=True)]
        t0 = time.time()
        for t in threads:
            t.start()
        client = asyncio.run(drive(url, key, data, seconds, args.rate, events))
        stop.set()
        for t in threads[1:]:
            t.join(timeout=600)
    finally:
        stop.set()
        server.stop()
    summary = summarise(events, reloads, rss, t0, args.minutes)
    res = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "code": code_version(), "load_before": load_before,
           "minutes": args.minutes, "rate": args.rate, "nice": args.nice, "customers": len(data["customers"]),
           "client": client, "summary": summary}
    out = ws / "reports" / "bench_soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    section = markdown(res)
    print(section)
    if not args.no_write:
        write_benchmarks(f"{MARKS[0]}\n{section}\n{MARKS[1]}\n", marks=MARKS)
    return res


if __name__ == "__main__":
    main()
