"""mlflow/server.sh starts a real MLflow server on loopback; a run is logged through HTTP; it stops cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "mlflow" / "server.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGTERM the server's process group and every child by pid; SIGKILL what is left. Returns them all."""
    try:
        root = psutil.Process(proc.pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    return procs


@pytest.mark.slow
def test_server_script_logs_a_run_over_http_and_stops(tmp_path):
    ws = tmp_path / "ws"
    port = _free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "HOST"):
        env.pop(var, None)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), str(ws)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    procs: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while not _healthy(port):
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "server did not answer /health"
            time.sleep(0.5)
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
        procs = _stop(proc)
        log.close()
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
    assert not _healthy(port)
