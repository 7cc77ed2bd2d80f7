"""Run every benchmark in turn and update BENCHMARKS.md (``make bench``).

    python -m bench.run_all [--skip features,recommender,rec_cutoffs,service,events,ground_truth]

Each benchmark runs in its own process (one at a time: they time the same two cores), with its
defaults: the feature build on the UCI data and 10M synthetic events, the recommender on the UCI
data (and at the four quarterly cutoffs, a ratings-like table and a 25,000-item fit), the service against ``mlflow models serve`` on a freshly trained synthetic workspace, and the planted
ground truth of three synthetic shops recovered by the trained models.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = {
    "features": ["bench.bench_features"],
    "recommender": ["bench.bench_recommender"],
    "rec_cutoffs": ["bench.bench_rec_cutoffs", "--ratings", "--scale"],
    "service": ["bench.bench_service", "--prepare", "5000"],
    "events": ["bench.bench_events", "--prepare", "2000"],
    "ground_truth": ["bench.bench_ground_truth"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip", default="", help="comma-separated benchmarks to leave out: " + ", ".join(BENCHMARKS))
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {sorted(BENCHMARKS)}")
    failed = []
    for name, module in BENCHMARKS.items():
        if name in skip:
            continue
        print(f"== {name}: python -m {' '.join(module)}", flush=True)
        if subprocess.run([sys.executable, "-m", *module], cwd=REPO).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
