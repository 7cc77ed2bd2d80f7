#!/usr/bin/env bash
# Churn training time of issue #15 item 5: wall and CPU seconds of the default `crmml train churn`,
# `crmml evaluate churn --cutoff <newest labelled>` and `crmml evaluate churn --cutoffs 4` on a
# 25,000-customer synthetic shop and on the UCI Online Retail files. Results: BENCHMARKS.md,
# "Churn training time".
#
# usage: bench/bench_churn_time.sh [DIR] [DATA]   (defaults: /tmp/crmml-churn-time /work/shared/data)
#        BENCH_SHOPS="uci" bench/bench_churn_time.sh ...   (one shop only; default "synthetic25k uci")
#
# Each shop is prepared once in DIR/<shop> (generate + features, or ingest + features; not timed), then
# every timed command runs on a fresh copy of it, so each starts as a first run would: the snapshot
# cache built by `crmml features`, no MLflow store yet. CPU = user + sys of the process and its
# threads (/usr/bin/time). The load average before each command is printed: on a shared machine the
# wall time means little, the CPU time is the figure to compare.
#
# Bytecode: when the environment sets PYTHONDONTWRITEBYTECODE, every command recompiles the ~3,400
# modules it imports (about 8 s of CPU here). The script caches bytecode under DIR/pycache instead
# (PYTHONPYCACHEPREFIX; neither the venv nor the interpreter's library is written), as an ordinary
# install would have it, filled once by compileall over everything on sys.path (untimed; with a prefix
# Python ignores the __pycache__ folders beside the sources, the standard library's included); BENCH_NO_PYCACHE=1 measures the recompiling case.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/crmml-churn-time}; data=${2:-/work/shared/data}
export OPENBLAS_NUM_THREADS=1 BENTOML_DO_NOT_TRACK=True MLFLOW_DISABLE_TELEMETRY=true OMP_WAIT_POLICY=PASSIVE
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${BENCH_NO_PYCACHE:-}" ]; then
  unset PYTHONDONTWRITEBYTECODE
  export PYTHONPYCACHEPREFIX=$dir/pycache
fi
crmml=.venv/bin/crmml
mkdir -p "$dir"

prepare() {  # shop -> DIR/<shop> with its features, once
  local shop=$1 ws=$dir/$1
  [ -f "$ws/.prepared" ] && return
  rm -rf "$ws"
  case $shop in
    synthetic25k) nice -n 10 $crmml generate --customers 25000 --seed 0 --workspace "$ws" > "$ws.prepare.log" 2>&1 ;;
    uci) nice -n 10 $crmml ingest --source online-retail --workspace "$ws" \
           "$data/online_retail_ii/online_retail_ii_year_2009_2010.csv.gz" \
           "$data/online_retail/online_retail.csv.gz" > "$ws.prepare.log" 2>&1 ;;
  esac
  nice -n 10 $crmml features --workspace "$ws" >> "$ws.prepare.log" 2>&1
  touch "$ws/.prepared"
}

newest() {  # the newest fully-labelled cutoff of a workspace (what `train churn` backtests at)
  .venv/bin/python -c "from features import dates; from features.workspace import Workspace
print(dates.newest_labelled_cutoff(dates.workspace_as_of(Workspace('$1')), 90).date())"
}

timed() {  # name shop args...: one command on a fresh copy of the shop's workspace
  local name=$1 shop=$2; shift 2
  local ws=$dir/run-$shop log=$dir/$shop.${name// /_}.log
  rm -rf "$ws"; cp -a "$dir/$shop" "$ws"
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  nice -n 10 /usr/bin/time -f "TIME %e %U %S %M" $crmml "$@" --workspace "$ws" > "$log" 2>&1
  awk -v n="$name" -v s="$shop" -v l="$load" '/^TIME/ {printf "%-13s %-32s %8.1f %8.1f %8.0f %6s\n", s, n, $2, $3+$4, $5/1024, l}' "$log"
}

shops=${BENCH_SHOPS:-synthetic25k uci}
for shop in $shops; do prepare "$shop"; done
if [ -z "${BENCH_NO_PYCACHE:-}" ] && [ ! -f "$dir/pycache/.warm" ]; then  # bytecode of everything, once (untimed)
  mkdir -p "$dir/pycache"
  nice -n 10 .venv/bin/python -c "import compileall, re, sys
for p in [p for p in sys.path if p and not p.endswith('.zip')] + ['features', 'training', 'pipelines', 'serving']:
    compileall.compile_dir(p, quiet=2, rx=re.compile(r'/tests?/'))" > /dev/null 2>&1 || true
  touch "$dir/pycache/.warm"
fi
printf "%-13s %-32s %8s %8s %8s %6s\n" shop command "wall s" "CPU s" "RSS MiB" load
for shop in $shops; do
  cut=$(newest "$dir/$shop")
  timed "train churn" "$shop" train churn
  timed "evaluate churn --cutoff $cut" "$shop" evaluate churn --cutoff "$cut"
  timed "evaluate churn --cutoffs 4" "$shop" evaluate churn --cutoffs 4
done
echo "logs: $dir/<shop>.<command>.log; commit $(git rev-parse --short HEAD); $(nproc) cores"
