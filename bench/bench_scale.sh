#!/usr/bin/env bash
# Scale run of issue #17 item 4: generate a large synthetic shop, build its features, score it;
# wall time and peak RSS of each step from /usr/bin/time -v. Results: BENCHMARKS.md, "Scale".
# usage: bench/bench_scale.sh [CUSTOMERS] [WORKSPACE] [ENGINE]   (defaults: 1000000 /tmp/crmml-scale duckdb)
# `crmml score` needs registered champions in the workspace (e.g. `crmml run` on a smaller shop there first).
set -euo pipefail
n=${1:-1000000}; ws=${2:-/tmp/crmml-scale}; engine=${3:-duckdb}
export OPENBLAS_NUM_THREADS=1 BENTOML_DO_NOT_TRACK=True MLFLOW_DISABLE_TELEMETRY=true
step() {
  local name=$1; shift
  nice -n 10 /usr/bin/time -v "$@" > "$ws.$name.log" 2>&1
  echo "$name: $(grep -E 'Elapsed \(wall' "$ws.$name.log" | awk '{print $NF}') wall," \
       "$(grep 'Maximum resident' "$ws.$name.log" | awk '{printf "%.0f MiB", $NF/1024}') peak RSS"
}
step generate .venv/bin/crmml generate --customers "$n" --workspace "$ws"
step features .venv/bin/crmml features --engine "$engine" --workspace "$ws"
step score .venv/bin/crmml score --engine "$engine" --workspace "$ws"
