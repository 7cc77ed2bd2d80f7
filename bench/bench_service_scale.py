"""Start-up, memory and latency of the service as the customer base grows (issue #17), both designs.

    python -m bench.bench_service_scale --workspace DIR --prepare 2000 \
        --sizes 10000,100000,1000000 --snapshot-sizes 10000,100000,1000000 --users 32 --seconds 30 --rate 5

``--prepare N`` makes a shop of N customers with champions (``bench.bench_service.prepare``: ``crmml
generate`` + ``crmml train``). The online table of that shop (``serving.table``) is then scaled to
each size by repeating its real rows under new ids (``<id>x<k>``), written where the service looks
for the table of this data, so the service side is measured at sizes whose batch features are not
built here (the feature rows are real rows, the ids are new). For each size and design the benchmark

* starts ``crmml serve`` (one worker) and measures the time to ``/readyz`` (start-up), the CPU
  seconds of its processes, and the RSS of the worker and of the whole process tree when ready
  and after the load;
* drives it with locust (``bench/locustfile.py``, ``--users`` users, each ``--rate`` requests per
  second, exponential waits): ``POST /churn/score`` of one customer drawn uniformly from all the
  customers (most never asked before: scored on that request), then ``POST /recommend`` (k=10) of
  one customer drawn from the recommender's customers (the recommender is not scaled: it holds
  the N-customer shop's users; see ``docs/scaling.md``);

Designs: ``lazy`` (default: the table is mapped, a customer is scored when first asked) and
``snapshot`` (``CRMML_SCORES=startup``: every customer scored and encoded at start-up, as before;
from the same table, so its start-up excludes the reading of the customer 360 and the CLV that
main also did: a lower bound). A snapshot start-up that does not finish within ``--start-timeout``
seconds counts as "does not start". Results: ``<workspace>/reports/bench_service_scale.json``
and the ``h17-lazy`` section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import bench_service as bs

MARKS = ("<!-- h17-lazy:start -->", "<!-- h17-lazy:end -->")
NOTES = [
    "- **start-up**: wall time to `/readyz` and CPU seconds of the service's processes; *scored*: customers the",
    "  worker scored (lazy: only those asked during the run; snapshot: all, at start-up).",
    "- **/churn/score** asks for one customer drawn uniformly from all of them: with the lazy design nearly every",
    "  request is a first request (scored on it, concurrent ones in one batch); a repeat is a cache lookup.",
    "- **memory per customer (lazy)**: the online table is on disk and memory-mapped, about 1.2 KB per customer",
    "  (`table_mb` in the JSON), resident only for the pages read; scored records are kept in an LRU of",
    "  `CRMML_SCORE_CACHE` customers (default 50,000, ~2.5 KB each). The snapshot design holds ~2.5 KB of",
    "  encoded records per customer in every worker, plus the scoring frames while it starts.",
    "- the recommender is not scaled here: it holds every customer it was trained on in memory (history CSR",
    "  ~150 B per customer-item pair, ALS factors 4 B x factors, id maps ~100 B), loaded at start-up.",
]


def base_table(ws_root: Path):
    """The published online table of the workspace (built now if missing) and its horizon."""
    from features.workspace import Workspace
    from serving import store as st
    from serving.table import open_or_publish
    from training import registry
    from training.churn_pyfunc import load_churn

    ws = Workspace(ws_root)
    registry.configure(ws)
    horizon = int(load_churn(registry.model_uri(registry.CHURN)).horizon_days)
    stamp = st.data_stamp(ws)
    table = open_or_publish(ws, horizon, stamp, lambda: st.load_customer_data(ws))
    if "scaled_from" in table.meta:  # a scaled table left by an earlier run: the real one again
        shutil.rmtree(table.directory)
        table = open_or_publish(ws, horizon, stamp, lambda: st.load_customer_data(ws))
    return ws, table, horizon, stamp


def scaled_tables(table, n: int):
    """The table's scoring and 360 rows repeated to ``n`` customers (copy 0 keeps the real ids), in Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    frame, c360 = table.scoring, table.c360
    base = frame.num_rows
    out_f, out_c = [], []
    for k in range(-(-n // base)):
        take = min(base, n - k * base)
        f = frame.slice(0, take)
        ids = f.column("customer_id")
        c = c360.filter(pc.is_in(c360.column("customer_id"), value_set=ids.combine_chunks()))
        if k:
            suffix = pa.scalar(f"x{k}", type=ids.type)
            f = f.set_column(f.schema.get_field_index("customer_id"), "customer_id",
                             pc.binary_join_element_wise(ids, suffix, pa.scalar("", type=ids.type)))
            c = c.set_column(c.schema.get_field_index("customer_id"), "customer_id",
                             pc.binary_join_element_wise(c.column("customer_id"), suffix, pa.scalar("", type=ids.type)))
        out_f.append(f)
        out_c.append(c)
    # one contiguous table (written in batches of 65,536 rows), not one chunk per copy
    return pa.concat_tables(out_f).combine_chunks(), pa.concat_tables(out_c).combine_chunks()


def install_scaled(ws, table, n: int, horizon: int, stamp: tuple) -> tuple[list[str], Path]:
    """Write the ``n``-customer table where the service opens the table of this data; returns its ids
    and directory."""
    from serving.table import table_key, tables_root, write_table

    frame, c360 = scaled_tables(table, n)
    target = tables_root(ws) / table_key(stamp, horizon)
    shutil.rmtree(target, ignore_errors=True)
    write_table(target, frame, c360, {**table.meta, "scaled_from": int(len(table))})
    return frame.column("customer_id").to_pylist(), target


def measure(ws_root: Path, design: str, n: int, churn_ids: list[str], rec_ids: list[str], args, out: Path) -> dict:
    key = secrets.token_urlsafe(16)
    env = {"CRMML_SCORES": "startup" if design == "snapshot" else "lazy", "CRMML_REC_WARM": "1"}
    row: dict = {"design": design, "customers": n}
    started = time.perf_counter()
    try:
        proc, url = _start(ws_root, key, out, env, args.start_timeout)
    except RuntimeError as exc:
        row.update(started=False, error=str(exc).splitlines()[0][:200],
                   startup_s=round(time.perf_counter() - started, 1))
        return row
    try:
        row["startup_s"] = round(time.perf_counter() - started, 2)
        row["startup_cpu_s"] = round(proc.cpu_seconds(), 1)
        row.update(_rss(proc, "ready"))
        bs.wait_warm(url, key)
        data = {"customer_ids": churn_ids, "mlflow_payload": {}}
        data_file = out / f"ids_{design}_{n}.json"
        data_file.write_text(json.dumps(data))
        churn = locust("ChurnUser", url, args, data_file, key, out, f"churn_{design}_{n}")
        rec_file = out / f"rec_{design}_{n}.json"
        rec_file.write_text(json.dumps({"customer_ids": rec_ids, "mlflow_payload": {}}))
        rec = locust("RecommendUser", url, args, rec_file, key, out, f"recommend_{design}_{n}")
        meta = bs.wait_warm(url, key, timeout=5)
        row.update(_rss(proc, "after"))
        row["cpu_s_total"] = round(proc.cpu_seconds(), 1)
        row["store"] = {k: v for k, v in meta["data"]["store"].items() if k != "online"}
        for name, res in (("churn", churn), ("recommend", rec)):
            row[name] = res
        row["started"] = True
    finally:
        proc.stop()
    return row


def locust(user_class: str, url: str, args, data_file: Path, key: str, out: Path, label: str,
           warmup: float = 5.0) -> dict:
    """One locust run; figures from every request's own record (locust's CSV summary is sometimes
    empty on a loaded machine): all requests, and the steady state after ``warmup`` seconds."""
    import os
    import subprocess

    raw = out / f"{label}_raw.json"
    env = {**os.environ, "CRMML_BENCH_DATA": str(data_file), "CRMML_BENCH_KEY": key,
           "CRMML_BENCH_RATE": str(args.rate), "CRMML_BENCH_RAW": str(raw)}
    cmd = [str(bs.BIN / "locust"), "-f", str(bs.LOCUSTFILE), user_class, "--headless", "-u", str(args.users),
           "-r", str(args.users), "-t", f"{args.seconds}s", "--stop-timeout", "5", "--host", url,
           "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0"]
    done = subprocess.run(bs.niced(cmd), cwd=bs.REPO, env=env, capture_output=True, text=True,
                          timeout=args.seconds + 180)
    if not raw.exists():
        return {"error": f"locust wrote nothing ({done.returncode}): {done.stderr[-300:]}"}
    samples = np.array(json.loads(raw.read_text()) or [[0, 0, 1]], dtype=float)
    t0, t1 = samples[:, 0].min(), samples[:, 0].max()
    steady = samples[samples[:, 0] >= t0 + warmup]
    steady = steady if len(steady) else samples
    return {
        "requests": int(len(samples)), "failures": int((samples[:, 2] == 0).sum()),
        "rps": round(len(samples) / max(t1 - t0, 1e-9), 1),
        "p50_ms": round(float(np.percentile(samples[:, 1], 50)), 1),
        "p99_ms": round(float(np.percentile(samples[:, 1], 99)), 1),
        "steady_requests": int(len(steady)),
        "steady_p50_ms": round(float(np.percentile(steady[:, 1], 50)), 1),
        "steady_p99_ms": round(float(np.percentile(steady[:, 1], 99)), 1),
    }


def _start(ws_root, key, out, env, timeout):
    from pipelines.processes import HOST, ServerProcess, free_port

    port = free_port()
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--workspace", str(ws_root),
           "--reload-seconds", "0"]
    proc = ServerProcess(bs.niced(cmd), {**bs.base_env(ws_root), "CRMML_API_KEY": key, **env},
                         out / f"crmml_{port}.log", cwd=bs.REPO)
    url = f"http://{HOST}:{port}"
    try:
        proc.wait_http(url + "/readyz", timeout=timeout)
    except RuntimeError:
        proc.stop()
        raise
    return proc, url


def _rss(proc, when: str) -> dict:
    """RSS of the largest process (the worker) and of the tree; ``anon``: the worker's own memory, without
    the pages of mapped files (the online table's pages are the shared, reclaimable page cache)."""
    sizes = []
    for p in proc.tree():
        with contextlib.suppress(Exception):  # a process that just ended
            status = dict(line.split(":", 1) for line in open(f"/proc/{p.pid}/status"))
            anon = int(status.get("RssAnon", "0 kB").split()[0]) * 1024
            sizes.append((p.memory_info().rss, anon))
    worker = max(sizes, default=(0, 0))
    return {f"worker_rss_mb_{when}": round(worker[0] / 2**20, 1), f"worker_anon_mb_{when}": round(worker[1] / 2**20, 1),
            f"tree_rss_mb_{when}": round(sum(s[0] for s in sizes) / 2**20, 1)}


def _route(res: dict) -> str:
    if "error" in res:
        return res["error"][:60]
    return f"{res['steady_p50_ms']:.1f} / {res['steady_p99_ms']:.1f} ({res['rps']:.0f}, {res['failures']})"


def markdown(results: dict) -> str:
    lines = [MARKS[0], "## Service at scale: scores on first need vs snapshot (issue #17, `bench/bench_service_scale.py`)", "",
             f"{results['when']}, commit `{results['commit']}`, {results['machine']}, load average at start "
             f"{results['load']}; {results['users']} users x {results['rate']} req/s each (exponential waits), "
             f"{results['seconds']} s per route; table scaled from a {results['base_customers']:,}-customer shop.",
             f"Command: `{results['command']}`", "",
             "| design | customers | start-up s | start-up CPU s | worker RSS ready / after MB (anonymous) | "
             "/churn/score p50 / p99 ms (rps, fails) | /recommend p50 / p99 ms (rps, fails) | scored |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        if not r.get("started"):
            lines.append(f"| {r['design']} | {r['customers']:,} | did not start in {r['startup_s']} s | | | | | |")
            continue
        c, m = r["churn"], r["recommend"]
        lines.append(
            f"| {r['design']} | {r['customers']:,} | {r['startup_s']} | {r['startup_cpu_s']} | "
            f"{r['worker_rss_mb_ready']} / {r['worker_rss_mb_after']} "
            f"({r.get('worker_anon_mb_ready', '?')} / {r.get('worker_anon_mb_after', '?')}) | "
            f"{_route(c)} | {_route(m)} | "
            f"{r['store'].get('scored_here', r['customers'])} |")
    lines += ["", *NOTES, *results.get("notes", []), MARKS[1]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--prepare", type=int, default=0, help="build a shop of this many customers first")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--snapshot-sizes", default="10000,100000,1000000")
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--start-timeout", type=float, default=900.0)
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    ap.add_argument("--merge", type=Path, help="a previous run's JSON whose rows come first in the table")
    args = ap.parse_args(argv)
    bs.NICE = args.nice
    ws_root = args.workspace.resolve()
    if args.prepare:
        bs.prepare(ws_root, args.prepare)
    ws, table, horizon, stamp = base_table(ws_root)
    import os

    from serving.table import OnlineTable

    load = bs.load_average()
    out = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    shutil.copytree(table.directory, out / "base_table")  # the scaled tables replace it in the workspace
    table = OnlineTable(out / "base_table")
    rec_ids = table.id_at(np.arange(len(table)))
    rows = json.loads(args.merge.read_text())["rows"] if args.merge else []
    sizes = sorted({int(s) for s in args.sizes.split(",") if s} | {int(s) for s in args.snapshot_sizes.split(",") if s})
    for n in sizes:
        ids, target = install_scaled(ws, table, n, horizon, stamp)
        table_mb = round(sum(p.stat().st_size for p in target.iterdir()) / 2**20, 1)
        rng = np.random.default_rng(n)
        churn_ids = [ids[i] for i in rng.choice(len(ids), size=min(len(ids), 200_000), replace=False)]
        for design in ("lazy", "snapshot"):
            if str(n) not in (args.sizes if design == "lazy" else args.snapshot_sizes).split(","):
                continue
            print(f"{design} {n:,} customers ...", flush=True)
            row = measure(ws_root, design, n, churn_ids, rec_ids, args, out)
            row["table_mb"] = table_mb
            print(json.dumps(row), flush=True)
            rows.append(row)
    results = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": bs.code_version(),
        "machine": f"{os.cpu_count()} cores", "load": load, "users": args.users, "rate": args.rate,
        "seconds": args.seconds, "base_customers": len(table), "rows": rows,
        "command": "python -m bench.bench_service_scale " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (ws_root / "reports").mkdir(parents=True, exist_ok=True)
    (ws_root / "reports" / "bench_service_scale.json").write_text(json.dumps(results, indent=2))
    if not args.no_write:
        bs.write_benchmarks(markdown(results), marks=MARKS)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
