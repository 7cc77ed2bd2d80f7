"""Local server processes (the crmml service, ``mlflow server``, ``mlflow models serve``) for the
benchmarks and the tests: started on loopback in their own process group, waited for over HTTP,
measured (CPU, memory) and stopped as a whole, workers included.

Servers fork workers (BentoML's supervisor, uvicorn, gunicorn), so every operation here works on the
whole process tree: killing only the pid that was started leaves workers holding the port.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_problem(host: str, port: int) -> str | None:
    """A one-line reason why a server cannot listen on ``host:port`` now (in use, not allowed), else None."""
    with socket.socket() as s:
        # like the server will: a port whose old connections are in TIME_WAIT is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use (another crmml serve?); choose another with --port"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


class ServerProcess:
    """``cmd`` in a new session (its own process group), stdout and stderr to ``log``."""

    def __init__(self, cmd: list[str], env: dict, log: Path, cwd: Path | None = None):
        self.cmd = cmd
        self.log = Path(log)
        with open(self.log, "wb") as out:  # the child keeps its own copy of the descriptor
            # argv from the caller (our own servers), no shell
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,  # noqa: S603
                                         start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def wait_http(self, url: str, timeout: float = 300.0, ok=lambda r: r.status_code == 200) -> None:
        """Poll ``url`` until ``ok(response)``; RuntimeError with the log's tail if the process exits
        or the time runs out."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.cmd[0]} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if ok(httpx.get(url, timeout=2)):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{url} not up after {timeout:g} s:\n{self.tail()}")

    def tree(self) -> list[psutil.Process]:
        """The process and all its descendants now (also remembered for :meth:`stop`)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen.update({p.pid: p for p in procs})
        return procs

    def _sum(self, measure) -> float:
        total = 0.0
        for p in self.tree():
            try:
                total += measure(p)
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the whole tree so far."""
        return self._sum(lambda p: sum(p.cpu_times()[:2]))

    def rss_bytes(self) -> int:
        """Resident memory of the whole tree now (shared pages counted once per process)."""
        return int(self._sum(lambda p: p.memory_info().rss))

    def stop(self, timeout: float = 20.0) -> list[psutil.Process]:
        """SIGTERM every process of the tree and the group, SIGKILL what is left after ``timeout``;
        returns every process seen, so a caller can check that none survived."""
        procs = list({**self.seen, **{p.pid: p for p in self.tree()}}.values())
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        return procs
