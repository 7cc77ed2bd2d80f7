"""`crmml serve`: the HTTP API (BentoML) on 127.0.0.1, serving the champions and data of a workspace.

    crmml serve [--port 3000] [--workspace DIR] [--no-auth] [--reload-seconds 30]
                [--workers 1] [--store memory|redis --redis-url redis://127.0.0.1:6379/0]

What it does before running ``bentoml serve serving.service:CrmmlService`` in the foreground:

* environment: ``OPENBLAS_NUM_THREADS=1``, ``BENTOML_DO_NOT_TRACK=True``,
  ``MLFLOW_DISABLE_TELEMETRY=true``, ``CRMML_WORKSPACE``, and ``BENTOML_HOME`` (default
  ``<workspace>/bentoml``, so the model store lives with the workspace, not in ``~/bentoml``);
* port: a port already in use is a one-line error (exit 2) before anything is loaded;
* API key: ``$CRMML_API_KEY`` if set (16 characters at least, else a one-line error, exit 2), else a
  fresh random key written to ``<workspace>/serve_api_key`` with mode 600; the path is printed,
  never the key (clients send ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``). ``--no-auth`` turns authentication off
  (the local demo only; the service then says ``auth: false`` in ``/metadata``);
* pre-flight: resolves ``crmml-churn@champion`` and ``crmml-recommender@champion`` in the registry
  and imports them into the BentoML store (or finds the last imported ones when the registry is
  unreachable). If nothing can be served it prints why and exits with code 3 instead of starting.
* lifetime: ``bentoml serve`` runs with a parent-death signal and its worker watches its parent
  (``serving.lifecycle``): killing ``crmml serve`` in any way stops the whole service.

Start-up problems the service finds itself (model files that cannot be loaded, a model that cannot
answer) are printed as one line, ``crmml serve: the service refused to start: <reason>``, and
``crmml serve`` exits non-zero (``bentoml serve``'s code, e.g. 3, or 1).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer

DEFAULT_PORT = 3000
HOST = "127.0.0.1"
SERVICE = "serving.service:CrmmlService"
#: exit code when the service refuses to start (the same as ``serving.service.EXIT_REFUSED``, which
#: this module does not import: it loads BentoML)
EXIT_REFUSED = 3


def serve_env(workspace: Path, api_key: str | None, no_auth: bool, reload_seconds: float | None = None,
              base: dict | None = None) -> dict:
    """The environment the service process gets (also used by tests and the benchmark)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env["BENTOML_DO_NOT_TRACK"] = "True"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["CRMML_WORKSPACE"] = str(workspace)
    env.setdefault("BENTOML_HOME", str(Path(workspace) / "bentoml"))
    if no_auth:
        env["CRMML_AUTH"] = "off"
        env.pop("CRMML_API_KEY", None)
    else:
        env.pop("CRMML_AUTH", None)
        env["CRMML_API_KEY"] = api_key or ""
    if reload_seconds is not None:
        env["CRMML_RELOAD_SECONDS"] = str(reload_seconds)
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def serve_command(port: int = DEFAULT_PORT) -> list[str]:
    """``bentoml serve`` for the crmml service on 127.0.0.1:port."""
    from features.workspace import REPO_ROOT

    exe = Path(sys.executable).parent / "bentoml"
    bentoml = str(exe) if exe.exists() else (shutil.which("bentoml") or "bentoml")
    return [bentoml, "serve", SERVICE, "--host", HOST, "--port", str(port), "--working-dir", str(REPO_ROOT)]


def preflight(workspace: Path, env: dict) -> list[str]:
    """Resolve and import the champions as the service will; returns lines to print. Raises NoModelError."""
    os.environ.update({k: v for k, v in env.items() if k in ("BENTOML_HOME", "BENTOML_DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY")})
    from features.workspace import Workspace
    from serving.champions import resolve_champions
    from features.dates import workspace_as_of as as_of_date

    ws = Workspace(workspace)
    refs, warnings = resolve_champions(ws)
    as_of = as_of_date(ws)
    lines = [f"{name}: version {ref.version} ({ref.source}, BentoML {ref.bentoml_tag})" for name, ref in refs.items()]
    lines.append(f"data as of {as_of.date()} from {ws.root}")
    return lines + [f"warning: {w}" for w in warnings]


def store_env(env: dict, store: str = "memory", redis_url: Optional[str] = None, workers: int = 1) -> dict:
    """The online store and worker count (``serving.state.batch_store``, ``serving.service``) in ``env``."""
    env["CRMML_STORE"] = store
    env["CRMML_WORKERS"] = str(workers)
    if redis_url:
        env["CRMML_REDIS_URL"] = redis_url
    return env


