"""A service that lives and dies whole: no BentoML process outlives the one that started it.

``crmml serve`` runs ``bentoml serve`` as a child, which spawns the worker (circus puts it in a
session of its own, so killing ``crmml serve``'s process group does not reach it). Two links:

* ``crmml serve`` -> ``bentoml serve``: :func:`die_with_parent` as the child's ``preexec_fn``: the
  kernel sends the child SIGTERM when ``crmml serve`` dies, however it dies (SIGKILL included), and
  ``bentoml serve`` then stops its workers as on Ctrl+C;
* ``bentoml serve`` -> worker: :func:`watch_parent` in the worker (``CrmmlService.__init__``): a
  daemon thread that sees the worker re-parented (its parent died, SIGKILL included) and ends it.
  A thread rather than a parent-death signal: the kernel sends that signal when the *thread* that
  forked the worker ends, and circus may fork from a thread that ends long before the server.

Linux only (``prctl``); elsewhere both are no-ops apart from the watchdog.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading

log = logging.getLogger("crmml.serving")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    ``parent``: the pid the caller expects as parent; if it died before the request was made (the
    race the man page describes), ``sig`` is sent at once. Safe to call in a ``preexec_fn``.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog and process groups remain
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)


def watch_parent(interval: float = 0.5, grace: float = 5.0) -> threading.Thread:
    """End this process (SIGTERM, then ``os._exit`` after ``grace`` seconds) once its parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            if os.getppid() != parent:
                log.warning("the BentoML server process (pid %d) is gone: stopping this worker", parent)
                os.kill(os.getpid(), signal.SIGTERM)
                stop.wait(grace)
                os._exit(1)

    thread = threading.Thread(target=watch, name="crmml-parent-watch", daemon=True)
    thread.start()
    return thread
