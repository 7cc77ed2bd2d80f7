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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LOCUSTFILE = REPO / "bench" / "locustfile.py"
MARK_START = "<!-- bench_service:start -->"
MARK_END = "<!-- bench_service:end -->"


# --------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(ws: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "BENTOML_DO_NOT_TRACK": "True",
        "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1",
        "BENTOML_HOME": env.get("BENTOML_HOME") or str(ws / "bentoml"),
        "PATH": str(BIN) + os.pathsep + env.get("PATH", ""),  # mlflow --env-manager local needs it
    })
    return env


class Proc:
    def __init__(self, cmd: list[str], env: dict, log: Path):
        self.log = log
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_http(self, url: str, timeout: float = 300.0, ok=lambda r: r.status_code == 200) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.log.read_text(errors='replace')[-3000:]}")
            try:
                if ok(httpx.get(url, timeout=2)):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{url} not up after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)


def start_crmml(ws: Path, key: str, logdir: Path, extra_env: dict | None = None) -> tuple[Proc, str]:
    port = free_port()
    env = {**base_env(ws), "CRMML_API_KEY": key, **(extra_env or {})}
    proc = Proc([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--workspace", str(ws),
                 "--reload-seconds", "0"], env, logdir / f"crmml_{port}.log")
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/readyz")
    return proc, url


def start_mlflow(ws: Path, logdir: Path) -> tuple[Proc, str]:
    from training.registry import tracking_uri

    port = free_port()
    env = {**base_env(ws), "MLFLOW_TRACKING_URI": tracking_uri(ws)}
    proc = Proc([str(BIN / "mlflow"), "models", "serve", "-m", "models:/crmml-churn@champion", "--env-manager",
                 "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"], env, logdir / f"mlflow_{port}.log")
    url = f"http://127.0.0.1:{port}"
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
def run_locust(user_class: str, host: str, users: int, seconds: int, rate: float, data_file: Path, key: str,
               outdir: Path, label: str) -> dict:
    prefix = outdir / label
    env = {**os.environ, "CRMML_BENCH_DATA": str(data_file), "CRMML_BENCH_KEY": key, "CRMML_BENCH_RATE": str(rate)}
    cmd = [str(BIN / "locust"), "-f", str(LOCUSTFILE), user_class, "--headless", "-u", str(users), "-r", str(users),
           "-t", f"{seconds}s", "--stop-timeout", "5", "--host", host, "--csv", str(prefix), "--only-summary",
           "--loglevel", "WARNING", "--exit-code-on-error", "0"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=seconds + 120)
    stats = prefix.with_name(prefix.name + "_stats.csv")
    if not stats.exists():
        raise RuntimeError(f"locust wrote no stats ({done.returncode}): {done.stderr[-2000:]}")
    with open(stats) as fh:
        rows = list(csv.DictReader(fh))
    row = next(r for r in rows if r["Name"] == "Aggregated")
    requests = int(row["Request Count"])
    failures = int(row["Failure Count"])
    return {
        "label": label, "user_class": user_class, "users": users, "seconds": seconds, "rate_per_user": rate,
        "requests": requests, "failures": failures, "rps": float(row["Requests/s"]),
        "p50_ms": float(row["50%"]), "p90_ms": float(row["90%"]), "p99_ms": float(row["99%"]),
        "max_ms": float(row["Max Response Time"]),
    }


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def markdown(results: dict) -> str:
    rows = results["runs"]
    by = {r["label"]: r for r in rows}
    lines = [
        MARK_START,
        "## Serving: crmml service vs `mlflow models serve` (bench/bench_service.py)",
        "",
        f"Date {results['date']}; machine: 2 cores, 24 GiB, Python 3.11; everything on 127.0.0.1 "
        f"(locust shares the 2 cores with the servers). Load average before/after the run: "
        f"{results['load_before']} -> {results['load_after']} (other work on the machine counts here).",
        f"Data: {results['inputs']['customers']:,} customers (as of {results['inputs']['as_of']}); champions "
        f"crmml-churn v{results['models'].get('crmml-churn', '?')}, crmml-recommender "
        f"v{results['models'].get('crmml-recommender', '?')}. {results['users']} locust users (FastHttpUser), "
        f"{results['seconds']} s per run. crmml: one BentoML worker; mlflow: one uvicorn worker, "
        "`--env-manager local`, same registered model (`models:/crmml-churn@champion`).",
        "",
        "| endpoint | load | requests/s | p50 ms | p99 ms | errors |",
        "|---|---|---:|---:|---:|---:|",
    ]
    names = {
        "recommend": "crmml `POST /recommend` (k=10)",
        "recommend_nocache": "crmml `POST /recommend` (k=10), recommendation cache off",
        "churn": "crmml `POST /churn/score` (1 customer)",
        "mlflow": "mlflow `POST /invocations` (1 customer)",
    }
    for label in ("recommend", "recommend_nocache", "churn", "mlflow"):
        for mode in ("saturation", "paced"):
            r = by.get(f"{label}_{mode}")
            if r is None:
                continue
            load = "no wait" if mode == "saturation" else f"{r['rate_per_user']:g}/s per user ({r['rate_per_user'] * r['users']:g}/s offered)"
            lines.append(
                f"| {names[label]} | {load} | {r['rps']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                f"{r['failures']} of {r['requests']:,} |"
            )
    sat = {k: by.get(f"{k}_saturation") for k in ("churn", "mlflow", "recommend")}
    notes = []
    if sat["churn"] and sat["mlflow"] and sat["mlflow"]["rps"] > 0:
        notes.append(
            f"Single-customer churn score: crmml {sat['churn']['rps']:.0f} req/s vs mlflow {sat['mlflow']['rps']:.0f} req/s "
            f"= **{sat['churn']['rps'] / sat['mlflow']['rps']:.1f}x** at saturation (target: at least 3x)."
        )
    for label in ("recommend", "churn"):
        paced = by.get(f"{label}_paced")
        if paced:
            ok = paced["p99_ms"] < 25 and paced["failures"] == 0
            notes.append(
                f"`{label}` at {paced['users']} paced users: p99 {paced['p99_ms']:.0f} ms, {paced['failures']} errors "
                f"({'meets' if ok else 'misses'} the target p99 < 25 ms with zero errors)."
            )
    warm = results.get("warm_up") or {}
    if warm.get("warm_seconds") is not None:
        notes.append(
            f"Start-up warm-up: recommendations of {warm.get('warmed', 0):,} known customers computed in a background "
            f"thread in {warm['warm_seconds']:.0f} s after the service became ready (the runs start after it)."
        )
    cache = results.get("recommendation_cache")
    if cache:
        hits = cache.get("hits", 0)
        total = hits + cache.get("misses", 0) - (warm.get("warmed", 0) or 0)  # requests only, not the warm-up
        if total > 0:
            notes.append(
                f"Recommendation cache during the runs: {hits / total:.0%} of {total:,} `/recommend` lookups were "
                f"hits ({cache.get('entries', 0):,} entries; a miss computes `recommend_one` with k=100, a hit "
                "takes a prefix)."
            )
    notes.append(
        "Why the gap: the crmml churn route answers from scores computed for every customer when the champion "
        "loads (a dict lookup and a slice of pre-encoded JSON); `mlflow models serve` parses a DataFrame and runs "
        "the pyfunc per request. At saturation the latency of 32 users is queueing (Little's law: users / "
        "throughput); the paced rows give the latency a page sees at that load."
    )
    lines += [""] + [f"- {n}" for n in notes] + ["", MARK_END, ""]
    return "\n".join(lines)