def serve(workspace: Optional[Path] = None, port: int = DEFAULT_PORT, no_auth: bool = False,
          reload_seconds: Optional[float] = None, store: str = "memory", redis_url: Optional[str] = None,
          workers: int = 1) -> None:
    """Start the service in the foreground (``bentoml serve`` as a child; Ctrl+C stops both)."""
    from rich.console import Console

    from features.workspace import Workspace

    from pipelines.processes import port_problem
    from serving.auth import NoApiKeyError, check_key, write_generated_key

    console = Console(stderr=True)
    ws = Workspace(workspace)
    problem = port_problem(HOST, port)
    if problem:  # before anything is loaded: one line, not BentoML's traceback after a minute
        console.print(f"[bold red]crmml serve:[/] {problem}", soft_wrap=True)
        raise typer.Exit(2)
    key_file = None
    if no_auth:
        key = None
    elif os.environ.get("CRMML_API_KEY"):
        try:
            key = check_key(os.environ["CRMML_API_KEY"])
        except NoApiKeyError as exc:
            console.print(f"[bold red]crmml serve:[/] {exc}", soft_wrap=True)
            raise typer.Exit(2)
    else:
        key, key_file = write_generated_key(ws.root)
    env = store_env(serve_env(ws.root, key, no_auth, reload_seconds), store, redis_url, workers)
    try:
        lines = preflight(ws.root, env)
    except Exception as exc:  # NoModelError, no events table, model files that do not verify...
        from serving.champions import describe

        console.print(f"[bold red]crmml serve: refusing to start:[/] {describe(exc)}", soft_wrap=True)
        raise typer.Exit(EXIT_REFUSED)
    for line in lines:
        console.print(f"[dim]{line}[/]", soft_wrap=True)
    url = f"http://{HOST}:{port}"
    console.print(f"[bold]crmml API[/] on {url}  (OpenAPI: {url}/docs, metrics: {url}/metrics)")
    if no_auth:
        console.print("[yellow]authentication is OFF (--no-auth): local demo only[/]")
    elif os.environ.get("CRMML_API_KEY"):
        console.print("API key: from $CRMML_API_KEY (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')")
    else:
        # the key itself is never printed: terminals and captured stderr end up in logs
        console.print(f"API key: generated, in {key_file} (mode 600; send 'Authorization: Bearer KEY'; "
                      "set CRMML_API_KEY to choose one)", soft_wrap=True)
    sys.stdout.flush()
    sys.stderr.flush()
    raise typer.Exit(run_service(serve_command(port), env, console))


def run_service(cmd: list[str], env: dict, console, poll_seconds: float = 0.5, grace_seconds: float = 5.0) -> int:
    """Run ``bentoml serve`` in the foreground; non-zero with the service's reason if it refused to start.

    The service writes the one-line reason of a fatal start-up problem to ``CRMML_REFUSAL_FILE``:
    found before any worker starts (no key, no champion, model files that cannot be loaded),
    ``bentoml serve`` exits with ``EXIT_REFUSED``; found in the worker, BentoML would restart it
    over and over, so the service started here is stopped as soon as the reason appears.
    SIGINT/SIGTERM are passed on to ``bentoml serve``.
    """
    import signal
    import subprocess
    import tempfile

    from serving.lifecycle import die_with_parent

    fd, refusal = tempfile.mkstemp(prefix="crmml_refusal_")
    os.close(fd)
    refusal_file = Path(refusal)
    env = {**env, "CRMML_REFUSAL_FILE": refusal}
    parent = os.getpid()
    # the child gets SIGTERM from the kernel when this process dies, even by SIGKILL
    proc = subprocess.Popen(cmd, env=env, preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent))  # noqa: S603, PLW1509 - our argv

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    def reason() -> str:
        try:
            return refusal_file.read_text().strip()
        except OSError:
            return ""

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait(timeout=poll_seconds)
                break
            except subprocess.TimeoutExpired:
                if reason():  # refused: bentoml serve exits by itself, or a worker refused (restart loop)
                    try:
                        code = proc.wait(timeout=grace_seconds)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    proc.terminate()
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                    code = None
                    break
        why = reason()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        refusal_file.unlink(missing_ok=True)
    if why:
        console.print(f"[bold red]crmml serve: the service refused to start:[/] {why}", soft_wrap=True)
        return code or 1
    return code


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_cmd(
        port: int = typer.Option(DEFAULT_PORT, "--port", "-p", min=1, max=65535, help="Port on 127.0.0.1."),
        workspace: Optional[Path] = typer.Option(
            None, "--workspace", envvar="CRMML_WORKSPACE", help="Workspace folder (default <repo>/workspace)."
        ),
        no_auth: bool = typer.Option(False, "--no-auth", help="No API key (local demo only)."),
        reload_seconds: Optional[float] = typer.Option(
            None, "--reload-seconds", min=0, help="How often to poll the registry for a new champion (0: never; default 30)."
        ),
        workers: int = typer.Option(1, "--workers", min=1, max=64, help="Worker processes."),
        store: str = typer.Option(
            "memory", "--store", help="Online store: memory (each worker) or redis (shared by workers and hosts)."
        ),
        redis_url: Optional[str] = typer.Option(
            None, "--redis-url", envvar="CRMML_REDIS_URL", help="Redis for --store redis (redis://127.0.0.1:6379/0)."
        ),
    ) -> None:
        """Serve churn scores, recommendations and customer profiles over HTTP on 127.0.0.1."""
        if store not in ("memory", "redis"):
            raise typer.BadParameter("--store is memory or redis")
        serve(workspace, port, no_auth, reload_seconds, store, redis_url, workers)
