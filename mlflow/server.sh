#!/usr/bin/env bash
# Start the MLflow tracking server and UI on a crmml workspace: loopback, one web worker, no job runner.
#
#   mlflow/server.sh [WORKSPACE] [EXTRA MLFLOW SERVER OPTIONS...]   # then open http://127.0.0.1:${PORT:-5000}
#
# WORKSPACE defaults to $CRMML_WORKSPACE, else <repo>/workspace. Environment:
#   PORT (5000)  HOST (127.0.0.1; anything else only behind an authenticating proxy, see README.md)
#   MLFLOW_BACKEND_STORE_URI        default sqlite:////abs/WORKSPACE/mlflow.db (the embedded store)
#   MLFLOW_ARTIFACTS_DESTINATION    default /abs/WORKSPACE/mlartifacts (s3://..., gs://... for a team)
#   MLFLOW_WORKERS (1)  MLFLOW_BIN (default <repo>/.venv/bin/mlflow, else mlflow on PATH)
# The script execs mlflow, so its process id is the server's: stop it (and its worker children)
# with `kill -TERM -- -<pgid>` or by walking the children of that pid.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
repo="$(dirname "$here")"
ws="${CRMML_WORKSPACE:-$repo/workspace}"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then  # first argument not an option: the workspace
  ws="$1"
  shift
fi
mkdir -p "$ws"
ws="$(cd "$ws" && pwd -P)"

backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$ws/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$ws/mlartifacts}"
case "$artifacts" in
  *://*) ;;                                   # remote store (s3://, gs://, ...)
  /*) mkdir -p "$artifacts" ;;
  *) echo "server.sh: MLFLOW_ARTIFACTS_DESTINATION must be absolute or a URI: $artifacts" >&2; exit 2 ;;
esac

mlflow_bin="${MLFLOW_BIN:-$repo/.venv/bin/mlflow}"
if [ ! -x "$mlflow_bin" ]; then
  mlflow_bin="$(command -v mlflow || true)"
fi
if [ -z "$mlflow_bin" ]; then
  echo "server.sh: no mlflow executable (run 'make setup' or set MLFLOW_BIN)" >&2
  exit 127
fi

# Lean server: no background job runner, no telemetry; the venv's bin first so children find it.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
export MLFLOW_DISABLE_TELEMETRY=true
export PATH="$(dirname "$mlflow_bin"):$PATH"

host="${HOST:-127.0.0.1}"
port="${PORT:-5000}"
echo "mlflow server: http://$host:$port  backend=$backend  artifacts=$artifacts" >&2
exec "$mlflow_bin" server \
  --host "$host" \
  --port "$port" \
  --workers "${MLFLOW_WORKERS:-1}" \
  --backend-store-uri "$backend" \
  --serve-artifacts \
  --artifacts-destination "$artifacts" \
  "$@"