def write_benchmarks(section: str, path: Path = REPO / "BENCHMARKS.md") -> None:
    from features.workspace import atomic_write

    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        tail = rest.split(MARK_END, 1)[1].lstrip("\n")
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
    ap.add_argument("--rate", type=float, default=5.0, help="requests/s per user in the paced runs")
    ap.add_argument("--no-cache-run", action="store_true", help="also measure /recommend with the recommendation cache off")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="crmml_bench_"))
    ws = (args.workspace or tmp / "workspace").resolve()
    if args.prepare:
        prepare(ws, args.prepare)
    os.environ.update({k: v for k, v in base_env(ws).items() if k in ("BENTOML_HOME", "MLFLOW_DISABLE_TELEMETRY")})
    inputs = bench_inputs(ws)
    data_file = tmp / "inputs.json"
    data_file.write_text(json.dumps(inputs))
    key = secrets.token_urlsafe(16)
    results: dict = {"date": "2026-11-23", "users": args.users, "seconds": args.seconds, "runs": [],
                     "inputs": {k: inputs[k] for k in ("customers", "as_of", "mlflow_customer")},
                     "load_before": load_average()}
    procs: list[Proc] = []

    def measure(user_class: str, host: str, label: str) -> None:
        for mode, rate in (("saturation", 0.0), ("paced", args.rate)):
            r = run_locust(user_class, host, args.users, args.seconds, rate, data_file, key, tmp, f"{label}_{mode}")
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
        measure("RecommendUser", url, "recommend")
        measure("ChurnUser", url, "churn")
        meta = httpx.get(url + "/metadata", headers={"Authorization": f"Bearer {key}"}).json()
        results["recommendation_cache"] = meta["data"]["store"].get("recommendation_cache")
        crmml.stop()
        procs.remove(crmml)
        ml, ml_url = start_mlflow(ws, tmp)
        procs.append(ml)
        probe = httpx.post(ml_url + "/invocations", json=inputs["mlflow_payload"], timeout=30)
        if probe.status_code != 200:
            raise RuntimeError(f"mlflow /invocations answered {probe.status_code}: {probe.text[:500]}")
        results["mlflow_probe"] = probe.json()
        measure("MlflowUser", ml_url, "mlflow")
        ml.stop()
        procs.remove(ml)
        if args.no_cache_run:
            crmml, url = start_crmml(ws, key, tmp, {"CRMML_REC_CACHE": "0"})
            procs.append(crmml)
            measure("RecommendUser", url, "recommend_nocache")
    finally:
        for p in procs:
            p.stop()
    results["load_after"] = load_average()
    out = ws / "reports" / "bench_service.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    section = markdown(results)
    print(section)
    if not args.no_write:
        write_benchmarks(section)
    return results


if __name__ == "__main__":
    main()
