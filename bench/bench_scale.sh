#!/usr/bin/env bash
# Scale run of issue #17 item 4: generate a large synthetic shop, build its features, train both models
# (the churn model on a hash sample of customers, features.sampling.TRAIN_CUSTOMERS), promote them, score
# every customer; CPU seconds, wall time and peak RSS of each step from /usr/bin/time -v.
# Results: BENCHMARKS.md, "Scale".
# usage: bench/bench_scale.sh [CUSTOMERS] [WORKSPACE] [ENGINE] [STEPS]
#   defaults: 1000000 /tmp/crmml-scale duckdb "generate features train_churn train_recommender promote score"
#   CRMML_TRAIN_ARGS: extra options of both `crmml train` commands (e.g. "--no-tune --no-backtest").
set -euo pipefail
n=${1:-1000000}; ws=${2:-/tmp/crmml-scale}; engine=${3:-duckdb}
steps=${4:-generate features train_churn train_recommender promote score}
train_args=${CRMML_TRAIN_ARGS:-}
export OPENBLAS_NUM_THREADS=1 BENTOML_DO_NOT_TRACK=True MLFLOW_DISABLE_TELEMETRY=true OMP_WAIT_POLICY=PASSIVE
step() {
  local name=$1; shift
  nice -n 10 /usr/bin/time -v "$@" > "$ws.$name.log" 2>&1
  local user sys
  user=$(grep 'User time' "$ws.$name.log" | awk '{print $NF}'); sys=$(grep 'System time' "$ws.$name.log" | awk '{print $NF}')
  echo "$name: $(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.1f CPU s (%.1f user + %.1f sys)", u+s, u, s}')," \
       "$(grep -E 'Elapsed \(wall' "$ws.$name.log" | awk '{print $NF}') wall," \
       "$(grep 'Maximum resident' "$ws.$name.log" | awk '{printf "%.2f GiB", $NF/1048576}') peak RSS"
}
for s in $steps; do
  case $s in
    generate) step generate .venv/bin/crmml generate --customers "$n" --workspace "$ws" ;;
    features) step features .venv/bin/crmml features --engine "$engine" --workspace "$ws" ;;
    # shellcheck disable=SC2086
    train_churn) step train_churn .venv/bin/crmml train churn $train_args --workspace "$ws" ;;
    # shellcheck disable=SC2086
    train_recommender) step train_recommender .venv/bin/crmml train recommender $train_args --workspace "$ws" ;;
    promote) step promote_churn .venv/bin/crmml models promote crmml-churn --workspace "$ws"
             step promote_recommender .venv/bin/crmml models promote crmml-recommender --workspace "$ws" ;;
    score) step score .venv/bin/crmml score --engine "$engine" --workspace "$ws" ;;
    *) echo "unknown step $s" >&2; exit 2 ;;
  esac
done
