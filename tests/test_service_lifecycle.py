"""Issue #16 (findings 3 and 4, item 3): models verified end to end, a service that lives and dies whole.

Each test reproduces a finding against the real service (``crmml serve`` -> ``bentoml serve`` -> worker)
on a copy of a small synthetic shop with real registered champions:

* content hashes: recorded at registration, checked at import, load and reload; a truncated file in the
  BentoML store or in the MLflow artifacts is refused with its reason (reload answer, /readyz degraded,
  /metadata, the log) while the old champions keep serving; a refused start exits 3 with the reason;
* a ``mlflow.db`` replaced on disk (restored from a backup) is seen by the next check;
* SIGKILL of ``crmml serve``'s process group, or of the ``crmml serve`` process alone, leaves no process
  and nothing answering on the port;
* a port in use and a short key are one-line errors (exit 2); a generated key goes to a mode-600 file and
  is never printed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from pipelines.processes import free_port
from test_service import KEY, REPO, Server, _base_env, _train_churn, _train_recommender  # noqa: F401 (shared helpers)

N_CUSTOMERS = 300
H = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A small synthetic shop with champions v1 of both models (copied by each test that changes it)."""
    from features import synthetic
    from features.workspace import Workspace

    root = tmp_path_factory.mktemp("lifecycle")
    ws = Workspace(root / "workspace")
    synthetic.write(ws, synthetic.generate(N_CUSTOMERS, seed=5), 3, N_CUSTOMERS)
    _train_churn(ws)
    _train_recommender(ws)
    events = ws.read_table("events")
    return {"ws": ws, "root": root, "customer": str(events["customer_id"].astype(str).iloc[0])}


def _copy(shop, tmp_path, name: str = "ws"):
    from features.workspace import Workspace

    root = tmp_path / name
    shutil.copytree(shop["ws"].root, root)
    return Workspace(root)


def _truncate(paths) -> dict[Path, bytes]:
    saved = {}
    for path in paths:
        data = path.read_bytes()
        saved[path] = data
        path.write_bytes(data[: len(data) // 3])
    return saved


def _bento_files(ws, name: str) -> list[Path]:
    return list((ws.root / "bentoml" / "models" / name).rglob("*.joblib"))


def _mlflow_files(ws, name: str, version: str) -> list[Path]:
    """The joblib files of a registered version in the workspace's MLflow artifact store."""
    from urllib.parse import urlparse

    from training import registry

    location = registry.client(ws).get_model_version_download_uri(name, version)
    return list(Path(urlparse(location).path).rglob("*.joblib"))


def test_registration_records_the_content_hash(shop):
    from training import registry
    from training.registry import CONTENT_HASH_TAG, model_content_sha256

    mlc = registry.client(shop["ws"])
    for name in (registry.CHURN, registry.RECOMMENDER):
        mv = mlc.get_model_version(name, "1")
        recorded = mv.tags.get(CONTENT_HASH_TAG)
        assert recorded and len(recorded) == 64
        assert recorded == model_content_sha256(f"models:/{name}/1")


@pytest.mark.slow
def test_corrupt_models_are_refused_and_the_old_champions_keep_serving(shop, tmp_path):
    """Finding 3 and the replaced registry of finding 4, on one running service."""
    from training import registry

    ws = _copy(shop, tmp_path)
    backup = tmp_path / "mlflow.db.v1"
    shutil.copy2(ws.root / "mlflow.db", backup)
    srv = Server(ws.root, tmp_path / "server.log", {"CRMML_API_KEY": KEY}, ("--reload-seconds", "0")).wait_ready()
    c = httpx.Client(base_url=srv.url, headers=H, timeout=60)
    try:
        # 1. the BentoML copy of the serving champion truncated: a forced reload is refused
        saved = _truncate(_bento_files(ws, registry.CHURN))
        assert saved
        r = c.post("/admin/reload", params={"force": "true"}).json()
        assert r["reloaded"] is False and "content hash mismatch" in r["detail"] and "crmml-churn" in r["detail"]
        ready = httpx.get(srv.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "degraded"
        assert "content hash mismatch" in ready.json()["detail"]
        meta = c.get("/metadata").json()
        assert "content hash mismatch" in meta["reload"]["degraded"] and meta["models"]["crmml-churn"]["version"] == "1"
        assert c.post("/churn/score", json={"customer_ids": [shop["customer"]]}).status_code == 200  # still served
        assert c.post("/recommend", json={"customer_id": shop["customer"]}).status_code == 200
        for path, data in saved.items():
            path.write_bytes(data)
        assert c.post("/admin/reload", params={"force": "true"}).json()["reloaded"] is True
        assert httpx.get(srv.url + "/readyz").status_code == 200

        # 2. a new champion whose MLflow artifacts are truncated: not imported, not served
        version = _train_churn(ws, num_leaves=7)
        registry.promote(ws, registry.CHURN, version=version, force=True)
        saved = _truncate(_mlflow_files(ws, registry.CHURN, version))
        assert saved
        r = c.post("/admin/reload").json()
        assert r["reloaded"] is False and "content hash mismatch" in r["detail"], r
        assert r["models"]["crmml-churn"] == "1"
        assert not any(p.name.startswith(f"v{version}-") for p in (ws.root / "bentoml" / "models" / "crmml-churn").iterdir())
        for path, data in saved.items():
            path.write_bytes(data)
        r = c.post("/admin/reload").json()
        assert r["reloaded"] is True and r["models"]["crmml-churn"] == version, r

        # 3. mlflow.db replaced on disk by a backup (champion v1): the next check sees it
        os.replace(backup, ws.root / "mlflow.db")
        r = c.post("/admin/reload").json()
        assert r["reloaded"] is True and r["models"]["crmml-churn"] == "1", r
        assert "content hash mismatch" in srv.tail(500_000)  # the log says why
    finally:
        c.close()
        srv.stop()

    # 4. a refused start: exit 3 and the reason
    _truncate(_bento_files(ws, registry.RECOMMENDER))
    code, reason, out = Server(ws.root, tmp_path / "refused.log", {"CRMML_API_KEY": KEY}).refusal()
    assert code == 3, out[-3000:]
    assert "crmml-recommender" in reason and "content hash mismatch" in reason, reason


def _tree(srv) -> list[psutil.Process]:
    deadline = time.time() + 30
    while time.time() < deadline:
        procs = srv.tree()
        if len(procs) >= 3:  # crmml serve, bentoml serve, the worker
            return procs
        time.sleep(0.5)
    raise AssertionError(f"expected crmml serve, bentoml serve and a worker; got {[p.pid for p in srv.tree()]}")


def _gone(procs, port: int, timeout: float = 30.0) -> list[int]:
    deadline = time.time() + timeout
    alive = procs
    while time.time() < deadline:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.3)
    with socket.socket() as s:
        answering = s.connect_ex(("127.0.0.1", port)) == 0
    return [p.pid for p in alive] + (["port still answering"] if answering else [])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["group", "parent"])
def test_killing_crmml_serve_takes_the_workers_with_it(shop, tmp_path, how):
    """Finding 4: SIGKILL of the process group, or of the crmml serve process alone.

    The "parent" service runs without CRMML_API_KEY (one start less for this small machine): its
    generated key must be in a mode-600 file of the workspace, work, and never be printed (finding 7).
    """
    from serving.auth import KEY_FILE

    ws = _copy(shop, tmp_path)
    env = {"CRMML_API_KEY": KEY} if how == "group" else {}
    srv = Server(ws.root, tmp_path / "kill.log", env, ("--reload-seconds", "0")).wait_ready()
    try:
        if how == "parent":
            path = ws.root / KEY_FILE
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            key = path.read_text().strip()
            assert len(key) >= 16 and key not in srv.tail(500_000) and str(path) in srv.tail(500_000)
            assert httpx.get(srv.url + "/metadata", headers={"X-API-Key": key}).status_code == 200
            assert httpx.get(srv.url + "/metadata", headers={"X-API-Key": "x" * 32}).status_code == 403
        procs = _tree(srv)
        if how == "group":
            os.killpg(srv.pid, signal.SIGKILL)
        else:
            os.kill(srv.pid, signal.SIGKILL)
        srv.proc.wait(timeout=10)
        left = _gone(procs, srv.port)
        assert left == [], f"still alive after SIGKILL of the {how}: {left}\n{srv.tail()}"
    finally:
        srv.stop()


def test_a_port_in_use_is_a_one_line_error(shop, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--workspace",
                            str(shop["ws"].root)], cwd=REPO, env=_base_env(shop["ws"].root, {"CRMML_API_KEY": KEY}),
                           capture_output=True, text=True, timeout=120)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 2 and f"port {port}" in out and "already in use" in out, out
    assert len(out.splitlines()) == 1 and "Traceback" not in out


