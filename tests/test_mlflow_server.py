"""mlflow/server.sh starts a real MLflow server on loopback; a run is logged through HTTP; it stops cleanly."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import psutil
import pytest

from pipelines.processes import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "mlflow" / "server.sh"


@pytest.mark.slow
def test_server_script_logs_a_run_over_http_and_stops(tmp_path):
    ws = tmp_path / "ws"
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "HOST"):
        env.pop(var, None)
    server = ServerProcess(["bash", str(SCRIPT), str(ws)], env, tmp_path / "server.log")
    proc = server.proc
    procs: list[psutil.Process] = []
    try:
        server.wait_http(f"http://127.0.0.1:{port}/health", timeout=180)
        # exec: the pid we started is mlflow itself, listening on loopback only
        cmdline = " ".join(psutil.Process(proc.pid).cmdline())
        assert "mlflow" in cmdline and "server" in cmdline and "--workers 1" in cmdline, cmdline
        family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
        listening = set()
        for p in family:
            try:
                listening |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                continue
        assert listening and listening <= {"127.0.0.1"}, listening

        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        exp_id = client.create_experiment("server-test")
        run = client.create_run(exp_id, run_name="http-run")
        client.log_param(run.info.run_id, "alpha", "0.5")
        client.log_metric(run.info.run_id, "auc", 0.75)
        client.set_tag(run.info.run_id, "lineage.cutoff", "2011-09-01")
        client.log_text(run.info.run_id, '{"rows": 10}', "lineage/lineage.json")  # proxied artifact upload
        client.set_terminated(run.info.run_id)

        got = client.get_run(run.info.run_id)
        assert got.info.status == "FINISHED"
        assert got.data.params == {"alpha": "0.5"}
        assert got.data.metrics == {"auc": 0.75}
        assert got.data.tags["lineage.cutoff"] == "2011-09-01"
        assert [a.path for a in client.list_artifacts(run.info.run_id, "lineage")] == ["lineage/lineage.json"]
        # the server wrote into the workspace: SQLite store and proxied artifacts beside it
        assert (ws / "mlflow.db").exists()
        assert list((ws / "mlartifacts").rglob("lineage.json"))
    finally:
        procs = server.stop()
    assert proc.returncode is not None
    assert procs, "no server processes were seen"
    left = [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"server processes still running: {left}"
    group = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                group.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    assert not group, f"processes left in the server's group: {group}"
    with pytest.raises(httpx.ConnectError):  # nothing listens on the port any more
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
