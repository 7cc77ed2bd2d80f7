"""How long a reload's build holds the serving worker's GIL (issue #16: p99 during a reload).

    python -m bench.bench_reload_gil --workspace DIR

The workspace must hold champions of both models (``python -m bench.bench_service --prepare N``).
A request in a worker waits for the GIL whenever the reload thread holds it; the event loop gives it
up at every socket wait, so the longest GIL holds of the reload are the stalls a request can meet.
Here the heavy part of a data reload (customer data, scores of every customer, encoded records)
runs in a thread, as the reload does, while the main thread ticks (``sleep(0.5 ms)``) and records
the process CPU time spent during each tick: a long tick is a stretch the other thread held the
GIL. CPU time, not wall time: on a shared machine the figures hardly move with the load (the
wall-clock latency is ``bench/bench_soak.py``'s). Compared: the build in the worker's thread (as
before) and in a child process (``serving.state.off_process``, as now), each with the default
5 ms GIL switch interval and with ``serving.state.responsive`` (0.5 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import threading
import time
from pathlib import Path


def holds(fn, fast: bool) -> dict:
    from serving.state import responsive

    done = threading.Event()

    def run():
        with responsive() if fast else contextlib.nullcontext():
            fn()
        done.set()

    worker = threading.Thread(target=run)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    worker.start()
    ticks = []
    while not done.is_set():
        c = time.process_time()
        time.sleep(0.0005)
        ticks.append((time.process_time() - c) * 1000)
    worker.join()
    ticks.sort()
    return {"switch_ms": 0.5 if fast else 5.0, "seconds": round(time.perf_counter() - wall0, 2),
            "worker_cpu_s": round(time.process_time() - cpu0, 2), "ticks": len(ticks),
            "p99_ms": round(ticks[int(len(ticks) * 0.99)], 1), "max_ms": round(ticks[-1], 1),
            "over_10ms": sum(t > 10 for t in ticks)}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True)
    args = ap.parse_args(argv)
    from bench.bench_service import base_env

    ws_root = args.workspace.resolve()
    os.environ.update({k: v for k, v in base_env(ws_root).items()
                       if k in ("BENTOML_HOME", "MLFLOW_DISABLE_TELEMETRY", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")})
    from features.workspace import Workspace
    from serving import store as st
    from serving.champions import load_champion, resolve_champions
    from serving.state import off_process, prepare_reload, reload_prefill
    from serving.table import tables_root
    from training.names import CHURN

    ws = Workspace(ws_root)
    refs, _ = resolve_champions(ws)
    churn = load_champion(refs[CHURN])
    st.load_customer_data(ws)  # first-use imports out of the way, as in a worker that already serves
    horizon, stamp = int(churn.impl.horizon_days), st.data_stamp(ws)
    args = (str(ws.root), horizon, stamp, refs[CHURN], reload_prefill())

    def fresh():  # a data reload: the online table of the new data is not published yet
        shutil.rmtree(tables_root(ws), ignore_errors=True)

    def in_thread():
        fresh()
        prepare_reload(*args)

    def in_child():
        fresh()
        off_process(prepare_reload, *args)

    rows = []
    for where, fn in (("worker thread (before)", in_thread),
                      ("child process (now)", in_child)):
        for fast in (False, True):
            row = {"build": where, **holds(fn, fast)}
            rows.append(row)
            print(" | ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