def test_short_keys_are_refused(shop, monkeypatch):
    from serving.auth import ApiKey, NoApiKeyError

    monkeypatch.setenv("CRMML_API_KEY", "x" * 15)
    with pytest.raises(NoApiKeyError, match="at least 16"):
        ApiKey.from_env()
    monkeypatch.setenv("CRMML_API_KEY", "x" * 16)
    assert ApiKey.from_env().enabled
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", "--port", str(free_port()), "--workspace",
                        str(shop["ws"].root)], cwd=REPO, env=_base_env(shop["ws"].root, {"CRMML_API_KEY": "short-key"}),
                       capture_output=True, text=True, timeout=120)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 2 and "at least 16" in out and len(out.splitlines()) == 1, out
    assert "short-key" not in out


# --------------------------------------------------------------------------------------------
# reload mechanics (issue #16: requests keep their latency during a reload; the latency itself is
# measured by bench/bench_soak.py, not here)
# --------------------------------------------------------------------------------------------
def test_a_reload_lowers_the_gil_switch_interval_only_while_it_runs():
    import threading

    from serving.state import RESPONSIVE_SWITCH_SECONDS, responsive

    default = sys.getswitchinterval()
    seen = []
    with responsive():
        worker = threading.Thread(target=responsive(lambda: seen.append(sys.getswitchinterval())))
        worker.start()
        worker.join()
        seen.append(sys.getswitchinterval())  # a nested use that ended does not restore it early
    assert seen == [RESPONSIVE_SWITCH_SECONDS, RESPONSIVE_SWITCH_SECONDS]
    assert sys.getswitchinterval() == default


def test_the_reload_child_process_returns_results_and_raises_its_errors():
    from serving.state import off_process

    assert off_process(os.getpid) != os.getpid()
    with pytest.raises(ValueError, match="invalid literal"):
        off_process(int, "not a number")
