"""Load benchmark of the crmml service against `mlflow models serve`, on loopback, bounded in time.

    python -m bench.bench_service --workspace DIR [--users 32] [--seconds 30] [--rate 5]

The workspace must hold champions of ``crmml-churn`` and ``crmml-recommender`` (``crmml run``, or
``crmml generate`` + ``crmml train churn`` + ``crmml train recommender``); ``--prepare N`` builds
such a workspace first with those commands.

In one run it starts

* the crmml service (``crmml serve``, one BentoML worker, API key on), and
* ``mlflow models serve -m models:/crmml-churn@champion --env-manager local`` (one uvicorn worker)
  on the same registered model,

then drives each with locust (``bench/locustfile.py``, FastHttpUser, headless, ``--users`` users):

* ``POST /recommend`` (k=10, a random known customer), ``POST /churn/score`` (one random known
  customer) and mlflow's ``POST /invocations`` with the features of one customer (the same
  single-customer churn prediction, computed per request by the pyfunc);
* twice each: **saturation** (no wait between requests: the throughput each server sustains with
  ``--users`` users) and **paced** (each user sends ``--rate`` requests per second: the latency at
  that load, ``users x rate`` requests per second offered).

Locust shares the 2 cores with the servers. Results (requests/s, p50, p99, errors) go to
``BENCHMARKS.md`` (the section between the ``bench_service`` markers is replaced) and, raw, to
``<workspace>/reports/bench_service.json``. Every process started here is stopped by killing its
process group.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.processes import HOST, ServerProcess, free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCUSTFILE = REPO / "bench" / "locustfile.py"
MARK_START = "<!-- bench_service:start -->"
MARK_END = "<!-- bench_service:end -->"


# --------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------
def base_env(ws: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "BENTOML_DO_NOT_TRACK": "True",
        "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1",
        "BENTOML_HOME": env.get("BENTOML_HOME") or str(ws / "bentoml"),
        "PATH": str(BIN) + os.pathsep + env.get("PATH", ""),  # mlflow --env-manager local needs it
    })
    return env


NICE = 0  # --nice: CPU priority of the benchmark's processes


def niced(cmd: list[str]) -> list[str]:
    return ["nice", "-n", str(NICE), *cmd] if NICE else cmd


def start_crmml(ws: Path, key: str, logdir: Path, extra_env: dict | None = None) -> tuple[ServerProcess, str]:
    port = free_port()
    env = {**base_env(ws), "CRMML_API_KEY": key, **(extra_env or {})}
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--workspace", str(ws), "--reload-seconds", "0"]
    proc = ServerProcess(niced(cmd), env, logdir / f"crmml_{port}.log", cwd=REPO)
    url = f"http://{HOST}:{port}"
    proc.wait_http(url + "/readyz")
    return proc, url


def start_mlflow(ws: Path, logdir: Path) -> tuple[ServerProcess, str]:
    from training.registry import tracking_uri

    port = free_port()
    env = {**base_env(ws), "MLFLOW_TRACKING_URI": tracking_uri(ws)}
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/crmml-churn@champion", "--env-manager", "local",
           "-h", HOST, "-p", str(port), "-w", "1"]
    proc = ServerProcess(niced(cmd), env, logdir / f"mlflow_{port}.log", cwd=REPO)
    url = f"http://{HOST}:{port}"
    proc.wait_http(url + "/ping")
    return proc, url


def wait_warm(url: str, key: str, timeout: float = 900.0) -> dict:
    """/metadata once the recommendation cache warm-up (a background thread at start-up) is done."""
    import httpx

    deadline = time.time() + timeout
    while True:
        meta = httpx.get(url + "/metadata", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
        cache = meta["data"]["store"].get("recommendation_cache") or {}
        if cache.get("warm_done", True) or time.time() > deadline:
            return meta
        time.sleep(2)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def bench_inputs(ws_root: Path, n_ids: int = 2000) -> dict:
    """Known customer ids and the mlflow /invocations body for one of them (champion's input columns)."""
    import numpy as np
    from mlflow.models import get_model_info

    from features.workspace import Workspace
    from serving.store import load_customer_data
    from training import registry

    from training.churn_pyfunc import load_churn

    ws = Workspace(ws_root)
    registry.configure(ws)
    data = load_customer_data(ws)
    uri = registry.model_uri(registry.CHURN)
    frame = data.scoring_frame(int(load_churn(uri).horizon_days))  # the features the service scores
    ids = frame["customer_id"].astype(str).tolist()
    rng = np.random.default_rng(0)
    chosen = [ids[i] for i in rng.choice(len(ids), size=min(n_ids, len(ids)), replace=False)]
    info = get_model_info(uri)
    columns = info.signature.inputs.input_names() if info.signature is not None else []
    row = frame[frame["customer_id"].astype(str) == chosen[0]].iloc[0]
    values = []
    for col in columns:
        v = row.get(col)
        try:
            values.append(None if v is None or v != v else (v.item() if hasattr(v, "item") else v))
        except (TypeError, ValueError):
            values.append(None)
    values = [str(v) if hasattr(v, "isoformat") else v for v in values]
    return {
        "customer_ids": chosen,
        "mlflow_customer": chosen[0],
        "mlflow_payload": {"dataframe_split": {"columns": columns, "data": [values]}},
        "customers": len(ids),
        "as_of": data.as_of_str,
    }


# --------------------------------------------------------------------------------------------
# locust
# --------------------------------------------------------------------------------------------
def steady_state(raw_file: Path, warmup: float) -> dict:
    """Percentiles of the requests after the first ``warmup`` seconds (users spawning, connections opening)."""
    import numpy as np

    samples = np.array(json.loads(raw_file.read_text()) or [[0, 0, 1]], dtype=float)
    t0, t1 = samples[:, 0].min(), samples[:, 0].max()
    keep = samples[samples[:, 0] >= t0 + warmup]
    if len(keep) == 0:
        keep = samples
    ms = keep[:, 1]
    span = max(t1 - max(t0 + warmup, keep[:, 0].min()), 1e-9)
    return {
        "warmup_s": warmup, "steady_requests": int(len(keep)), "steady_failures": int((keep[:, 2] == 0).sum()),
        "steady_rps": float(len(keep) / span), "steady_p50_ms": float(np.percentile(ms, 50)),
        "steady_p90_ms": float(np.percentile(ms, 90)), "steady_p99_ms": float(np.percentile(ms, 99)),
        "steady_max_ms": float(ms.max()),
    }


def run_locust(user_class: str, host: str, users: int, seconds: int, rate: float, data_file: Path, key: str,
               outdir: Path, label: str, warmup: float = 5.0) -> dict:
    prefix = outdir / label
    raw = outdir / f"{label}_raw.json"
    env = {**os.environ, "CRMML_BENCH_DATA": str(data_file), "CRMML_BENCH_KEY": key, "CRMML_BENCH_RATE": str(rate),
           "CRMML_BENCH_RAW": str(raw)}
    cmd = [str(BIN / "locust"), "-f", str(LOCUSTFILE), user_class, "--headless", "-u", str(users), "-r", str(users),
           "-t", f"{seconds}s", "--stop-timeout", "5", "--host", host, "--csv", str(prefix), "--only-summary",
           "--loglevel", "WARNING", "--exit-code-on-error", "0"]
    done = subprocess.run(niced(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=seconds + 120)
    stats = prefix.with_name(prefix.name + "_stats.csv")
    if not stats.exists():
        raise RuntimeError(f"locust wrote no stats ({done.returncode}): {done.stderr[-2000:]}")
    with open(stats) as fh:
        rows = list(csv.DictReader(fh))
    row = next(r for r in rows if r["Name"] == "Aggregated")
    requests = int(row["Request Count"])
    failures = int(row["Failure Count"])
    out = {
        "label": label, "user_class": user_class, "users": users, "seconds": seconds, "rate_per_user": rate,
        "requests": requests, "failures": failures, "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]), "p90_ms": float(row["90%"]), "p99_ms": float(row["99%"]),
        "max_ms": float(row["Max Response Time"]),
    }
    if raw.exists():
        out.update(steady_state(raw, warmup))
    return out


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                               timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


NAMES = {
    "recommend": "crmml `POST /recommend` (k=10)",
    "recommend_nocache": "crmml `POST /recommend` (k=10), recommendation cache off",
    "churn": "crmml `POST /churn/score` (1 customer)",
    "mlflow": "mlflow `POST /invocations` (1 customer)",
}


def _table(results: dict) -> list[str]:
    by = {r["label"]: r for r in results["runs"]}
    lines = [
        "| endpoint | load | requests/s | p50 ms | p99 ms | errors | p99 ms incl. first 5 s | server CPU ms / request | server RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in NAMES:
        for mode in ("saturation", "paced"):
            r = by.get(f"{label}_{mode}")
            if r is None:
                continue
            load = ("no wait" if mode == "saturation"
                    else f"{r['rate_per_user']:g}/s per user ({r['rate_per_user'] * r['users']:g}/s offered)")
            rps, p50, p99 = (r.get("steady_rps", r["rps"]), r.get("steady_p50_ms", r["p50_ms"]),
                             r.get("steady_p99_ms", r["p99_ms"]))
            lines.append(
                f"| {NAMES[label]} | {load} | {rps:.0f} | {p50:.1f} | {p99:.1f} | "
                f"{r['failures']} of {r['requests']:,} | {r['p99_ms']:.0f} | "
                f"{r.get('server_cpu_ms_per_request', float('nan')):.2f} | {r.get('server_rss_mib', '-')} |"
            )
    return lines


def _checks(results: dict) -> list[str]:
    by = {r["label"]: r for r in results["runs"]}
    out = []
    churn, mlflow = by.get("churn_saturation"), by.get("mlflow_saturation")
    if churn and mlflow and mlflow["rps"] > 0:
        c, m = churn.get("steady_rps", churn["rps"]), mlflow.get("steady_rps", mlflow["rps"])
        out.append(
            f"single-customer churn score {c:.0f} vs {m:.0f} req/s = **{c / m:.0f}x** mlflow's throughput "
            f"(target >= 3x: {'met' if c >= 3 * m else 'NOT met'})"
        )
    for label in ("recommend", "churn"):
        paced = by.get(f"{label}_paced")
        if paced:
            p99 = paced.get("steady_p99_ms", paced["p99_ms"])
            ok = p99 < 25 and paced["failures"] == 0
            out.append(f"`{label}` paced p99 {p99:.1f} ms, {paced['failures']} errors "
                       f"(target p99 < 25 ms, no errors: {'met' if ok else 'NOT met'})")
    return out


def markdown(results: dict | list[dict]) -> str:
    """The BENCHMARKS.md section for one run, or several (e.g. as is, then at a higher CPU priority)."""
    runs = results if isinstance(results, list) else [results]
    first = runs[0]
    lines = [
        MARK_START,
        "## Serving: crmml service vs `mlflow models serve` (bench/bench_service.py)",
        "",
        f"`.venv/bin/python -m bench.bench_service --workspace DIR` (`--prepare N` builds the workspace with "
        f"`crmml generate` + `crmml train`). Date {first['date']}; machine: the shared 2-core box, 24 GiB, Python "
        "3.11; everything on 127.0.0.1, locust (FastHttpUser) on the same 2 cores as the server it drives; "
        "one server at a time. crmml: `crmml serve`, one BentoML worker, API key on; mlflow: `mlflow models serve "
        "-m models:/crmml-churn@champion --env-manager local`, one uvicorn worker, the same registered model. "
        f"Data: synthetic shop, {first['inputs']['customers']:,} customers, as of {first['inputs']['as_of']}; "
        f"champions crmml-churn v{first['models'].get('crmml-churn', '?')}, crmml-recommender "
        f"v{first['models'].get('crmml-recommender', '?')}, trained by `crmml train` with the measured code "
        f"({first.get('code', '?')}). {first['users']} users, {first['seconds']} s per run: **saturation** = no "
        "wait between requests (throughput; latency there is queueing, users / throughput); **paced** = each "
        f"user sends {first.get('rate', 5):g} requests/s on average, at random (exponential) intervals, "
        "independently of the others (the latency a page view sees at that load). Requests/s and percentiles "
        "are steady state: every request is recorded and the first 5 s of each run (users spawning, "
        "connections opening) are left out; errors count all requests, and locust's own p99 over the whole "
        "run is given too. Server RSS: resident memory of all the server's processes (supervisor and worker) "
        "after the run.",
        "",
    ]
    for n, res in enumerate(runs):
        nice = res.get("nice", 0)
        title = ("Servers and locust at normal priority" if not nice else
                 f"Benchmark processes (servers and locust) at `nice {nice}`: approximates a dedicated machine")
        lines += [
            f"**{chr(65 + n)}. {title}** (load average before -> after: {res['load_before']} -> {res['load_after']})",
            "",
            *_table(res),
            "",
            "Checks: " + "; ".join(_checks(res)) + ".",
            "",
        ]
    by = {r["label"]: r for r in runs[-1]["runs"]}
    c, m = (by.get("churn_saturation") or {}), (by.get("mlflow_saturation") or {})
    notes = []
    if c.get("server_cpu_ms_per_request") and m.get("server_cpu_ms_per_request"):
        cc, mm = c["server_cpu_ms_per_request"], m["server_cpu_ms_per_request"]
        notes.append(
            f"Server CPU per request, the figure least disturbed by the other jobs: crmml {cc:.2f} ms vs mlflow "
            f"{mm:.1f} ms for the same single-customer churn prediction ({mm / cc:.0f}x); one dedicated core "
            f"sustains about {1000 / cc:.0f} vs {1000 / mm:.0f} requests/s."
        )
    warm = runs[-1].get("warm_up") or {}
    if warm.get("warm_seconds") is not None:
        notes.append(
            f"Recommendations: at start-up a background thread computes the top 100 of the known customers "
            f"(most recent buyers first, up to CRMML_REC_CACHE = 50,000; {warm.get('warmed', 0):,} here, "
            f"{warm['warm_seconds']:.0f} s) into compact arrays; the runs start "
            "after it. A request then takes a prefix (k) of the customer's list. The cache-off rows show the "
            "per-request `recommend_one` (candidate generators + LightGBM ranker) instead."
        )
    notes.append(
        "Churn: scores, reasons and actions of every customer are computed in one batch when the champion loads; "
        "`/churn/score` is a dict lookup plus a slice of pre-encoded JSON. `mlflow models serve` parses a "
        "DataFrame and runs the pyfunc (features -> LightGBM -> SHAP reasons) per request."
    )
    notes.append(
        "Tail latency: the p99 was 90-400 ms until two fixes in the worker: `gc.freeze()` after the models "
        "and the cache are loaded (a full GC pass no longer walks the ~500,000 long-lived objects), and a "
        "timeout middleware that cancels its timer when the answer starts (BentoML 1.4's keeps a 60 s timer "
        "per request, and with it the request's objects, so at 1,000 requests/s every full GC pass walked "
        "hundreds of thousands of them: `serving/bentoml_patches.py`, `CancellingTimeoutMiddleware`)."
    )
    lines += [f"- {n}" for n in notes] + ["", MARK_END, ""]
    return "\n".join(lines)


def write_benchmarks(section: str, path: Path = REPO / "BENCHMARKS.md", marks: tuple[str, str] = (MARK_START, MARK_END)) -> None:
    """Replace the section between ``marks`` in BENCHMARKS.md (or append it)."""
    from features.workspace import atomic_write

    start, end = marks
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write(path, lambda tmp: tmp.write_text(text))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def prepare(ws: Path, customers: int, seed: int = 7) -> None:
    env = base_env(ws)
    crmml = [sys.executable, "-m", "pipelines.cli"]
    # the serving benchmark needs champions, not the best ones: no churn tuning or backtest
    for args in (["generate", "--customers", str(customers), "--seed", str(seed)],
                 ["train", "churn", "--no-tune", "--no-backtest"], ["train", "recommender"]):  # registration needs its backtest
        subprocess.run(crmml + args + ["--workspace", str(ws)], cwd=REPO, env=env, check=True, timeout=3600)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, help="workspace with champions (default: a temporary one, see --prepare)")
    ap.add_argument("--prepare", type=int, default=0, metavar="N", help="first generate N customers and train the champions")
    ap.add_argument("--users", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rate", type=float, default=5.0, help="mean requests/s per user in the paced runs")
    ap.add_argument("--no-cache-run", action="store_true", help="also measure /recommend with the recommendation cache off")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--only", default="recommend,churn,mlflow",
                    help="comma-separated subset of the runs: recommend, churn, mlflow")
    ap.add_argument("--nice", type=int, default=0,
                    help="run servers and locust at this nice value (negative: higher priority; needs root)")
    ap.add_argument("--from-json", type=Path, nargs="+",
                    help="only re-render BENCHMARKS.md from saved bench_service.json files (one section, in order)")
    args = ap.parse_args(argv)
    if args.from_json:
        results = [json.loads(p.read_text()) for p in args.from_json]
        section = markdown(results)
        print(section)
        if not args.no_write:
            write_benchmarks(section)
        return results

    global NICE
    NICE = args.nice
    tmp = Path(tempfile.mkdtemp(prefix="crmml_bench_"))
    ws = (args.workspace or tmp / "workspace").resolve()
    if args.prepare:
        prepare(ws, args.prepare)
    os.environ.update({k: v for k, v in base_env(ws).items() if k in ("BENTOML_HOME", "MLFLOW_DISABLE_TELEMETRY")})
    inputs = bench_inputs(ws)
    data_file = tmp / "inputs.json"
    data_file.write_text(json.dumps(inputs))
    key = secrets.token_urlsafe(16)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "users": args.users, "seconds": args.seconds, "runs": [],
                     "inputs": {k: inputs[k] for k in ("customers", "as_of", "mlflow_customer")},
                     "load_before": load_average(), "code": code_version(), "rate": args.rate, "nice": args.nice}
    procs: list[ServerProcess] = []

    only = {x.strip() for x in args.only.split(",") if x.strip()}

    def measure(user_class: str, host: str, label: str, server: ServerProcess) -> None:
        if label.split("_")[0] not in only:
            return
        for mode, rate in (("saturation", 0.0), ("paced", args.rate)):
            cpu0 = server.cpu_seconds()
            r = run_locust(user_class, host, args.users, args.seconds, rate, data_file, key, tmp, f"{label}_{mode}")
            r["server_cpu_s"] = round(server.cpu_seconds() - cpu0, 2)
            r["server_cpu_ms_per_request"] = round(1000 * r["server_cpu_s"] / max(r["requests"], 1), 3)
            r["server_rss_mib"] = round(server.rss_bytes() / 2**20)  # every process of the server, after the load
            r["load_average"] = load_average()
            results["runs"].append(r)
            print(f"{label:18s} {mode:10s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                  f"errors {r['failures']}/{r['requests']}", flush=True)

    try:
        import httpx

        crmml, url = start_crmml(ws, key, tmp)
        procs.append(crmml)
        meta = wait_warm(url, key)
        results["models"] = {n: m["version"] for n, m in meta["models"].items()}
        results["warm_up"] = meta["data"]["store"].get("recommendation_cache")
        measure("RecommendUser", url, "recommend", crmml)
        measure("ChurnUser", url, "churn", crmml)
        meta = httpx.get(url + "/metadata", headers={"Authorization": f"Bearer {key}"}).json()
        results["recommendation_cache"] = meta["data"]["store"].get("recommendation_cache")
        crmml.stop()
        procs.remove(crmml)
        if "mlflow" in only:
            ml, ml_url = start_mlflow(ws, tmp)
            procs.append(ml)
            probe = httpx.post(ml_url + "/invocations", json=inputs["mlflow_payload"], timeout=30)
            if probe.status_code != 200:
                raise RuntimeError(f"mlflow /invocations answered {probe.status_code}: {probe.text[:500]}")
            results["mlflow_probe"] = probe.json()
            measure("MlflowUser", ml_url, "mlflow", ml)
            ml.stop()
            procs.remove(ml)
        if args.no_cache_run:
            crmml, url = start_crmml(ws, key, tmp, {"CRMML_REC_CACHE": "0"})
            procs.append(crmml)
            measure("RecommendUser", url, "recommend_nocache", crmml)
    finally:
        for p in procs:
            p.stop()
    results["load_after"] = load_average()
    out = ws / "reports" / f"bench_service{'_nice' + str(args.nice) if args.nice else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    section = markdown(results)
    print(section)
    if not args.no_write:
        write_benchmarks(section)
    return results


if __name__ == "__main__":
    main()
