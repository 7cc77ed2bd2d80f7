"""Benchmark: the recommender on the UCI Online Retail data: fit time, per-customer latency, quality.

    python -m bench.bench_recommender                     # ingests the UCI files into /tmp first
    python -m bench.bench_recommender --workspace DIR --no-evaluate

In one process, on all the purchases of the workspace:

* **fit**: ``Recommender().fit`` (every candidate generator, then the LightGBM re-ranker on its
  inner time windows) against, as the baseline in the same run, ``implicit``'s ALS alone with the
  same factors and iterations;
* **latency**: ``recommend_one(customer, k=10)`` inside the process for random known customers
  (one call at a time, after a warm-up), unknown customers (cold start) and the same customers
  through implicit's ``ALS.recommend`` (the baseline), as p50 / p99 / mean milliseconds;
* **quality** (``--evaluate``, default on): the evaluation protocol of ``crmml evaluate recommender``
  (``training.recommender.evaluate_time_split``) at ``--cutoff`` with a 90-day window, model against
  its generators alone.

Results go to ``bench/results/recommender.json`` and to ``BENCHMARKS.md`` (the section between the
``bench_recommender`` markers is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns (and slows down) without it

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_features import real_workspace  # noqa: E402
from bench.bench_service import code_version, load_average, write_benchmarks  # noqa: E402

MARK_START = "<!-- bench_recommender:start -->"
MARK_END = "<!-- bench_recommender:end -->"


def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000.0
    return {"n": int(len(ms)), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max())}


def timed_calls(fn, args: list, warmup: int = 50) -> dict:
    for a in args[:warmup]:
        fn(a)
    times = []
    for a in args:
        started = time.perf_counter()
        fn(a)
        times.append(time.perf_counter() - started)
    return percentiles(times)


def bench_fit(interactions, items, users) -> tuple[object, dict]:
    from training.recommender import Recommender

    started, cpu0 = time.perf_counter(), time.process_time()
    model = Recommender(show_progress=True).fit(interactions, items=items, users=users)
    fit = {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu0}
    # the baseline: implicit's ALS alone, with the settings and the confidence matrix of the model's ALS
    from implicit.cpu.als import AlternatingLeastSquares

    from training.candidates.als import _confidence

    gen = next(g for g in model.state_.generators if g.name == "als")
    user_items = _confidence(model.state_.matrix.csr(gen.value))
    baseline = AlternatingLeastSquares(factors=gen.factors, regularization=gen.regularization, alpha=gen.alpha,
                                       iterations=gen.iterations, random_state=0, num_threads=1)
    started = time.perf_counter()
    baseline.fit(user_items, show_progress=False)
    fit["als_only_wall_s"] = time.perf_counter() - started
    return model, {**fit, "baseline": baseline, "user_items": user_items}


def bench_latency(model, baseline, user_items, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    state = model.state_
    known = np.asarray(state.matrix.user_ids)
    chosen = [str(u) for u in rng.choice(known, size=min(n, len(known)), replace=False)]
    unknown = [f"new-{i}" for i in range(min(n, 1000))]
    rows = [state.matrix.user_index[u] for u in chosen]
    return {
        "known": timed_calls(lambda u: model.recommend_one(u, k=10), chosen),
        "known_exclude_seen_off": timed_calls(lambda u: model.recommend_one(u, k=10, exclude_seen=False), chosen),
        "cold_start": timed_calls(lambda u: model.recommend_one(u, k=10), unknown),
        "implicit_als": timed_calls(lambda r: baseline.recommend(r, user_items[r], N=10), rows),
    }


def markdown(res: dict) -> str:
    fit, lat = res["fit"], res["latency"]
    lines = [
        MARK_START,
        "## Recommender: fit, per-customer latency and quality on the UCI data (bench/bench_recommender.py)",
        "",
        f"`.venv/bin/python -m bench.bench_recommender`. Date {res['date']}; machine: {res['machine']}; code "
        f"{res['code']}; load average before -> after: {res['load_before']} -> {res['load_after']}. Data: all "
        f"{res['interactions']:,} purchase lines of the UCI files, {res['users']:,} customers x {res['items']:,} "
        "products. One process; latency is one `recommend_one(customer, k=10)` call at a time after 50 warm-up "
        "calls (the service's per-request path when its cache is off).",
        "",
        "| measure | crmml `Recommender` | baseline: implicit ALS alone | target |",
        "|---|---:|---:|---|",
        f"| fit, wall s | {fit['wall_s']:.1f} (CPU {fit['cpu_s']:.1f} s) | {fit['als_only_wall_s']:.1f} | "
        f"< 120 s: {'met' if fit['wall_s'] < 120 else 'NOT met'} |",
        f"| one known customer, p50 / p99 ms | {lat['known']['p50_ms']:.2f} / {lat['known']['p99_ms']:.2f} | "
        f"{lat['implicit_als']['p50_ms']:.2f} / {lat['implicit_als']['p99_ms']:.2f} | "
        f"< 5 ms: {'met' if lat['known']['p50_ms'] < 5 else 'NOT met'} (p50) |",
        f"| one known customer, bought items allowed, p50 / p99 ms | {lat['known_exclude_seen_off']['p50_ms']:.2f} / "
        f"{lat['known_exclude_seen_off']['p99_ms']:.2f} | | |",
        f"| unknown customer (cold start), p50 / p99 ms | {lat['cold_start']['p50_ms']:.2f} / "
        f"{lat['cold_start']['p99_ms']:.2f} | | |",
        f"| peak RSS, MiB | {res['peak_rss_mib']:,.0f} | | |",
        "",
    ]
    if res.get("evaluation"):
        ev = res["evaluation"]
        lines += [
            f"Quality, `crmml evaluate recommender --cutoff {ev['cutoff']}` protocol (fit before the cutoff, "
            f"test on the next {ev['window_days']} days, k=10; {ev['n_users']:,} users, {ev['n_users_new']:,} "
            "with items new to them):",
            "",
            "| recommender | nDCG@10 all purchases | nDCG@10 new items | hit rate@10 all |",
            "|---|---:|---:|---:|",
        ]
        for name, m in sorted(ev["all"].items(), key=lambda kv: -kv[1]["ndcg@10"]):
            new = ev["new"].get(name, {}).get("ndcg@10")
            lines.append(f"| {name} | {m['ndcg@10']:.3f} | {'' if new is None else f'{new:.3f}'} | "
                         f"{m['hit_rate@10']:.3f} |")
        lines.append("")
    lines += [MARK_END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", help="workspace with the ingested UCI data (default: ingest into /tmp)")
    ap.add_argument("--customers", type=int, default=2000, help="known customers timed one by one")
    ap.add_argument("--cutoff", default="2011-09-09", help="evaluation cutoff")
    ap.add_argument("--no-evaluate", action="store_true", help="skip the quality protocol")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--output", default=str(REPO / "bench" / "results" / "recommender.json"))
    args = ap.parse_args(argv)

    from training.recommender_inputs import load_inputs
    from training.recommender import evaluate_time_split

    ws = real_workspace(args.workspace)
    interactions, items, users = load_inputs(ws)
    res: dict = {"date": time.strftime("%Y-%m-%d"), "code": code_version(), "load_before": load_average(),
                 "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}",
                 "interactions": int(len(interactions))}
    model, fit = bench_fit(interactions, items, users)
    baseline, user_items = fit.pop("baseline"), fit.pop("user_items")
    res.update(fit=fit, users=int(model.state_.matrix.shape[0]), items=int(model.state_.matrix.shape[1]))
    print(f"fit {fit['wall_s']:.1f} s (implicit ALS alone {fit['als_only_wall_s']:.1f} s)", flush=True)
    res["latency"] = bench_latency(model, baseline, user_items, args.customers)
    for name, p in res["latency"].items():
        print(f"{name:24s} p50 {p['p50_ms']:.2f} ms  p99 {p['p99_ms']:.2f} ms  mean {p['mean_ms']:.2f} ms", flush=True)
    del model, baseline
    if not args.no_evaluate:
        ev = evaluate_time_split(interactions, args.cutoff, window_days=90, k=10, items=items, users=users,
                                 params={"show_progress": True})
        res["evaluation"] = {"cutoff": args.cutoff, "window_days": 90, "n_users": ev["n_users"],
                             "n_users_new": ev["n_users_new"], "fit_seconds": ev.get("fit_seconds"),
                             "all": ev["all"], "new": ev["new"]}
        print(f"nDCG@10 model {ev['all']['model']['ndcg@10']:.4f} (all) / {ev['new']['model']['ndcg@10']:.4f} (new)")
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["load_after"] = load_average()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    section = markdown(res)
    print(section)
    if not args.no_write:
        write_benchmarks(section, marks=(MARK_START, MARK_END))
    return res


if __name__ == "__main__":
    main()
